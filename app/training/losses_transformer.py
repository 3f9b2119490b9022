"""Transformer KD terms between mapped layers: `hidden` and `attention` (TinyBERT, Jiao et al. 2020).

    hidden     L = sum over mapped pairs (m, n) of MSE(H_m^S W_m, H_n^T): the student's hidden
               states (batch, length, d_S) through a learned projection W_m (d_S -> d_T) against
               the teacher's (batch, length, d_T); layer 0 is the embedding output
    attention  L = sum over mapped pairs (m, n), m, n >= 1, of 1/h sum_i MSE(A_i^S, A_i^T): the
               attention distributions (softmax outputs, rows sum to 1) of each head i of
               student layer m and teacher layer n

Why TinyBERT's attention term and not MiniLM's last-layer attention + value relation: it works
on every mapped layer with the same `layer_map` as the hidden term, and it reads the attention
maps transformers already returns (eager attention, output_attentions) without patching the
encoder's modules to get the values. Where the student has a different number of heads than the
teacher (its hidden size is smaller), TinyBERT's per-head MSE is undefined; the heads' mean
attention distribution is compared instead (a documented departure; equal heads use the paper's
per-head form). MSEs average over real tokens only: padding positions (mask 0) and, for
attention, pairs with a padded query or key are left out; without padding each is the paper's
plain MSE.

Hidden states of long texts are large (rows x length x width x layers: about 23 GB for
clothing-reviews' train split with MiniLM), so these terms run the teacher online, once per
batch, under no_grad; the soft term keeps reading the cached logits.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from app.training.errors import TrainingError

Pair = tuple[int, int]


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[Pair]:
    """TinyBERT's uniform map n = g(m) = m * N / M, with the embeddings as layer 0 -> 0."""
    step = teacher_layers // student_layers
    return [(0, 0)] + [(m, m * step) for m in range(1, student_layers + 1)]


def resolve_layer_map(layer_map: str | Sequence[Sequence[int]], *, student_layers: int,
                      teacher_layers: int) -> list[Pair]:
    """Return the (student layer, teacher layer) pairs: "uniform" or checked explicit pairs."""
    if layer_map == "uniform":
        if teacher_layers < student_layers:
            raise TrainingError(code="layer_map", message=(
                f"distillation.layer_map: 'uniform' needs a teacher with at least as many layers "
                f"as the student ({teacher_layers} < {student_layers}); give explicit pairs"))
        return uniform_layer_map(student_layers, teacher_layers)
    pairs = [(int(s), int(t)) for s, t in layer_map]
    for s, t in pairs:
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise TrainingError(code="layer_map", message=(
                f"distillation.layer_map: pair [{s}, {t}] is outside the student's 0..{student_layers}"
                f" and the teacher's 0..{teacher_layers} layers (0 = embeddings)"))
    return pairs


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens; student already projected: (batch, length, d), mask (batch, length)."""
    weights = mask.unsqueeze(-1).to(student.dtype)  # (batch, length, 1)
    squared = (student - teacher).pow(2) * weights
    return squared.sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1/h sum_i MSE(A_i^S, A_i^T) over real (query, key) pairs; (batch, heads, length, length).

    With different head counts both sides are averaged over their heads first (h = 1)."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    real = mask.to(student.dtype)  # (batch, length)
    pairs = (real.unsqueeze(-1) * real.unsqueeze(-2)).unsqueeze(1)  # (batch, 1, length, length)
    squared = (student - teacher).pow(2) * pairs
    return squared.sum() / (pairs.sum() * student.shape[1]).clamp_min(1.0)


def projection_key(student_layer: int) -> str:
    """The adaptor name of a mapped student layer's hidden-state projection."""
    return f"hidden_{student_layer}"


class LayerDistiller:
    """Runs the teacher on each batch and returns the `hidden` and `attention` terms."""

    def __init__(self, teacher: nn.Module, *, pairs: Sequence[Pair], hidden: bool,
                 attention: bool) -> None:
        self.teacher = teacher.eval()
        self.teacher.layer_taps = True
        self.pairs, self.hidden, self.attention = list(pairs), hidden, attention

    def projections(self, student_width: int) -> nn.ModuleDict:
        """One Linear (student width -> teacher width) per mapped student layer (hidden term)."""
        width = self.teacher.trunk_features
        return nn.ModuleDict({projection_key(s): nn.Linear(student_width, width)
                              for s, _ in self.pairs} if self.hidden else {})

    def terms(self, x: torch.Tensor, taps: dict[str, Any], adaptors: nn.ModuleDict) -> dict[str, torch.Tensor]:
        """Return {"hidden": ..., "attention": ...} for the batch x and the student's taps."""
        with torch.no_grad():
            _, teacher_taps = self.teacher.forward_features(x)
        mask = taps["mask"]
        terms: dict[str, torch.Tensor] = {}
        if self.hidden:
            terms["hidden"] = sum(
                hidden_mse(adaptors[projection_key(s)](taps["hidden_states"][s].float()),
                           teacher_taps["hidden_states"][t].float(), mask) for s, t in self.pairs)
        if self.attention:
            pairs = [(s, t) for s, t in self.pairs if s > 0 and t > 0]
            terms["attention"] = sum(
                attention_mse(taps["attentions"][s - 1].float(),
                              teacher_taps["attentions"][t - 1].float(), mask) for s, t in pairs)
        return terms
