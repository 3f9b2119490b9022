"""Built-in `yeast`: the MULAN multi-label yeast data, from the copy shipped inside river.

river ships `river/datasets/yeast.csv.gz` (2417 genes, 103 features Att1..Att103, 14 labels
Class1..Class14; `river.datasets.Yeast` reads that file, nothing is downloaded). It is read here
with pandas from river's package folder without importing river (whose import alone takes
seconds). Fixed random 75/25 split; features standardised with train statistics.
"""

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from app.training.datasets.registry import register_builtin
from app.training.datasets.splits import DatasetSplits

NAME = "yeast"
TEST_SIZE = 0.25
SPLIT_SEED = 0  # the split is fixed: the same for every job seed
N_FEATURES, N_LABELS = 103, 14


def yeast_csv_path() -> Path:
    """Return the path of river's shipped yeast CSV."""
    spec = find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the 'river' package (it ships the yeast data) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "yeast.csv.gz"


@register_builtin(NAME)
def load_yeast() -> DatasetSplits:
    """Load yeast: 103 standardised features and one 14-label multilabel task `labels`."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    table = pd.read_csv(yeast_csv_path())
    features = table[[f"Att{i}" for i in range(1, N_FEATURES + 1)]].to_numpy(dtype=np.float64)
    labels = table[[f"Class{i}" for i in range(1, N_LABELS + 1)]].to_numpy(dtype=np.float32)
    train_idx, test_idx = train_test_split(np.arange(len(table)), test_size=TEST_SIZE,
                                           random_state=SPLIT_SEED)
    mean, std = features[train_idx].mean(axis=0), features[train_idx].std(axis=0)
    x = torch.tensor((features - mean) / np.where(std > 0, std, 1.0), dtype=torch.float32)
    y = torch.from_numpy(labels)  # (n, 14) float 0/1
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DatasetSplits(x_train=x[train_idx], x_test=x[test_idx],
                         y_train={"labels": y[train_idx]}, y_test={"labels": y[test_idx]})
