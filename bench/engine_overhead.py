"""Engine overhead: student-phase wall time of `distillery train` vs a hand-written KD loop.

    .venv/bin/python -m bench.engine_overhead [--reps 3] [--threads 1] [--job digits mnist1d]
    .venv/bin/python -m bench.engine_overhead --job census-mmoe resnet-multimnist --reps 7
    .venv/bin/python -m bench.engine_overhead --job census-ple mobilenet-multimnist --reps 7

(a) runs `app.training.loop.train` in-process and takes the student stage's seconds from
results.json "stages"; (b) runs bench/handwritten_kd.py on the same data, student architecture,
epochs, batch size, lr, T and alpha, with the teacher's logits computed once (untimed). Teacher
stages are trained once (epochs kept small: only the student phase is compared). The two sides
run interleaved, `--reps` times each; prints medians and the ratio (a)/(b). Because the machine
is shared, each side's process CPU seconds (all threads, so the engine's checkpoint writer counts)
are reported beside the wall seconds: from the student stage's start to its last epoch's end (a),
around the hand-written loop (b). The accuracy printed is the first task's, on test.
Jobs: digits and mnist1d (mlp students); census-mmoe (an mmoe student on the whole
census-income train split, two binary tasks) and resnet-multimnist (a resnet student on
multimnist-5k, two 10-class tasks), census-ple and mobilenet-multimnist (the same data and
teachers with a ple and a mobilenet student), not in the default list: they take minutes.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.config import Settings
from app.training.datasets.registry import generate_transfer_set
from app.training.loop import TrainCallbacks, train
from app.training.models import build_model
from app.training.spec import JobSpec
from app.training.stage_data import load_job_data
from bench import handwritten_kd as hw

DIGITS = {
    "name": "overhead-digits", "dataset": {"builtin": "digits-mt"},
    "tasks": [{"name": "digit", "kind": "multiclass", "num_classes": 10},
              {"name": "parity", "kind": "multiclass", "num_classes": 2},
              {"name": "large", "kind": "binary"}],
    "teachers": [{"name": "t", "tasks": ["digit", "parity", "large"],
                  "source": {"train": {"arch": {"type": "mlp", "hidden": [512, 512]}, "epochs": 5}}}],
    "student": {"type": "mlp", "trunk": [64], "head": [32]},
    "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
    "weighting": {"method": "equal"},
    "training": {"epochs": 40, "batch_size": 128, "lr": 0.005, "seed": 0, "device": "cpu"},
    "baseline": False, "export": []}
MNIST1D = {
    "name": "overhead-mnist1d", "dataset": {"builtin": "mnist1d-mt"},
    "tasks": [{"name": "digit", "kind": "multiclass", "num_classes": 10}],
    "teachers": [{"name": "cnn", "tasks": ["digit"], "source": {"train": {
        "arch": {"type": "cnn1d", "channels": [64, 64, 64], "kernel_size": 5, "trunk": [128]},
        "epochs": 3, "lr": 0.003}}}],
    "student": {"type": "mlp", "trunk": [100, 100]},
    "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
    "transfer_set": {"generate": 50000},
    "weighting": {"method": "equal"},
    "training": {"epochs": 5, "batch_size": 256, "lr": 0.003, "seed": 0, "device": "cpu"},
    "baseline": False, "export": []}
CENSUS_MMOE = {  # the architectures of examples/census-mmoe.json, 3 student epochs
    "name": "overhead-census-mmoe", "dataset": {"builtin": "census-income"},
    "tasks": [{"name": "income", "kind": "binary"}, {"name": "never_married", "kind": "binary"}],
    "teachers": [{"name": "t", "tasks": ["income", "never_married"], "source": {"train": {
        "arch": {"type": "mmoe", "experts": 8, "expert": [128, 64], "head": [32]},
        "epochs": 1, "batch_size": 512, "lr": 0.001}}}],
    "student": {"type": "mmoe", "experts": 4, "expert": [24, 16], "head": [8]},
    "distillation": {"strategy": "task_kd", "temperature": 2.0, "alpha": 0.5},
    "weighting": {"method": "equal"},
    "training": {"epochs": 3, "batch_size": 512, "lr": 0.002, "seed": 0, "device": "cpu"},
    "baseline": False, "export": []}
RESNET_MULTIMNIST = {  # the architectures of examples/fashion-resnet.json on 36x36 two-digit images
    "name": "overhead-resnet-multimnist", "dataset": {"builtin": "multimnist-5k"},
    "tasks": [{"name": "left", "kind": "multiclass", "num_classes": 10},
              {"name": "right", "kind": "multiclass", "num_classes": 10}],
    "teachers": [{"name": "t", "tasks": ["left", "right"], "source": {"train": {
        "arch": {"type": "resnet", "channels": [16, 32, 64], "blocks": [1, 1, 1], "trunk": [64]},
        "epochs": 1, "lr": 0.002}}}],
    "student": {"type": "resnet", "channels": [8, 16], "blocks": [1, 1], "trunk": [32]},
    "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
    "weighting": {"method": "equal"},
    "training": {"epochs": 2, "batch_size": 128, "lr": 0.002, "seed": 0, "device": "cpu"},
    "baseline": False, "export": []}
# The same jobs with the other two new architectures as students (their own teachers unchanged):
# a PLE of about the mmoe student's size, and a mobilenet of the resnet student's widths.
CENSUS_PLE = {**CENSUS_MMOE, "name": "overhead-census-ple", "student": {
    "type": "ple", "levels": 2, "shared_experts": 2, "task_experts": 1, "expert": [24, 16],
    "head": [8]}}
MOBILENET_MULTIMNIST = {**RESNET_MULTIMNIST, "name": "overhead-mobilenet-multimnist", "student": {
    "type": "mobilenet", "channels": [8, 16], "blocks": [1, 1], "expansion": 4, "trunk": [32]}}
JOBS = {"digits": DIGITS, "mnist1d": MNIST1D, "census-mmoe": CENSUS_MMOE,
        "census-ple": CENSUS_PLE, "resnet-multimnist": RESNET_MULTIMNIST,
        "mobilenet-multimnist": MOBILENET_MULTIMNIST}
DEFAULT_JOBS = ["digits", "mnist1d"]


class StudentCpu(TrainCallbacks):
    """Process CPU seconds from the student stage's start to the end of its last epoch."""

    def __init__(self) -> None:
        self.started = self.ended = 0.0

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        if stage == "student":
            self.started = time.process_time()

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, **_: Any) -> None:
        if stage == "student" and epoch == epochs:
            self.ended = time.process_time()


