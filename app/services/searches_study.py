"""A search's Optuna study on the service's own database: storage, sampler, pruner, values.

Optuna's RDB storage is opened on the same database as the service (PostgreSQL, or the embedded
SQLite file). Optuna creates its own tables there (`create_all`, first use) and owns them;
Alembic's autogenerate ignores them (migrations/env.py) and the 0005 downgrade drops them. Both
read the one `alembic_version` table, which holds this project's revision: Optuna would stamp its
own revision into an empty one, so the storage is opened only on a migrated database, and
Optuna's schema check (which reads that table) is replaced by a check of its `version_info` row.
"""

import math
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.search_schemas import Goal, SearchCreate

if TYPE_CHECKING:
    import optuna

OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
    "trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
    "trial_system_attributes", "trial_heartbeats", "version_info"})
RETENTION_METRICS = ("mean_retention", "min_retention")
# A constraint whose measure is missing is violated by this much (finite: JSON and JSONB refuse inf).
UNMEASURED = 1e30


class StudyStorageError(RuntimeError):
    """The database cannot hold Optuna's study safely (not migrated, or another Optuna schema)."""


@lru_cache(maxsize=8)
def _storage(url: str, pid: int) -> "optuna.storages.RDBStorage":
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = create_engine(url, poolclass=NullPool)
    try:
        with probe.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:
        raise StudyStorageError(f"the database is not migrated ({type(exc).__name__}); run `distillery migrate`") from exc
    finally:
        probe.dispose()
    if revision is None:
        raise StudyStorageError("the database has no Alembic revision; run `distillery migrate` first")
    # No pool: the worker's main process forks a child per job, which must not inherit connections.
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=True)
    from optuna.storages._rdb import models

    with storage.engine.connect() as conn:
        schema = conn.execute(text("SELECT schema_version FROM version_info")).scalar()
    if schema != models.SCHEMA_VERSION:
        raise StudyStorageError(f"Optuna's tables have schema {schema}, this Optuna release needs "
                                f"{models.SCHEMA_VERSION}; upgrade them before running searches")
    return storage


def storage_for(url: str) -> "optuna.storages.RDBStorage":
    """Return this process's Optuna storage on the service database (one per process: forks)."""
    return _storage(url, os.getpid())


