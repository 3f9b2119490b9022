"""Quality benchmark of the distillation engine: mean ± sd over seeds, checked against the issue.

    .venv/bin/python -m bench.quality --out bench-quality.json [--seeds 0 1 2] [--workdir DIR]
        [--groups mnist1d digits cross-domain]          (the default groups, ~14 min for 3 seeds)
    .venv/bin/python -m bench.quality --out F --groups census fashion --seeds 0   (opt-in, long)

Runs real jobs through `app.training.loop.train` under the honest protocol (curves and the
best-epoch selection on a validation split, every number in the table on test, once; the baseline
with the student's optimiser steps; in-job teachers on the job's labelled rows only) and prints a
markdown table:
  - MNIST-1D: cnn1d teacher (≥ 0.91), MLP from scratch (paper MLP ~0.68), MLP distilled with a
    50k generated transfer set (≥ 0.89), and KD without a transfer set (≥ scratch);
  - digits-mt: student with ≤ 1/20 of the teachers' parameters ≥ baseline on every task and within
    2 points of the teacher on `digit`; the KD settings of `task_kd` are CHOSEN ON VALIDATION
    between two candidates (DIGITS_CANDIDATES) and the choice is printed;
  - each strategy ≥ its no-KD baseline on the mean primary metric; `transfer` across domains
    (teacher trained on digits-mt, student on mnist8x8-mt with 1%, 5% and no labels); the
    semi-supervised MNIST-1D row (5% labels + 50k generated inputs, the teacher trained on the same
    5%) replaces the old same-domain "transfer" row, whose teacher had seen every label.
Opt-in groups on real data (not in the default list: one seed of `census` took 4 min and one of
`fashion` 27.5 min on one thread of a 2-core CPU; see docs/PERFORMANCE.md):
  - census (census-income, income / never_married): MMoE teacher 8 x [128, 64] trained in the job,
    MMoE student with <= 1/10 of its parameters, test AUC per task (anchor: PaddleRec's MMoE
    0.9447 / 0.9932), student >= baseline; a shared-bottom mlp student of about the same size
    distilled from the same teacher, so the architecture's gain (mmoe vs mlp baseline) and the
    distillation's gain (student vs its own baseline) are seen apart;
  - fashion (fashion-mnist-mt, item / category / footwear): resnet teacher (>= 0.925 on item),
    resnet student with <= 1/10 of its parameters, >= baseline on every task, item gain over the
    baseline >= +0.005 and within 0.02 of the teacher.
The census settings are those of examples/census-mmoe.json; fashion uses the architectures of
examples/fashion-resnet.json with more epochs and a cosine schedule. All were fixed before any
test number was seen; none were tuned.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from app.training.checkpoint import read_finished
from app.training.loop import train
from app.training.spec import JobSpec
from bench.quality_text import text_jobs, text_rows

MNIST_TASKS = [{"name": "digit", "kind": "multiclass", "num_classes": 10}]
CNN_TEACHER = {"type": "cnn1d", "channels": [64, 64, 64], "kernel_size": 5, "trunk": [128]}
MLP_STUDENT = {"type": "mlp", "trunk": [100, 100]}
DIGITS_TASKS = [{"name": "digit", "kind": "multiclass", "num_classes": 10},
                {"name": "parity", "kind": "multiclass", "num_classes": 2},
                {"name": "large", "kind": "binary"}]
DIGITS_TEACHERS = [
    {"name": "digit-teacher", "tasks": ["digit"],
     "source": {"train": {"arch": {"type": "mlp", "hidden": [512, 512]}, "epochs": 40}}},
    {"name": "aux-teacher", "tasks": ["parity", "large"],
     "source": {"train": {"arch": {"type": "mlp", "hidden": [512, 512]}, "epochs": 40}}}]


QUICK = {"on": False}  # --quick: 1 epoch everywhere and small transfer sets (a smoke run)


def run(spec: dict[str, Any], workdir: Path, cache: Path) -> dict[str, Any]:
    """Train one job; return its results.json content."""
    if QUICK["on"]:
        spec = json.loads(json.dumps(spec))
        spec["training"]["epochs"] = 1
        for teacher in spec["teachers"]:
            if "train" in teacher["source"]:
                teacher["source"]["train"]["epochs"] = 1
        if spec.get("transfer_set"):
            spec["transfer_set"]["generate"] = 500
        if spec["distillation"].get("trunk_epochs"):
            spec["distillation"]["trunk_epochs"] = 1
    return train(JobSpec.model_validate(spec), workdir, cache_dir=cache).results


def mnist1d_jobs(seed: int, root: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """Teacher + scratch + KD with a 50k transfer set; then KD without it and transfer (5% labels)."""
    training = {"epochs": 80, "batch_size": 256, "lr": 0.003, "seed": seed, "device": "auto",
                "selection": "best"}
    with_set_teachers = [{"name": "cnn", "tasks": ["digit"], "source": {"train": {
        "arch": CNN_TEACHER, "epochs": 30, "lr": 0.002, "batch_size": 128}}}]
    with_set = run({
        "name": "mnist1d-kd-transfer-set", "dataset": {"builtin": "mnist1d-mt"}, "tasks": MNIST_TASKS,
        "teachers": with_set_teachers,
        "student": MLP_STUDENT,
        "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.9},
        "transfer_set": {"generate": 50000}, "training": training, "export": [],
    }, root / f"mnist1d-set-{seed}", cache)
    # Reuse the trained teacher as a weights file: no retraining, and its outputs hit the cache.
    teacher = as_weights_teachers(with_set_teachers, root / f"mnist1d-set-{seed}")
    without_set = run({
        "name": "mnist1d-kd", "dataset": {"builtin": "mnist1d-mt"}, "tasks": MNIST_TASKS,
        "teachers": teacher, "student": MLP_STUDENT,
        "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.9},
        "training": training, "export": [],
    }, root / f"mnist1d-kd-{seed}", cache)
    # Semi-supervised: the teacher trains in the job on the same 5% of labelled rows as the
    # student and the baseline, then labels 50k generated inputs for the student.
    semi = run({
        "name": "mnist1d-semi-supervised", "dataset": {"builtin": "mnist1d-mt"},
        "tasks": MNIST_TASKS, "teachers": with_set_teachers, "student": MLP_STUDENT,
        "distillation": {"strategy": "task_kd", "label_fraction": 0.05, "temperature": 4.0,
                         "alpha": 0.9},
        "transfer_set": {"generate": 50000}, "training": training, "export": [],
    }, root / f"mnist1d-semi-{seed}", cache)
    return {"with_set": with_set, "without_set": without_set, "semi": semi}


def digits_jobs(seed: int, root: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """The ARCHITECTURE example's teachers with a tiny student under three strategies."""
    base = {"dataset": {"builtin": "digits-mt"}, "tasks": DIGITS_TASKS, "teachers": DIGITS_TEACHERS,
            "student": {"type": "mlp", "trunk": [64], "head": [32]},
            "training": {"epochs": 60, "batch_size": 128, "lr": 0.005, "seed": seed,
                         "device": "auto", "selection": "best"}, "export": []}
    first, *others = DIGITS_CANDIDATES
    jobs = {first: run({**base, "name": f"digits-{first}", "distillation": DIGITS_CANDIDATES[first]},
                       root / f"digits-{first}-{seed}", cache)}
    # The other jobs reuse the trained teachers as weights files (their outputs are cached).
    base["teachers"] = as_weights_teachers(DIGITS_TEACHERS, root / f"digits-{first}-{seed}")
    strategies = {**{name: DIGITS_CANDIDATES[name] for name in others},
                  "feature_kd": {"strategy": "feature_kd", "terms": ["soft", "feature"], "alpha": 0.5},
                  "cascaded": {"strategy": "cascaded", "trunk_epochs": 20, "alpha": 0.5}}
    for name, distillation in strategies.items():
        jobs[name] = run({**base, "name": f"digits-{name}", "distillation": distillation},
                         root / f"digits-{name}-{seed}", cache)
    return jobs


