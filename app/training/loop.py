"""The training loop: `train(spec, workdir, callbacks=...) -> Result`, the engine's one entry point.

Stages run in order (trained teachers, the student stage(s), the hard-label baseline); every epoch
ends with an atomic checkpoint, so calling `train` again on the same workdir with the same spec
resumes where it stopped and ends with the same weights and metrics as an uninterrupted run.
Teachers run once over the train/test/transfer inputs and their outputs go to a content-addressed
cache (`cache_dir`), unless `distillation.online` asks for a teacher forward every step.
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.batching import Batches, choose_placement, stage_bytes
from app.training.cache import TeacherOutputCache
from app.training.checkpoint import (CheckpointWriter, capture_rng, load_checkpoint, new_checkpoint,
                                     restore_rng)
from app.training.datasets.registry import DatasetSplits, load_dataset
from app.training.errors import TrainingCancelled, TrainingError
from app.training.evaluate import predict, task_metrics
from app.training.models import build_model
from app.training.results import history_row, write_results
from app.training.spec import DatasetSpec, JobSpec, input_rank_problem, spec_sha256
from app.training.strategies import (Batch, StagePlan, plan_stages, soft_tasks, stage_coefficients,
                                     stage_term_plan, trains_trunk_only, uses_features,
                                     uses_teachers)
from app.training.target_scaling import TargetScale, fit_target_scales, standardise_targets
from app.training.teacher_targets import (SoftTargets, Teacher, average_targets, build_teacher,
                                          load_transfer_inputs, split_outputs)
from app.training.teachers import FileResolver, LocalFileResolver, PrecomputedTeacher
from app.training.weighting import TaskWeighting, build_weighting

__all__ = ["Result", "TrainCallbacks", "TrainingCancelled", "TrainingError", "train"]

Tensors = dict[str, torch.Tensor]


class TrainCallbacks:
    """Hooks the caller overrides (the worker writes events and heartbeats); all no-ops here."""

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        """Called when a stage starts or resumes."""

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                     metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
        """Called after each epoch's state is checkpointed; progress is the job's fraction done (0..1).

        The checkpoint is written in the background: train() waits for it before it returns or
        raises, so after a crash inside this hook the epoch is still on disk.
        """

    def should_stop(self) -> bool:
        """Return True to cancel; checked between optimisation steps."""
        return False

    def on_note(self, *, message: str) -> None:
        """Called with each note about the data (rows dropped, values imputed, labels encoded)."""


@dataclass
class Result:
    """What a finished job produced: results.json's content and the artifact files."""

    results: dict[str, Any]
    artifacts: list[Path]


@dataclass
class StageData:
    """The rows a stage trains on (CPU; see batching.py for placement) and its test split (device)."""

    x: torch.Tensor  # (n, *input_shape)
    targets: Tensors  # task -> (n, ...), regression standardised
    labelled: torch.Tensor | None  # (n,) bool; None: all rows labelled
    soft: SoftTargets | None  # teacher targets of the n rows (cached path)
    x_test: torch.Tensor
    y_test: Tensors  # original units
    scales: dict[str, TargetScale]


