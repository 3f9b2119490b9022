"""Peer benchmark: student-phase wall time and accuracy of Distillery vs torchdistill, same job.

    bash bench/peer_torchdistill_setup.sh /tmp/venv-torchdistill    # once: the peer's own venv
    .venv/bin/python -m bench.peer_torchdistill [--reps 3] [--epochs 30] [--threads 1]

Job: MNIST-1D `digit` (4000 train / 1000 test rows), cnn1d teacher [64,64,64] k5 + trunk [128]
(trained here once, untimed, saved as safetensors), student mlp [100,100], Hinton KD T=4,
alpha=0.5 (soft weight), AdamW lr 0.003, batch 128, no weight decay, test accuracy every epoch.

Sides, run interleaved in a rotating order, rep r with seed r on every side (same student init,
so the spread over reps is the noise):
  distillery          `app.training.loop.train` in-process, teacher as a `weights` source,
                      `baseline: false`, `export: []`; a warm-up job filled the teacher-output
                      cache, so only the student stage runs; its seconds from results.json
                      "stages" (epochs + per-epoch test evaluation + checkpoint).
  distillery-online   the same with `distillation.online: true` (teacher forward every step).
  torchdistill        torchdistill 1.1.5 in the peer venv (its own torch), a subprocess running
                      bench/peer_torchdistill_run.py on the same rows, teacher weights and student
                      init (one .npz), timed over its epoch loop. 1.1.5 has no teacher-output
                      cache, so it runs the teacher every step: its only path.
  hand-here/-peer     control: bench/handwritten_kd.py's bare loop on each venv's torch.
Prints per-rep lines, then medians and the ratios torchdistill / Distillery (> 1: Distillery is
faster) and hand-peer / hand-here (the torch build's share of any gap).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.training.datasets.registry import load_dataset
from app.training.models import build_model
from app.training.spec import JobSpec
from bench import handwritten_kd as hw
from bench.engine_overhead import engine_seconds

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT / "bench" / "peer_torchdistill_run.py"
TEACHER_ARCH = {"type": "cnn1d", "channels": [64, 64, 64], "kernel_size": 5, "trunk": [128]}
SPEC: dict[str, Any] = {
    "name": "peer-mnist1d", "dataset": {"builtin": "mnist1d-mt"},
    "tasks": [{"name": "digit", "kind": "multiclass", "num_classes": 10}],
    "teachers": [{"name": "cnn", "tasks": ["digit"],
                  "source": {"weights": {"file": "<set in main>", "arch": TEACHER_ARCH}}}],
    "student": {"type": "mlp", "trunk": [100, 100]},
    "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
    "weighting": {"method": "equal"},
    "training": {"epochs": 30, "batch_size": 128, "lr": 0.003, "seed": 0, "device": "cpu"},
    "baseline": False, "export": []}
SIDES = ("distillery", "distillery-online", "torchdistill", "hand-here", "hand-peer")


def prepare(spec: dict[str, Any], root: Path, *, seeds: list[int], teacher_epochs: int) -> dict[str, Any]:
    """Train the teacher once (untimed); write its safetensors and the peer's npz; return facts."""
    from safetensors.torch import save_file

    job = JobSpec.model_validate(spec)
    data = load_dataset(job.dataset, tasks=list(job.tasks))
    teacher_arch = job.teachers[0].source.weights.arch
    torch.manual_seed(1)
    teacher = build_model(teacher_arch, input_shape=data.input_shape, tasks=list(job.tasks))
    hw.train_student(teacher, data.x_train, data.y_train, {"digit": torch.zeros(len(data.x_train), 10)},
                     {"digit": "multiclass"}, None, epochs=teacher_epochs, batch_size=128, lr=0.003,
                     temperature=1.0, alpha=0.0, seed=1)
    teacher_acc = hw.accuracy(teacher, data.x_test, data.y_test["digit"], "digit")
    weights = root / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    arrays = {"x_train": data.x_train.numpy(), "y_train": data.y_train["digit"].numpy(),
              "x_test": data.x_test.numpy(), "y_test": data.y_test["digit"].numpy()}
    arrays.update({f"teacher/{k}": v.numpy() for k, v in teacher.state_dict().items()})
    for seed in seeds:  # the engine seeds the student stage the same way (loop._trained_model)
        torch.manual_seed(seed)
        student = build_model(job.student, input_shape=data.input_shape, tasks=list(job.tasks))
        arrays.update({f"student-init/{seed}/{k}": v.numpy() for k, v in student.state_dict().items()})
    meta = {"input_shape": list(data.input_shape), "task": "digit", "num_classes": 10,
            "teacher": teacher_arch.model_dump(), "student": job.student.model_dump()}
    np.savez(root / "peer.npz", meta=np.array(json.dumps(meta)), **arrays)
    return {"weights": weights, "npz": root / "peer.npz", "teacher_acc": teacher_acc, "job": job,
            "data": data, "soft": hw.teacher_logits(teacher, data.x_train)}


