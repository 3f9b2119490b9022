"""Device slots and declared workers, as functions on a real database: how a worker's devices are
split among its pool processes, and what the API's dry run reads from the workers' rows."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.config import Settings
from app.db import session_scope, utcnow
from app.errors import InvalidRequest
from app.models import Worker
from app.services.placement import (
    declare_worker,
    dry_run_accelerator,
    placement_warnings,
    read_pool,
    retire_worker,
)
from app.training.spec import JobSpec
from tests.conftest import tiny_spec
from worker.slots import SlotError, plan_slots


def gpu_settings(devices: int | None, accelerator: str = "cuda") -> Settings:
    return Settings(worker_devices=devices, worker_accelerator=accelerator)


def test_a_gpu_worker_gives_each_pool_process_its_own_gpus() -> None:
    plan = plan_slots(gpu_settings(4), 2, environ={}, detected=4)
    assert plan.per_process == 2
    assert [plan.slot(i).cuda_visible_devices for i in range(2)] == ["0,1", "2,3"]
    # The worker's own CUDA_VISIBLE_DEVICES is what it splits (e.g. a container given GPUs 4-7).
    plan = plan_slots(gpu_settings(None, "auto"), 4, environ={"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, detected=4)
    assert [plan.slot(i).cuda_visible_devices for i in range(4)] == ["4", "5", "6", "7"]
    assert plan.slot(3).devices == 1 and plan.slot(3).accelerator == "cuda"
    # 3 devices for 2 processes: one GPU each, the third unused (never shared).
    plan = plan_slots(gpu_settings(3), 2, environ={}, detected=3)
    assert [plan.slot(i).cuda_visible_devices for i in range(2)] == ["0", "1"]


def test_a_gpu_worker_with_more_processes_than_devices_refuses_to_start() -> None:
    with pytest.raises(SlotError, match="would share a GPU.*-c 1"):
        plan_slots(gpu_settings(1), 2, environ={}, detected=0)
    with pytest.raises(SlotError, match="would share a GPU"):
        plan_slots(gpu_settings(None, "auto"), 3, environ={}, detected=2)  # detected GPUs
    with pytest.raises(SlotError, match="CUDA_VISIBLE_DEVICES lists 1 GPUs"):
        plan_slots(gpu_settings(2), 2, environ={"CUDA_VISIBLE_DEVICES": "3"}, detected=1)


def test_a_cpu_worker_keeps_its_devices_in_every_process() -> None:
    plan = plan_slots(gpu_settings(2, "auto"), 4, environ={}, detected=0)
    assert plan.accelerator == "cpu" and plan.per_process == 2
    assert plan.slot(3).devices == 2 and plan.slot(3).cuda_visible_devices is None  # env left alone
    # Declared CPU on a host with GPUs: its jobs must not touch them.
    assert plan_slots(gpu_settings(None, "cpu"), 2, environ={}, detected=2).slot(0).cuda_visible_devices == ""


def declare(settings: Settings, name: str, *, accelerator: str = "cpu", devices: int = 1,
            age: float = 0.0, period: float = 1.0) -> None:
    with session_scope(settings.resolved_database_url) as db:
        declare_worker(db=db, host="h", name=name, accelerator=accelerator, devices_per_process=devices,
                       processes=1, period_seconds=period)
        if age:
            db.execute(update(Worker).where(Worker.name == name).values(seen_at=utcnow() - timedelta(seconds=age)))
            db.commit()


def two_device_spec(**training: object) -> JobSpec:
    return JobSpec.model_validate(tiny_spec(resources={"devices": 2},
                                            training={"epochs": 1, "batch_size": 64, "seed": 0, **training}))


def test_the_warning_follows_the_live_workers_and_falls_back_to_settings(settings: Settings) -> None:
    spec = two_device_spec()
    # No worker ever declared itself: the API's own setting decides, as before.
    assert placement_warnings(spec, settings.model_copy(update={"worker_devices": 2})) == []
    assert "DISTILLERY_WORKER_DEVICES" in placement_warnings(spec, settings.model_copy(update={"worker_devices": 1}))[0]
    declare(settings, "small@h", devices=1)
    declare(settings, "gone@h", devices=2, age=10.0)  # 2 devices, but silent for 10 periods
    big_api = settings.model_copy(update={"worker_devices": 8})  # the setting no longer counts
    [warning] = placement_warnings(spec, big_api)
    assert warning.startswith("resources.devices:") and "at most 1 per pool process" in warning
    assert "small@h: cpu x1" in warning and "gone@h" not in warning
    declare(settings, "gone@h", devices=2)  # declares itself again: live
    assert placement_warnings(spec, settings) == []
    with session_scope(settings.resolved_database_url) as db:
        pool = read_pool(db=db)
        assert sorted(w.name for w in pool.live) == ["gone@h", "small@h"]
        assert placement_warnings(spec, settings, db=db) == []
    with session_scope(settings.resolved_database_url) as db:
        db.execute(update(Worker).values(seen_at=utcnow() - timedelta(seconds=60)))
        db.commit()
    [warning] = placement_warnings(JobSpec.model_validate(tiny_spec()), settings)
    assert "no job worker is live" in warning


def test_fp16_is_refused_where_no_live_worker_has_cuda(settings: Settings) -> None:
    fp16 = tiny_spec(training={"epochs": 1, "batch_size": 64, "seed": 0, "precision": "fp16"})
    cpu_api = settings.model_copy(update={"worker_accelerator": "cpu"})
    assert dry_run_accelerator(fp16, settings=cpu_api) == "cpu"  # nobody declared: the setting
    declare(settings, "gpu@h", accelerator="cuda", devices=2)
    assert dry_run_accelerator(fp16, settings=cpu_api) == "cuda"  # a live GPU worker overrides it
    declare(settings, "gpu@h", accelerator="cuda", devices=2, age=10.0)
    declare(settings, "cpu@h")
    with pytest.raises(InvalidRequest) as refused:
        dry_run_accelerator(fp16, settings=settings.model_copy(update={"worker_accelerator": "cuda"}))
    assert refused.value.errors[0]["field"] == "body.training.precision"
    assert "live job workers have none (cpu@h: cpu x1)" in str(refused.value)
    assert dry_run_accelerator(tiny_spec(), settings=settings) == "cpu"  # fp32 passes


def test_a_worker_that_stops_is_no_longer_live_but_stays_declared(settings: Settings) -> None:
    declare(settings, "stopping@h", devices=2, period=15.0)
    with session_scope(settings.resolved_database_url) as db:
        assert [w.name for w in read_pool(db=db).live] == ["stopping@h"]
        retire_worker(db=db, host="h", name="stopping@h")
        retire_worker(db=db, host="h", name="never-declared@h")  # nothing to do
    with session_scope(settings.resolved_database_url) as db:
        pool = read_pool(db=db)
        assert pool.live == [] and [w.name for w in pool.declared] == ["stopping@h"]