@dataclass
class _Run:
    """What every stage of one train() call shares."""

    spec: JobSpec
    workdir: Path
    device: torch.device
    callbacks: TrainCallbacks
    state: dict[str, Any]  # the checkpoint dict (see checkpoint.py)
    total_epochs: int
    started: float
    elapsed_before: float
    writer: CheckpointWriter
    online_teachers: list[Teacher] = field(default_factory=list)  # online KD only
    mapped: bool = False  # the teacher cache handed out memory-mapped entries
    placements: dict[str, str] = field(default_factory=dict)  # stage -> "device" | "stream"
    # Epoch ends closer together than this share one checkpoint (0: every epoch); see train().
    checkpoint_interval: float = 0.0
    last_saved: float = field(default_factory=time.perf_counter)
    unsaved: bool = False  # an epoch ended since the last checkpoint

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def epochs_done(self, *, stage: str, stage_epochs: int) -> int:
        """Epochs of the other finished stages plus `stage_epochs` of `stage`."""
        return stage_epochs + sum(entry["epochs"] for name, entry in self.state["finished"].items()
                                  if name != stage)

    def teaches_online(self, plan: StagePlan) -> bool:
        """The stage reads teacher targets and they come from a teacher forward every step."""
        return bool(self.online_teachers) and uses_teachers(plan)

    def checkpoint_due(self) -> bool:
        return time.perf_counter() - self.last_saved >= self.checkpoint_interval

    def save(self) -> None:
        """Serialise the state now; the writer thread puts it on disk while training goes on."""
        self.state["elapsed"] = self.elapsed()
        self.writer.submit(self.state)
        self.last_saved, self.unsaved = time.perf_counter(), False


def train(spec: JobSpec, workdir: Path, *, callbacks: TrainCallbacks | None = None,
          job_id: str | None = None, cache_dir: Path | None = None,
          resolver: FileResolver | None = None, checkpoint_interval: float = 0.0) -> Result:
    """Run (or resume) the job in `workdir` and write its artifacts to workdir/artifacts.

    `cache_dir` holds teacher outputs shared between jobs (default: workdir/../teacher-cache);
    `resolver` turns the spec's file references into paths (default: local paths).
    `checkpoint_interval` (seconds): an epoch end writes the checkpoint only when this long has
    passed since the last one; a stage's last epoch, and an epoch end after a stop was asked
    for, always write it. With 0 every epoch does. A stop asked for while the last epoch end is
    unsaved lets the running epoch finish and saves it, so a cancel or a worker shutdown repeats at
    most the epoch in flight either way; a killed process repeats at most the interval's epochs
    plus that one.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else workdir.resolve().parent / "teacher-cache"
    resolver = resolver or LocalFileResolver()
    sha = spec_sha256(spec)
    device = resolve_device(spec.training.device)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    data = _test_split_on(load_dataset(spec.dataset, tasks=list(spec.tasks), resolver=resolver),
                          device)
    check_input_ranks(spec, data.input_shape)
    callbacks = callbacks or TrainCallbacks()
    for note in data.notes:
        callbacks.on_note(message=note)
    transfer_x = load_transfer_inputs(spec, input_shape=data.input_shape, resolver=resolver,
                                      cache_dir=cache_dir)
    state = load_checkpoint(workdir, spec_sha256=sha) or new_checkpoint(spec_sha256=sha)
    plans = plan_stages(spec)
    # Every exit (return, error, cancel) waits for the checkpoint write in flight.
    with CheckpointWriter(workdir) as writer:
        run = _Run(spec=spec, workdir=workdir, device=device, callbacks=callbacks or TrainCallbacks(),
                   state=state, total_epochs=sum(plan.epochs for plan in plans), started=started,
                   elapsed_before=state["elapsed"], writer=writer,
                   checkpoint_interval=checkpoint_interval)
        scales = fit_target_scales(data.y_train, spec.tasks)

        models: dict[str, nn.Module] = {}
        for plan in (p for p in plans if p.role == "teacher"):
            models[plan.name] = _trained_model(run, plan, _teacher_data(run, plan, data, scales))
        splits = {"train": data.x_train, "test": data.x_test}
        if transfer_x is not None:
            splits["transfer"] = transfer_x
        teachers, outputs, cache_status = [], [], {}
        cache = TeacherOutputCache(cache_dir)
        for teacher in spec.teachers:
            built = build_teacher(spec, teacher, trained=models.get(f"teacher:{teacher.name}"),
                                  input_shape=data.input_shape, resolver=resolver,
                                  rows={split: len(x) for split, x in splits.items()})
            per_split, hit = split_outputs(built, splits, cache=cache)
            if teacher.source.train is None:  # file teachers answer in original units
                for out in per_split.values():
                    out.logits = standardise_targets(out.logits, scales)
            teachers.append(built)
            outputs.append(per_split)
            cache_status[teacher.name] = ("precomputed" if isinstance(built, PrecomputedTeacher)
                                          else "hit" if hit else "miss")
        if spec.distillation.online:
            run.online_teachers = teachers
        run.mapped = bool(cache.mapped)
        # Train/transfer targets stay on the CPU until a stage places them (batching.py).
        soft = {split: average_targets(spec, [out[split] for out in outputs],
                                       device=device if split == "test" else torch.device("cpu"))
                for split in splits}

        labelled = label_mask(spec, len(data.x_train), device=torch.device("cpu"))
        student_data = _student_data(data, transfer_x=splits.get("transfer"), labelled=labelled,
                                     soft=soft, scales=scales,
                                     features=any(uses_features(spec, plan) for plan in plans))
        baseline_data = StageData(x=data.x_train, targets=standardise_targets(data.y_train, scales),
                                  labelled=labelled, soft=None, x_test=data.x_test, y_test=data.y_test,
                                  scales=scales)
        previous: dict[str, torch.Tensor] | None = None
        for plan in (p for p in plans if p.role != "teacher"):
            stage_data = baseline_data if plan.role == "baseline" else student_data
            init = previous if plan.role == "student" else None  # cascaded: start from stage 1
            models[plan.name] = _trained_model(run, plan, stage_data, init=init)
            if plan.role == "student_trunk":
                previous = models[plan.name].state_dict()
        return write_results(
            run=run, plans=plans, models=models, teachers=teachers, data=data, scales=scales,
            teacher_test=soft["test"], cache_status=cache_status, job_id=job_id, sha=sha,
            rows={"train": len(data.x_train),
                  "labelled": len(data.x_train) if labelled is None else int(labelled.sum()),
                  "transfer": 0 if transfer_x is None else len(transfer_x)})


def check_input_ranks(spec: JobSpec, input_shape: tuple[int, ...]) -> None:
    """An uploaded dataset's shape is known only now: check every zoo architecture accepts it."""
    archs = [("student", spec.student)] + [
        (f"teachers[{i}]", t.source.train.arch if t.source.train else t.source.weights.arch)
        for i, t in enumerate(spec.teachers) if t.source.train or t.source.weights]
    for where, arch in archs:
        problem = input_rank_problem(arch, input_shape)
        if problem:
            raise TrainingError(code="invalid_data", message=(
                f"{where}: {problem}; the dataset's inputs have shape {list(input_shape)}"))


