"""A spec's dry run in a separate validator process, so the API process never imports torch.

One lazily started spawn-context process pool (``DISTILLERY_VALIDATOR_PROCESSES`` processes) serves
POST /v1/jobs and POST /v1/jobs/validate. A dry run that outlasts ``DISTILLERY_VALIDATOR_TIMEOUT_SECONDS``
kills the pool (a stuck teacher cannot be interrupted otherwise); a pool whose process died is
replaced on the next call.
"""

import asyncio
import logging
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from app.config import Settings
from app.errors import InvalidRequest, ServiceUnavailable
from app.files.refs import file_resolver
from app.services.placement import dry_run_accelerator
from app.training.files import FileResolver

log = logging.getLogger("distillery.validator")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _child_init() -> None:
    import torch

    torch.set_num_threads(1)  # one batch per model: more threads only contend with the API for cores


def _child_dry_run(spec_json: dict[str, Any], resolver: FileResolver,
                   allow_torchscript: bool, accelerator: str = "auto") -> tuple[str, Any]:
    """Runs in the validator process: ("ok", summary) or ("error", (code, message, field))."""
    from app.training import DryRunError, JobSpec, TrainingError, dry_run

    spec = JobSpec.model_validate(spec_json)
    try:
        return "ok", dry_run(spec, resolver=resolver, allow_torchscript=allow_torchscript,
                             cache_builtin=True, accelerator=accelerator)
    except DryRunError as exc:
        return "error", (exc.code, exc.message, exc.field)
    except TrainingError as exc:
        return "error", (exc.code, exc.message, "body")


def _child_warm() -> None:
    from app.training import dry_run  # noqa: F401  (torch and the engine: seconds, paid before the first submit)


def warm(settings: Settings) -> None:
    """Start the validator process and its imports in the background (API startup); returns at once."""
    _get_pool(settings).submit(_child_warm)


def _get_pool(settings: Settings) -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=settings.validator_processes, mp_context=get_context("spawn"),
                                        initializer=_child_init)
        return _pool


def _discard_pool(pool: ProcessPoolExecutor, *, kill: bool) -> None:
    """Drop ``pool`` (if still the current one); ``kill`` ends its processes, which may be mid-run."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    if kill:
        for proc in list((pool._processes or {}).values()):  # no public API ends a busy worker
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the validator processes (API shutdown, tests)."""
    with _lock:
        pool = _pool
    if pool is not None:
        _discard_pool(pool, kill=False)


def _submit(spec_json: dict[str, Any], *, tenant_id: str, settings: Settings) -> tuple[ProcessPoolExecutor, Future]:
    resolver = file_resolver(settings=settings, tenant_id=tenant_id, spec=spec_json)
    accelerator = dry_run_accelerator(spec_json, settings=settings)  # what the live workers declared
    pool = _get_pool(settings)
    try:
        return pool, pool.submit(_child_dry_run, spec_json, resolver, settings.allow_torchscript, accelerator)
    except BrokenProcessPool:  # died since the last call: start a fresh one once
        _discard_pool(pool, kill=False)
        pool = _get_pool(settings)
        return pool, pool.submit(_child_dry_run, spec_json, resolver, settings.allow_torchscript, accelerator)


def _outcome(result: tuple[str, Any]) -> dict[str, Any]:
    status, value = result
    if status == "ok":
        return value
    code, message, field = value
    raise InvalidRequest(message, errors=[{"field": field, "message": message, "type": code}])


def _failed(pool: ProcessPoolExecutor, exc: BaseException, settings: Settings) -> ServiceUnavailable:
    if isinstance(exc, (FutureTimeout, asyncio.TimeoutError)):
        _discard_pool(pool, kill=True)
        return ServiceUnavailable(f"the spec's dry run took longer than {settings.validator_timeout_seconds:g} s",
                                  headers={"Retry-After": "5"})
    _discard_pool(pool, kill=False)
    log.error("validator process failed: %r", exc)
    return ServiceUnavailable(f"the validator process failed ({type(exc).__name__}); retry",
                              headers={"Retry-After": "1"})


def dry_run(spec_json: dict[str, Any], *, tenant_id: str, settings: Settings) -> dict[str, Any]:
    """Dry-run a spec (as JSON) in the validator pool, blocking; 422 InvalidRequest when it is unusable."""
    pool, future = _submit(spec_json, tenant_id=tenant_id, settings=settings)
    try:
        result = future.result(timeout=settings.validator_timeout_seconds)
    except (FutureTimeout, BrokenProcessPool) as exc:
        raise _failed(pool, exc, settings) from exc
    return _outcome(result)


async def dry_run_async(spec_json: dict[str, Any], *, tenant_id: str, settings: Settings) -> dict[str, Any]:
    """As ``dry_run``, awaiting the validator without holding a thread."""
    pool, future = _submit(spec_json, tenant_id=tenant_id, settings=settings)
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(future), settings.validator_timeout_seconds)
    except (asyncio.TimeoutError, BrokenProcessPool) as exc:
        raise _failed(pool, exc, settings) from exc
    return _outcome(result)


def pool_state(settings: Settings) -> dict[str, int]:
    """Return the pool's configured and alive processes and the dry runs in flight (for metrics)."""
    with _lock:
        pool = _pool
    if pool is None:  # not started yet, or discarded after a failure until the next call
        return {"configured": settings.validator_processes, "alive": 0, "busy": 0}
    alive = sum(proc.is_alive() for proc in list((pool._processes or {}).values()))
    return {"configured": settings.validator_processes, "alive": alive, "busy": len(pool._pending_work_items)}