def engine_seconds(spec: dict[str, Any], root: Path, rep: int) -> tuple[float, float, float, float]:
    """Run the job in a fresh workdir (teacher outputs cached); return (student s, total s, acc,
    student CPU s)."""
    cpu = StudentCpu()
    results = train(JobSpec.model_validate(spec), root / f"job-{rep}", cache_dir=root / "cache",
                    callbacks=cpu, checkpoint_interval=Settings().checkpoint_interval_seconds).results
    student = [s for s in results["stages"] if s["name"].startswith("student")]
    first = spec["tasks"][0]["name"]
    return (sum(s["seconds"] for s in student), results["timing"]["total_seconds"],
            results["tasks"][first]["student"], cpu.ended - cpu.started)


def handwritten_setup(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """Data, teacher logits (teacher trained here, untimed) for the hand-written side."""
    job = JobSpec.model_validate(spec)
    # the engine's own training rows (its validation split carved out), so both sides do the
    # same work; the hand loop evaluates nothing while it trains
    data = load_job_data(job.dataset, tasks=list(job.tasks), seed=job.training.seed, resolver=None,
                         device=torch.device("cpu"))
    torch.manual_seed(0)
    # layout: census-income's category codes (embedding encoding) reach the same embedding
    # tables as in the engine; None for the other datasets
    teacher = build_model(job.teachers[0].source.train.arch, input_shape=data.input_shape,
                          tasks=list(job.tasks), layout=data.layout)
    kinds = {t.name: t.kind for t in job.tasks}
    hw.train_student(teacher, data.x_train, data.y_train,
                     {k: torch.zeros(len(data.x_train), 1 if v == "binary" else t.num_classes)
                      for (k, v), t in zip(kinds.items(), job.tasks)},
                     kinds, None, epochs=job.teachers[0].source.train.epochs, batch_size=128,
                     lr=0.003, temperature=1.0, alpha=0.0, seed=0)
    x, y, labelled = data.x_train, data.y_train, None
    if job.transfer_set is not None:
        extra = generate_transfer_set(job.dataset.builtin, job.transfer_set.generate,
                                      job.training.seed, cache_dir=root / "cache" / "transfer-inputs")
        n = len(extra)
        x = torch.cat([x, extra])
        y = {k: torch.cat([v, v.new_zeros((n, *v.shape[1:]))]) for k, v in y.items()}
        labelled = torch.cat([torch.ones(len(data.x_train), dtype=torch.bool),
                              torch.zeros(n, dtype=torch.bool)])
    return {"job": job, "data": data, "x": x, "y": y, "labelled": labelled, "kinds": kinds,
            "soft": hw.teacher_logits(teacher, x)}


def handwritten_seconds(setup: dict[str, Any]) -> tuple[float, float, float]:
    """Train a fresh student by hand; return (student s, test accuracy on the first task, CPU s)."""
    job = setup["job"]
    torch.manual_seed(job.training.seed)
    student = build_model(job.student, input_shape=setup["data"].input_shape, tasks=list(job.tasks),
                          layout=setup["data"].layout)
    cpu_started = time.process_time()
    seconds = hw.train_student(
        student, setup["x"], setup["y"], setup["soft"], setup["kinds"], setup["labelled"],
        epochs=job.training.epochs, batch_size=job.training.batch_size, lr=job.training.lr,
        temperature=job.distillation.temperature, alpha=job.distillation.alpha,
        seed=job.training.seed)
    cpu = time.process_time() - cpu_started
    first = job.tasks[0].name
    return seconds, hw.accuracy(student, setup["data"].x_test, setup["data"].y_test[first], first), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--job", nargs="+", default=DEFAULT_JOBS, choices=list(JOBS))
    parser.add_argument("--epochs", type=int, default=None, help="override student epochs")
    parser.add_argument("--eval-every", type=int, default=1, help=(
        "the engine's training.eval_every (validation every k epochs and at the last; the hand "
        "loop evaluates nothing while it trains)"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for name in args.job:
        spec = json.loads(json.dumps(JOBS[name]))
        if args.epochs:
            spec["training"]["epochs"] = args.epochs
        spec["training"]["eval_every"] = args.eval_every
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            engine_seconds(spec, root, -1)  # warm-up: trains the teacher, fills the cache
            setup = handwritten_setup(spec, root)
            a, b, acc_a, acc_b, totals, cpu_a, cpu_b = [], [], [], [], [], [], []
            for rep in range(args.reps):  # interleaved
                sa, total, acc, ca = engine_seconds(spec, root, rep)
                sb, accb, cb = handwritten_seconds(setup)
                a.append(sa); b.append(sb); totals.append(total); acc_a.append(acc); acc_b.append(accb)
                cpu_a.append(ca); cpu_b.append(cb)
                print(f"{name} rep {rep}: engine {sa:.2f}s  hand {sb:.2f}s  ratio {sa / sb:.3f}  "
                      f"(CPU {ca:.2f}s / {cb:.2f}s = {ca / cb:.3f})", flush=True)
        report[name] = {"engine_s": a, "hand_s": b, "engine_total_s": totals,
                        "median_engine_s": statistics.median(a), "median_hand_s": statistics.median(b),
                        "ratio_of_medians": statistics.median(a) / statistics.median(b),
                        "median_ratio": statistics.median(x / y for x, y in zip(a, b)),
                        "cpu_engine_s": cpu_a, "cpu_hand_s": cpu_b,
                        "cpu_ratio_of_medians": statistics.median(cpu_a) / statistics.median(cpu_b),
                        # the least disturbed rep of each side: less sensitive to a shared machine
                        "min_of_reps_ratio": min(a) / min(b),
                        "cpu_min_of_reps_ratio": min(cpu_a) / min(cpu_b),
                        "acc_engine": acc_a, "acc_hand": acc_b}
        print(json.dumps({name: report[name]}, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
