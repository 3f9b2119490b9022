"""Built-in `fashion-mnist-mt`: Fashion-MNIST from Debian's package, tasks item, category and footwear."""

import gzip
from pathlib import Path

import numpy as np
import torch

from app.training.datasets.catalog import FASHION_MNIST_DIR
from app.training.datasets.registry import register_builtin, unavailable
from app.training.datasets.splits import DatasetSplits
from app.training.errors import TrainingError

NAME = "fashion-mnist-mt"
FILE_PREFIXES = {"train": "train", "test": "t10k"}  # the shipped split
ITEMS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot")
CATEGORIES = ("tops", "bottoms", "footwear", "bags")
# Coarse category of each item id (ITEMS order). Dress has no group of its own: it counts as
# bottoms, with Trouser.
ITEM_CATEGORY = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2], dtype=np.int64)
FOOTWEAR = CATEGORIES.index("footwear")
_IDX_MAGIC = {"images": (0x08, 3), "labels": (0x08, 1)}  # (unsigned byte type, number of dims)
DATA_DIR = Path(FASHION_MNIST_DIR)


def fashion_paths(folder: Path | None = None) -> dict[str, dict[str, Path]]:
    """Return each split's image and label files; raise `dataset_unavailable` if one is missing."""
    folder = DATA_DIR if folder is None else folder
    paths = {split: {kind: folder / f"{prefix}-{kind}-idx{dims}-ubyte.gz"
                     for kind, (_, dims) in _IDX_MAGIC.items()}
             for split, prefix in FILE_PREFIXES.items()}
    if not all(path.is_file() for files in paths.values() for path in files.values()):
        raise unavailable(NAME)
    return paths


def read_idx(path: Path, kind: str, *, max_rows: int | None = None) -> np.ndarray:
    """Read a gzipped IDX file (the first `max_rows` items): images (n, 28, 28) or labels (n,) uint8."""
    code, ndim = _IDX_MAGIC[kind]
    with gzip.open(path, "rb") as handle:
        header = handle.read(4 + 4 * ndim)
        magic = np.frombuffer(header[:4], dtype=np.uint8)
        if magic[0] != 0 or magic[1] != 0 or magic[2] != code or magic[3] != ndim:
            raise TrainingError(code="invalid_data", message=f"{path} is not an IDX {kind} file")
        shape = [int(d) for d in np.frombuffer(header[4:], dtype=">u4")]
        shape[0] = shape[0] if max_rows is None else min(shape[0], max_rows)
        body = bytearray(handle.read(int(np.prod(shape))))  # writable: torch shares its memory
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def item_targets(item: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return the three targets from item ids (n,) int64."""
    category = torch.from_numpy(ITEM_CATEGORY)[item]
    return {"item": item, "category": category, "footwear": (category == FOOTWEAR).float()}


def load_fashion(*, max_rows: int | None = None, folder: Path | None = None) -> DatasetSplits:
    """Load the shipped split (or the first `max_rows` images of each part) with its three tasks."""
    x, y = {}, {}
    for split, files in fashion_paths(folder).items():
        images = read_idx(files["images"], "images", max_rows=max_rows)
        x[split] = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)  # (n, 1, 28, 28)
        item = torch.from_numpy(read_idx(files["labels"], "labels", max_rows=max_rows).astype(np.int64))
        y[split] = item_targets(item)
    return DatasetSplits(x_train=x["train"], x_test=x["test"], y_train=y["train"], y_test=y["test"])


@register_builtin(NAME)
def load_fashion_mnist() -> DatasetSplits:
    """Load Fashion-MNIST: 60,000 train / 10,000 test images."""
    return load_fashion()
