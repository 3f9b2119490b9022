"""TeacherOutputs (a teacher's logits per task and features on some rows); file teachers'
declared probabilities turned into logits, and a warning when "logits" look like probabilities."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.training.spec import TaskSpec

Tensors = dict[str, torch.Tensor]
EPS = 1e-7  # probabilities are clamped away from 0 (and 1) so their logs stay finite
SUM_TOLERANCE = 1e-3
MIN_ROWS_FOR_RANGE_RULE = 20


@dataclass
class TeacherOutputs:
    """A teacher's outputs on some rows."""

    logits: Tensors  # task -> (n, output_size)
    features: torch.Tensor | None  # (n, feature_width) trunk features, if the teacher has them

    def as_tensors(self) -> Tensors:
        """Return a flat name -> tensor dict (what the cache stores)."""
        flat = {f"logits.{task}": z for task, z in self.logits.items()}
        if self.features is not None:
            flat["features"] = self.features
        return flat

    @classmethod
    def from_tensors(cls, flat: Tensors) -> "TeacherOutputs":
        """Rebuild from as_tensors()."""
        logits = {name.removeprefix("logits."): z for name, z in flat.items()
                  if name.startswith("logits.")}
        return cls(logits=logits, features=flat.get("features"))

    def rows(self, index: torch.Tensor | slice) -> "TeacherOutputs":
        """Return the outputs of the given rows."""
        return TeacherOutputs(logits={task: z[index] for task, z in self.logits.items()},
                              features=None if self.features is None else self.features[index])


def as_logits(logits: Tensors, tasks: Sequence[TaskSpec], outputs_are: str) -> Tensors:
    """Return the outputs per task as logits, converting them when `outputs_are` is "probabilities".

    multiclass: log(p) (log-probabilities are valid logits: softmax(log p) == p for rows summing
    to 1); binary/multilabel: logit(p) per column; regression: unchanged, since a regression output
    is a value, not a probability.
    """
    if outputs_are == "logits":
        return logits
    converted = {}
    for task in tasks:
        p = logits[task.name]  # (n, width)
        if task.kind == "multiclass":
            converted[task.name] = p.clamp(min=EPS).log()
        elif task.kind in ("binary", "multilabel"):
            converted[task.name] = p.clamp(EPS, 1 - EPS).logit()
        else:
            converted[task.name] = p
    return converted


def probability_warning(teacher: str, outputs: TeacherOutputs, tasks: Sequence[TaskSpec], *,
                        kind: str | None = None) -> str | None:
    """Return a warning when outputs declared as logits look like probabilities, else None.

    The rule, per task: multiclass when every value is in [0, 1] and every row sums to 1 (within
    1e-3); binary/multilabel when every value is in [0, 1] over at least 20 rows (logits are
    unbounded, so a whole column inside [0, 1] is unusual; fewer rows prove too little);
    regression never (its outputs are values). `kind` names the source (onnx, torchscript,
    outputs) in the advice.
    """
    reasons = []
    for task in tasks:
        z = outputs.logits.get(task.name)
        if z is None or z.numel() == 0 or task.kind == "regression":
            continue
        z = z.detach().float()  # (n, width)
        in_unit_range = bool(((z >= 0) & (z <= 1)).all())
        if not in_unit_range:
            continue
        if task.kind == "multiclass":
            if bool(((z.sum(dim=1) - 1).abs() <= SUM_TOLERANCE).all()):
                reasons.append(f"task '{task.name}' (every row in [0, 1] summing to 1)")
        elif len(z) >= MIN_ROWS_FOR_RANGE_RULE:
            reasons.append(f"task '{task.name}' (every value in [0, 1] over {len(z)} rows)")
    if not reasons:
        return None
    where = f"source.{kind}.outputs_are" if kind else "the source's outputs_are"
    return (f"teacher '{teacher}': outputs for {' and '.join(reasons)} look like probabilities "
            f"but outputs_are is 'logits'; set {where} to 'probabilities'")
