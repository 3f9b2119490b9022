"""Built-in `digits-mt`: scikit-learn's 8x8 digits with three tasks (digit, parity, large)."""

import torch

from app.training.datasets.registry import digit_targets, register_builtin
from app.training.datasets.splits import DatasetSplits

TEST_SIZE = 0.25
SPLIT_SEED = 0  # the split is fixed: the same for every job seed


@register_builtin("digits-mt")
def load_digits_mt() -> DatasetSplits:
    """Load the digits offline and split them 75/25, stratified by digit."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    digit = torch.tensor(bunch.target, dtype=torch.int64)  # (1797,)
    train_idx, test_idx = train_test_split(
        torch.arange(len(x)).numpy(), test_size=TEST_SIZE, random_state=SPLIT_SEED,
        stratify=digit.numpy())
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    targets = digit_targets(digit)
    return DatasetSplits(
        x_train=x[train_idx], x_test=x[test_idx],
        y_train={task: y[train_idx] for task, y in targets.items()},
        y_test={task: y[test_idx] for task, y in targets.items()},
    )
