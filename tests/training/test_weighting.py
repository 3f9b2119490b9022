"""Task weighting: static folding, DWA from hand-computed losses, uncertainty and GradNorm
against their papers' formulas, tasks absent from a batch, every method end to end, and exact
resume with learned weights."""

import csv
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from app.training.loop import TrainCallbacks, train
from app.training.spec import JobSpec
from app.training.weighting import (DynamicWeightAverage, GradNormWeighting, TaskWeighting,
                                    UncertaintyWeighting, build_weighting, task_weights)
from tests.training.conftest import tiny_spec, tiny_spec_dict

TASKS = ["a", "b"]


def test_static_weighting_is_the_coefficient_weighted_sum():
    terms = {"a.hard": torch.tensor(2.0), "a.soft": torch.tensor(3.0), "feature.t": torch.tensor(5.0)}
    coefficients = {"a.hard": 0.5, "a.soft": 0.5, "feature.t": 2.0}
    objective, extra = TaskWeighting(["a"]).combine(terms, coefficients)
    assert objective.item() == 12.5 and extra == {}
    spec = JobSpec.model_validate(tiny_spec_dict(weighting={"method": "fixed", "weights": {"digit": 3.0}}))
    assert task_weights(spec, ["digit", "large"]) == {"digit": 3.0, "large": 1.0}
    learned = JobSpec.model_validate(tiny_spec_dict(weighting={"method": "dwa"}))
    assert task_weights(learned, ["digit", "large"]) == {"digit": 1.0, "large": 1.0}


def test_static_weighting_skips_terms_absent_from_the_batch():
    terms = {"a.soft": torch.tensor(3.0), "b.hard": torch.tensor(2.0)}  # no labelled row for a
    coefficients = {"a.hard": 0.5, "a.soft": 0.5, "b.hard": 2.0}
    objective, _ = TaskWeighting(TASKS).combine(terms, coefficients)
    assert objective.item() == 5.5


def test_learned_weighting_groups_terms_by_task_and_adds_the_rest():
    weighting = UncertaintyWeighting(TASKS, kinds=["multiclass", "multiclass"])
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([math.log(2.0), 0.0]))  # weights 1/2 and 1
    terms = {"a.hard": torch.tensor(2.0), "a.soft": torch.tensor(4.0), "b.hard": torch.tensor(1.0),
             "feature.t": torch.tensor(5.0)}
    coefficients = {"a.hard": 0.5, "a.soft": 0.5, "b.hard": 1.0, "feature.t": 0.1}
    objective, extra = weighting.combine(terms, coefficients)
    # a: 0.5 * (1 + 2) = 1.5; b: 1 * 1; feature: 0.5; regulariser: 1/2 (log 2 + 0)
    assert objective.item() == pytest.approx(1.5 + 1 + 0.5 + 0.5 * math.log(2.0))
    assert extra["weighting.log_variance"].item() == pytest.approx(0.5 * math.log(2.0))


KINDS = ["multiclass", "binary", "multilabel", "regression"]


def test_uncertainty_objective_is_kendalls_formula_for_each_task_kind():
    # Kendall et al. 2018, s = log sigma^2: Gaussian (eq. 7) 1/2 e^-s L + 1/2 s; softmax
    # (eq. 10, also used for sigmoid tasks) e^-s L + 1/2 s.
    torch.manual_seed(0)
    tasks = ["c", "b", "m", "r"]
    weighting = UncertaintyWeighting(tasks, kinds=KINDS)
    s = torch.randn(4).tolist()
    losses = (torch.rand(4) * 3).tolist()
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor(s))
    terms = {f"{task}.hard": torch.tensor(loss) for task, loss in zip(tasks, losses, strict=True)}
    objective, _ = weighting.combine(terms, {name: 1.0 for name in terms})
    factor = [1.0, 1.0, 1.0, 0.5]
    expected = sum(f * math.exp(-s_i) * loss + 0.5 * s_i
                   for f, s_i, loss in zip(factor, s, losses, strict=True))
    assert objective.item() == pytest.approx(expected, rel=1e-6)
    objective.backward()
    gradient = [0.5 - f * math.exp(-s_i) * loss for f, s_i, loss in zip(factor, s, losses, strict=True)]
    assert weighting.log_variance.grad.tolist() == pytest.approx(gradient, rel=1e-5)
    logged = [f * math.exp(-s_i) for f, s_i in zip(factor, s, strict=True)]
    assert list(weighting.current_weights().values()) == pytest.approx(logged, rel=1e-6)
    assert set(weighting.state_dict()) == {"log_variance"}


