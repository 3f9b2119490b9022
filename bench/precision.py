"""training.precision on the CPU: the same digits-mt job in fp32 and in bf16, timed per stage.

    .venv/bin/python -m bench.precision [--reps 2] [--threads 1]

Runs alternate (fp32, bf16, fp32, bf16, ...) so both see the same load; each stage's time is
the minimum over the repetitions. Reports the bf16 / fp32 time ratio per stage and the test
metrics of both (bf16 is a different run, not the same numbers). Not a GPU figure.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from app.training.loop import train
from app.training.spec import JobSpec

SPEC = {
    "name": "precision-bench",
    "dataset": {"builtin": "digits-mt"},
    "tasks": [{"name": "digit", "kind": "multiclass", "num_classes": 10},
              {"name": "parity", "kind": "multiclass", "num_classes": 2},
              {"name": "large", "kind": "binary"}],
    "teachers": [{"name": "t", "tasks": ["digit", "parity", "large"],
                  "source": {"train": {"arch": {"type": "mlp", "hidden": [512, 512]}, "epochs": 10}}}],
    "student": {"type": "mlp", "trunk": [256, 128], "head": [32]},
    "training": {"epochs": 20, "batch_size": 128, "lr": 0.002, "seed": 0, "device": "cpu"},
    "baseline": False,
    "export": ["safetensors"],
}


def run(precision: str, workdir: Path) -> dict:
    spec = JobSpec.model_validate({**SPEC, "training": {**SPEC["training"], "precision": precision}})
    results = train(spec, workdir).results
    assert results["precision"] == precision
    return {"stages": {s["name"]: s["seconds"] for s in results["stages"]},
            "student": {task: row["student"] for task, row in results["tasks"].items()},
            "teacher": {task: row["teacher"] for task, row in results["tasks"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="precision-bench-") as tmp:
        for rep in range(args.reps):
            for precision, done in runs.items():
                done.append(run(precision, Path(tmp) / f"{precision}-{rep}"))
    best = {p: {stage: min(r["stages"][stage] for r in rs) for stage in rs[0]["stages"]} for p, rs in runs.items()}
    print(json.dumps({
        "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
        "stage_seconds_min": best,
        "bf16_over_fp32": {stage: round(best["bf16"][stage] / best["fp32"][stage], 3) for stage in best["fp32"]},
        "test_metrics": {p: {"student": rs[0]["student"], "teacher": rs[0]["teacher"]} for p, rs in runs.items()},
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }, indent=1))


if __name__ == "__main__":
    main()
