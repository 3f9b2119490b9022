"""Trained-teacher weights cache: an in-job teacher is trained once and reused by later jobs.

A search runs many trials over the same teachers; each trial is an ordinary job that would train
its `train` teachers again. The weights of a finished teacher stage are stored under a
content-addressed key, built like the output cache's (cache.cache_key): the stage's plan (arch,
tasks, epochs, lr, batch size, weight decay, seed), the training settings that shape every stage,
the device type, and the sha256 of the rows it trains and selects on. A later job whose teacher
stage has the same key loads the stored stage instead of training; its weights are then identical
to the first job's, so the output cache hits too (its identity hashes the weights) and the teacher
runs no forward either. Any difference in what shapes the stage gives another key: a miss.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.cache import cache_key, tensor_sha256
from app.training.stage import Run, train_stage
from app.training.stage_data import StageData
from app.training.strategies import StagePlan

# training.* fields that only the student and baseline stages read: a search varies them, and the
# teachers' stages do not depend on them (a teacher has its own epochs/lr/batch size/weight decay).
STUDENT_ONLY_TRAINING = frozenset({"epochs", "lr", "batch_size", "weight_decay", "seed"})
FORMAT = "teacher-stage-v1"


def teacher_weights_key(plan: StagePlan, data: StageData, *, training: dict[str, Any], device: str) -> str:
    """Return the cache key of a teacher stage's trained weights."""
    assert plan.role == "teacher"
    stage = dataclasses.asdict(plan)
    stage.pop("name")  # the same teacher under another name trains the same weights
    stage["arch"] = plan.arch.model_dump(mode="json")
    stage["tasks"] = [task.model_dump(mode="json") for task in plan.tasks]
    shaping = {k: v for k, v in training.items() if k not in STUDENT_ONLY_TRAINING}
    rows = {
        "x": tensor_sha256(data.x),
        "targets": tensor_sha256(*(data.targets[name] for name in sorted(data.targets))),
        "x_val": tensor_sha256(data.x_val),
        "y_val": tensor_sha256(*(data.y_val[name] for name in sorted(data.y_val))),
    }
    identity = json.dumps({"format": FORMAT, "stage": stage, "training": shaping, "device": device},
                          sort_keys=True, default=str)
    return cache_key(teacher_identity=identity, inputs_sha256=rows, extra=FORMAT)


class TeacherWeightsCache:
    """Directory of finished teacher stages: <directory>/<key>.pt (a plain dict of tensors and numbers)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.directory / f"{key}.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def put(self, key: str, finished: dict[str, Any]) -> None:
        """Store a finished stage atomically; a concurrent writer of the same key is harmless."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        torch.save(finished, tmp)
        os.replace(tmp, self.directory / f"{key}.pt")


def trained_teacher(run: Run, plan: StagePlan, data: StageData, *,
                    cache: TeacherWeightsCache | None) -> nn.Module:
    """Return the teacher stage's model: from this job's checkpoint, the weights cache, or training."""
    if cache is None or plan.name in run.state["finished"]:  # no cache; or a resumed job's stage
        return train_stage(run, plan, data)
    key = teacher_weights_key(plan, data, training=run.spec.training.model_dump(mode="json"),
                              device=run.device.type)
    stored = cache.get(key)
    if not run.ranks.agree(stored is not None):  # data-parallel: every rank trains if rank 0 does
        stored = None
    if stored is not None:
        # This job spent no time on the stage; epochs/steps say what the stored weights went through.
        run.state["finished"][plan.name] = {**stored, "seconds": 0.0}
        run.callbacks.on_note(message=f"stage '{plan.name}': trained weights from the teacher cache "
                                      f"({key[:12]}), not trained again")
        return train_stage(run, plan, data)
    model = train_stage(run, plan, data)
    cache.put(key, run.state["finished"][plan.name])
    return model
