"""One stage's training: the optimiser and its LR schedule, the epochs, validation every
`eval_every` epochs, best-epoch selection, early stopping, and the checkpoint of each epoch end.

`Run` is what every stage of one train() call shares (the spec, the device, the checkpoint state
and writer, the callbacks); loop.py builds it and calls `train_stage` per stage.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.augment import augment_images
from app.training.batching import Batches, RowBatch, choose_placement, stage_bytes
from app.training.callbacks import TrainCallbacks
from app.training.checkpoint import CheckpointWriter, capture_rng, restore_rng
from app.training.distributed import Ranks
from app.training.errors import TrainingCancelled, TrainingError
from app.training.evaluate import predict, selection_score, task_metrics
from app.training.models import build_model
from app.training.precision import StepPrecision, step_precision
from app.training.results import history_row
from app.training.schedules import build_scheduler
from app.training.spec import JobSpec
from app.training.stage_data import StageData
from app.training.strategies import (Batch, StagePlan, stage_coefficients, stage_term_plan,
                                     steps_per_epoch)
from app.training.streamed_batches import DiskBatches
from app.training.target_scaling import TargetScale
from app.training.text_kd import add_layer_adaptors
from app.training.teacher_targets import Teacher, online_targets
from app.training.weighting import TaskWeighting, build_weighting

Tensors = dict[str, torch.Tensor]


@dataclass
class Run:
    """What every stage of one train() call shares."""

    spec: JobSpec
    workdir: Path
    device: torch.device
    callbacks: TrainCallbacks
    state: dict[str, Any]  # the checkpoint dict (see checkpoint.py)
    plan_epochs: dict[str, int]  # stage -> planned epochs (progress)
    started: float
    writer: CheckpointWriter
    scales: dict[str, TargetScale] = field(default_factory=dict)
    online_teachers: list[Teacher] = field(default_factory=list)  # online KD only
    layer_kd: Any = None  # text_kd.LayerDistiller: hidden / attention terms of the student stage
    mapped: bool = False  # the teacher cache handed out memory-mapped entries
    placements: dict[str, str] = field(default_factory=dict)  # stage -> "device" | "stream"
    # Epoch ends closer together than this share one checkpoint (0: every epoch); see train().
    checkpoint_interval: float = 0.0
    last_saved: float = field(default_factory=time.perf_counter)
    unsaved: bool = False  # an epoch ended since the last checkpoint
    ranks: Ranks = field(default_factory=Ranks)  # data-parallel ranks (distributed.py)

    def elapsed(self) -> float:
        return self.state["elapsed"] + time.perf_counter() - self.started

    def progress(self, *, stage: str, epoch: int) -> float:
        """The job's fraction done: planned epochs of finished stages plus `epoch` of `stage`."""
        done = epoch + sum(self.plan_epochs[name] for name in self.state["finished"] if name != stage)
        return min(1.0, done / sum(self.plan_epochs.values()))

    def teaches_online(self, plan: StagePlan) -> bool:
        """The stage reads teacher targets and they come from a teacher forward every step."""
        return bool(self.online_teachers) and plan.reads_teachers

    def save(self) -> None:
        """Serialise the state now; the writer thread puts it on disk while training goes on."""
        elapsed = self.elapsed()
        self.state["elapsed"], self.started = elapsed, time.perf_counter()
        self.writer.submit(self.state)
        self.last_saved, self.unsaved = time.perf_counter(), False

    def checkpoint_due(self) -> bool:
        """The checkpoint interval has passed since the last save (rank 0's clock decides)."""
        return self.ranks.agree(time.perf_counter() - self.last_saved >= self.checkpoint_interval)


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


@dataclass
class Selection:
    """Best-epoch selection and early stopping on the validation score (higher is better)."""

    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0  # evaluations since the last improvement by more than min_delta
    best: dict[str, Any] | None = None  # the best epoch's weights ("best" selection only)

    def update(self, score: float, *, epoch: int, staged: StageModel, keep: bool,
               min_delta: float) -> None:
        if score > self.best_score + min_delta or self.best_epoch == 0:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best = staged.weights() if keep else None
        else:
            self.stale += 1

    def state(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "stale": self.stale,
                "best": self.best}