@pytest.mark.parametrize("all_names", [True, False])
def test_uncertainty_task_absent_from_the_batch_adds_nothing(all_names: bool):
    weighting = UncertaintyWeighting(["a", "b", "c"], kinds=["multiclass", "binary", "regression"])
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([0.3, -0.7, 0.2]))
    # b has no labelled row in this batch: its only term is left out; c keeps its soft term.
    terms = {"a.hard": torch.tensor(2.0), "c.soft": torch.tensor(0.5), "feature.t": torch.tensor(1.0)}
    coefficients = {"a.hard": 1.0, "b.hard": 1.0, "c.hard": 0.5, "c.soft": 0.5, "feature.t": 0.1}
    if not all_names:  # the loop passes the coefficients of the present terms only
        coefficients = {name: c for name, c in coefficients.items() if name in terms}
    objective, extra = weighting.combine(terms, coefficients)
    expected = (math.exp(-0.3) * 2.0 + 0.5 * 0.3) + (0.5 * math.exp(-0.2) * 0.25 + 0.5 * 0.2) + 0.1
    assert objective.item() == pytest.approx(expected, rel=1e-6)
    assert extra["weighting.log_variance"].item() == pytest.approx(0.5 * (0.3 + 0.2))
    objective.backward()
    assert weighting.log_variance.grad[1].item() == 0.0
    assert weighting.log_variance.grad[0].item() != 0.0


def test_uncertainty_needs_one_known_kind_per_task():
    with pytest.raises(ValueError, match="one kind"):
        UncertaintyWeighting(TASKS, kinds=["multiclass"])
    with pytest.raises(ValueError, match="one kind"):
        UncertaintyWeighting(TASKS, kinds=["multiclass", "ranking"])


def test_dwa_weights_follow_the_hand_computed_loss_ratios():
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    dwa.record_epoch_losses(torch.tensor([1.0, 2.0]))
    assert dwa.current_weights() == {"a": 1.0, "b": 1.0}  # one epoch: no ratio yet
    dwa.record_epoch_losses(torch.tensor([0.5, 1.8]))
    ratios = [0.5 / 1.0, 1.8 / 2.0]
    exps = [math.exp(r / 2.0) for r in ratios]
    expected = [2 * e / sum(exps) for e in exps]
    assert list(dwa.current_weights().values()) == pytest.approx(expected)
    assert sum(dwa.current_weights().values()) == pytest.approx(2.0)
    assert dwa.current_weights()["b"] > dwa.current_weights()["a"]  # the slower task gets more


