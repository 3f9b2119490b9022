"""Uploaded datasets: NPZ and CSV/Parquet tables, with the documented encoding and missing-value rules."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.training.datasets.uploaded import load_npz_dataset, load_table_dataset
from app.training.errors import TrainingError
from app.training.spec import TaskSpec

SPECIES = TaskSpec(name="species", kind="multiclass", num_classes=3)
MASS = TaskSpec(name="mass", kind="regression")
MALE = TaskSpec(name="male", kind="binary")


def _table(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "bill": rng.normal(40, 5, n), "island": rng.choice(["Biscoe", "Dream"], n),
        "species": np.array(["Adelie", "Gentoo", "Chinstrap"])[np.arange(n) % 3],
        "mass": rng.normal(4000, 300, n), "male": np.arange(n) % 2,
    })


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_encodes_features_and_labels_by_the_rules(tmp_path: Path, fmt: str) -> None:
    frame = _table()
    frame.loc[3, "bill"] = np.nan
    frame.loc[5, "mass"] = np.nan
    path = tmp_path / f"d.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    data = load_table_dataset(path, fmt=fmt, tasks=[SPECIES, MASS, MALE],
                              targets={"species": "species", "mass": "mass", "male": "male"},
                              features=None, split_column=None)
    assert len(data.x_train) + len(data.x_test) == 39  # the row without a mass target is dropped
    assert data.input_shape == (3,)  # bill standardised + island one-hot (2 categories)
    assert abs(float(data.x_train[:, 0].mean())) < 1e-5
    assert set(data.y_train["species"].tolist()) == {0, 1, 2} and data.y_train["species"].dtype == torch.int64
    assert data.y_train["male"].dtype == torch.float32 and data.y_train["mass"].dtype == torch.float32
    notes = " | ".join(data.notes)
    assert "dropped 1 of 40 rows" in notes and "1 missing values set to the train median" in notes
    assert "['Adelie', 'Chinstrap', 'Gentoo'] -> [0, 1, 2]" in notes
    again = load_table_dataset(path, fmt=fmt, tasks=[SPECIES, MASS, MALE],
                               targets={"species": "species", "mass": "mass", "male": "male"},
                               features=None, split_column=None)
    assert torch.equal(again.x_test, data.x_test)  # the split is fixed


def test_table_errors_name_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    _table().to_csv(path, index=False)
    with pytest.raises(TrainingError, match="columns \\['colour'\\] are not in the file") as err:
        load_table_dataset(path, fmt="csv", tasks=[SPECIES], targets={"species": "colour"}, features=None,
                           split_column=None)
    assert err.value.code == "invalid_data"
    with pytest.raises(TrainingError, match="3 distinct labels, the spec says 2"):
        load_table_dataset(path, fmt="csv", tasks=[TaskSpec(name="species", kind="binary")],
                           targets={"species": "species"}, features=["bill"], split_column=None)


def test_npz_with_split_and_missing_target_array(tmp_path: Path) -> None:
    x = np.random.rand(30, 2, 5).astype("float32")
    split = np.where(np.arange(30) < 24, "train", "test")
    np.savez(tmp_path / "d.npz", x=x, y_species=np.arange(30) % 3, split=split)
    data = load_npz_dataset(tmp_path / "d.npz", tasks=[SPECIES])
    assert data.x_train.shape == (24, 2, 5) and data.x_test.shape == (6, 2, 5)
    assert torch.equal(data.x_test, torch.from_numpy(x[24:]))
    with pytest.raises(TrainingError, match="no `y_mass`"):
        load_npz_dataset(tmp_path / "d.npz", tasks=[SPECIES, MASS])


def test_a_file_whose_shape_the_student_cannot_take_fails_with_invalid_data(tmp_path: Path) -> None:
    from app.training.loop import train
    from app.training.spec import JobSpec

    np.savez(tmp_path / "d.npz", x=np.random.rand(40, 5).astype("float32"), y_species=np.arange(40) % 3)
    spec = JobSpec.model_validate({
        "name": "rank", "dataset": {"file": str(tmp_path / "d.npz"), "format": "npz"},
        "tasks": [{"name": "species", "kind": "multiclass", "num_classes": 3}],
        "teachers": [{"name": "t", "tasks": ["species"], "source": {"train": {"arch": {"type": "mlp", "trunk": [8]},
                                                                              "epochs": 1}}}],
        "student": {"type": "cnn2d", "trunk": [8]}, "training": {"epochs": 1}})
    with pytest.raises(TrainingError, match="student: cnn2d takes inputs of rank 2 or 3; the dataset's inputs have shape \\[5\\]") as err:
        train(spec, tmp_path / "work")
    assert err.value.code == "invalid_data"
