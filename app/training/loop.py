"""The training loop: `train(spec, workdir, callbacks=...) -> Result`, the engine's one entry point.

It reads as its steps: load the data (train / validation / test), plan the stages, train the
in-job teachers, get the teachers' targets (cached or online), train the student stage(s) and the
baseline, then evaluate everything on test once and write the artifacts (a search's light trial,
spec.trial, stops after the validation measures: trial_results.py). Every epoch end may
checkpoint atomically, so calling `train` again on the same workdir with the same spec resumes
where it stopped and ends with the same weights and metrics as an uninterrupted run.
"""

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.cache import TeacherOutputCache
from app.training.callbacks import CallbackChain, TrainCallbacks
from app.training.checkpoint import load_checkpoint, new_checkpoint
from app.training.datasets.streamed import load_disk_data
from app.training.distributed import Ranks
from app.training.errors import TrainingCancelled, TrainingError
from app.training.files import FileResolver, LocalFileResolver
from app.training.precision import check_precision
from app.training.results import Result, write_results
from app.training.spec import JobSpec, spec_sha256
from app.training.stage import Run, train_stage
from app.training.stage_data import (baseline_data, check_input_ranks, label_mask, load_job_data,
                                     student_data, teacher_data)
from app.training.strategies import plan_stages
from app.training.streamed_targets import streamed_teacher_targets
from app.training.target_scaling import fit_target_scales
from app.training.teacher_targets import load_transfer_inputs, teacher_targets
from app.training.teacher_weights import TeacherWeightsCache, trained_teacher
from app.training.text import is_text_job, load_text_data
from app.training.text_kd import layer_distiller, student_init
from app.training.tracking import ARCHIVE_NAME, TensorBoardWriter
from app.training.trial_results import state_from_trial, write_light_results

__all__ = ["Result", "TrainCallbacks", "TrainingCancelled", "TrainingError", "train"]


