"""The honest protocol: a validation split that chooses, test once, the same budget for the
baseline, teachers on the labelled rows, LR schedules, best-epoch selection and early stopping."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.training.datasets.registry import load_dataset
from app.training.datasets.splits import validation_rows, with_validation
from app.training.evaluate import predict, selection_score, task_metrics
from app.training.export import load_student
from app.training.loop import train
from app.training.schedules import build_scheduler
from app.training.spec import JobSpec
from app.training.stage_data import load_job_data
from app.training.target_scaling import fit_target_scales
from tests.training.conftest import tiny_spec, tiny_spec_dict
from tests.training.test_loop import Recorder


def history(workdir: Path, stage: str) -> list[dict[str, str]]:
    with open(workdir / "artifacts" / "metrics.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["stage"] == stage]


def test_the_validation_split_is_a_seeded_stratified_tenth_of_train():
    spec = tiny_spec()
    whole = load_dataset(spec.dataset, tasks=spec.tasks)
    data = with_validation(whole, fraction=0.1, seed=0, stratify_by="digit")
    assert len(data.x_train) + len(data.x_val) == len(whole.x_train)
    assert abs(len(data.x_val) - 0.1 * len(whole.x_train)) <= 10  # rounding per class
    for digit in range(10):  # every class keeps its share
        share = (whole.y_train["digit"] == digit).sum().item() * 0.1
        assert abs((data.y_val["digit"] == digit).sum().item() - share) <= 0.5
    again = with_validation(whole, fraction=0.1, seed=0, stratify_by="digit")
    assert torch.equal(again.x_val, data.x_val)
    other = with_validation(whole, fraction=0.1, seed=1, stratify_by="digit")
    assert not torch.equal(other.x_val, data.x_val)
    assert data.carved is not None and torch.equal(whole.x_train[data.carved], data.x_val)
    with pytest.raises(ValueError):
        validation_rows(None, 3, fraction=0.1, seed=0)  # rounds to no validation row


def test_an_uploaded_split_column_names_its_validation_rows(tmp_path: Path):
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60),
                          "y": rng.integers(0, 2, size=60),
                          "part": ["train"] * 40 + ["val"] * 8 + ["validation"] * 2 + ["test"] * 10})
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = JobSpec.model_validate({
        "name": "t", "dataset": {"file": str(tmp_path / "t.csv"), "format": "csv", "split_column": "part"},
        "tasks": [{"name": "y", "kind": "binary", "distill": False}],
        "teachers": [{"name": "t", "tasks": ["y"], "source": {"train": {"arch": {"hidden": [4]}}}}],
        "student": {"trunk": [4]}})
    data = load_job_data(spec.dataset, tasks=spec.tasks, seed=0, resolver=None,
                         device=torch.device("cpu"))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (40, 10, 10)
    assert data.carved is None


def test_curves_are_on_validation_and_results_on_test(tiny_run):
    result, workdir = tiny_run
    spec = tiny_spec()
    data = load_job_data(spec.dataset, tasks=spec.tasks, seed=0, resolver=None,
                         device=torch.device("cpu"))
    student = load_student(workdir / "artifacts")
    on_val = task_metrics(predict(student, data.x_val), data.y_val, spec.tasks)
    last = history(workdir, "student")[-1]
    assert float(last["digit.accuracy"]) == pytest.approx(on_val["digit"], abs=1e-9)
    on_test = task_metrics(predict(student, data.x_test), data.y_test, spec.tasks)
    assert result.results["tasks"]["digit"]["student"] == pytest.approx(on_test["digit"], abs=1e-9)
    rows = result.results["rows"]
    assert rows["validation"] == len(data.x_val) and rows["train"] == len(data.x_train)
    assert rows["test"] == 450


def test_best_selection_keeps_the_best_validation_epoch(tmp_path: Path):
    spec = tiny_spec(training={"epochs": 8, "lr": 0.05, "selection": "best"}, baseline=False,
                     export=["safetensors"])
    results = train(spec, tmp_path).results
    rows = history(tmp_path, "student")
    scores = [selection_score({t.name: float(r[f"{t.name}.{'accuracy'}"]) for t in spec.tasks},
                              spec.tasks, {}) for r in rows]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    stage = next(s for s in results["stages"] if s["name"] == "student")
    assert stage["best_epoch"] == best + 1
    data = load_job_data(spec.dataset, tasks=spec.tasks, seed=0, resolver=None,
                         device=torch.device("cpu"))
    student = load_student(tmp_path / "artifacts")
    on_val = task_metrics(predict(student, data.x_val), data.y_val, spec.tasks)
    assert selection_score(on_val, spec.tasks, {}) == pytest.approx(scores[best], abs=1e-9)


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path: Path):
    spec = tiny_spec(training={"epochs": 10, "early_stopping": {"patience": 2, "min_delta": 1.0}},
                     export=[])
    results = train(spec, tmp_path).results
    student = next(s for s in results["stages"] if s["name"] == "student")
    assert (student["epochs"], student["stopped_early"]) == (3, True)  # best at 1, stale 2 and 3
    assert len(history(tmp_path, "student")) == 3


def test_eval_every_evaluates_every_kth_epoch_and_the_last(tmp_path: Path):
    spec = tiny_spec(training={"epochs": 5, "eval_every": 2}, baseline=False, export=[])
    train(spec, tmp_path)
    evaluated = [int(r["epoch"]) for r in history(tmp_path, "student") if r["digit.accuracy"]]
    assert evaluated == [2, 4, 5]


def test_cosine_warms_up_then_decays_to_zero_and_onecycle_peaks_at_lr():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    cosine = build_scheduler("cosine", optimizer, lr=0.1, total_steps=100, warmup_steps=10)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine.step()
    assert rates[0] == pytest.approx(0.1 / 11) and rates[10] == pytest.approx(0.1)
    assert rates[55] == pytest.approx(0.05 * (1 + math.cos(math.pi * 45 / 90)))
    assert rates[-1] < 1e-3 and all(a >= b for a, b in zip(rates[10:], rates[11:]))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    onecycle = build_scheduler("onecycle", optimizer, lr=0.1, total_steps=50)
    peak = 0.0
    for _ in range(50):
        peak = max(peak, optimizer.param_groups[0]["lr"])
        optimizer.step()
        onecycle.step()
    assert peak == pytest.approx(0.1, rel=0.05)
    assert build_scheduler("constant", optimizer, lr=0.1, total_steps=50) is None


def steps(results: dict, name: str) -> int:
    return next(s["steps"] for s in results["stages"] if s["name"] == name)


def test_the_baseline_gets_the_students_steps_with_a_cascaded_trunk_stage(tmp_path: Path):
    teachers = [{"name": "t", "tasks": ["digit", "parity", "large"],
                 "source": {"train": {"arch": {"hidden": [16]}, "epochs": 1}}}]
    spec = tiny_spec(teachers=teachers, distillation={"strategy": "cascaded", "trunk_epochs": 2},
                     export=[])
    results = train(spec, tmp_path).results
    student_steps = steps(results, "student:trunk") + steps(results, "student")
    assert steps(results, "baseline") == student_steps == 5 * 10  # 1211 rows / 128 = 10 per epoch


def test_the_baseline_gets_the_students_steps_over_its_labelled_rows(tmp_path: Path):
    spec = JobSpec.model_validate(tiny_spec_dict(
        dataset={"builtin": "mnist1d-mt"},
        tasks=[{"name": "digit", "kind": "multiclass", "num_classes": 10}],
        teachers=[{"name": "t", "tasks": ["digit"],
                   "source": {"train": {"arch": {"hidden": [16]}, "epochs": 1}}}],
        distillation={"label_fraction": 0.1}, transfer_set={"generate": 500},
        training={"epochs": 2}, export=[]))
    results = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache").results
    rows = results["rows"]
    per_epoch = math.ceil((rows["train"] + rows["transfer"]) / 128)
    assert steps(results, "student") == steps(results, "baseline") == 2 * per_epoch
    # in as many epochs as the student (reshuffling its 121 rows), so the curves line up
    assert [s["epochs"] for s in results["stages"] if s["name"] in ("student", "baseline")] == [2, 2]
    assert len(history(tmp_path / "job", "baseline")) == 2
    # the teacher trained on the labelled rows only, as the student's hard terms see them
    assert steps(results, "teacher:t") == math.ceil(rows["labelled"] / 128)
    assert rows["labelled"] == round(0.1 * rows["train"])


def test_resume_with_a_schedule_best_selection_and_early_stopping_matches_an_uninterrupted_run(
        tmp_path: Path):
    training = {"epochs": 6, "lr": 0.02, "schedule": "cosine", "warmup_steps": 5,
                "selection": "best", "early_stopping": {"patience": 3}}
    spec = tiny_spec(training=training)
    reference = train(spec, tmp_path / "reference").results
    with pytest.raises(RuntimeError, match="worker died"):
        train(spec, tmp_path / "job", callbacks=Recorder(crash_at=("student", 3)))
    resumed = train(spec, tmp_path / "job").results
    assert resumed["tasks"] == reference["tasks"] and resumed["stages"][2]["steps"] == \
        reference["stages"][2]["steps"]
    got = load_file(tmp_path / "job" / "artifacts" / "student.safetensors")
    want = load_file(tmp_path / "reference" / "artifacts" / "student.safetensors")
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_regression_scores_count_in_units_of_the_targets_spread():
    spec = JobSpec.model_validate(tiny_spec_dict(
        dataset={"builtin": "penguins"},
        tasks=[{"name": "body_mass", "kind": "regression"},
               {"name": "species", "kind": "multiclass", "num_classes": 3}],
        teachers=[{"name": "t", "tasks": ["body_mass", "species"],
                   "source": {"train": {"arch": {"hidden": [4]}}}}]))
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    scales = fit_target_scales(data.y_train, spec.tasks)
    score = selection_score({"body_mass": 400.0, "species": 0.9}, spec.tasks, scales)
    assert score == pytest.approx((0.9 - 400.0 / scales["body_mass"].std) / 2)


def test_the_cascaded_trunk_stage_keeps_its_last_epoch_and_never_stops_early(tmp_path: Path):
    """Its heads are untrained, so its validation metrics must not choose or stop anything."""
    teachers = [{"name": "t", "tasks": ["digit", "parity", "large"],
                 "source": {"train": {"arch": {"hidden": [16]}, "epochs": 1}}}]
    spec = tiny_spec(teachers=teachers, distillation={"strategy": "cascaded", "trunk_epochs": 4},
                     training={"epochs": 1, "selection": "best",
                               "early_stopping": {"patience": 1, "min_delta": 1.0}},
                     baseline=False, export=[])
    results = train(spec, tmp_path).results
    trunk = next(s for s in results["stages"] if s["name"] == "student:trunk")
    assert (trunk["epochs"], trunk["stopped_early"]) == (4, False)
