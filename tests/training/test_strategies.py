"""Every strategy end to end on tiny data: stages, named loss terms, labels and transfer rows."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.training.checkpoint import read_finished
from app.training.loop import TrainCallbacks, train
from tests.training.conftest import tiny_spec

FAST = {"epochs": 2, "batch_size": 256, "lr": 0.005, "seed": 0, "device": "cpu"}


def csv_rows(workdir: Path) -> list[dict[str, str]]:
    with open(workdir / "artifacts" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def filled(row: dict[str, str]) -> set[str]:
    return {column for column, value in row.items() if value}


def test_feature_kd_adds_one_normalised_feature_term_per_teacher(tmp_path: Path):
    spec = tiny_spec(distillation={"strategy": "feature_kd", "feature_weight": 2.0},
                     training=FAST, baseline=False, export=["safetensors"])
    result = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    student = [row for row in csv_rows(tmp_path / "job") if row["stage"] == "student"]
    assert {"loss.feature.digit-teacher", "loss.feature.aux-teacher", "loss.digit.hard"} <= filled(
        student[0])
    assert "loss.digit.soft" not in filled(student[0])
    for row in student:  # squared distance of unit vectors: within [0, 4]
        assert 0 <= float(row["loss.feature.digit-teacher"]) <= 4
    assert float(student[-1]["loss.total"]) < float(student[0]["loss.total"])
    assert result.results["tasks"]["digit"]["student"] is not None
    exported = load_file(tmp_path / "job" / "artifacts" / "student.safetensors")
    assert not any(name.startswith("adaptors") for name in exported)  # adaptors stay behind


def test_soft_and_feature_terms_combine(tmp_path: Path):
    spec = tiny_spec(distillation={"strategy": "task_kd", "terms": ["soft", "feature"]},
                     training=FAST, baseline=False, export=[])
    train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    student = next(row for row in csv_rows(tmp_path / "job") if row["stage"] == "student")
    assert {"loss.digit.soft", "loss.digit.hard", "loss.feature.aux-teacher"} <= filled(student)


class Crash(TrainCallbacks):
    def __init__(self, at: tuple[str, int]) -> None:
        self.at = at

    def on_epoch_end(self, **event) -> None:
        if (event["stage"], event["epoch"]) == self.at:
            raise RuntimeError("worker died")


def cascaded_spec():
    return tiny_spec(distillation={"strategy": "cascaded", "trunk_epochs": 2}, training=FAST,
                     export=["safetensors"])


@pytest.fixture(scope="module")
def cascaded_run(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("cascaded")
    return train(cascaded_spec(), workdir / "job", cache_dir=workdir / "cache"), workdir / "job"


def test_cascaded_distils_the_trunk_first_then_the_whole_student(cascaded_run):
    result, workdir = cascaded_run
    assert [(s["name"], s["epochs"]) for s in result.results["stages"]] == [
        ("teacher:digit-teacher", 2), ("teacher:aux-teacher", 2), ("student:trunk", 2),
        ("student", 2), ("baseline", 4)]  # the baseline's budget: trunk + student steps
    rows = csv_rows(workdir)
    trunk = [row for row in rows if row["stage"] == "student:trunk"]
    assert {column for column in filled(trunk[0]) if column.startswith("loss.")} == {
        "loss.feature.digit-teacher", "loss.feature.aux-teacher", "loss.total"}
    assert float(trunk[-1]["loss.total"]) < float(trunk[0]["loss.total"])
    # Stage 1 optimises the trunk (and adaptors) only: the heads keep their initial weights.
    from app.training.models import build_model

    spec = cascaded_spec()
    torch.manual_seed(spec.training.seed)
    initial = build_model(spec.student, input_shape=[64], tasks=spec.tasks).state_dict()
    stage1 = read_finished(workdir)["student:trunk"]
    heads = [name for name in initial if name.startswith("heads.")]
    assert heads and all(torch.equal(stage1["model"][name], initial[name]) for name in heads)
    assert not torch.equal(stage1["model"]["trunk.1.weight"], initial["trunk.1.weight"])
    assert stage1["adaptors"]  # one adaptor per teacher, kept for resume
    student = next(row for row in rows if row["stage"] == "student")
    assert {"loss.digit.soft", "loss.digit.hard"} <= filled(student)


@pytest.mark.parametrize("crash_at", [("student:trunk", 1), ("student", 1)])
def test_cascaded_resume_matches_an_uninterrupted_run(cascaded_run, tmp_path: Path, crash_at):
    uninterrupted, reference = cascaded_run
    with pytest.raises(RuntimeError, match="worker died"):
        train(cascaded_spec(), tmp_path / "job", callbacks=Crash(crash_at),
              cache_dir=tmp_path / "cache")
    resumed = train(cascaded_spec(), tmp_path / "job", cache_dir=tmp_path / "cache")
    assert resumed.results["tasks"] == uninterrupted.results["tasks"]
    got = load_file(tmp_path / "job" / "artifacts" / "student.safetensors")
    want = load_file(reference / "artifacts" / "student.safetensors")
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_label_fraction_zero_trains_on_soft_targets_only(tmp_path: Path):
    source = {"train": {"arch": {"type": "mlp", "hidden": [64]}, "epochs": 10, "lr": 0.01,
                        "dataset": "mnist8x8-mt"}}  # a teacher with no labels of this job
    spec = tiny_spec(teachers=[{"name": "t", "tasks": ["digit", "parity", "large"], "source": source}],
                     distillation={"label_fraction": 0.0}, training={**FAST, "epochs": 10, "lr": 0.02},
                     baseline=False, export=[])
    result = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    assert result.results["rows"] == {"train": 1211, "validation": 136, "test": 450,
                                      "labelled": 0, "transfer": 0}
    student = [row for row in csv_rows(tmp_path / "job") if row["stage"] == "student"]
    assert all(not row.get("loss.digit.hard") for row in student)  # no labelled row: no hard term
    assert result.results["tasks"]["digit"]["student"] > 0.15  # learnt from the teachers alone


def test_transfer_set_file_adds_unlabelled_rows(tmp_path: Path):
    x = torch.rand(300, 64, generator=torch.Generator().manual_seed(1)).numpy()
    np.savez(tmp_path / "transfer.npz", x=x)
    spec = tiny_spec(distillation={"label_fraction": 0.5},
                     transfer_set={"file": str(tmp_path / "transfer.npz")}, training=FAST,
                     export=[])
    result = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    assert result.results["rows"] == {"train": 1211, "validation": 136, "test": 450,
                                      "labelled": 606, "transfer": 300}
    assert result.results["tasks"]["digit"]["baseline"] is not None


def test_transfer_strategy_with_a_source_trained_teacher(tmp_path: Path):
    # The teacher's weights come from elsewhere (the source domain); the student sees 10% labels.
    from app.training.models import build_model
    from app.training.spec import ArchSpec
    from safetensors.torch import save_file

    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model(ArchSpec(trunk=[32]), input_shape=[64], tasks=spec.tasks)
    save_file(model.state_dict(), str(tmp_path / "teacher.safetensors"))
    teachers = [{"name": "source", "tasks": ["digit", "parity", "large"],
                 "source": {"weights": {"file": str(tmp_path / "teacher.safetensors"),
                                        "arch": {"trunk": [32]}}}}]
    spec = tiny_spec(teachers=teachers, distillation={"strategy": "transfer", "label_fraction": 0.1},
                     training=FAST, export=[])
    result = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    assert [s["name"] for s in result.results["stages"]] == ["student", "baseline"]
    assert result.results["rows"]["labelled"] == 121  # 10% of the 1211 rows left after validation


def test_normalised_feature_loss_against_hand_computed_values():
    from app.training.strategies import normalised_feature_loss

    student = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # unit: (0.6, 0.8), (1, 0)
    teacher = torch.tensor([[8.0, 6.0], [0.0, 2.0]])  # unit: (0.8, 0.6), (0, 1)
    # rows: 0.2^2 + 0.2^2 = 0.08 and 1 + 1 = 2; batch mean 1.04 (scale-free by design)
    assert normalised_feature_loss(student, teacher).item() == pytest.approx(1.04)
    assert normalised_feature_loss(student * 10, teacher).item() == pytest.approx(1.04)