def train(spec: JobSpec, workdir: Path, *, callbacks: TrainCallbacks | None = None,
          job_id: str | None = None, cache_dir: Path | None = None,
          resolver: FileResolver | None = None, allow_torchscript: bool = False,
          checkpoint_interval: float = 0.0, reuse_teacher_weights: bool = False,
          ranks: Ranks | None = None, trial_state: Path | None = None,
          placement: dict[str, Any] | None = None) -> Result:
    """Run (or resume) the job in `workdir` and write its artifacts to workdir/artifacts.

    `cache_dir` holds teacher outputs shared between jobs (default: workdir/../teacher-cache);
    `resolver` turns the spec's file references into paths (default: local paths);
    `allow_torchscript` lets TorchScript teachers load (their code runs in this process).
    `checkpoint_interval` (seconds): an epoch end writes the checkpoint only when this long has
    passed since the last one; a stage's last epoch, and an epoch end after a stop was asked
    for, always write it. With 0 every epoch does. A stop asked for while the last epoch end is
    unsaved lets the running epoch finish and saves it, so a cancel or a worker shutdown repeats at
    most the epoch in flight either way; a killed process repeats at most the interval's epochs
    plus that one.
    `reuse_teacher_weights`: an in-job teacher whose stage was trained before under the same key
    (cache_dir/teacher-weights, see teacher_weights.py) is loaded instead of trained again.
    `ranks`: this process's data-parallel rank (launch.py starts them; default: the only one).
    `trial_state`: a light trial's trial-state.pt, for a spec with trial.mode "finalise": its
    student stages are loaded, not trained (a checkpoint in `workdir` still wins).
    `placement`: where the worker ran the job (its device slot, worker/slots.py), written into
    results.json as `placement`.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else workdir.resolve().parent / "teacher-cache"
    resolver = resolver or LocalFileResolver()
    callbacks = callbacks or TrainCallbacks()
    ranks = ranks or Ranks()
    resolver = ranks.resolver(resolver)  # ranks > 0 read the paths rank 0 resolved
    sha = spec_sha256(spec)
    device = resolve_device(spec.training.device, deterministic=spec.training.deterministic)
    check_precision(spec.training.precision, device)  # fp16 on a CPU fails here, before any work

    # 1. Data: train / validation / test, the label subset, the transfer rows, target scales.
    ranks.wait_for_main("data")  # rank 0 fills the file caches first
    on_disk = spec.training.data_placement == "disk"  # an upload larger than memory, in chunks
    if on_disk:
        data = load_disk_data(spec.dataset, tasks=list(spec.tasks), seed=spec.training.seed,
                              resolver=resolver, device=device, directory=workdir / "rows")
    else:  # a text job reads its texts and tokenises them first (text.py)
        data = load_job_data(spec.dataset, tasks=list(spec.tasks), seed=spec.training.seed,
                             resolver=resolver, device=device, loaded=load_text_data(
                                 spec, resolver=resolver, cache_dir=cache_dir) if is_text_job(spec) else None)
    check_input_ranks(spec, data.input_shape, data.layout)
    for note in data.notes:
        callbacks.on_note(message=note)
    transfer_x = load_transfer_inputs(spec, input_shape=data.input_shape, resolver=resolver,
                                      cache_dir=cache_dir, layout=data.layout)
    ranks.handoff("data")
    labelled = label_mask(spec, len(data.x_train))
    scales = fit_target_scales(data.y_train, spec.tasks)
    rows = {"train": len(data.x_train), "validation": len(data.x_val), "test": len(data.x_test),
            "labelled": len(data.x_train) if labelled is None else int(labelled.sum()),
            "transfer": 0 if transfer_x is None else len(transfer_x)}

    # 2. The stages, and where a previous call stopped.
    light = spec.trial is not None and spec.trial.mode == "light"
    plans = [p for p in plan_stages(spec, rows=rows) if not (light and p.role == "baseline")]
    state = load_checkpoint(workdir, spec_sha256=sha) or (
        state_from_trial(trial_state, spec=spec, sha=sha) if trial_state is not None
        else new_checkpoint(spec_sha256=sha))
    # Every exit waits for the checkpoint write in flight and closes the TensorBoard files.
    # Rank 0 alone writes files and calls the caller's callbacks (see distributed.py).
    with ranks.checkpoint_writer(workdir) as writer, TensorBoardWriter(
            workdir / "tensorboard", tasks=spec.tasks,
            fresh=not state["history"] and ranks.is_main) as tensorboard:
        run = Run(spec=spec, workdir=workdir, device=device, state=state, ranks=ranks,
                  callbacks=ranks.callbacks(CallbackChain(callbacks, tensorboard)),
                  plan_epochs={plan.name: plan.epochs for plan in plans}, started=started,
                  writer=writer, scales=scales, checkpoint_interval=checkpoint_interval)

        # 3. In-job teachers, on the job's labelled rows or on their source domain.
        models: dict[str, nn.Module] = {}
        weights_cache = TeacherWeightsCache(cache_dir / "teacher-weights") if reuse_teacher_weights else None
        for plan in (p for p in plans if p.role == "teacher"):
            models[plan.name] = trained_teacher(run, plan, teacher_data(
                tasks=plan.tasks, source_dataset=plan.dataset, data=data, labelled=labelled,
                scales=scales, seed=spec.training.seed, device=device), cache=weights_cache)

        # 4. Every teacher's targets on every split, standardised and combined per task.
        cache = TeacherOutputCache(cache_dir)
        ranks.wait_for_main("teacher-targets")  # built once; the others map rank 0's entries
        if on_disk:  # chunk by chunk; train targets stay on disk
            targets = streamed_teacher_targets(
                spec, data=data, trained=models, scales=scales, resolver=resolver,
                allow_torchscript=allow_torchscript, cache=cache, device=device,
                directory=workdir / "rows" / "soft")
        else:
            targets = teacher_targets(spec, data=data, transfer_x=transfer_x, trained=models,
                                      scales=scales, resolver=resolver,
                                      allow_torchscript=allow_torchscript, cache=cache, device=device)
        ranks.handoff("teacher-targets")
        for note in targets.notes:
            callbacks.on_note(message=note)
        if spec.distillation.online:
            run.online_teachers = targets.teachers  # the spec refuses online precomputed outputs
        run.mapped = bool(cache.mapped)
        run.layer_kd = layer_distiller(spec, targets.teachers)  # text: hidden / attention terms

        # 5. The student stage(s), then the baseline on the labelled rows with the same steps.
        students = student_data(data, transfer_x=transfer_x, labelled=labelled, soft=targets.soft,
                                scales=scales, features=any(plan.features for plan in plans))
        previous: dict[str, torch.Tensor] | None = None
        for plan in (p for p in plans if p.role != "teacher"):
            stage_rows = (baseline_data(data, labelled=labelled, scales=scales)
                          if plan.role == "baseline" else students)
            init = previous if plan.role == "student" else None  # cascaded: start from stage 1
            if plan.role == "student" and spec.student.init_from_teacher:  # DistilBERT-style
                init = student_init(spec, data, targets.teachers)
            models[plan.name] = train_stage(run, plan, stage_rows, init=init)
            if plan.role == "student_trunk":
                previous = models[plan.name].state_dict()

        # 6. Test, once: teacher, student and baseline; export and report (rank 0).
        parallel = ranks.report()  # world_size and each rank's throughput
        if not ranks.is_main:
            return Result(results=parallel, artifacts=[])
        if placement is not None:
            parallel = {**parallel, "placement": placement}
        if light:  # validation only; the student state is kept for a finalise job
            results = write_light_results(
                spec=spec, out=workdir / "artifacts", plans=plans, models=models, state=state,
                targets=targets, data=data, scales=scales, rows=rows, job_id=job_id, sha=sha,
                device=device.type, placements=run.placements, elapsed=run.elapsed(), parallel=parallel)
        else:
            results = write_results(
                spec=spec, out=workdir / "artifacts", plans=plans, models=models,
                finished=state["finished"], history=state["history"], targets=targets, data=data,
                scales=scales, rows=rows, job_id=job_id, sha=sha, device=device.type,
                placements=run.placements, elapsed=run.elapsed(), parallel=parallel)
            results.artifacts.append(tensorboard.archive(workdir / "artifacts" / ARCHIVE_NAME))
    # diagnostics = the teacher notes (reported when found, above) + what the test results show
    for diagnostic in results.results["diagnostics"][len(targets.notes):]:
        callbacks.on_note(message=diagnostic)
    callbacks.on_train_end(results=results.results, artifacts=results.artifacts)
    return results


def resolve_device(name: str, *, deterministic: bool = False) -> torch.device:
    """Return the torch device for the spec's "auto" | "cpu" | "cuda", set up for training.

    On CUDA, cuDNN benchmarks its kernels once per shape (fast, not bit-repeatable) unless the
    job asks for deterministic algorithms; CPU runs repeat exactly either way.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(code="device_unavailable", message="the spec asks for a CUDA device "
                            "but this worker has none; use device 'auto' or 'cpu'")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:  # cuBLAS needs a fixed workspace to repeat its reductions
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic)
    return device