def resolve_device(name: str) -> torch.device:
    """Return the torch device for the spec's "auto" | "cpu" | "cuda"."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(code="device_unavailable", message="the spec asks for a CUDA device "
                            "but this worker has none; use device 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _test_split_on(data: DatasetSplits, device: torch.device) -> DatasetSplits:
    """Move the test split (evaluated every epoch) to the device; training rows stay on the CPU."""
    return dataclasses.replace(data, x_test=data.x_test.to(device),
                               y_test={task: y.to(device) for task, y in data.y_test.items()})


def label_mask(spec: JobSpec, n_rows: int, *, device: torch.device) -> torch.Tensor | None:
    """Return which training rows keep their labels (a fixed seeded subset), None for all."""
    fraction = spec.distillation.label_fraction
    if fraction >= 1:
        return None
    keep = torch.randperm(n_rows, generator=torch.Generator().manual_seed(spec.training.seed))
    mask = torch.zeros(n_rows, dtype=torch.bool)
    mask[keep[:round(fraction * n_rows)]] = True
    return mask.to(device)


def _teacher_data(run: _Run, plan: StagePlan, data: DatasetSplits,
                  scales: dict[str, TargetScale]) -> StageData:
    names = [task.name for task in plan.tasks]
    if plan.dataset is not None:  # source domain: its own rows, scales and test split
        data = _test_split_on(load_dataset(DatasetSpec(builtin=plan.dataset), tasks=list(plan.tasks)),
                              run.device)
        scales = fit_target_scales(data.y_train, plan.tasks)
    targets = standardise_targets({name: data.y_train[name] for name in names}, scales)
    return StageData(x=data.x_train, targets=targets, labelled=None, soft=None, x_test=data.x_test,
                     y_test={name: data.y_test[name] for name in names}, scales=scales)


def _student_data(data: DatasetSplits, *, transfer_x: torch.Tensor | None,
                  labelled: torch.Tensor | None, soft: dict[str, SoftTargets],
                  scales: dict[str, TargetScale], features: bool) -> StageData:
    """Training rows followed by the unlabelled transfer rows, with the teachers' targets.

    Teacher features are joined only when a stage reads them (`features`): for the 50k MNIST-1D
    transfer set that is a (51k, 128) float32 copy, and unread mapped cache pages stay on disk.
    """
    targets = standardise_targets(data.y_train, scales)
    train_soft = soft["train"]
    if transfer_x is None:
        return StageData(x=data.x_train, targets=targets, labelled=labelled, soft=train_soft,
                         x_test=data.x_test, y_test=data.y_test, scales=scales)
    n_train, n_extra = len(data.x_train), len(transfer_x)
    mask = labelled if labelled is not None else torch.ones(n_train, dtype=torch.bool,
                                                             device=transfer_x.device)
    extra = soft["transfer"]
    return StageData(
        x=torch.cat([data.x_train, transfer_x]),
        targets={task: torch.cat([y, y.new_zeros((n_extra, *y.shape[1:]))])  # unused: unlabelled
                 for task, y in targets.items()},
        labelled=torch.cat([mask, mask.new_zeros(n_extra)]),
        soft=SoftTargets(logits={t: torch.cat([z, extra.logits[t]]) for t, z in train_soft.logits.items()},
                         features={n: torch.cat([f, extra.features[n]])
                                   for n, f in train_soft.features.items()} if features else {}),
        x_test=data.x_test, y_test=data.y_test, scales=scales)


class StageModel(nn.Module):
    """The model a stage optimises, its feature adaptors (one Linear per teacher), its task weighting."""

    def __init__(self, model: nn.Module, adaptors: nn.ModuleDict, weighting: TaskWeighting) -> None:
        super().__init__()
        self.model = model
        self.adaptors = adaptors
        self.weighting = weighting  # learned weights and their state (DWA history, GradNorm L(0))

    def forward(self, x: torch.Tensor) -> Tensors:
        return self.model(x)

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return CPU copies of the model's and the adaptors' state (what checkpoints keep)."""
        return {part: {name: t.detach().cpu().clone() for name, t in module.state_dict().items()}
                for part, module in (("model", self.model), ("adaptors", self.adaptors),
                                     ("weighting", self.weighting))}

    def load_weights(self, saved: dict[str, Any]) -> None:
        """Load what weights() returned (a checkpoint's stage entry)."""
        self.model.load_state_dict(saved["model"])
        self.adaptors.load_state_dict(saved.get("adaptors", {}))
        self.weighting.load_state_dict(saved.get("weighting", {}))