def cross_domain_jobs(seed: int, root: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """Transfer across domains: teacher trained on digits-mt, student on mnist8x8-mt."""
    base = {"dataset": {"builtin": "mnist8x8-mt"}, "tasks": DIGITS_TASKS,
            "teachers": [{"name": "digits-teacher", "tasks": ["digit", "parity", "large"],
                          "source": {"train": {"arch": {"type": "mlp", "trunk": [512, 512]},
                                               "epochs": 30, "lr": 0.003,
                                               "dataset": "digits-mt"}}}],
            "student": {"type": "mlp", "trunk": [128]},
            "training": {"epochs": 40, "batch_size": 128, "lr": 0.003, "seed": seed,
                         "device": "auto", "selection": "best"}, "export": []}
    # The source teacher scores ~0.69 mean primary on the target (digit ~0.53): 1% labels (40 rows)
    # give the baseline less than that, so KD adds knowledge; 5% (200 rows) give it more, and
    # the weaker teacher's soft labels pull the student down (reported, not hidden).
    jobs = {}
    for pct, fraction, alpha in ((1, 0.01, 0.5), (5, 0.05, 0.3)):
        jobs[f"xdomain_{pct}pct"] = run({**base, "name": f"xdomain-{pct}pct", "distillation": {
            "strategy": "transfer", "label_fraction": fraction, "temperature": 4.0,
            "alpha": alpha}}, root / f"xdomain-{pct}pct-{seed}", cache)
    jobs["xdomain_0pct"] = run({**base, "name": "xdomain-0pct", "baseline": False, "distillation": {
        "strategy": "transfer", "label_fraction": 0.0, "temperature": 4.0}},
        root / f"xdomain-0pct-{seed}", cache)
    return jobs


# digits-mt task_kd: two candidate KD settings, the choice made on validation (never on test).
# "parity_t2" is the setting an earlier session picked by looking at test numbers; here it must
# win on validation to be used.
DIGITS_CANDIDATES: dict[str, dict[str, Any]] = {
    "task_kd": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
    "task_kd_parity_t2": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5,
                          "per_task": {"parity": {"temperature": 2.0, "alpha": 0.9}}},
}


