"""``job.task_milestone``: the student's validation metric first reaches ``notify.retention`` of its teacher.

Read from the events the worker already writes: each ``epoch`` event carries the stage and its
validation metrics per task. The teacher's reference is the last evaluated epoch of the teacher
stage(s) that trained the task inside the job (teachers loaded from files have no such epochs, so
their tasks get no milestone); several teachers of one task: the best of them. Retention is
student / teacher, or teacher / student for a metric where lower is better (rmse).
"""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, JobEvent


def _teacher_reference(db: Session, *, job_id: str, higher: dict[str, bool]) -> dict[str, float]:
    """Task -> the teacher's validation metric at the last evaluated epoch of its stage."""
    last: dict[str, dict[str, float]] = {}  # stage -> its latest metrics
    rows = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "epoch")
                      .order_by(JobEvent.seq))
    for event in rows:
        stage = str(event.data.get("stage", ""))
        if stage.startswith("teacher:") and event.data.get("metrics"):
            last[stage] = event.data["metrics"]
    reference: dict[str, float] = {}
    for metrics in last.values():
        for task, value in metrics.items():
            if value is None or task not in higher:
                continue
            known = reference.get(task)
            better = known is None or (value > known if higher[task] else value < known)
            reference[task] = value if better else known  # type: ignore[assignment]
    return reference


def retention(*, student: float, teacher: float, higher_is_better: bool) -> float | None:
    """Student's share of the teacher's quality; None when undefined (a zero in the denominator)."""
    if higher_is_better:
        return student / teacher if teacher > 0 else None
    return teacher / student if student > 0 else (1.0 if teacher == 0 else None)


def milestone_events(*, db: Session, job_id: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Return the ``task_milestone`` job events this student epoch reaches for the first time."""
    metrics = data.get("metrics") or {}
    if data.get("stage") != "student" or not metrics:
        return []
    job = db.get(Job, job_id)
    target = ((job.spec or {}).get("notify") or {}).get("retention") if job is not None else None
    if target is None:
        return []
    # Only epoch events reach here, and only in a worker, where the engine is loaded anyway.
    from app.training import PRIMARY_METRICS

    kinds = {task["name"]: task["kind"] for task in job.spec["tasks"]}
    higher = {name: PRIMARY_METRICS[kind][1] for name, kind in kinds.items()}
    reached = {event.data.get("task") for event in db.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "task_milestone"))}
    teacher = _teacher_reference(db, job_id=job_id, higher=higher)
    found = []
    for task, value in metrics.items():
        if task in reached or task not in teacher or value is None:
            continue
        kept = retention(student=value, teacher=teacher[task], higher_is_better=higher[task])
        if kept is not None and kept >= target:
            found.append(("task_milestone", {
                "task": task, "metric": PRIMARY_METRICS[kinds[task]][0], "higher_is_better": higher[task],
                "student": value, "teacher": teacher[task], "retention": round(kept, 6), "target": target,
                "stage": "student", "epoch": data.get("epoch")}))
    return found