def handwritten_here(facts: dict[str, Any], seed: int) -> dict[str, Any]:
    """Control: the hand-written loop in this venv, same student init and teacher logits."""
    job, data = facts["job"], facts["data"]
    torch.manual_seed(seed)
    student = build_model(job.student, input_shape=data.input_shape, tasks=list(job.tasks))
    t = job.training
    cpu_started = time.process_time()
    seconds = hw.train_student(student, data.x_train, {"digit": data.y_train["digit"]}, facts["soft"],
                               {"digit": "multiclass"}, None, epochs=t.epochs, batch_size=t.batch_size,
                               lr=t.lr, temperature=job.distillation.temperature,
                               alpha=job.distillation.alpha, seed=seed)
    cpu = time.process_time() - cpu_started
    return {"student_s": seconds, "student_cpu_s": cpu,
            "acc": hw.accuracy(student, data.x_test, data.y_test["digit"], "digit")}


def peer_run(python: str, npz: Path, spec: dict[str, Any], *, seed: int, threads: int,
             epochs: int | None = None, handwritten: bool = False) -> dict[str, Any]:
    """Run the torchdistill side in its own venv; return its JSON line plus the process wall."""
    t = spec["training"]
    command = [python, str(PEER_SCRIPT), "--data", str(npz), "--seed", str(seed),
               "--epochs", str(epochs or t["epochs"]), "--batch-size", str(t["batch_size"]),
               "--lr", str(t["lr"]), "--temperature", str(spec["distillation"]["temperature"]),
               "--alpha", str(spec["distillation"]["alpha"]), "--threads", str(threads)]
    if handwritten:
        command.append("--handwritten")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ""})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"torchdistill side failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="student epochs (both sides)")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer-python", default="/tmp/venv-torchdistill/bin/python")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args()
    if not Path(args.peer_python).exists():
        sys.exit(f"{args.peer_python} not found: run bash bench/peer_torchdistill_setup.sh first")
    torch.set_num_threads(args.threads)
    spec = json.loads(json.dumps(SPEC))
    spec["training"]["epochs"] = args.epochs
    seeds = list(range(args.reps))
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="peer-torchdistill-") as tmp:
        root = Path(tmp)
        facts = prepare(spec, root, seeds=seeds, teacher_epochs=args.teacher_epochs)
        spec["teachers"][0]["source"]["weights"]["file"] = str(facts["weights"])
        # Warm-ups (untimed): Distillery fills its teacher-output cache; one torchdistill epoch.
        engine_seconds(spec, root, -1)
        warm = peer_run(args.peer_python, facts["npz"], spec, seed=0, threads=args.threads, epochs=1)
        print(f"teacher test accuracy: here {facts['teacher_acc']:.4f}, torchdistill side "
              f"{warm['teacher_acc']:.4f}; peer torch {warm['torch']}, torchdistill "
              f"{warm['torchdistill']}; Distillery torch {torch.__version__}", flush=True)
        for rep, seed in enumerate(seeds):
            order = SIDES[rep % len(SIDES):] + SIDES[:rep % len(SIDES)]  # rotate who runs first
            for side in order:
                spec["training"]["seed"] = seed
                if side == "hand-here":
                    facts["job"] = JobSpec.model_validate(spec)
                    runs[side].append(handwritten_here(facts, seed))
                elif side == "hand-peer":
                    runs[side].append(peer_run(args.peer_python, facts["npz"], spec, seed=seed,
                                               threads=args.threads, handwritten=True))
                elif side == "torchdistill":
                    runs[side].append(peer_run(args.peer_python, facts["npz"], spec, seed=seed,
                                               threads=args.threads))
                else:
                    spec["distillation"]["online"] = side == "distillery-online"
                    measured = engine_seconds(spec, root, 2 * rep + (side == "distillery-online"))
                    run = dict(zip(("student_s", "total_s", "acc", "student_cpu_s"), measured))
                    runs[side].append(run)  # student_cpu_s: where engine_seconds reports it
                    spec["distillation"]["online"] = False
            print(f"rep {rep} (seed {seed}, order {', '.join(order)}): "
                  + "  ".join(f"{side} {runs[side][-1]['student_s']:.2f}s acc {runs[side][-1]['acc']:.3f}"
                              for side in SIDES), flush=True)
    medians = {side: statistics.median(r["student_s"] for r in runs[side]) for side in SIDES}
    cpu = {side: statistics.median(r["student_cpu_s"] for r in runs[side])
           for side in SIDES if all("student_cpu_s" in r for r in runs[side])}
    report = {
        "job": spec | {"teachers": "cnn1d weights (trained here)"}, "threads": args.threads,
        "torch": {"distillery": torch.__version__, "torchdistill": warm["torch"]},
        "torchdistill": warm["torchdistill"], "teacher_acc": facts["teacher_acc"],
        "median_student_s": medians, "median_student_cpu_s": cpu,
        "ratio": medians["torchdistill"] / medians["distillery"],
        "ratio_online": medians["torchdistill"] / medians["distillery-online"],
        "torch_build_ratio": medians["hand-peer"] / medians["hand-here"],
        "torchdistill_teacher_forwards": [r["teacher_forwards"] for r in runs["torchdistill"]],
        "acc": {side: [r["acc"] for r in runs[side]] for side in SIDES},
        "runs": runs}
    print(json.dumps({k: report[k] for k in ("torch", "median_student_s", "median_student_cpu_s", "ratio",
                                             "ratio_online", "torch_build_ratio", "acc",
                                             "torchdistill_teacher_forwards")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
