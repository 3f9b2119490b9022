"""Built-in `penguins`: Palmer penguins (palmerpenguins' shipped CSV) with four tasks.

Inputs vs targets: a column is never both. Inputs are the three body measurements other than
body mass (bill length, bill depth, flipper length); targets are species, sex, island and body
mass. Year is not used (a sampling date, not a property of the bird).

Missing values, reported in `DatasetSplits.notes`:
- a row with any missing target (sex for 11 birds, body mass for 2 of them) is dropped, before the
  split; the split is then a fixed 75/25, stratified by species;
- a missing input gets the train split's median of that column (none are left after the drop in
  the shipped CSV, but the rule and its count stay in place).
Inputs are standardised with the train split's mean and std; body mass stays in grams (the engine
standardises regression targets itself).
"""

import numpy as np
import torch

from app.training.datasets.registry import register_builtin
from app.training.datasets.splits import DatasetSplits

NAME = "penguins"
TEST_SIZE = 0.25
SPLIT_SEED = 0  # the split is fixed: the same for every job seed
FEATURES = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm")
SPECIES = ("Adelie", "Chinstrap", "Gentoo")
ISLANDS = ("Biscoe", "Dream", "Torgersen")
TARGET_COLUMNS = {"species": "species", "sex": "sex", "island": "island",
                  "body_mass": "body_mass_g"}


@register_builtin(NAME)
def load_penguins() -> DatasetSplits:
    """Load the penguins, drop rows without a target, impute and standardise the inputs."""
    import palmerpenguins
    from sklearn.model_selection import train_test_split

    table = palmerpenguins.load_penguins()
    missing_targets = {task: int(table[column].isna().sum())
                       for task, column in TARGET_COLUMNS.items()}
    kept = table.dropna(subset=list(TARGET_COLUMNS.values())).reset_index(drop=True)
    dropped = len(table) - len(kept)

    train_idx, test_idx = train_test_split(np.arange(len(kept)), test_size=TEST_SIZE,
                                           random_state=SPLIT_SEED, stratify=kept["species"])
    features = kept[list(FEATURES)].to_numpy(dtype=np.float64)  # (n, 3), NaN where missing
    medians = np.nanmedian(features[train_idx], axis=0)
    missing_inputs = np.isnan(features)
    features = np.where(missing_inputs, medians, features)
    mean, std = features[train_idx].mean(axis=0), features[train_idx].std(axis=0)
    x = torch.tensor((features - mean) / std, dtype=torch.float32)

    targets = {
        "species": torch.tensor(kept["species"].map(SPECIES.index).to_numpy(), dtype=torch.int64),
        "sex": torch.tensor((kept["sex"] == "male").to_numpy(), dtype=torch.float32),
        "island": torch.tensor(kept["island"].map(ISLANDS.index).to_numpy(), dtype=torch.int64),
        "body_mass": torch.tensor(kept["body_mass_g"].to_numpy(), dtype=torch.float32),
    }
    counts = ", ".join(f"{task} {count}" for task, count in missing_targets.items() if count)
    notes = (
        f"{NAME}: dropped {dropped} of {len(table)} rows with a missing target "
        f"(missing per target: {counts})",
        f"{NAME}: imputed {int(missing_inputs[train_idx].sum())} train and "
        f"{int(missing_inputs[test_idx].sum())} test missing input values with train medians",
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DatasetSplits(
        x_train=x[train_idx], x_test=x[test_idx],
        y_train={task: y[train_idx] for task, y in targets.items()},
        y_test={task: y[test_idx] for task, y in targets.items()},
        notes=notes,
    )
