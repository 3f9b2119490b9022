"""The search controller's step: read the children, tell Optuna, prune, start trials, finish.

A step is idempotent and keeps no state outside the database, so any process may run it and a
killed one is simply run again: a search row's lease lets one step run at a time, and an expired
lease (a step that died) frees it. Each Optuna trial number maps to one child job (the job's
Idempotency-Key is the search id and the number, and a trial row is unique per number), so a
step that died between Optuna's ask and the trial row adopts that asked trial instead of asking
another: no trial is lost or run twice. Optuna is told an outcome before the trial row records
it; telling a finished trial again is skipped. Optuna writes through its own connection, so a
step never calls it with a write of its own uncommitted (SQLite would lock it out).

Trials are light jobs (validation measures only, spec.trial). When every trial has ended, each
trial on the front gets one finalise job (Idempotency-Key: the search id, "final" and the number;
the trial row links it), which loads the light job's student, evaluates it on test once and
exports it; the search finishes when those jobs have ended, with their test retention. A step
that died after storing a finalise job gets the same job back from its key, so none runs twice.
"""

import logging
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.job_status import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus
from app.models import Job, JobEvent, Search, SearchTrial, Tenant
from app.search_schemas import SearchCreate
from app.services import searches_study as study_lib
from app.services.jobs import insert_job, request_cancel
from app.services.searches import add_search_event, quota_wait
from app.services.searches_report import write_artifacts
from app.services.searches_space import child_spec, suggest
from app.training import JobSpec

log = logging.getLogger("distillery.searches")
LEASE = timedelta(seconds=120)
_NO_SYNC = {"synchronize_session": False}


def acquire_lease(*, db: Session, search_id: str, owner: str) -> bool:
    """Take the search's step lease when it is free or expired; False when another step holds it."""
    now = utcnow()
    taken = db.execute(
        update(Search).where(Search.id == search_id, Search.status.in_(ACTIVE_STATUSES),
                             (Search.lease_owner.is_(None)) | (Search.lease_until < now))
        .values(lease_owner=owner, lease_until=now + LEASE), execution_options=_NO_SYNC).rowcount
    db.commit()
    return bool(taken)


def release_lease(*, db: Session, search_id: str, owner: str) -> None:
    db.execute(update(Search).where(Search.id == search_id, Search.lease_owner == owner)
               .values(lease_owner=None, lease_until=None), execution_options=_NO_SYNC)
    db.commit()


def active_search_ids(*, db: Session) -> list[str]:
    """Searches that are queued or running and whose lease is free (or expired)."""
    now = utcnow()
    return list(db.scalars(select(Search.id).where(
        Search.status.in_(ACTIVE_STATUSES), (Search.lease_owner.is_(None)) | (Search.lease_until < now))))


def trials_of(db: Session, search_id: str) -> list[SearchTrial]:
    return list(db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id)
                           .order_by(SearchTrial.number)))


def step_search(*, db: Session, settings: Settings, search_id: str) -> list[str]:
    """Advance the search as far as it can go now; return the child job ids to enqueue (after commit).

    The caller holds the lease.
    """
    search = db.get(Search, search_id, populate_existing=True)
    if search is None or search.status in TERMINAL_STATUSES:
        return []
    request = SearchCreate.model_validate(search.request)
    url = settings.resolved_database_url
    study = study_lib.load_study(url=url, search_id=search.id, request=request)
    if search.status == JobStatus.QUEUED:
        search.status, search.started_at = JobStatus.RUNNING, utcnow()
        add_search_event(db=db, search_id=search.id, kind="started", data={"trials": request.trials})
        db.commit()
    for trial in [t for t in trials_of(db, search.id) if t.state == "running"]:
        _follow_trial(db=db, search=search, trial=trial, study=study, request=request)
    if search.cancel_requested:
        _cancel_children(db=db, search=search)
    to_enqueue = [] if search.cancel_requested else _start_trials(db=db, search=search, study=study,
                                                                   request=request, settings=settings)
    trials = trials_of(db, search.id)
    if not any(t.state == "running" for t in trials) and (search.cancel_requested or len(trials) >= request.trials):
        front, _ = _front(trials, request)
        pending, finals = _finalise_front(db=db, search=search, trials=trials, front=front, settings=settings)
        to_enqueue += finals
        if not pending:
            _finish(db=db, search=search, request=request, settings=settings)
    return to_enqueue


def _front(trials: list[SearchTrial], request: SearchCreate) -> tuple[list[int], int | None]:
    """The front of the feasible trials and the best one (the main objective, then the lowest number)."""
    feasible = {t.number: t.values for t in trials if t.state == "complete" and t.values}
    front = study_lib.pareto_front(feasible, [o.direction for o in request.goal.objectives])
    if not front:
        return front, None
    sign = 1.0 if request.goal.objectives[0].direction == "maximize" else -1.0
    return front, max(front, key=lambda n: (sign * feasible[n][0], -n))


