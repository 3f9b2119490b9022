"""A search's space: check it against the base spec, sample it with Optuna, apply it to the spec."""

import copy
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.errors import InvalidRequest, validation_errors
from app.search_schemas import (
    SEARCHABLE_SECTIONS,
    ChoiceParam,
    RangeParam,
    SearchCreate,
)
from app.training import JobSpec

if TYPE_CHECKING:
    import optuna

# What every child job sets whatever the base says: the baseline (a student trained without the
# teachers) is not needed to measure retention and would double each trial's cost.
CHILD_OVERRIDES = {"baseline": False}


def _segments(path: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in path.split(".")]


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the spec dict with each dotted path set (missing objects are created)."""
    spec = copy.deepcopy(base)
    for path, value in params.items():
        *parents, leaf = _segments(path)
        node: Any = spec
        for part in parents:
            if isinstance(part, int):
                node = node[part]
            else:
                if node.get(part) is None:  # an optional section left out (e.g. early_stopping)
                    node[part] = {}
                node = node[part]
        node[leaf] = copy.deepcopy(value)
    return spec


def _candidates(param: RangeParam | ChoiceParam) -> list[tuple[str, Any]]:
    """The values of a parameter to check against the spec: each choice, or both ends of a range."""
    if isinstance(param, ChoiceParam):
        return [(f"choices[{i}]", choice) for i, choice in enumerate(param.choices)]
    cast = int if param.integer else float
    return [("low", cast(param.low)), ("high", cast(param.high))]


def check_space(request: SearchCreate) -> None:
    """Raise a 422 naming the field when a path is outside the searchable sections or a value
    would make an invalid spec (each choice, and each end of a range, is tried on the base)."""
    base = request.base.model_dump(mode="json")
    errors: list[dict[str, Any]] = []
    for path, param in request.space.items():
        field = f"body.space.{path}"
        segments = _segments(path)
        if segments[0] not in SEARCHABLE_SECTIONS or any(s == "" for s in segments):
            errors.append({"field": field, "type": "not_searchable",
                           "message": f"a search may vary {', '.join(SEARCHABLE_SECTIONS)}; dataset, tasks and "
                                      "teachers stay fixed"})
            continue
        for where, value in _candidates(param):
            try:
                JobSpec.model_validate(apply_params(base, {path: value}))
            except (KeyError, IndexError, TypeError, AttributeError):
                errors.append({"field": field, "type": "unknown_path",
                               "message": f"{path!r} names no field of the spec"})
                break
            except ValidationError as exc:
                first = validation_errors(exc)[0]
                errors.append({"field": f"{field}.{where}", "type": "invalid_value",
                               "message": f"gives an invalid spec: {first['field']}: {first['message']}"})
    goal = request.goal
    if isinstance(goal.min_retention, dict):
        tasks = {task.name for task in request.base.tasks}
        errors += [{"field": f"body.goal.min_retention.{name}", "type": "unknown_task",
                    "message": f"the base spec has no task {name!r}"}
                   for name in goal.min_retention if name not in tasks]
    if request.pruning != "none" and (len(goal.objectives) != 1
                                      or goal.objectives[0].metric not in ("mean_retention", "min_retention")):
        errors.append({"field": "body.pruning", "type": "pruning_needs_one_retention_objective",
                       "message": "pruning compares the per-epoch validation retention: it needs exactly one "
                                  "objective, mean_retention or min_retention"})
    if errors:
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors)


def _label(value: Any) -> Any:
    """An Optuna category: numbers, strings, bools and None as they are, anything else as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def suggest(trial: "optuna.trial.Trial", request: SearchCreate) -> dict[str, Any]:
    """Sample every parameter of the space for this trial; return path -> spec value."""
    params: dict[str, Any] = {}
    for path, param in request.space.items():
        if isinstance(param, ChoiceParam):
            labels = [_label(c) for c in param.choices]
            picked = trial.suggest_categorical(path, labels)
            params[path] = param.choices[labels.index(picked)]
        elif param.integer:
            params[path] = trial.suggest_int(path, int(param.low), int(param.high), log=param.log)
        else:
            params[path] = trial.suggest_float(path, param.low, param.high, log=param.log)
    return params


def child_spec(request: SearchCreate, *, search_id: str, number: int, params: dict[str, Any]) -> JobSpec:
    """The trial's job spec: the base with the sampled values and the child overrides."""
    spec = apply_params(request.base.model_dump(mode="json"), params)
    spec.update(CHILD_OVERRIDES)
    # A light trial: validation measures only; the front's trials are finalised when the search ends.
    spec["trial"] = {"mode": "light", "latency": uses_latency(request)}
    spec["name"] = f"{request.name[:150]}-trial-{number}"
    return JobSpec.model_validate(spec)


def uses_latency(request: SearchCreate) -> bool:
    """Whether the goal constrains or optimises the student's CPU latency (light trials measure it then)."""
    goal = request.goal
    return goal.max_latency_us is not None or any(o.metric == "latency_us" for o in goal.objectives)