def test_dwa_uses_the_epoch_mean_of_each_task_loss():
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    for epoch_losses in ([[1.0, 4.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]):
        for a, b in epoch_losses:
            dwa.combine({"a.hard": torch.tensor(a), "b.hard": torch.tensor(b)},
                        {"a.hard": 1.0, "b.hard": 1.0})
        dwa.end_epoch()
    # epoch means: (2, 2) then (1, 1): equal ratios, equal weights; history is kept as state
    assert torch.equal(dwa.last_losses, torch.tensor([[2.0, 2.0], [1.0, 1.0]], dtype=torch.float64))
    assert list(dwa.current_weights().values()) == pytest.approx([1.0, 1.0])
    assert set(dwa.state_dict()) == {"weights", "last_losses", "epochs_seen"}


def test_uncertainty_gradient_lowers_the_weight_of_a_large_loss():
    weighting = UncertaintyWeighting(TASKS, kinds=["multiclass", "multiclass"])
    objective, _ = weighting.combine({"a.hard": torch.tensor(4.0), "b.hard": torch.tensor(0.25)},
                                     {"a.hard": 1.0, "b.hard": 1.0})
    objective.backward()
    # d/ds [exp(-s) L + s / 2] = 1/2 - exp(-s) L at s = 0
    assert weighting.log_variance.grad.tolist() == pytest.approx([0.5 - 4.0, 0.5 - 0.25])
    # gradient descent raises s (lowers the weight) for the large loss, lowers it for the small
    assert weighting.log_variance.grad[0] < 0 < weighting.log_variance.grad[1]


def test_dwa_epoch_means_count_only_the_steps_where_a_task_is_present():
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    coefficients = {"a.hard": 1.0, "b.hard": 1.0}
    epochs = [  # per step: the terms present
        [{"a.hard": 1.0}, {"a.hard": 3.0}],  # b never present: no mean yet
        [{"a.hard": 1.0, "b.hard": 4.0}, {"a.hard": 3.0}],  # means (2, 4), not (2, 2)
        [{"a.hard": 1.0}, {"a.hard": 1.0}],  # b absent again: keeps its mean 4
    ]
    seen = []
    for steps in epochs:
        for step in steps:
            dwa.combine({name: torch.tensor(value) for name, value in step.items()}, coefficients)
        dwa.end_epoch()
        seen.append(dwa.last_losses[1].tolist())
    assert seen == [[2.0, 0.0], [2.0, 4.0], [1.0, 4.0]]
    # after epoch 2, b had no earlier mean: ratio 1 (not 4 / 1e-12); a: 2 / 2
    # after epoch 3: a 1 / 2, b 4 / 4
    exps = [math.exp(0.5 / 2.0), math.exp(1.0 / 2.0)]
    assert list(dwa.current_weights().values()) == pytest.approx([2 * e / sum(exps) for e in exps])


def test_dwa_gives_ratio_one_to_a_task_with_no_earlier_mean():
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    for steps in ([{"a.hard": 2.0}], [{"a.hard": 2.0, "b.hard": 5.0}]):
        for step in steps:
            dwa.combine({name: torch.tensor(value) for name, value in step.items()},
                        {"a.hard": 1.0, "b.hard": 1.0})
        dwa.end_epoch()
    assert list(dwa.current_weights().values()) == pytest.approx([1.0, 1.0])


def test_gradnorm_weights_sum_to_the_task_count_and_balance_gradient_norms():
    torch.manual_seed(0)
    shared = torch.nn.Linear(6, 4)
    heads = torch.nn.ModuleList([torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)])
    x, y = torch.randn(64, 6), torch.randn(64)
    gradnorm = GradNormWeighting(TASKS, alpha=0.0)  # alpha 0: equal gradient norms are the target
    optimizer = torch.optim.Adam(gradnorm.parameters(), lr=0.05)

    def grad_norm_ratio() -> float:
        features = shared(x)
        norms = []
        for weight, head, scale in zip(gradnorm.weights.detach(), heads, (10.0, 1.0), strict=True):
            loss = weight * scale * (head(features)[:, 0] - y).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, shared.weight, retain_graph=True)
            norms.append(grad.norm().item())
        return norms[0] / norms[1]

    before = grad_norm_ratio()
    for _ in range(60):  # the network stays fixed: only the weights learn
        features = shared(x)
        terms = {"a.hard": 10.0 * (heads[0](features)[:, 0] - y).pow(2).mean(),
                 "b.hard": (heads[1](features)[:, 0] - y).pow(2).mean()}
        objective, extra = gradnorm.combine(terms, {"a.hard": 1.0, "b.hard": 1.0}, shared=shared.weight)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        gradnorm.after_step()
        assert gradnorm.weights.sum().item() == pytest.approx(2.0, rel=1e-5)
    assert shared.weight.grad is not None  # the network part still gets its gradient
    after = grad_norm_ratio()
    assert abs(math.log(after)) < 0.5 * abs(math.log(before))
    assert gradnorm.current_weights()["a"] < 1.0 < gradnorm.current_weights()["b"]
    assert set(gradnorm.state_dict()) == {"weights", "initial_losses", "initial_set"}


def gradnorm_batch(shared: torch.nn.Linear, heads: torch.nn.ModuleList, x: torch.Tensor,
                   y: torch.Tensor, present: str) -> dict[str, torch.Tensor]:
    """Return one batch's terms: a squared error per head, for the tasks named in `present`."""
    features = shared(x)
    return {f"{task}.hard": (scale * (head(features)[:, 0] - y)).pow(2).mean()
            for task, head, scale in zip("abc", heads, (1.0, 3.0, 0.5), strict=False)
            if task in present}  # as many tasks as heads


def test_gradnorm_initial_loss_comes_from_the_first_batch_where_the_task_is_present():
    torch.manual_seed(0)
    shared = torch.nn.Linear(5, 4)
    heads = torch.nn.ModuleList([torch.nn.Linear(4, 1) for _ in range(2)])
    gradnorm = GradNormWeighting(TASKS, alpha=1.5)
    coefficients = {"a.hard": 1.0, "b.hard": 1.0}
    first = gradnorm_batch(shared, heads, torch.randn(8, 5), torch.randn(8), present="a")
    objective, extra = gradnorm.combine(first, coefficients, shared=shared.weight)
    assert gradnorm.initial_set.tolist() == [True, False]
    assert extra["weighting.gradnorm"].item() == 0.0  # one participant: its own mean
    objective.backward()
    assert gradnorm.weights.grad[1].item() == 0.0
    second = gradnorm_batch(shared, heads, torch.randn(8, 5), torch.randn(8), present="ab")
    gradnorm.combine(second, coefficients, shared=shared.weight)
    assert gradnorm.initial_set.tolist() == [True, True]
    assert gradnorm.initial_losses.tolist() == pytest.approx(
        [first["a.hard"].item(), second["b.hard"].item()])  # not clamped to 1e-12