def _finalise_front(*, db: Session, search: Search, trials: list[SearchTrial],
                    front: list[int], settings: Settings) -> tuple[bool, list[str]]:
    """Start one finalise job per light front trial; return (some finalise job still active, ids to enqueue).

    A cancelled search starts none and cancels those that run.
    """
    tenant = db.get(Tenant, search.tenant_id)
    assert tenant is not None
    pending, started = False, []
    for trial in (t for t in trials if t.number in front and t.job_id):
        if trial.final_job_id is not None:
            final = db.get(Job, trial.final_job_id, populate_existing=True)
            if final is not None and final.status not in TERMINAL_STATUSES:
                pending = True
                if search.cancel_requested and not final.cancel_requested:
                    request_cancel(db=db, job=final)
            continue
        job = db.get(Job, trial.job_id)
        if search.cancel_requested or job is None or (job.results or {}).get("trial") != "light":
            continue  # nothing to finalise: a full trial job already has its test numbers
        if quota_wait(db=db, search=search, tenant=tenant, settings=settings):
            pending = True  # the tenant's active-job cap or storage quota: try again at the next step
            continue
        spec = JobSpec.model_validate({**job.spec, "trial": {"mode": "finalise", "from_job": job.id}})
        final, _ = insert_job(db=db, tenant=tenant, spec=spec, idempotency_key=f"{search.id}:final:{trial.number}")
        trial.final_job_id = final.id
        add_search_event(db=db, search_id=search.id, kind="trial_finalising",
                         data={"number": trial.number, "job_id": trial.job_id, "final_job_id": final.id})
        db.commit()
        pending = pending or final.status not in TERMINAL_STATUSES
        if final.status == JobStatus.QUEUED:  # also a job a step that died had stored: a second message is skipped
            started.append(final.id)
    return pending, started


def _follow_trial(*, db: Session, search: Search, trial: SearchTrial, study: Any, request: SearchCreate) -> None:
    """Bring one running trial up to date with its child job: an outcome, or pruner reports."""
    import optuna

    job = db.get(Job, trial.job_id, populate_existing=True) if trial.job_id else None
    number = trial.number
    optuna_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if job is None:  # the child was deleted while it ran
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        _record(db, search, trial, state="failed", data={"reason": "child job deleted"})
    elif job.status == JobStatus.SUCCEEDED:
        _complete(db=db, search=search, trial=trial, job=job, study=study, optuna_id=optuna_id, request=request)
    elif job.status == JobStatus.FAILED:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        _record(db, search, trial, state="failed", data={"code": job.error_code, "message": job.error_message})
    elif job.status == JobStatus.CANCELLED:
        pruned = trial.prune_requested
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
        study.tell(trial.number, state=state, skip_if_finished=True)
        _record(db, search, trial, state="pruned" if pruned else "cancelled", data={})
    elif request.pruning != "none" and search.reference and not trial.prune_requested:
        _report_epochs(db=db, search=search, trial=trial, job=job, study=study, optuna_id=optuna_id,
                       request=request, judge=True)


def _complete(*, db: Session, search: Search, trial: SearchTrial, job: Job, study: Any, optuna_id: int,
              request: SearchCreate) -> None:
    import optuna

    results = job.results or {}
    if search.reference is None:
        search.reference = study_lib.reference_of(results)
        # Commit before Optuna writes: on SQLite an open write transaction here would hold the
        # database lock that Optuna's own connection then waits for ("database is locked").
        db.commit()
    if request.pruning != "none":  # its whole curve, for the rungs later trials are judged at
        _report_epochs(db=db, search=search, trial=trial, job=job, study=study, optuna_id=optuna_id,
                       request=request, judge=False)
    found = study_lib.measures(results, request.goal)
    values = study_lib.objective_values(found, request.goal)
    if study._storage.get_trial(optuna_id).state == optuna.trial.TrialState.RUNNING:  # else told already
        optuna_trial = optuna.trial.Trial(study, optuna_id)
        for name, value in found["constraints"].items():  # <= 0 is met; the samplers read them
            optuna_trial.set_constraint(name, value)
    if values is None:  # a retention Optuna cannot rank (e.g. a zero teacher metric)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        trial.measures = found
        _record(db, search, trial, state="failed", data={"reason": "an objective is undefined"})
        return
    study.tell(trial.number, values=values if len(values) > 1 else values[0], skip_if_finished=True)
    trial.values, trial.measures = values, found
    _record(db, search, trial, state="complete" if found["feasible"] else "infeasible",
            data={"values": values, "feasible": found["feasible"]})


def _record(db: Session, search: Search, trial: SearchTrial, *, state: str, data: dict[str, Any]) -> None:
    trial.state, trial.finished_at = state, utcnow()
    add_search_event(db=db, search_id=search.id, kind=f"trial_{state}",
                     data={"number": trial.number, "job_id": trial.job_id, **data})
    db.commit()


