"""Run a job on its `resources.devices`: train() in this process, or N data-parallel ranks.

Rank 0 is the calling process itself, so the worker's database callbacks, heartbeat thread and
SIGTERM handler keep working unchanged; ranks 1..N-1 are started here with torch.multiprocessing's
spawn context (a fresh interpreter each: no forked CUDA or thread state) and meet rank 0 through a
TCPStore on 127.0.0.1. Process group: gloo on CPUs, NCCL on GPUs (one GPU per rank).

Faults: a non-zero rank ignores SIGTERM and SIGINT (rank 0 stops every rank at the same step, so
a shutdown hands the job back from its checkpoint) and is SIGKILLed by the kernel when rank 0's
process dies (PR_SET_PDEATHSIG). A rank killed mid-training closes its sockets, rank 0's next
collective fails, and `RankFailed` tells the caller to requeue the job (it resumes from its last
checkpoint). Whatever happens, rank 0 joins or kills every rank it started before it returns.
"""

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import time
import traceback
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.training.callbacks import TrainCallbacks
from app.training.distributed import RankFailed, Ranks
from app.training.errors import TrainingCancelled, TrainingError
from app.training.loop import resolve_device, train
from app.training.results import Result
from app.training.spec import JobSpec

# A collective waits this long for a peer (a step, a validation pass, rank 0's event writes);
# rank 0's data and teacher-cache preparation is waited for through the store, without limit.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
STARTUP_SECONDS = 120.0  # spawned ranks must import torch and reach the store within this
JOIN_SECONDS = 10.0  # after rank 0 ends, the others get this long to exit before SIGKILL
PR_SET_PDEATHSIG = 1


def train_job(spec: JobSpec, workdir: Path, *, callbacks: TrainCallbacks | None = None,
              threads: int | None = None, **kwargs: Any) -> Result:
    """Train `spec` on `spec.resources.devices` ranks (train()'s keyword arguments pass through).

    `threads`: torch threads per rank (default: on CPU ranks this process's threads split evenly
    between the ranks, so N ranks use the cores one process would; on GPUs unchanged).
    Raises what train() raises, and RankFailed when a rank died (the job should be requeued).
    """
    world = spec.resources.devices
    if world == 1:
        return train(spec, workdir, callbacks=callbacks, **kwargs)
    cuda = resolve_device(spec.training.device).type == "cuda"
    if cuda and torch.cuda.device_count() < world:
        raise TrainingError(code="device_unavailable", message=(
            f"resources.devices: the job asks for {world} GPUs; this worker has "
            f"{torch.cuda.device_count()}"))
    backend = "nccl" if cuda else "gloo"
    previous_threads = torch.get_num_threads()
    threads = threads or (previous_threads if cuda else max(1, previous_threads // world))
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=COLLECTIVE_TIMEOUT)
    # Every train() argument but the resolver (ranks > 0 read rank 0's paths) reaches every rank:
    # a setting that only rank 0 saw (reuse_teacher_weights) would make it train another model.
    child_kwargs = {key: value for key, value in kwargs.items() if key != "resolver"}
    context = mp.get_context("spawn")
    ranks: list[BaseProcess] = []
    try:
        for rank in range(1, world):
            process = context.Process(  # type: ignore[attr-defined]
                target=_rank_main, name=f"distillery-rank-{rank}", daemon=False,
                args=(rank, world, store.port, os.getpid(), backend, spec.model_dump_json(),
                      str(workdir), threads, child_kwargs))
            process.start()
            ranks.append(process)
        torch.set_num_threads(threads)
        if cuda:
            torch.cuda.set_device(0)
        _await_ranks(store, ranks)
        dist.init_process_group(backend, store=store, rank=0, world_size=world,
                                timeout=COLLECTIVE_TIMEOUT)
        try:
            return train(spec, workdir, callbacks=callbacks, ranks=Ranks(0, world, store=store),
                         **kwargs)
        except (TrainingCancelled, TrainingError):
            raise
        except Exception as exc:
            raise _rank_failure(store, ranks) or exc from exc
    finally:
        if dist.is_initialized():  # first: a rank's shutdown may wait for rank 0's
            dist.destroy_process_group()
        _stop(ranks)
        torch.set_num_threads(previous_threads)


def _await_ranks(store: dist.TCPStore, ranks: list[BaseProcess]) -> None:
    """Wait until every spawned rank has reached the store; fail at once if one died."""
    deadline = time.monotonic() + STARTUP_SECONDS
    keys = [f"ready/{rank}" for rank in range(1, len(ranks) + 1)]
    while not store.check(keys):
        dead = [p for p in ranks if not p.is_alive()]
        if dead:
            raise RankFailed(f"{dead[0].name} exited with code {dead[0].exitcode} while starting")
        if time.monotonic() > deadline:
            raise RankFailed(f"the ranks did not start within {STARTUP_SECONDS:.0f} s")
        time.sleep(0.02)


def _rank_failure(store: dist.TCPStore, ranks: list[BaseProcess]) -> BaseException | None:
    """Return the error to raise for a collective that failed on rank 0 (None: its own error)."""
    deadline = time.monotonic() + 2.0  # a peer that failed is already exiting
    while time.monotonic() < deadline and all(p.is_alive() for p in ranks):
        time.sleep(0.05)
    for rank, process in enumerate(ranks, start=1):
        if process.is_alive() or process.exitcode == 0:
            continue
        if process.exitcode is not None and process.exitcode < 0:  # killed by a signal
            return RankFailed(f"rank {rank} was killed by signal {-process.exitcode}")
        if not store.check([f"error/{rank}"]):
            return RankFailed(f"rank {rank} exited with code {process.exitcode}")
        code, message = pickle.loads(store.get(f"error/{rank}"))  # written by _rank_main
        return TrainingError(code=code, message=f"rank {rank}: {message}")
    return None


def _stop(ranks: list[BaseProcess]) -> None:
    """Join every spawned rank; SIGKILL those still running after JOIN_SECONDS (no orphans)."""
    deadline = time.monotonic() + JOIN_SECONDS
    for process in ranks:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in ranks:
        if process.is_alive():
            process.kill()
            process.join()


def _rank_main(rank: int, world: int, port: int, parent: int, backend: str, spec_json: str,
               workdir: str, threads: int, kwargs: dict[str, Any]) -> None:
    """A spawned rank: die with rank 0, meet it, train, report a failure through the store."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # rank 0 died before the line above took effect
        os._exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rank 0 decides when every rank stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    store.set(f"ready/{rank}", "1")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    code = 0
    try:
        train(JobSpec.model_validate_json(spec_json), Path(workdir),
              ranks=Ranks(rank, world, store=store), **kwargs)
    except TrainingCancelled:
        pass  # every rank stopped at the same step; rank 0 reports it
    except TrainingError as exc:
        store.set(f"error/{rank}", pickle.dumps((exc.code, exc.message)))
        code = 3
    except BaseException as exc:  # noqa: BLE001 - reported to rank 0, then this rank exits
        traceback.print_exc()
        with contextlib.suppress(RuntimeError):  # rank 0 (the store) is gone: it failed first
            store.set(f"error/{rank}", pickle.dumps(("internal_error",
                                                     f"{type(exc).__name__}: {exc}"[:300])))
        code = 1
    # Exit at once: rank 0 has what it needs (the group's work is done or failed), and an orderly
    # shutdown of the group and the interpreter took seconds on a loaded host, which rank 0 waits.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