CENSUS_TASKS = [{"name": "income", "kind": "binary"}, {"name": "never_married", "kind": "binary"}]
CENSUS_TEACHERS = [{"name": "mmoe-teacher", "tasks": ["income", "never_married"], "source": {"train": {
    "arch": {"type": "mmoe", "experts": 8, "expert": [128, 64], "head": [32]},  # 309k params
    "epochs": 6, "batch_size": 512, "lr": 0.001}}}]
CENSUS_STUDENTS = {
    "census_mmoe": {"type": "mmoe", "experts": 4, "expert": [24, 16], "head": [8]},  # 30.8k
    "census_mlp": {"type": "mlp", "trunk": [100, 32], "head": [8]},  # shared bottom, 31.8k
}


def census_jobs(seed: int, root: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """MMoE teacher -> MMoE student, then the same teacher -> a shared-bottom MLP of the same size."""
    base = {"dataset": {"builtin": "census-income"}, "tasks": CENSUS_TASKS,
            "distillation": {"strategy": "task_kd", "temperature": 2.0, "alpha": 0.5},
            "training": {"epochs": 10, "batch_size": 512, "lr": 0.002, "seed": seed,
                         "device": "auto", "selection": "best"}, "export": []}
    jobs = {}
    teachers = CENSUS_TEACHERS
    for name, student in CENSUS_STUDENTS.items():
        jobs[name] = run({**base, "name": name, "teachers": teachers, "student": student},
                         root / f"{name}-{seed}", cache)
        # the later job reuses the trained teacher as a weights file (its outputs are cached)
        teachers = as_weights_teachers(CENSUS_TEACHERS, root / f"census_mmoe-{seed}")
    return jobs


FASHION_TASKS = [{"name": "item", "kind": "multiclass", "num_classes": 10},
                 {"name": "category", "kind": "multiclass", "num_classes": 4},
                 {"name": "footwear", "kind": "binary"}]


# fashion-mnist-mt task_kd: two candidate KD settings, the choice made on validation (never on
# test). T=4 is the setting fixed before any number was seen; a seed-0 run showed it below the
# baseline on validation (0.845 vs 0.864 item), and a 6k-parameter student may not afford to
# model the teacher's non-target classes, so the softer-target-free T=1 competes on validation.
FASHION_CANDIDATES: dict[str, dict[str, Any]] = {
    "fashion": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
    "fashion_t1": {"strategy": "task_kd", "temperature": 1.0, "alpha": 0.5},
}


def fashion_jobs(seed: int, root: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """Resnet teacher (82k params) -> resnet student (6k) on Fashion-MNIST, three tasks."""
    teacher_arch = {"type": "resnet", "channels": [16, 32, 64], "blocks": [1, 1, 1], "trunk": [64]}
    trained = [{"name": "resnet-teacher", "tasks": ["item", "category", "footwear"],
                "source": {"train": {"arch": teacher_arch, "epochs": 10, "batch_size": 128,
                                     "lr": 0.002}}}]
    teachers = trained
    base = {"dataset": {"builtin": "fashion-mnist-mt"}, "tasks": FASHION_TASKS,
            "student": {"type": "resnet", "channels": [8, 16], "blocks": [1, 1], "trunk": [32]},
            "training": {"epochs": 10, "batch_size": 128, "lr": 0.002, "schedule": "cosine",
                         "seed": seed, "device": "auto", "selection": "best"}, "export": []}
    jobs = {}
    for name, distillation in FASHION_CANDIDATES.items():
        # the first job trains the teacher and the baseline; the later candidate reuses the teacher
        # as a weights file (outputs cached) and skips the baseline, which T and alpha do not touch
        # (same seed, same student, same steps): its rows read the first job's baseline
        jobs[name] = run({**base, "name": f"fashion-resnet-{name}", "teachers": teachers,
                          "distillation": distillation, "baseline": not jobs},
                         root / f"{name}-{seed}", cache)
        teachers = as_weights_teachers(trained, root / f"fashion-{seed}")
    return jobs


def validation_primary(results: dict[str, Any], model: str) -> float:
    """Return the mean over tasks of the validation primary metric (all higher-is-better here)."""
    return statistics.fmean(entry[model] for entry in results["validation"].values())


def choose_on_validation(per_seed: list[dict[str, dict[str, Any]]],
                         candidates: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Return the candidate job with the best mean validation student score over seeds."""
    scores = {name: statistics.fmean(validation_primary(seed[name], "student") for seed in per_seed)
              for name in candidates}
    return max(scores, key=scores.get), scores


def chosen_on_validation(per_seed: list[dict[str, dict[str, Any]]], candidates: dict[str, Any],
                         dataset: str, row) -> str:
    """Choose the candidate on validation, add the table row that says so, return its name."""
    chosen, scores = choose_on_validation(per_seed, candidates)
    row(f"{dataset} task_kd settings chosen on validation: {chosen} (validation student "
        + ", ".join(f"{name} {score:.4f}" for name, score in scores.items()) + ")",
        None, "chosen on validation", None)
    return chosen


def as_weights_teachers(teachers: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Return the job's `train` teachers as `weights` teachers read from its checkpoint."""
    state = read_finished(workdir)
    converted = []
    for teacher in teachers:
        path = workdir / f"{teacher['name']}.safetensors"
        save_file(state[f"teacher:{teacher['name']}"]["model"], str(path))
        arch = teacher["source"]["train"]["arch"]
        converted.append({**teacher, "source": {"weights": {"file": str(path), "arch": arch}}})
    return converted


def mean_primary(results: dict[str, Any], model: str) -> float:
    """Return the mean of the primary metric over the tasks (all are higher-is-better here)."""
    return statistics.fmean(entry[model] for entry in results["tasks"].values())


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def summarise(per_seed: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Return the table rows: what, value(s) mean ± sd, the target, pass/fail."""
    def collect(fn) -> dict[str, float]:
        return stats([fn(seed) for seed in per_seed])

    rows = []
    ran = set(per_seed[0])

    def row(what: str, value: dict, target: str, passed: bool | None,
            compare: dict | None = None) -> None:
        rows.append({"check": what, "value": value, "compare": compare, "target": target,
                     "pass": passed})

    digit = lambda job, model: (lambda s: s[job]["tasks"]["digit"][model])
    if "with_set" in ran:
        mnist1d_rows(collect, row, digit)
    chosen = None
    if "task_kd" in ran:
        chosen = chosen_on_validation(per_seed, DIGITS_CANDIDATES, "digits-mt", row)
        digits_rows(collect, row, chosen)
    strategies = {f"task_kd (digits-mt, {chosen})": chosen,
                  "feature_kd+soft (digits-mt)": "feature_kd", "cascaded (digits-mt)": "cascaded",
                  "semi-supervised: 5% labels + 50k set, teacher on the same 5% (MNIST-1D)": "semi",
                  "transfer, cross-domain digits-mt → mnist8x8-mt, 1% labels": "xdomain_1pct"}
    for label, job in strategies.items():
        if job is None or job not in ran:
            continue
        student = collect(lambda s, j=job: mean_primary(s[j], "student"))
        baseline = collect(lambda s, j=job: mean_primary(s[j], "baseline"))
        row(f"strategy {label}: mean primary", student, "≥ baseline",
            student["mean"] >= baseline["mean"], baseline)
    if "xdomain_5pct" in ran:  # where transfer KD does not help: the labels beat the teacher
        student = collect(lambda s: mean_primary(s["xdomain_5pct"], "student"))
        baseline = collect(lambda s: mean_primary(s["xdomain_5pct"], "baseline"))
        row("transfer, cross-domain, 5% labels (teacher weaker than the labels): mean primary",
            student, "reported", None, baseline)
    if "census_mmoe" in ran:
        census_rows(collect, row, "census_mlp" in ran)
    if "fashion" in ran:
        fashion_rows(collect, row, chosen_on_validation(per_seed, FASHION_CANDIDATES, "fashion", row))
    if "text_soft" in ran:  # bench/quality_text.py
        text_rows(per_seed, collect, row, chosen_on_validation)
    if "xdomain_0pct" in ran:
        student = collect(lambda s: mean_primary(s["xdomain_0pct"], "student"))
        teacher = collect(lambda s: mean_primary(s["xdomain_0pct"], "teacher"))
        row("transfer, cross-domain, 0 labels: student vs its teacher on the target", student,
            "≥ teacher − 0.02", student["mean"] >= teacher["mean"] - 0.02, teacher)
    return rows


def mnist1d_rows(collect, row, digit) -> None:
    """The MNIST-1D rows of the table (paper comparisons and the transfer-set target)."""
    teacher = collect(digit("with_set", "teacher"))
    row("MNIST-1D cnn1d teacher accuracy", teacher, "≥ 0.91", teacher["mean"] >= 0.91)
    scratch = collect(digit("with_set", "baseline"))
    row("MNIST-1D MLP from scratch", scratch, "near 0.60–0.70", 0.55 <= scratch["mean"] <= 0.75)
    with_set = collect(digit("with_set", "student"))
    row("MNIST-1D MLP KD + 50k transfer set", with_set, "≥ 0.89", with_set["mean"] >= 0.89)
    without = collect(digit("without_set", "student"))
    row("MNIST-1D MLP KD, no transfer set", without, "≥ scratch", without["mean"] >= scratch["mean"],
        scratch)



def digits_rows(collect, row, job: str) -> None:
    """The digits-mt rows: compression, every task against its baseline, the gap to the teacher."""
    ratio = collect(lambda s: s[job]["params"]["student"] / s[job]["params"]["teacher"])
    row("digits-mt student/teacher params", ratio, "≤ 1/20", max(ratio["values"]) <= 1 / 20)
    for task in ("digit", "parity", "large"):
        student = collect(lambda s, t=task: s[job]["tasks"][t]["student"])
        baseline = collect(lambda s, t=task: s[job]["tasks"][t]["baseline"])
        row(f"digits-mt {task}: student vs baseline", student, "≥ baseline",
            student["mean"] >= baseline["mean"], baseline)
    gap = collect(lambda s: s[job]["tasks"]["digit"]["teacher"]
                  - s[job]["tasks"]["digit"]["student"])
    row("digits-mt digit: teacher − student", gap, "≤ 0.02", gap["mean"] <= 0.02)


def auc(job: str, task: str, model: str):
    """Return a function of one seed's jobs: the test AUC of `model` on a binary `task`."""
    return lambda s: s[job]["tasks"][task]["all"][model]["auc"]


def census_rows(collect, row, with_mlp: bool) -> None:
    """census-income: AUC per task for teacher, MMoE student, its baseline and the MLP student."""
    ratio = collect(lambda s: s["census_mmoe"]["params"]["student"] / s["census_mmoe"]["params"]["teacher"])
    row("census mmoe student/teacher params", ratio, "≤ 1/10", max(ratio["values"]) <= 1 / 10)
    anchors = {"income": 0.945, "never_married": 0.993}  # PaddleRec MMoE: 0.9447 / 0.9932
    for task, anchor in anchors.items():
        row(f"census {task}: teacher (mmoe 8x[128,64]) AUC", collect(auc("census_mmoe", task, "teacher")),
            "reported", None)
        student = collect(auc("census_mmoe", task, "student"))
        row(f"census {task}: mmoe student AUC", student, f"≥ {anchor}", student["mean"] >= anchor)
        baseline = collect(auc("census_mmoe", task, "baseline"))
        row(f"census {task}: mmoe student vs mmoe baseline AUC", student, "≥ baseline",
            student["mean"] >= baseline["mean"], baseline)
        if with_mlp:
            mlp = collect(auc("census_mlp", task, "student"))
            row(f"census {task}: shared-bottom mlp student AUC (vs mlp baseline)", mlp, "reported",
                None, collect(auc("census_mlp", task, "baseline")))
    if with_mlp:
        row("census mlp student params (vs mmoe student)",
            collect(lambda s: float(s["census_mlp"]["params"]["student"])), "about equal", None,
            collect(lambda s: float(s["census_mmoe"]["params"]["student"])))


def fashion_rows(collect, row, job: str) -> None:
    """fashion-mnist-mt: teacher accuracy, compression, every task against its baseline, the gaps."""
    teacher = collect(lambda s: s[job]["tasks"]["item"]["teacher"])
    row("fashion item: resnet teacher accuracy", teacher, "≥ 0.925", teacher["mean"] >= 0.925)
    ratio = collect(lambda s: s[job]["params"]["student"] / s[job]["params"]["teacher"])
    row("fashion student/teacher params", ratio, "≤ 1/10", max(ratio["values"]) <= 1 / 10)
    for task in ("item", "category", "footwear"):
        student = collect(lambda s, t=task: s[job]["tasks"][t]["student"])
        baseline = collect(lambda s, t=task: s["fashion"]["tasks"][t]["baseline"])
        row(f"fashion {task}: student vs baseline", student, "≥ baseline",
            student["mean"] >= baseline["mean"], baseline)
    gain = collect(lambda s: s[job]["tasks"]["item"]["student"]
                   - s["fashion"]["tasks"]["item"]["baseline"])
    row("fashion item: student − baseline", gain, "≥ +0.005", gain["mean"] >= 0.005)
    gap = collect(lambda s: s[job]["tasks"]["item"]["teacher"]
                  - s[job]["tasks"]["item"]["student"])
    row("fashion item: teacher − student", gap, "≤ 0.02", gap["mean"] <= 0.02)


PASS = {True: "yes", False: "NO", None: "—"}  # None: a row reported without a target


def markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(value: dict | None) -> str:
        return "" if value is None else f"{value['mean']:.4f} ± {value['sd']:.4f}"

    lines = ["| check | value (mean ± sd) | compared with | target | pass |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['check']} | {fmt(r['value'])} | {fmt(r['compare'])} | {r['target']} | "
              f"{PASS[r['pass']]} |" for r in rows]
    return "\n".join(lines)


GROUPS = {"mnist1d": mnist1d_jobs, "digits": digits_jobs, "cross-domain": cross_domain_jobs,
          "census": census_jobs, "fashion": fashion_jobs, "text": text_jobs}
# census and fashion train on 200k and 60k real rows: far longer than the others, so opt-in
DEFAULT_GROUPS = ["cross-domain", "digits", "mnist1d"]


def train_seeds(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    """Run every group for every seed in this process; return one dict of results per seed."""
    root = args.workdir or Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    cache = root / "teacher-cache"
    per_seed = []
    for seed in args.seeds:
        jobs = {}
        for group in args.groups:
            jobs.update(GROUPS[group](seed, root, cache))
        per_seed.append(jobs)
        print(f"seed {seed} done", flush=True)
    return per_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the numbers")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the jobs here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch per stage")
    parser.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=DEFAULT_GROUPS,
                        help="which job groups to run (default: " + " ".join(DEFAULT_GROUPS)
                        + "; census and fashion only when named)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help=(
        "summarise the per-seed results of earlier --out files (seeds run as parallel "
        "processes) instead of training"))
    parser.add_argument("--threads", type=int, default=1, help=(
        "torch intra-op threads; these models are tiny, and on a shared CPU more threads than "
        "free cores made the same run ~20x slower"))
    args = parser.parse_args()
    QUICK["on"] = args.quick
    torch.set_num_threads(args.threads)
    if args.merge:
        saved = [json.loads(path.read_text()) for path in args.merge]
        args.seeds = [seed for one in saved for seed in one["seeds"]]
        per_seed = [jobs for one in saved for jobs in one["results"]]
    else:
        per_seed = train_seeds(args)
    rows = summarise(per_seed)
    table = markdown(rows)
    print(table)
    args.out.write_text(json.dumps({"seeds": args.seeds, "rows": rows, "table": table,
                                    "results": per_seed}, indent=2) + "\n")


if __name__ == "__main__":
    main()