def train_stage(run: Run, plan: StagePlan, data: StageData, *,
                init: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Return the stage's trained model (from the checkpoint when the stage already finished)."""
    torch.manual_seed(plan.seed)
    model = build_model(plan.arch, input_shape=tuple(data.x.shape[1:]), tasks=plan.tasks,
                        layout=data.layout, text=data.text)
    adaptors = nn.ModuleDict()
    if plan.features and data.soft is not None:
        width = model.trunk_features  # zoo models expose their trunk tap's width
        adaptors = nn.ModuleDict({name: nn.Linear(width, f.shape[1])
                                  for name, f in data.soft.features.items()})
    if plan.role == "student":  # a text job's hidden-state projections (no-op otherwise)
        add_layer_adaptors(run.layer_kd, model, adaptors)
    weighting = build_weighting(run.spec, [task.name for task in plan.tasks],
                                learned=plan.learned_weighting)
    staged = StageModel(model, adaptors, weighting).to(run.device)
    if init is not None:
        model.load_state_dict(init)
    finished = run.state["finished"].get(plan.name)
    if finished is not None:
        staged.load_weights(finished)
        return staged.model.eval()
    soft = data.soft if plan.reads_teachers and not run.teaches_online(plan) else None
    placement, why = choose_placement(
        run.spec.training.data_placement, run.device,
        nbytes=stage_bytes(data.x, data.targets, data.labelled, soft),
        mapped=run.mapped and soft is not None)
    run.placements[plan.name] = placement
    run.callbacks.on_note(message=f"stage '{plan.name}': {why}")
    batches = (DiskBatches if placement == "disk" else Batches)(
        x=data.x, targets=data.targets, labelled=data.labelled, soft=soft, placement=placement,
        device=run.device, batch_size=run.ranks.local_batch(plan.batch_size),
        soft_tasks=set(plan.soft_tasks),
        features=plan.features, workers=run.spec.training.loader_workers)
    _run_epochs(run, plan, staged, data, batches)
    return staged.model.eval()


def _run_epochs(run: Run, plan: StagePlan, staged: StageModel, data: StageData,
                batches: Batches | DiskBatches) -> None:
    training = run.spec.training
    params = [p for name, p in staged.named_parameters()
              if plan.trains_heads or not name.startswith("model.heads.")]
    # Learned task weights train with the model, without weight decay.
    learned = list(staged.weighting.parameters())
    groups = [{"params": [p for p in params if not any(p is w for w in learned)]}]
    if learned:
        groups.append({"params": learned, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=plan.lr, weight_decay=plan.weight_decay)
    epoch_steps = plan.epoch_steps or steps_per_epoch(batches.rows, plan.batch_size)
    total_steps = plan.epochs * epoch_steps
    scheduler = build_scheduler(training.schedule, optimizer, lr=plan.lr, total_steps=total_steps,
                                warmup_steps=training.warmup_steps)
    generator = torch.Generator().manual_seed(plan.seed)  # batch order, on the CPU
    amp = step_precision(training.precision, run.device)  # autocast; fp16's gradient scaler
    first_epoch, seconds, steps, selection = 1, 0.0, 0, Selection()
    current = run.state["current"]
    if current is not None and current["stage"] == plan.name:
        staged.load_weights(current)
        optimizer.load_state_dict(current["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(current["scheduler"])
        restore_rng(current["rng"], generator, run.device)
        amp.load_state_dict(current.get("scaler"))
        first_epoch, seconds, steps = current["epoch"] + 1, current["seconds"], current["steps"]
        selection = Selection(**current["selection"])

    # The training step's forward (DDP-wrapped under several ranks); evaluation stays eager.
    forward = run.ranks.training_forward(staged)
    if plan.compiled:
        forward = torch.compile(forward)
    # Cascaded stage 1 trains the trunk under untrained heads: its validation metrics are curves
    # only, they choose no epoch and stop nothing.
    early = training.early_stopping if plan.trains_heads else None
    keep_best = training.selection == "best" and plan.trains_heads
    run.callbacks.on_stage_start(stage=plan.name, epochs=plan.epochs)
    checkpointing = 0.0  # last epoch's serialisation + wait for the write before it: stage time too
    for epoch in range(first_epoch, plan.epochs + 1):
        epoch_started = time.perf_counter()
        run.ranks.start_epoch(plan.seed, epoch)
        losses, taken = _train_epoch(run, plan, staged, forward, optimizer, amp, scheduler, generator,
                                     batches)
        steps += taken
        last = epoch == plan.epochs
        metrics: dict[str, float] = {}
        if last or epoch % training.eval_every == 0:
            metrics = task_metrics(predict(staged.model, data.x_val), data.y_val, plan.tasks,
                                   scales=data.scales)
            selection.update(selection_score(metrics, plan.tasks, data.scales), epoch=epoch,
                             staged=staged, keep=keep_best,
                             min_delta=early.min_delta if early else 0.0)
            last = run.ranks.agree(last or (early is not None and selection.stale >= early.patience))
        epoch_seconds = time.perf_counter() - epoch_started
        seconds += epoch_seconds + checkpointing
        run.state["history"].append(history_row(plan, epoch, epoch_seconds, metrics, losses))
        checkpointing, save = 0.0, True
        if last:
            if selection.best is not None:  # "best": the stage ends with its best epoch's weights
                staged.load_weights(selection.best)
            run.state["finished"][plan.name] = {
                **staged.weights(), "epochs": epoch, "seconds": seconds, "steps": steps,
                "best_epoch": selection.best_epoch, "stopped_early": epoch < plan.epochs}
            run.state["current"] = None
        elif run.checkpoint_due() or run.callbacks.should_stop():
            run.state["current"] = {
                "stage": plan.name, "epoch": epoch, "seconds": seconds, "steps": steps,
                **staged.weights(), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "rng": capture_rng(generator, run.device), "selection": selection.state(),
                "scaler": amp.state_dict()}
        else:  # the checkpoint on disk stays at an earlier epoch for now
            save, run.unsaved = False, True
        if save:
            saving_started = time.perf_counter()
            run.save()
            checkpointing = time.perf_counter() - saving_started
        run.callbacks.on_epoch_end(stage=plan.name, epoch=epoch, epochs=plan.epochs,
                                   progress=run.progress(stage=plan.name, epoch=epoch),
                                   metrics=metrics, losses=losses, seconds=epoch_seconds)
        if last:
            break
    waiting_started = time.perf_counter()
    run.writer.wait()  # the stage's final state is on disk before the next stage starts
    finished = run.state["finished"][plan.name]  # in memory (results.json): the full stage time
    finished["seconds"] += checkpointing + time.perf_counter() - waiting_started


def _train_epoch(run: Run, plan: StagePlan, staged: StageModel, forward: Callable[..., Any],
                 optimizer: torch.optim.Optimizer, amp: StepPrecision, scheduler: Any,
                 generator: torch.Generator,
                 batches: Batches | DiskBatches) -> tuple[dict[str, float], int]:
    """Run one epoch: a pass over the stage's rows, or `plan.epoch_steps` steps over as many
    reshuffled passes as that takes; return the sample-weighted mean of each loss term and the
    steps taken.

    Learned task weights are added as "weight.<task>" (their value at the end of the epoch).
    """
    spec = run.spec
    coefficients = stage_coefficients(spec, plan, list(staged.adaptors))
    term_plan = stage_term_plan(spec, plan)  # per epoch, not per step
    noise = spec.training.input_noise if plan.noisy else 0.0
    # Crops and flips go where input_noise goes, to the student and the baseline (so the no-KD
    # control gets the same inputs); teachers and the cascaded trunk stage train on clean rows.
    # StagePlan has no flag for it (plan.noisy is input_noise > 0), so the role decides here.
    augment = spec.training.augment if plan.role in ("student", "baseline") else None
    online = run.teaches_online(plan)
    shared_layer = staged.model.last_shared_layer()  # GradNorm's gradient probe
    shared = None if shared_layer is None else shared_layer.weight
    step_coefficients: dict[str, float] | None = None  # the terms are the same most steps
    # Sample-weighted loss sums stay on the device, one list per set of term names, added to by
    # one fused call per step: one sync per epoch.
    sums: dict[tuple[str, ...], list[torch.Tensor]] = {}
    staged.train()
    taken = seen = 0
    for rows in _epoch_batches(batches, generator, steps=plan.epoch_steps, ranks=run.ranks):
        if not run.unsaved and run.callbacks.should_stop():  # unsaved: stop at the epoch's end
            raise TrainingCancelled(f"cancelled during stage '{plan.name}'")
        x = rows.x  # (batch, *input_shape)
        if augment is not None:  # then noise; online teachers and the student see this same x
            x = augment_images(x, crop_padding=augment.crop_padding, flip=augment.flip)
        if noise > 0:
            x = x + noise * torch.randn_like(x)
        soft = online_targets(spec, run.online_teachers, x, run.scales) if online else rows.soft
        with amp.autocast():  # training.precision: losses are computed in float32
            logits, taps = forward(x)
        batch = Batch(logits={t: z.float() for t, z in logits.items()} if amp.mixed else logits,
                      features=taps["trunk"].flatten(1).float() if plan.features else None,
                      targets=rows.targets,
                      labelled=rows.labelled, teacher_logits=soft.logits if soft else {},
                      teacher_features=soft.features if soft else {})
        terms = term_plan.compute(batch, staged.adaptors)
        if run.layer_kd is not None and plan.role == "student":  # teacher run online on x
            terms.update(run.layer_kd.terms(x, taps, staged.adaptors))
        taken += 1
        seen += len(x)
        # no labelled row and nothing to distil: the batch teaches nothing (under several ranks
        # this rank still steps with the others, its loss joined to the outputs with weight 0)
        if not terms and run.ranks.world_size == 1:
            if scheduler is not None:
                scheduler.step()
            continue
        if step_coefficients is None or step_coefficients.keys() != terms.keys():
            step_coefficients = {name: coefficients[name] for name in terms}
        loss, weighting_terms = staged.weighting.combine(terms, step_coefficients, shared=shared)
        optimizer.zero_grad(set_to_none=True)
        amp.backward(run.ranks.step_loss(loss, logits, taps))  # several ranks: see distributed.py
        run.ranks.average_grads(staged)  # adaptors and learned task weights (the model: DDP)
        amp.step(optimizer)
        if scheduler is not None:
            scheduler.step()
        staged.weighting.after_step()
        values = {**terms, **weighting_terms, "total": torch.as_tensor(loss, device=run.device)}
        names = tuple(values)
        with torch.no_grad():
            if names not in sums:
                sums[names] = [value.new_zeros(()) for value in values.values()]
            torch._foreach_add_(sums[names], list(values.values()), alpha=len(x))
    losses: dict[str, float] = {}
    for names, total in sums.items():
        for name, value in zip(names, (torch.stack(total) / max(seen, 1)).tolist(), strict=True):
            losses[name] = losses.get(name, 0.0) + value
    losses = run.ranks.finish_epoch(staged, losses, seen=seen)  # global means; buffers in sync
    losses.update({f"weight.{task}": w for task, w in staged.weighting.current_weights().items()})
    staged.weighting.end_epoch()  # DWA derives the next epoch's weights here
    broken = [name for name, value in losses.items() if not math.isfinite(value)]
    if broken:
        raise TrainingError(code="diverged", message=(
            f"stage '{plan.name}' diverged: loss {', '.join(broken)} became NaN or infinite; "
            f"try a lower learning rate (was {plan.lr:g})"))
    return losses, taken


def _epoch_batches(batches: Batches | DiskBatches, generator: torch.Generator, *,
                   steps: int | None, ranks: Ranks | None = None) -> Iterator[RowBatch]:
    """Yield one epoch's batches: one seeded pass, or exactly `steps` over fresh passes."""
    taken = 0
    while True:
        order = batches.draw_order(generator)  # (n,) on the CPU; "disk": a chunk plan
        if ranks is not None:  # this rank's part of each global batch
            order = ranks.shard(order, batches.batch_size)
        for rows in batches.epoch(order):
            yield rows
            taken += 1
            if steps is not None and taken == steps:
                return
        if steps is None:
            return