def test_gradnorm_balance_is_the_hand_sum_over_the_participating_tasks():
    torch.manual_seed(1)
    shared = torch.nn.Linear(5, 4)
    heads = torch.nn.ModuleList([torch.nn.Linear(4, 1) for _ in range(3)])
    alpha = 1.5
    gradnorm = GradNormWeighting(["a", "b", "c"], alpha=alpha)
    coefficients = {"a.hard": 1.0, "b.hard": 1.0, "c.hard": 1.0}
    start = gradnorm_batch(shared, heads, torch.randn(8, 5), torch.randn(8), present="ab")
    gradnorm.combine(start, coefficients, shared=shared.weight)  # L(0) of a and b; c not started
    weights = [0.5, 2.0, 0.5]
    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor(weights))
    gradnorm.weights.grad = None
    for present in ("ab", "bc"):  # a absent in the second batch; c starts there
        terms = gradnorm_batch(shared, heads, torch.randn(8, 5), torch.randn(8), present=present)
        initial = dict(zip("abc", gradnorm.initial_losses.tolist(), strict=True))
        if "c" in present:
            initial["c"] = terms["c.hard"].item()  # c's first batch sets its L(0): ratio 1
        norms = {task: weights["abc".index(task)] * torch.autograd.grad(
            terms[f"{task}.hard"], shared.weight, retain_graph=True)[0].norm().item()
            for task in present}
        ratios = {task: terms[f"{task}.hard"].item() / initial[task] for task in present}
        mean_norm = sum(norms.values()) / len(present)
        mean_ratio = sum(ratios.values()) / len(present)
        expected = sum(abs(norms[task] - mean_norm * (ratios[task] / mean_ratio) ** alpha)
                       for task in present)
        objective, extra = gradnorm.combine(terms, {n: c for n, c in coefficients.items()
                                                    if n in terms}, shared=shared.weight)
        assert extra["weighting.gradnorm"].item() == pytest.approx(expected, rel=1e-5)
        (grad,) = torch.autograd.grad(objective, gradnorm.weights)
        absent = "abc".index(next(task for task in "abc" if task not in present))
        assert grad[absent].item() == 0.0


def test_gradnorm_loads_a_checkpoint_saved_with_one_started_flag():
    old = {"weights": torch.tensor([0.8, 1.2]), "initial_losses": torch.tensor([2.0, 0.5]),
           "started": torch.tensor(True)}
    gradnorm = GradNormWeighting(TASKS, alpha=1.5)
    gradnorm.load_state_dict(old)
    assert gradnorm.initial_set.tolist() == [True, True]
    assert gradnorm.initial_losses.tolist() == [2.0, 0.5]


def test_build_weighting_keeps_teachers_static():
    spec = tiny_spec(weighting={"method": "gradnorm"})
    assert type(build_weighting(spec, TASKS)) is GradNormWeighting
    assert build_weighting(spec, TASKS).alpha == 1.5
    assert type(build_weighting(spec, TASKS, learned=False)) is TaskWeighting


def test_build_weighting_gives_uncertainty_each_task_kind():
    spec = tiny_spec(weighting={"method": "uncertainty"})
    weighting = build_weighting(spec, ["digit", "large"])
    assert weighting.kinds == ["multiclass", "binary"]  # from spec.task(name).kind


@pytest.mark.parametrize(("weighting", "words"), [
    ({"method": "dwa", "alpha": 1.0}, ["alpha is only used when method is 'gradnorm'"]),
    ({"method": "gradnorm", "temperature": 2.0}, ["temperature is only used when method is 'dwa'"]),
    ({"method": "uncertainty", "weights": {"digit": 1}}, ["only used when method is 'fixed'"]),
    ({"method": "softmax"}, ["'gradnorm'"]),
])
def test_invalid_weighting_is_rejected(weighting: dict, words: list[str]):
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec_dict(weighting=weighting))
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_weighting_defaults_are_written_back_and_gradnorm_needs_a_trunk():
    dumped = tiny_spec(weighting={"method": "dwa"}).model_dump(mode="json")["weighting"]
    assert dumped == {"method": "dwa", "weights": None, "temperature": 2.0}
    dumped = tiny_spec(weighting={"method": "gradnorm"}).model_dump(mode="json")["weighting"]
    assert dumped == {"method": "gradnorm", "weights": None, "alpha": 1.5}
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec_dict(weighting={"method": "gradnorm"},
                                              student={"trunk": [], "head": [8]}))
    assert caught.value.errors()[0]["loc"] == ("weighting",)
    assert "non-empty 'trunk'" in caught.value.errors()[0]["msg"]