def _trained_model(run: _Run, plan: StagePlan, data: StageData, *,
                   init: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Return the stage's trained model (from the checkpoint when the stage already finished)."""
    torch.manual_seed(plan.seed)
    model = build_model(plan.arch, input_shape=tuple(data.x.shape[1:]), tasks=plan.tasks)
    adaptors = nn.ModuleDict()
    if uses_features(run.spec, plan) and data.soft is not None:
        width = model.trunk_features  # zoo models expose their trunk tap's width
        adaptors = nn.ModuleDict({name: nn.Linear(width, f.shape[1])
                                  for name, f in data.soft.features.items()})
    weighting = build_weighting(run.spec, [task.name for task in plan.tasks],
                                learned=plan.role in ("student", "baseline"))
    staged = StageModel(model, adaptors, weighting).to(run.device)
    if init is not None:
        model.load_state_dict(init)
    finished = run.state["finished"].get(plan.name)
    soft = data.soft if uses_teachers(plan) and not run.teaches_online(plan) else None
    placement, why = choose_placement(
        run.spec.training.data_placement, run.device,
        nbytes=stage_bytes(data.x, data.targets, data.labelled, soft),
        mapped=run.mapped and soft is not None)
    run.placements[plan.name] = placement
    if finished is not None:
        staged.load_weights(finished)
    else:
        run.callbacks.on_note(message=f"stage '{plan.name}': {why}")
        batches = Batches(x=data.x, targets=data.targets, labelled=data.labelled, soft=soft,
                          placement=placement, device=run.device, batch_size=plan.batch_size,
                          soft_tasks={task.name for task in soft_tasks(run.spec, plan)},
                          features=uses_features(run.spec, plan),
                          workers=run.spec.training.loader_workers)
        _train_stage(run, plan, staged, data, batches)
    return staged.model.eval()


def _train_stage(run: _Run, plan: StagePlan, staged: StageModel, data: StageData,
                 batches: Batches) -> None:
    params = [p for name, p in staged.named_parameters()
              if not (trains_trunk_only(plan) and name.startswith("model.heads."))]
    # Learned task weights train with the model, without weight decay.
    groups = [{"params": [p for p in params if not any(p is w for w in staged.weighting.parameters())]}]
    if any(True for _ in staged.weighting.parameters()):
        groups.append({"params": list(staged.weighting.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=plan.lr, weight_decay=plan.weight_decay)
    generator = torch.Generator().manual_seed(plan.seed)  # batch order, on the CPU
    first_epoch, seconds = 1, 0.0
    current = run.state["current"]
    if current is not None and current["stage"] == plan.name:
        staged.load_weights(current)
        optimizer.load_state_dict(current["optimizer"])
        restore_rng(current["rng"], generator, run.device)
        first_epoch, seconds = current["epoch"] + 1, current["seconds"]

    forward = staged.model.forward_features  # the training step's forward; evaluation stays eager
    if run.spec.training.compile and plan.role != "teacher":
        forward = torch.compile(forward)
    run.callbacks.on_stage_start(stage=plan.name, epochs=plan.epochs)
    checkpointing = 0.0  # last epoch's serialisation + wait for the write before it: stage time too
    for epoch in range(first_epoch, plan.epochs + 1):
        epoch_started = time.perf_counter()
        losses = _train_epoch(run, plan, staged, forward, optimizer, generator, batches)
        metrics = task_metrics(predict(staged.model, data.x_test), data.y_test, plan.tasks,
                               scales=data.scales)
        epoch_seconds = time.perf_counter() - epoch_started
        seconds += epoch_seconds + checkpointing
        run.state["history"].append(history_row(plan, epoch, epoch_seconds, metrics, losses))
        checkpointing, save = 0.0, True
        if epoch == plan.epochs:
            run.state["finished"][plan.name] = {**staged.weights(), "epochs": plan.epochs,
                                                "seconds": seconds}
            run.state["current"] = None
        elif run.checkpoint_due() or run.callbacks.should_stop():
            run.state["current"] = {"stage": plan.name, "epoch": epoch, "seconds": seconds,
                                    **staged.weights(), "optimizer": optimizer.state_dict(),
                                    "rng": capture_rng(generator, run.device)}
        else:  # the checkpoint on disk stays at an earlier epoch for now
            save, run.unsaved = False, True
        if save:
            saving_started = time.perf_counter()
            run.save()
            checkpointing = time.perf_counter() - saving_started
        run.callbacks.on_epoch_end(stage=plan.name, epoch=epoch, epochs=plan.epochs,
                                   progress=run.epochs_done(stage=plan.name, stage_epochs=epoch)
                                   / run.total_epochs,
                                   metrics=metrics, losses=losses, seconds=epoch_seconds)
    waiting_started = time.perf_counter()
    run.writer.wait()  # the stage's final state is on disk before the next stage starts
    if plan.name in run.state["finished"]:  # in memory (results.json): the full stage time
        finished = run.state["finished"][plan.name]
        run.state["finished"][plan.name] = {**finished, "seconds": finished["seconds"] + checkpointing
                                            + time.perf_counter() - waiting_started}


def _train_epoch(run: _Run, plan: StagePlan, staged: StageModel, forward: Callable[..., Any],
                 optimizer: torch.optim.Optimizer, generator: torch.Generator,
                 batches: Batches) -> dict[str, float]:
    """Run one pass over the stage's rows; return the sample-weighted mean of each loss term.

    Learned task weights are added as "weight.<task>" (their value at the end of the epoch).
    """
    spec = run.spec
    coefficients = stage_coefficients(spec, plan, list(staged.adaptors))
    term_plan = stage_term_plan(spec, plan)  # per epoch, not per step
    noise = spec.training.input_noise if plan.role in ("student", "baseline") else 0.0
    online = run.teaches_online(plan)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda"
                else contextlib.nullcontext())
    shared_layer = staged.model.last_shared_layer()  # GradNorm's gradient probe
    shared = None if shared_layer is None else shared_layer.weight
    step_coefficients: dict[str, float] | None = None  # the terms are the same every step
    # Loss sums stay on the device, one stacked tensor per set of term names: one sync per epoch.
    sums: dict[tuple[str, ...], torch.Tensor] = {}
    staged.train()
    order = torch.randperm(batches.rows, generator=generator)  # (n,) on the CPU
    for rows in batches.epoch(order):
        if not run.unsaved and run.callbacks.should_stop():  # unsaved: stop at the epoch's end
            raise TrainingCancelled(f"cancelled during stage '{plan.name}'")
        x = rows.x  # (batch, *input_shape)
        if noise > 0:
            x = x + noise * torch.randn_like(x)
        soft = rows.soft
        if online:
            soft = average_targets(spec, [t.outputs(x) for t in run.online_teachers],
                                   device=run.device)
        with autocast:
            logits, taps = forward(x)
        batch = Batch(logits={t: z.float() for t, z in logits.items()},
                      features=taps["trunk"].flatten(1).float(), targets=rows.targets,
                      labelled=rows.labelled, teacher_logits=soft.logits if soft else {},
                      teacher_features=soft.features if soft else {})
        terms = term_plan.compute(batch, staged.adaptors)
        if step_coefficients is None or step_coefficients.keys() != terms.keys():
            step_coefficients = {name: coefficients[name] for name in terms}
        loss, weighting_terms = staged.weighting.combine(terms, step_coefficients, shared=shared)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        staged.weighting.after_step()
        values = {**terms, **weighting_terms, "total": loss}
        names = tuple(values)
        weighted = torch.stack([value.detach() for value in values.values()]) * len(x)  # (terms,)
        sums[names] = weighted if names not in sums else sums[names] + weighted
    losses: dict[str, float] = {}
    for names, total in sums.items():
        for name, value in zip(names, (total / batches.rows).tolist(), strict=True):
            losses[name] = losses.get(name, 0.0) + value
    losses.update({f"weight.{task}": w for task, w in staged.weighting.current_weights().items()})
    staged.weighting.end_epoch()  # DWA derives the next epoch's weights here
    broken = [name for name, value in losses.items() if not math.isfinite(value)]
    if broken:
        raise TrainingError(code="diverged", message=(
            f"stage '{plan.name}' diverged: loss {', '.join(broken)} became NaN or infinite; "
            f"try a lower learning rate (was {plan.lr:g})"))
    return losses
