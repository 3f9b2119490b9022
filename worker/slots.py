"""Device slots: each pool process of a GPU worker trains on its own GPUs, never on another's.

A worker with D devices (DISTILLERY_WORKER_DEVICES, else its CUDA devices, else 1) and c pool
processes (`-c`) gives pool process i the GPUs [i*k, (i+1)*k) of its own visible list, k = D // c.
i is billiard's index of the child (0..c-1); the child that replaces one (every job gets a fresh
child) takes the index its predecessor left, so at most one live process holds a slot. The slot is
exported as CUDA_VISIBLE_DEVICES in the child (`worker_process_init`) before anything there
initialises CUDA, so the engine sees only its own GPUs: a job trains on cuda:0 and its data-parallel
ranks on cuda:r of those (app/training/launch.py), and the child takes jobs of at most k devices
(worker/ddp.py). A GPU worker with c > D refuses to start: two processes would share a GPU.

A CPU worker keeps D for every process (gloo ranks share the cores; there is no device to share).
GPU or CPU: DISTILLERY_WORKER_ACCELERATOR cuda/cpu, or "auto": CUDA devices detected. A worker set
to "cpu" on a host with GPUs hides them from its jobs.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any

from app.config import Settings

log = logging.getLogger("distillery.worker")
CPU, CUDA = "cpu", "cuda"


class SlotError(RuntimeError):
    """The worker's devices cannot be split among its pool processes without sharing a GPU."""


def detected_cuda_devices() -> int:
    """Return the CUDA devices this process sees, without initialising CUDA (torch asks NVML
    first, which leaves a later fork safe)."""
    import torch

    return torch.cuda.device_count()


@dataclass(frozen=True)
class Slot:
    """What one pool process trains on."""

    index: int | None  # the pool process's index; None outside a worker's pool (tests, tools)
    accelerator: str  # "cpu" | "cuda"
    devices: int  # the most devices one job can use here
    cuda_visible_devices: str | None  # exported to the process (None: left as it was)

    def record(self) -> dict[str, Any]:
        """Return the slot as a job's `started` event and results.json `placement` show it."""
        return {"slot": self.index, "accelerator": self.accelerator, "devices": self.devices,
                "cuda_visible_devices": self.cuda_visible_devices}


@dataclass(frozen=True)
class SlotPlan:
    """How a worker's devices are split among its pool processes."""

    accelerator: str  # "cpu" | "cuda"
    devices: int  # the worker's own: D
    processes: int  # pool processes: c
    gpu_ids: tuple[str, ...] = ()  # the GPUs it may use, as CUDA_VISIBLE_DEVICES names them
    hide_gpus: bool = False  # a CPU worker on a host with GPUs

    @property
    def per_process(self) -> int:
        return self.devices // self.processes if self.accelerator == CUDA else self.devices

    def slot(self, index: int) -> Slot:
        """Return pool process `index`'s slot."""
        if self.accelerator == CPU:
            return Slot(index, CPU, self.devices, "" if self.hide_gpus else None)
        k = self.per_process
        return Slot(index, CUDA, k, ",".join(self.gpu_ids[index * k:(index + 1) * k]))


def plan_slots(settings: Settings, processes: int, *, environ: dict[str, str] | None = None,
               detected: int | None = None) -> SlotPlan:
    """Split this worker's devices among `processes` pool processes; SlotError when a GPU worker
    cannot give each its own GPU."""
    environ = dict(os.environ) if environ is None else environ
    detected = detected_cuda_devices() if detected is None else detected
    accelerator = settings.worker_accelerator if settings.worker_accelerator != "auto" else (
        CUDA if detected else CPU)
    total = settings.worker_devices or detected or 1
    if accelerator == CPU:
        return SlotPlan(CPU, total, processes, hide_gpus=detected > 0)
    if processes > total:
        raise SlotError(
            f"this GPU worker has {total} devices and {processes} pool processes (-c {processes}): "
            f"two processes would share a GPU. Use -c {total} or fewer (each process gets "
            "DISTILLERY_WORKER_DEVICES // c GPUs)")
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    ids = tuple(i for i in (part.strip() for part in visible.split(",")) if i) if visible is not None else \
        tuple(str(i) for i in range(total))
    if len(ids) < total:
        raise SlotError(f"DISTILLERY_WORKER_DEVICES is {total} but CUDA_VISIBLE_DEVICES lists "
                        f"{len(ids)} GPUs ({visible!r})")
    if total % processes:
        log.warning("%d devices for %d pool processes: %d GPUs each, %d unused", total, processes,
                    total // processes, total % processes)
    if not detected:
        log.warning("DISTILLERY_WORKER_ACCELERATOR=cuda but torch sees no CUDA device here: jobs will "
                    "train on the CPU (training.device 'auto') or fail ('cuda')")
    return SlotPlan(CUDA, total, processes, ids[:total])


# Set in the worker's main process before the pool forks (its children inherit it); the slot is
# set in each pool process.
_plan: SlotPlan | None = None
_node: str | None = None
_retired = False  # set at the worker's shutdown: a last reaper sweep must not declare it again
_slot: Slot | None = None


def set_plan(plan: SlotPlan, *, node: str) -> None:
    """Record this worker's plan and Celery node name (the main process, before the pool starts)."""
    global _plan, _node
    _plan, _node = plan, node


def enter_slot(index: int) -> Slot | None:
    """In a pool process: take slot `index` of the plan and export its GPUs; return it."""
    global _slot
    if _plan is None:
        return None
    _slot = _plan.slot(index)
    if _slot.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = _slot.cuda_visible_devices
    return _slot


def current_slot() -> Slot | None:
    """Return this pool process's slot (None outside a worker's pool)."""
    return _slot


def unpooled_slot(devices: int) -> Slot:
    """Return what a process outside a pool trains on (execute_job called directly)."""
    return Slot(None, CUDA if detected_cuda_devices() else CPU, devices,
                os.environ.get("CUDA_VISIBLE_DEVICES"))


def declare_devices(settings: Settings) -> None:
    """Upsert this worker's row in the workers table (its start, then every reaper sweep)."""
    import socket

    from app.services.placement import declare_worker
    from worker.reaper import unpooled_sessions

    if _plan is None or _node is None or _retired:
        return  # not a job worker (a webhook worker trains nothing), or one shutting down
    with unpooled_sessions(settings.resolved_database_url)() as db:
        declare_worker(db=db, host=socket.gethostname(), name=_node, accelerator=_plan.accelerator,
                       devices_per_process=_plan.per_process, processes=_plan.processes,
                       period_seconds=settings.reap_interval_seconds)


def retire_devices(settings: Settings) -> None:
    """Mark this worker not live in the workers table as it shuts down."""
    import socket

    from app.services.placement import retire_worker
    from worker.reaper import unpooled_sessions

    global _retired
    if _plan is None or _node is None:
        return
    _retired = True
    with unpooled_sessions(settings.resolved_database_url)() as db:
        retire_worker(db=db, host=socket.gethostname(), name=_node)

