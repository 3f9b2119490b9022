"""The `transformer` architecture: a BERT encoder with one head per task, over tokenised text.

x is (batch, 2, length): token ids and attention mask (datasets/text_inputs.py). Two kinds:
    student   an encoder built from a transformers BertConfig (layers, hidden_size,
              attention_heads, intermediate_size); with `prune_vocab` its embedding has a row
              only for the ids seen in training (plus the special ids), and an `id_map` buffer
              maps the tokenizer's ids to those rows (unseen ids -> [UNK]); `init_from_teacher`
              copies the teacher's embeddings and every k-th layer (DistilBERT), done in
              `teacher_init_state`
    backbone  a pretrained encoder (`backbone`: "minilm-l6" or an uploaded teacher_hf file),
              loaded by hf_encoder.load_hf_encoder (config checked, safetensors, no remote
              code); `finetune` "heads" freezes it, "all" trains it too
Pooling: "cls" (the first token's last hidden state) or "mean" (over real tokens). Heads are
Linear+ReLU per `head` width, then Linear to the task's output size, as for the zoo models.
forward_features returns the taps {"trunk": (batch, hidden)} and, once `layer_taps` is set (the
hidden / attention KD terms), "hidden_states" (layers + 1 tensors (batch, length, hidden), the
embeddings first), "attentions" (layers tensors (batch, heads, length, length)) and "mask".
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from app.training.datasets.text_inputs import TextInputs
from app.training.errors import TrainingError

# Rows per forward without gradients (prediction, teacher outputs, latency): the attention maps of
# 4096 rows x 128 tokens x 12 heads would take 3 GiB at once.
EVAL_CHUNK = 256
class TextEncoderNet(nn.Module):
    """encoder (a transformers BertModel-like module) -> pooling -> one head per task."""

    def __init__(self, encoder: nn.Module, *, pooling: str, head: Sequence[int],
                 outputs: dict[str, int], id_map: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.trunk_features = int(encoder.config.hidden_size)
        self.heads = nn.ModuleDict()
        for task, size in outputs.items():
            layers: list[nn.Module] = []
            width = self.trunk_features
            for next_width in head:
                layers += [nn.Linear(width, next_width), nn.ReLU()]
                width = next_width
            layers.append(nn.Linear(width, size))
            self.heads[task] = nn.Sequential(*layers)
        if id_map is not None:
            self.register_buffer("id_map", id_map)  # (tokenizer vocab,) int64 -> embedding row
        else:
            self.id_map = None
        self.layer_taps = False  # set by the hidden / attention KD terms

    def forward_features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return (logits per task, taps); x (batch, 2, length)."""
        if not torch.is_grad_enabled() and len(x) > EVAL_CHUNK:  # taps: trunk only
            parts = [self.forward_features(x[i:i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)]
            return ({t: torch.cat([p[0][t] for p in parts]) for t in parts[0][0]},
                    {"trunk": torch.cat([p[1]["trunk"] for p in parts])})
        ids, mask = x[:, 0].long(), x[:, 1].long()  # (batch, length) each
        if self.id_map is not None:
            ids = self.id_map[ids]
        attentions = self.layer_taps and self.encoder.config._attn_implementation == "eager"
        out = self.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=self.layer_taps,
                           output_attentions=attentions)
        last = out.last_hidden_state  # (batch, length, hidden)
        if self.pooling == "cls":
            pooled = last[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(last.dtype)  # (batch, length, 1)
            pooled = (last * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        logits = {task: head(pooled) for task, head in self.heads.items()}
        taps: dict[str, Any] = {"trunk": pooled}
        if self.layer_taps:
            taps.update(hidden_states=out.hidden_states, mask=mask,
                        attentions=out.attentions if attentions else None)
        return logits, taps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return logits per task, each (batch, output_size)."""
        return self.forward_features(x)[0]

    def last_shared_layer(self) -> nn.Module:
        """The last encoder layer's output projection (GradNorm's gradient probe)."""
        return self.encoder.encoder.layer[-1].output.dense


def build_text_model(arch: Any, *, input_shape: Sequence[int], outputs: dict[str, int],
                     text: TextInputs | None = None) -> TextEncoderNet:
    """Build a transformer student (from a BertConfig) or a pretrained backbone with task heads."""
    if text is None or len(input_shape) != 2 or input_shape[0] != 2:
        raise TrainingError(code="invalid_data", message=(
            "transformer models read tokenised text (dataset.text): inputs (2, max_length), got "
            f"{list(input_shape)}"))
    if arch.backbone is not None:
        from app.training.hf_encoder import load_hf_encoder

        folder = text.backbones.get(arch.backbone)
        if folder is None:
            raise TrainingError(code="backbone_unavailable",
                                message=f"backbone '{arch.backbone}' was not prepared for this job")
        # eager attention returns the attention maps the attention term reads
        encoder = load_hf_encoder(folder, attn_implementation="eager" if text.attention_taps
                                  else None).model.train()
        if arch.finetune == "heads":
            encoder.requires_grad_(False)
        return TextEncoderNet(encoder, pooling=arch.pooling, head=arch.head, outputs=outputs)
    from transformers import BertConfig, BertModel

    vocab, id_map = text.vocab_size, None
    if arch.prune_vocab and text.kept_ids:
        kept = torch.tensor(text.kept_ids, dtype=torch.long)
        id_map = torch.full((text.vocab_size,), int((kept == text.unk_id).nonzero()[0, 0]),
                            dtype=torch.long)
        id_map[kept] = torch.arange(len(kept))
        vocab = len(kept)
    config = BertConfig(vocab_size=vocab, hidden_size=arch.hidden_size,
                        num_hidden_layers=arch.layers, num_attention_heads=arch.attention_heads,
                        intermediate_size=arch.intermediate_size,
                        max_position_embeddings=max(input_shape[1], 8), type_vocab_size=2,
                        pad_token_id=0 if id_map is not None else text.pad_id,
                        hidden_dropout_prob=arch.dropout, attention_probs_dropout_prob=arch.dropout)
    config._attn_implementation = "eager" if text.attention_taps else "sdpa"
    encoder = BertModel(config, add_pooling_layer=False)
    return TextEncoderNet(encoder, pooling=arch.pooling, head=arch.head, outputs=outputs,
                          id_map=id_map)


def teacher_init_state(student: TextEncoderNet, teacher: TextEncoderNet, *,
                       kept_ids: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """Return the student's state with the teacher's embeddings and every k-th layer (DistilBERT).

    Student layer i takes teacher layer i * k, k = teacher layers // student layers (DistilBERT
    took every other of BERT's 12); a pruned student takes the embedding rows of its kept ids.
    """
    s_cfg, t_cfg = student.encoder.config, teacher.encoder.config
    for field in ("hidden_size", "num_attention_heads", "intermediate_size"):
        if getattr(s_cfg, field) != getattr(t_cfg, field):
            raise TrainingError(code="init_mismatch", message=(
                f"student.init_from_teacher: the student's {field} {getattr(s_cfg, field)} must "
                f"equal the teacher's {getattr(t_cfg, field)} to copy its layers"))
    if t_cfg.num_hidden_layers < s_cfg.num_hidden_layers:
        raise TrainingError(code="init_mismatch", message=(
            f"student.init_from_teacher: the student has more layers ({s_cfg.num_hidden_layers}) "
            f"than the teacher ({t_cfg.num_hidden_layers})"))
    step = t_cfg.num_hidden_layers // s_cfg.num_hidden_layers
    state = {k: v.clone() for k, v in student.state_dict().items()}
    source = teacher.encoder.state_dict()
    for name, value in source.items():
        key = f"encoder.{name}"
        if name.startswith("embeddings.") and key in state:
            if name == "embeddings.word_embeddings.weight" and student.id_map is not None:
                value = value[torch.tensor(kept_ids, dtype=torch.long)]  # row r <- id kept_ids[r]
            elif name == "embeddings.position_embeddings.weight":
                value = value[:state[key].shape[0]]
            if state[key].shape == value.shape:
                state[key] = value.clone()
    for index in range(s_cfg.num_hidden_layers):
        prefix = f"encoder.layer.{index * step}."
        for name, value in source.items():
            if name.startswith(prefix):
                state[f"encoder.encoder.layer.{index}.{name[len(prefix):]}"] = value.clone()
    return state


def load_text_weights(model: TextEncoderNet, state: dict[str, torch.Tensor]) -> None:
    """Load a transformer teacher's safetensors: its task heads alone (keys `heads.<task>.<i>.weight`
    and `.bias`, as TextEncoderNet names them; the backbone comes from `backbone`), or the whole
    state_dict. Missing or unexpected keys and wrong shapes raise (strict)."""
    if state and all(key.startswith("heads.") for key in state):
        model.heads.load_state_dict({key.removeprefix("heads."): value for key, value in state.items()})
    else:
        model.load_state_dict(state)