def _report_epochs(*, db: Session, search: Search, trial: SearchTrial, job: Job, study: Any, optuna_id: int,
                   request: SearchCreate, judge: bool) -> None:
    """Report the child's new student epochs to the pruner; when `judge`, cancel the child if it says prune."""
    import optuna

    if study._storage.get_trial(optuna_id).state != optuna.trial.TrialState.RUNNING:
        return  # told already (a step that died after telling)

    metric = request.goal.objectives[0].metric
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "epoch")
                        .order_by(JobEvent.seq))
    optuna_trial = optuna.trial.Trial(study, optuna_id)
    reported = trial.last_step
    for event in events:
        data = event.data
        if data.get("stage") != "student" or int(data.get("epoch", 0)) <= reported or not data.get("metrics"):
            continue
        value = study_lib.epoch_value(data["metrics"], search.reference, metric)
        if value is None:
            continue
        reported = int(data["epoch"])
        optuna_trial.report(value, reported)  # a step reported before (a step that died) is ignored
        if judge and optuna_trial.should_prune():
            trial.prune_requested = True
            add_search_event(db=db, search_id=search.id, kind="trial_pruning",
                             data={"number": trial.number, "job_id": job.id, "epoch": reported, "value": value})
            if job.status not in TERMINAL_STATUSES:
                request_cancel(db=db, job=job)  # commits
            break
    trial.last_step = reported
    db.commit()


def _cancel_children(*, db: Session, search: Search) -> None:
    for trial in trials_of(db, search.id):
        if trial.state != "running" or trial.job_id is None:
            continue
        job = db.get(Job, trial.job_id, populate_existing=True)
        if job is not None and job.status not in TERMINAL_STATUSES and not job.cancel_requested:
            request_cancel(db=db, job=job)


def _start_trials(*, db: Session, search: Search, study: Any, request: SearchCreate,
                  settings: Settings) -> list[str]:
    """Start trials up to `parallel` running and `trials` in all, within the tenant's quotas."""
    import optuna

    tenant = db.get(Tenant, search.tenant_id)
    assert tenant is not None
    started: list[str] = []
    while True:
        trials = trials_of(db, search.id)
        running = sum(t.state == "running" for t in trials)
        if running >= request.parallel or len(trials) >= request.trials:
            return started
        if quota_wait(db=db, search=search, tenant=tenant, settings=settings):
            return started  # the tenant's active-job cap or storage quota: try again at the next step
        known = {t.number for t in trials}
        orphans = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if t.number not in known]
        if orphans:  # asked by a step that died before it stored the trial: adopt it, ask nothing
            trial = optuna.trial.Trial(study, orphans[0]._trial_id)
        else:
            study.sampler = study_lib.make_sampler(request, asked=len(study.get_trials(deepcopy=False)))
            trial = study.ask()
        params = suggest(trial, request)  # an adopted trial's stored values come back unchanged
        try:
            spec = child_spec(request, search_id=search.id, number=trial.number, params=params)
        except ValidationError as exc:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            row = SearchTrial(search_id=search.id, number=trial.number, params=params, state="running")
            db.add(row)
            _record(db, search, row, state="failed", data={"reason": f"invalid spec: {exc.errors()[0]['msg']}"})
            continue
        job, _ = insert_job(db=db, tenant=tenant, spec=spec, idempotency_key=f"{search.id}:trial:{trial.number}")
        db.add(SearchTrial(search_id=search.id, number=trial.number, job_id=job.id, params=params, state="running"))
        add_search_event(db=db, search_id=search.id, kind="trial_started",
                         data={"number": trial.number, "job_id": job.id, "params": params})
        db.commit()
        if job.status == JobStatus.QUEUED:
            started.append(job.id)


def _finish(*, db: Session, search: Search, request: SearchCreate, settings: Settings) -> None:
    """Compute the front and the best trial, test retention for the front only, write the artifacts."""
    trials = trials_of(db, search.id)
    front, best = _front(trials, request)
    for trial in trials:  # a light trial's test numbers are its finalise job's
        final_id = trial.final_job_id or (trial.job_id if trial.number in front else None)
        job = db.get(Job, final_id) if final_id else None
        tested = job is not None and job.status == JobStatus.SUCCEEDED and job.results and "trial" not in job.results
        trial.test = study_lib.test_retention(job.results) if tested else None
    search.summary = {"pareto": front, "best": best}
    if search.cancel_requested:
        status, code, message = JobStatus.CANCELLED, None, None
    elif not any(t.state in ("complete", "infeasible") for t in trials):
        status, code, message = JobStatus.FAILED, "no_trial_completed", "every trial failed or was pruned"
    else:
        status, code, message = JobStatus.SUCCEEDED, None, None
    write_artifacts(db=db, search=search, trials=trials, request=request, settings=settings)
    search.status, search.finished_at = status, utcnow()
    search.error_code, search.error_message = code, message
    search.lease_owner = search.lease_until = None
    add_search_event(db=db, search_id=search.id, kind=str(status),
                     data={"pareto": front, "best": best, **({"code": code, "message": message} if code else {})})
    db.commit()
    log.info("search %s %s: front %s, best %s", search.id, status, front, best)
