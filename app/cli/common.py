"""What the command groups share: the console, the settings, spec files and the results table."""

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def current_settings():  # imported lazily so `distillery submit` stays light
    from app.config import get_settings

    return get_settings()


def load_spec_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc


def print_results(results: dict[str, Any]) -> None:
    table = Table(title="teacher vs student vs baseline (test split)")
    for col in ("task", "metric", "teacher", "student", "baseline"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for task, row in results["tasks"].items():
        table.add_row(task, row["metric"], fmt(row.get("teacher")), fmt(row.get("student")), fmt(row.get("baseline")))
    console.print(table)
    params = results.get("params", {})
    if params:
        console.print(f"params: teacher {params.get('teacher')}, student {params.get('student')}")
