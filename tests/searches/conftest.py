"""Search fixtures: a tiny goal over the tiny digits-mt spec, and a controller driven in-process."""

from typing import Any

from app.config import Settings
from app.db import session_scope
from app.job_status import JobStatus
from app.models import Job, Search, Tenant
from app.search_schemas import SearchCreate
from app.services.searches import add_search_event
from tests.conftest import tiny_spec


def tiny_goal(**overrides: Any) -> dict[str, Any]:
    """Six one-epoch trials over the student's width, temperature and alpha; two at a time."""
    goal = {
        "name": "tiny-goal",
        "base": tiny_spec(training={"epochs": 1, "batch_size": 256, "lr": 0.003, "seed": 0}, baseline=False,
                          export=["safetensors"]),
        "space": {"student.trunk": {"choices": [[8], [16], [32]]},
                  "distillation.temperature": {"low": 1.0, "high": 8.0, "log": True},
                  "distillation.alpha": {"low": 0.1, "high": 0.9}},
        "goal": {"max_params": 3000, "objectives": [{"metric": "mean_retention", "direction": "maximize"},
                                                    {"metric": "params", "direction": "minimize"}]},
        "trials": 6, "parallel": 2, "sampler": "tpe", "seed": 0,
    }
    goal.update(overrides)
    return goal


def store_search(settings: Settings, body: dict[str, Any], tenant_name: str = "acme") -> str:
    """Store a search as POST /v1/searches does after its checks (no validator process needed)."""
    request = SearchCreate.model_validate(body)
    with session_scope(settings.resolved_database_url) as db:
        tenant = Tenant(name=tenant_name)
        db.add(tenant)
        db.flush()
        search = Search(tenant_id=tenant.id, name=request.name, request=request.model_dump(mode="json"),
                        status=JobStatus.QUEUED)
        db.add(search)
        db.flush()
        add_search_event(db=db, search_id=search.id, kind="queued", data={})
        db.commit()
        return search.id


def queued_jobs(settings: Settings, search_id: str) -> list[str]:
    """The search's queued child jobs: trials and front trials' finalise jobs."""
    from app.models import SearchTrial

    with session_scope(settings.resolved_database_url) as db:
        return [job_id for job_id, status in db.execute(
            Job.__table__.select().with_only_columns(Job.id, Job.status)
            .where(Job.id.in_(db.query(SearchTrial.job_id).filter(SearchTrial.search_id == search_id))
                   | Job.id.in_(db.query(SearchTrial.final_job_id).filter(SearchTrial.search_id == search_id))))
            if status == JobStatus.QUEUED]
