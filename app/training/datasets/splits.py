"""DatasetSplits: the train / validation / test tensors of one dataset, and the validation carve."""

from dataclasses import dataclass, replace

import torch

from app.training.datasets.text_inputs import TextInputs

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TableLayout:
    """How a table's columns sit in x (n, numeric + len(cardinalities)) under the embedding encoding.

    The first `numeric` columns are numbers; then one column per categorical feature holds its
    integer code as a float (exact below 2**24): 0 the unknown bucket, 1..K the train categories
    (or hash buckets). `cardinalities` are the table sizes per categorical column, unknown included.
    """

    numeric: int
    cardinalities: tuple[int, ...]
    names: tuple[str, ...] = ()  # the categorical columns' names, in x's order (may be empty)

    @property
    def width(self) -> int:
        """Return the number of columns of x."""
        return self.numeric + len(self.cardinalities)

    def as_json(self) -> dict[str, object]:
        """Return the layout as plain JSON (student.json)."""
        return {"numeric": self.numeric, "cardinalities": list(self.cardinalities),
                "names": list(self.names)}

    @classmethod
    def from_json(cls, value: dict[str, object] | None) -> "TableLayout | None":
        """Rebuild a layout written by `as_json` (None stays None)."""
        if value is None:
            return None
        return cls(numeric=int(value["numeric"]),  # type: ignore[call-overload]
                   cardinalities=tuple(int(k) for k in value["cardinalities"]),  # type: ignore[attr-defined]
                   names=tuple(str(n) for n in value.get("names", ())))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DatasetSplits:
    """Train, validation and test tensors of one dataset, with notes on how its rows were cleaned.

    Targets per task kind: multiclass int64 class ids (n,); binary float 0/1 (n,);
    regression float32 in original units (n,); multilabel float 0/1 (n, num_classes).
    `notes` are human-readable lines about the data (e.g. rows dropped for missing values) that
    the loop reports as events. `x_val` is None until `with_validation` carves it from train,
    unless the data named its own validation rows (an uploaded split column).
    """

    x_train: torch.Tensor  # (n_train, *input_shape) float32
    x_test: torch.Tensor  # (n_test, *input_shape) float32
    y_train: Tensors  # task -> (n_train,) or (n_train, num_classes)
    y_test: Tensors  # task -> (n_test,) or (n_test, num_classes)
    notes: tuple[str, ...] = ()
    x_val: torch.Tensor | None = None  # (n_val, *input_shape) float32
    y_val: Tensors | None = None
    # (n_train + n_val,) bool over the rows train had before the carve, True for validation: rows
    # aligned with the original train split (precomputed teacher outputs) are split by it.
    carved: torch.Tensor | None = None
    # Tables under the embedding encoding: where the numbers and the category codes sit in x.
    # None: every column is a number (one-hot tables, images, arrays).
    layout: TableLayout | None = None
    # Text: the tokenizer behind x (n, 2, max_length) and the backbones its models load.
    text: TextInputs | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "DatasetSplits":
        """Return a copy with every tensor on `device`."""
        return replace(
            self, x_train=self.x_train.to(device), x_test=self.x_test.to(device),
            y_train={task: y.to(device) for task, y in self.y_train.items()},
            y_test={task: y.to(device) for task, y in self.y_test.items()},
            x_val=None if self.x_val is None else self.x_val.to(device),
            y_val=None if self.y_val is None else {t: y.to(device) for t, y in self.y_val.items()})


def validation_rows(strata: torch.Tensor | None, n_rows: int, *, fraction: float,
                    seed: int) -> torch.Tensor:
    """Return a (n_rows,) bool mask of the validation rows: a seeded `fraction` of the rows,
    the same share of every stratum (class) when `strata` (n_rows,) is given."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n_rows, dtype=torch.bool)
    groups = [torch.arange(n_rows)] if strata is None else [
        (strata == value).nonzero().flatten() for value in strata.unique()]
    for rows in groups:  # each stratum in sorted value order: the draw is seeded and repeatable
        take = round(fraction * len(rows))
        mask[rows[torch.randperm(len(rows), generator=generator)[:take]]] = True
    if not mask.any() or mask.all():
        raise ValueError(f"a validation fraction of {fraction} leaves no validation or no train "
                         f"rows out of {n_rows}")
    return mask


def with_validation(data: DatasetSplits, *, fraction: float, seed: int,
                    stratify_by: str | None) -> DatasetSplits:
    """Return `data` with validation rows carved out of train (unless it names its own).

    `stratify_by` names a classification task whose classes keep their share in both parts, as
    the built-in and uploaded test splits do.
    """
    if data.x_val is not None:
        return data
    strata = None if stratify_by is None else data.y_train[stratify_by].long()
    val = validation_rows(strata, len(data.x_train), fraction=fraction, seed=seed)
    return replace(data, x_train=data.x_train[~val], x_val=data.x_train[val],
                   y_train={task: y[~val] for task, y in data.y_train.items()},
                   y_val={task: y[val] for task, y in data.y_train.items()}, carved=val)
