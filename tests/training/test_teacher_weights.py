"""The trained-teacher weights cache: a teacher stage trains once per key, later jobs load it."""

from pathlib import Path

from app.training.callbacks import TrainCallbacks
from app.training.loop import train
from tests.training.conftest import tiny_spec


class Stages(TrainCallbacks):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        self.started.append(stage)


def _run(spec_sections: dict, tmp_path: Path, name: str, cache: Path) -> tuple[dict, list[str]]:
    stages = Stages()
    result = train(tiny_spec(**spec_sections), tmp_path / name, callbacks=stages, cache_dir=cache,
                   reuse_teacher_weights=True)
    return result.results, stages.started


def test_a_teacher_trains_once_per_key_and_its_outputs_hit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, started = _run({}, tmp_path, "a", cache)
    assert {"teacher:digit-teacher", "teacher:aux-teacher"} <= set(started)
    assert set(first["teacher_cache"].values()) == {"miss"}

    # Another student (lr, epochs: what a search varies) reuses the trained teacher and its outputs.
    second, started = _run({"training": {"lr": 0.01, "epochs": 1}}, tmp_path, "b", cache)
    assert not any(s.startswith("teacher:") for s in started), started
    assert set(second["teacher_cache"].values()) == {"hit"}
    for task, row in first["validation"].items():
        assert second["validation"][task]["teacher"] == row["teacher"]
    teacher_stages = [s for s in second["stages"] if s["name"].startswith("teacher:")]
    assert teacher_stages and all(s["seconds"] == 0.0 and s["epochs"] >= 1 for s in teacher_stages)


def test_a_change_that_shapes_the_teacher_trains_it_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = tiny_spec().model_dump(mode="json")
    _run({}, tmp_path, "a", cache)
    teachers = spec["teachers"]
    teachers[0]["source"]["train"]["epochs"] += 1
    third, started = _run({"teachers": teachers}, tmp_path, "c", cache)
    # Only the changed teacher trains and runs again; the other one still hits.
    assert [s for s in started if s.startswith("teacher:")] == ["teacher:digit-teacher"]
    assert third["teacher_cache"] == {"digit-teacher": "miss", "aux-teacher": "hit"}