def make_sampler(request: SearchCreate, *, asked: int) -> "optuna.samplers.BaseSampler":
    """Return the search's sampler, seeded per ask: a controller restarts with no sampler state."""
    import optuna

    seed = (request.seed * 1_000_003 + asked) % (2**31)
    if request.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if request.sampler == "nsga2":
        # Optuna's default population (50) is a first generation of random trials longer than most
        # searches here; a quarter of the budget (at least 4) leaves generations to evolve.
        population = max(4, min(50, request.trials // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    # Constraints reach TPE and NSGA-II through Trial.set_constraint (searches_controller).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, request.trials // 3)))


def make_pruner(request: SearchCreate) -> "optuna.pruners.BasePruner":
    import optuna

    if request.pruning == "asha":
        # Rungs at epochs 1, 3, 9, ...: a trial goes on when it is in the top third at its rung.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(*, url: str, search_id: str, request: SearchCreate) -> "optuna.Study":
    """Create (or load) the study named by the search id."""
    import optuna

    directions = [o.direction for o in request.goal.objectives]
    return optuna.create_study(storage=storage_for(url), study_name=search_id, directions=directions,
                               sampler=make_sampler(request, asked=0), pruner=make_pruner(request),
                               load_if_exists=True)


def retention(student: float | None, teacher: float | None, *, higher_is_better: bool) -> float | None:
    """Student over teacher (teacher over student for lower-is-better metrics); None when undefined."""
    if student is None or teacher is None or not math.isfinite(student) or not math.isfinite(teacher):
        return None
    num, den = (student, teacher) if higher_is_better else (teacher, student)
    return num / den if den > 0 else None


def reference_of(results: dict[str, Any]) -> dict[str, Any]:
    """The teachers' validation metric per task and its direction: the same for every trial."""
    return {task: {"teacher": row.get("teacher"), "higher_is_better": results["tasks"][task]["higher_is_better"]}
            for task, row in results["validation"].items()}


def epoch_value(metrics: dict[str, float], reference: dict[str, Any], metric: str) -> float | None:
    """The objective's retention at one epoch (the student's validation metrics), for the pruner."""
    kept = [retention(metrics.get(task), ref["teacher"], higher_is_better=ref["higher_is_better"])
            for task, ref in reference.items()]
    kept = [r for r in kept if r is not None]
    if not kept:
        return None
    return min(kept) if metric == "min_retention" else sum(kept) / len(kept)


def measures(results: dict[str, Any], goal: Goal) -> dict[str, Any]:
    """Validation retention per task, mean and min, params, latency, and the goal's constraints.

    `constraints` follow Optuna's convention: a value <= 0 is met.
    """
    per_task = {}
    for task, row in results["validation"].items():
        per_task[task] = retention(row.get("student"), row.get("teacher"),
                                   higher_is_better=results["tasks"][task]["higher_is_better"])
    known = [v for v in per_task.values() if v is not None]
    found: dict[str, Any] = {
        "retention": per_task,
        "mean_retention": sum(known) / len(known) if known else None,
        "min_retention": min(known) if known else None,
        "params": results["params"]["student"],
        "latency_us": (results.get("latency_us_per_sample") or {}).get("student"),
    }
    constraints: dict[str, float] = {}
    if goal.max_params is not None:
        constraints["max_params"] = float(found["params"] - goal.max_params)
    if goal.max_latency_us is not None:
        latency = found["latency_us"]
        constraints["max_latency_us"] = UNMEASURED if latency is None else float(latency - goal.max_latency_us)
    if goal.min_retention is not None:
        floors = (goal.min_retention if isinstance(goal.min_retention, dict)
                  else {task: goal.min_retention for task in per_task})
        for task, floor in floors.items():
            kept = per_task.get(task)
            constraints[f"min_retention.{task}"] = UNMEASURED if kept is None else float(floor - kept)
    found["constraints"] = constraints
    found["feasible"] = all(v <= 0 for v in constraints.values())
    return found


def objective_values(found: dict[str, Any], goal: Goal) -> list[float] | None:
    """The trial's values in goal.objectives order; None when one is undefined (the trial fails)."""
    values = [found[o.metric] for o in goal.objectives]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return [float(v) for v in values]


def test_retention(results: dict[str, Any]) -> dict[str, Any]:
    """Retention on the test split (results.json "tasks"): reported for the front only."""
    per_task = {task: retention(row.get("student"), row.get("teacher"), higher_is_better=row["higher_is_better"])
                for task, row in results["tasks"].items()}
    known = [v for v in per_task.values() if v is not None]
    return {"retention": per_task, "mean_retention": sum(known) / len(known) if known else None}


def pareto_front(points: dict[int, list[float]], directions: list[str]) -> list[int]:
    """Return the keys of the points no other point dominates (ties kept), in key order."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]

    def dominates(a: list[float], b: list[float]) -> bool:
        better_or_equal = all(s * x >= s * y for s, x, y in zip(signs, a, b))
        return better_or_equal and any(s * x > s * y for s, x, y in zip(signs, a, b))

    return sorted(k for k, v in points.items() if not any(dominates(w, v) for j, w in points.items() if j != k))


def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (maximise x, minimise y) points and bounded by `reference` (x0, y0)."""
    x0, y0 = reference
    kept = sorted((x, y) for x, y in points if x > x0 and y < y0)
    area, best_y = 0.0, y0
    for x, y in reversed(kept):  # from the largest x down: each point adds a strip below best_y
        if y < best_y:
            area += (x - x0) * (best_y - y)
            best_y = y
    return area
