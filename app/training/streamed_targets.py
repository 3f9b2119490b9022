"""Teacher targets of a dataset on disk: each teacher runs chunk by chunk over each split, its
outputs go to the teacher-output cache as row stores, and the standardised ensemble (exactly as
teacher_targets.py combines them) goes to a job-local store that training reads in chunks.

Validation and test logits (a few floats a row) come back in memory for the teacher's metrics;
everything else stays on disk.
A cache entry is keyed like teacher_targets.py's, by the teacher's identity and the sha256 of the
split's input bytes (written with the row store), one entry per teacher and split.
"""

import shutil
from pathlib import Path

import torch
from torch import nn

from app.training.cache import TeacherOutputCache, cache_key
from app.training.datasets.rowstore import DiskRows, RowWriter, open_store, publish
from app.training.datasets.splits import DatasetSplits
from app.training.files import FileResolver
from app.training.spec import JobSpec
from app.training.target_scaling import TargetScale
from app.training.teacher_outputs import TeacherOutputs, probability_warning
from app.training.teacher_targets import (SoftTargets, TeacherTargets, _outputs_on_model_device,
                                          build_teacher, ensemble, standardised)

CHUNK_BYTES = 8 << 20  # x bytes per training read: sequential, and a bounded buffer
TEACHER_ROWS = 8192  # rows per teacher forward: its activations grow with the rows, not x's bytes


class _TeacherSplit:
    """One teacher's outputs on one split: read from its cache entry, or computed and stored."""

    def __init__(self, teacher: object, x: DiskRows, cache: TeacherOutputCache) -> None:
        identity = getattr(teacher, "identity", None)
        assert identity is not None, "precomputed teachers are refused with data_placement 'disk'"
        key = cache_key(teacher_identity=identity, inputs_sha256={"rows": x.sha256})
        self.final = cache.directory / f"rows-{key}"
        self.stored = open_store(self.final)
        self.teacher, self.writer = teacher, None

    def outputs(self, x: torch.Tensor, start: int) -> TeacherOutputs:
        if self.stored is not None:
            stop = start + len(x)
            return TeacherOutputs.from_tensors({n: c.read(start, stop) for n, c in self.stored.items()})
        out = _outputs_on_model_device(self.teacher, x)  # type: ignore[arg-type]
        flat = {n: t.detach().float().cpu() for n, t in out.as_tensors().items()}
        if self.writer is None:
            self.tmp = self.final.with_name(f".{self.final.name}.tmp")
            self.writer = RowWriter(self.tmp, {n: ("<f4", tuple(t.shape[1:])) for n, t in flat.items()})
        self.writer.append({n: t.numpy() for n, t in flat.items()})
        return TeacherOutputs.from_tensors(flat)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            publish(self.tmp, self.final)


def streamed_teacher_targets(spec: JobSpec, *, data: DatasetSplits, trained: dict[str, nn.Module],
                             scales: dict[str, TargetScale], resolver: FileResolver,
                             allow_torchscript: bool, cache: TeacherOutputCache,
                             device: torch.device, directory: Path) -> TeacherTargets:
    """Return the teachers and their targets: train on disk (CPU reads), val/test on `device`."""
    splits = {"train": data.x_train, "val": data.x_val, "test": data.x_test}
    teachers = [build_teacher(spec, t, trained=trained.get(f"teacher:{t.name}"),
                              input_shape=data.input_shape, rows={}, resolver=resolver,
                              allow_torchscript=allow_torchscript, layout=data.layout)
                for t in spec.teachers]
    hits = {t.name: True for t in spec.teachers}
    notes: list[str] = []
    soft: dict[str, SoftTargets] = {}
    for split, x in splits.items():
        assert isinstance(x, DiskRows)
        x = x.cpu()
        parts = [_TeacherSplit(teacher, x, cache) for teacher in teachers]
        for spec_teacher, part in zip(spec.teachers, parts, strict=True):
            hits[spec_teacher.name] &= part.stored is not None
        tmp, final = directory / f".{split}.tmp", directory / split
        writer: RowWriter | None = None
        for start, rows in x.chunks(TEACHER_ROWS):
            outputs = [part.outputs(rows, start) for part in parts]
            if split == "train" and start == 0:
                notes += _probability_notes(spec, outputs)
            combined = ensemble(spec, [standardised(t, o, scales)
                                       for t, o in zip(spec.teachers, outputs, strict=True)])
            flat = {f"logits/{t}": z for t, z in combined.logits.items()}
            flat.update({f"features/{n}": f for n, f in combined.features.items()})
            if writer is None:
                writer = RowWriter(tmp, {n: ("<f4", tuple(t.shape[1:])) for n, t in flat.items()})
            writer.append({n: t.detach().float().cpu().numpy() for n, t in flat.items()})
        for part in parts:
            part.finish()
        assert writer is not None, f"the {split} split has no rows"
        writer.close()
        if final.exists():  # a resumed job recomputes its (cached) targets: the new store wins
            shutil.rmtree(final)
        publish(tmp, final)
        stored = open_store(final)
        assert stored is not None
        # val/test logits (a few floats a row) come to memory for the teacher's metrics; features
        # (a trunk's width a row) are read by training only, so they stay on disk
        columns = {n: c if split == "train" or not n.startswith("logits/") else c[:].to(device)
                   for n, c in stored.items()}
        soft[split] = SoftTargets(  # type: ignore[arg-type]
            logits={n.removeprefix("logits/"): c for n, c in columns.items() if n.startswith("logits/")},
            features={n.removeprefix("features/"): c for n, c in columns.items()
                      if n.startswith("features/")})
    return TeacherTargets(teachers=teachers, soft=soft,  # type: ignore[arg-type]
                          cache_status={n: "hit" if hit else "miss" for n, hit in hits.items()},
                          notes=notes)


def _probability_notes(spec: JobSpec, outputs: list[TeacherOutputs]) -> list[str]:
    """The logits-that-look-like-probabilities check of teacher_targets.py, on the first chunk."""
    found = []
    for spec_teacher, out in zip(spec.teachers, outputs, strict=True):
        if spec_teacher.source.outputs_are == "logits":
            warning = probability_warning(spec_teacher.name, out,
                                          [spec.task(name) for name in spec_teacher.tasks],
                                          kind=spec_teacher.source.kind)
            found += [warning] if warning else []
    return found


def chunk_rows_for(x: DiskRows, batch_size: int, *, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Return rows per training read: about `chunk_bytes` of x, a whole number of batches."""
    per_row = max(1, x.numel() // max(len(x), 1) * x.element_size())
    return max(1, chunk_bytes // per_row // batch_size) * batch_size