class Recorder(TrainCallbacks):
    """Record epoch events; raise at (stage, epoch) to simulate a crash."""

    def __init__(self, crash_at: tuple[str, int] | None = None) -> None:
        self.crash_at = crash_at
        self.epochs: list[dict] = []

    def on_epoch_end(self, **event) -> None:
        self.epochs.append(event)
        if (event["stage"], event["epoch"]) == self.crash_at:
            raise RuntimeError("worker died")


@pytest.mark.parametrize("method", ["uncertainty", "dwa", "gradnorm"])
def test_learned_weights_are_logged_per_epoch(method: str, tmp_path: Path):
    recorder = Recorder()
    spec = tiny_spec(weighting={"method": method}, baseline=False)
    result = train(spec, tmp_path, callbacks=recorder)
    student = [event["losses"] for event in recorder.epochs if event["stage"] == "student"]
    teacher = recorder.epochs[0]["losses"]
    assert not any(name.startswith("weight.") for name in teacher)  # teachers stay equal
    weights = [[epoch[f"weight.{task}"] for task in ("digit", "parity", "large")] for epoch in student]
    assert all(math.isfinite(w) and w > 0 for epoch in weights for w in epoch)
    if method == "dwa":
        assert weights[0] == weights[1] == [1.0, 1.0, 1.0] and weights[2] != weights[1]
    else:
        assert weights[-1] != [1.0, 1.0, 1.0]
    if method == "gradnorm":
        assert all(sum(epoch) == pytest.approx(3.0, rel=1e-5) for epoch in weights)
    with open(tmp_path / "artifacts" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["stage"] == "student"]
    assert [float(row["weight.digit"]) for row in rows] == pytest.approx([w[0] for w in weights])
    assert all(0 <= entry["student"] <= 1 for entry in result.results["tasks"].values())


@pytest.mark.parametrize("method", ["dwa", "gradnorm"])
def test_resume_with_learned_weights_matches_an_uninterrupted_run(method: str, tmp_path: Path):
    spec = tiny_spec(weighting={"method": method}, training={"epochs": 4})
    reference = train(spec, tmp_path / "reference")
    with pytest.raises(RuntimeError, match="worker died"):
        train(spec, tmp_path / "resumed", callbacks=Recorder(crash_at=("student", 3)))
    resumed = train(spec, tmp_path / "resumed")
    assert resumed.results["tasks"] == reference.results["tasks"]
    got = load_file(tmp_path / "resumed" / "artifacts" / "student.safetensors")
    want = load_file(tmp_path / "reference" / "artifacts" / "student.safetensors")
    assert all(torch.equal(got[name], want[name]) for name in want)

    def rows(workdir: Path) -> list[dict]:
        with open(workdir / "artifacts" / "metrics.csv", newline="") as handle:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]

    assert rows(tmp_path / "resumed") == rows(tmp_path / "reference")


def test_student_coefficients_mix_alpha_with_fixed_task_weights():
    from app.training.strategies import plan_stages, stage_coefficients

    spec = JobSpec.model_validate(tiny_spec_dict(
        distillation={"alpha": 0.25, "per_task": {"large": {"alpha": 1.0, "temperature": 2.0}}},
        weighting={"method": "fixed", "weights": {"digit": 3.0}}))
    teacher, _, student, baseline = plan_stages(spec, rows={"train": 100, "labelled": 100,
                                                            "transfer": 0})
    assert stage_coefficients(spec, student, []) == {
        "digit.soft": 0.75, "digit.hard": 2.25, "parity.soft": 0.25, "parity.hard": 0.75,
        "large.soft": 1.0, "large.hard": 0.0}
    assert stage_coefficients(spec, teacher, []) == {"digit.hard": 1.0}  # teachers: equal
    assert stage_coefficients(spec, baseline, []) == {
        "digit.hard": 3.0, "parity.hard": 1.0, "large.hard": 1.0}
