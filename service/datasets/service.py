"""Datasets: requests (validation, quota, model choice, auto-approval), visibility, and the admin and
owner actions that move a dataset through the transition table."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, load_only

from service import layout, queue, storage
from service.accounts.models import Account, Role
from service.audit.service import SYSTEM, Actor, record
from service.datasets import transitions
from service.datasets.models import Dataset, DatasetStatus
from service.datasets.schemas import DatasetCreate
from service.errors import ApiError, Forbidden, NotFound, Unprocessable
from service.modelversions import service as models_service
from service.modelversions.models import ModelStatus, ModelVersion
from service.settings import get_settings

log = logging.getLogger("xraysynth.datasets")

S = DatasetStatus
# Requests that will never produce images give their quota back.
NOT_COUNTED = (S.rejected, S.cancelled)


# ---------------------------------------------------------------- reading


# A dataset names its model by id, name and version: its card, metrics and calibration (large JSON) stay
# unread.
_MODEL_REF = [load_only(ModelVersion.id, ModelVersion.name, ModelVersion.version, ModelVersion.conditions)]


def to_public(session: Session, ds: Dataset, *, owner: Account | None = None, model: ModelVersion | None = None) -> dict:
    owner = owner or session.get(Account, ds.account_id)
    mv = model or session.get(ModelVersion, ds.model_version_id, options=_MODEL_REF)
    return public_fields(ds, owner, mv)


def public_fields(ds, owner, mv) -> dict:
    """The public view of a dataset from anything with its columns (an ORM row or a Core row), its
    owner's id and name, and its model's id, name, version and conditions."""
    base = f"/v1/datasets/{ds.id}"
    return {
        "id": ds.id,
        "status": ds.status,
        "owner": {"id": owner.id, "name": owner.name},
        "model": {"id": mv.id, "name": mv.name, "version": mv.version},
        # Image order (service.layout), not the stored JSONB's, which PostgreSQL keeps by key length.
        "conditions": dict(layout.image_blocks(ds.spec, mv.conditions)),
        "total_images": ds.total_images,
        "format": ds.format,
        "heatmaps": ds.heatmaps,
        "seed": ds.seed,
        "purpose": ds.purpose,
        "progress": {"done": ds.done_images, "total": ds.total_images},
        "error": ds.error,
        "progress_note": ds.progress_note,
        "created_at": ds.created_at,
        "updated_at": ds.updated_at,
        "links": {"self": base, "card": f"{base}/card", "download": f"{base}/download"},
    }


def to_public_many(session: Session, datasets: Sequence[Dataset]) -> list[dict]:
    # Owners and models in two queries, not two per dataset.
    owners, models = {}, {}
    if datasets:
        account_ids = {d.account_id for d in datasets}
        model_ids = {d.model_version_id for d in datasets}
        owners = {a.id: a for a in session.scalars(select(Account).where(Account.id.in_(account_ids)))}
        models = {m.id: m for m in session.scalars(
            select(ModelVersion).options(*_MODEL_REF).where(ModelVersion.id.in_(model_ids)))}
    return [to_public(session, d, owner=owners.get(d.account_id), model=models.get(d.model_version_id))
            for d in datasets]


def list_datasets(
    session: Session, *, account_id: uuid.UUID | None, status: DatasetStatus | None = None, limit: int = 100
) -> list[Dataset]:
    q = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit)
    if account_id is not None:
        q = q.where(Dataset.account_id == account_id)
    if status is not None:
        q = q.where(Dataset.status == status)
    return list(session.scalars(q))


def get_visible(session: Session, *, dataset_id: uuid.UUID, account: Account, for_update: bool = False) -> Dataset:
    """The dataset if the caller may see it. Someone else's dataset gets exactly the answer an unknown id
    gets, so ids cannot be probed."""
    q = select(Dataset).where(Dataset.id == dataset_id)
    if for_update:
        # Row lock: concurrent votes/cancels/worker updates serialise on the dataset.
        q = q.with_for_update().execution_options(populate_existing=True)
    ds = session.scalar(q)
    if ds is None or (account.role != Role.admin and ds.account_id != account.id):
        raise NotFound("dataset not found")
    return ds


def get_owned(session: Session, *, dataset_id: uuid.UUID, account: Account, for_update: bool = False) -> Dataset:
    """For owner-only actions (cancel, download): admins see the dataset but may not act as its owner."""
    ds = get_visible(session, dataset_id=dataset_id, account=account, for_update=for_update)
    if ds.account_id != account.id:
        raise Forbidden("only the researcher who requested this dataset can do this")
    return ds


# Built once: a request runs them while it holds its account's lock (create_dataset). They run on the
# session's connection, in its transaction, past the ORM's statement layer (which would only autoflush,
# and nothing is pending where they run): a creation's route thread spent a sixth of its CPU there.
_COMMITTED = select(func.coalesce(func.sum(Dataset.total_images), 0)).where(
    Dataset.account_id == bindparam("account_id"), Dataset.status.not_in(NOT_COUNTED))
_LOCK_ACCOUNT = select(Account.id).where(Account.id == bindparam("account_id")).with_for_update()


def images_committed(session: Session, *, account_id: uuid.UUID) -> int:
    return int(session.connection().execute(_COMMITTED, {"account_id": account_id}).scalar())


def remaining_quota(session: Session, *, account: Account) -> int:
    return max(0, account.image_quota - images_committed(session, account_id=account.id))


# ---------------------------------------------------------------- requesting


def _refuse(message: str, *, field: str, code: str) -> Unprocessable:
    return Unprocessable(message, field=field, code=code)


def choose_model(session: Session, *, data: DatasetCreate, min_patients: int) -> ModelVersion | models_service.ModelPolicy:
    """The requested model (checked against the release policy), or the newest published one that offers
    every requested condition."""
    published = models_service.published_policies(session)
    known = {c for m in published for c in (m.conditions or [])}

    if data.model is not None:
        mv = models_service.resolve_model(session, ref=data.model)
        if mv is None or mv.status == ModelStatus.draft:
            raise _refuse(f"unknown model {data.model!r}; see GET /v1/models", field="model", code="unknown_model")
        if mv.status == ModelStatus.retired:
            raise _refuse(f"model {mv.name}:{mv.version} is retired; see GET /v1/models", field="model", code="model_retired")
        for cond in data.conditions:
            ok, reason = models_service.availability(mv, cond, min_patients=min_patients)
            if ok:
                continue
            if cond not in known and cond not in (mv.conditions or []):
                raise _refuse(f"unknown condition {cond!r}; see GET /v1/conditions", field=f"conditions.{cond}", code="unknown_condition")
            code = "condition_not_offered" if cond not in (mv.conditions or []) else "condition_unavailable"
            raise _refuse(reason, field=f"conditions.{cond}", code=code)
        return mv

    for cond in data.conditions:
        if cond not in known:
            raise _refuse(f"unknown condition {cond!r}; see GET /v1/conditions", field=f"conditions.{cond}", code="unknown_condition")
        verdicts = [models_service.availability(m, cond, min_patients=min_patients) for m in published if cond in m.conditions]
        if not any(ok for ok, _ in verdicts):
            raise _refuse(verdicts[0][1], field=f"conditions.{cond}", code="condition_unavailable")
    for mv in published:  # newest first
        if all(models_service.availability(mv, c, min_patients=min_patients)[0] for c in data.conditions):
            return mv
    raise _refuse(
        "no single published model offers all of " + ", ".join(sorted(data.conditions))
        + "; request them separately or name a model",
        field="conditions",
        code="no_model_for_conditions",
    )


class Requested(NamedTuple):
    dataset: Dataset
    model: ModelVersion | models_service.ModelPolicy  # the chosen model, loaded: answering with it costs no second query
    auto_approved: bool


def create_dataset(session: Session, *, account: Account, actor: Actor, data: DatasetCreate) -> Requested:
    """Validate a request and store it as pending_review (or approved, under the auto-approval policy).
    Every refusal is raised before the first write, so a 4xx leaves the database untouched."""
    settings = get_settings()
    mv = choose_model(session, data=data, min_patients=settings.min_training_patients)
    # Lock the account: two concurrent requests cannot both spend the same remaining quota. Taken
    # after the model is chosen (reads only), so a researcher's requests queue only for the quota.
    session.connection().execute(_LOCK_ACCOUNT, {"account_id": account.id})

    total = sum(data.conditions.values())
    if total > settings.max_images_per_request:
        raise _refuse(
            f"{total} images requested; at most {settings.max_images_per_request} per request",
            field="conditions", code="too_many_images",
        )
    remaining = remaining_quota(session, account=account)
    if total > remaining:
        raise _refuse(
            f"{total} images requested but only {remaining} of your quota of {account.image_quota} remain",
            field="conditions", code="quota_exceeded",
        )

    # Stored in image order, the order the worker generates them in.
    spec = dict(layout.image_blocks(data.conditions, mv.conditions))
    ds = Dataset(
        id=uuid.uuid4(),  # known before the insert: the dataset and its audit event go in one flush
        account_id=account.id,
        model_version_id=mv.id,
        spec=spec,
        total_images=total,
        format=data.format,
        heatmaps=data.heatmaps,
        seed=data.seed if data.seed is not None else secrets.randbits(63),
        purpose=data.purpose,
        status=S.pending_review,
        done_images=0,
    )
    session.add(ds)
    record(session, actor=actor, action="dataset.request", target_type="dataset", target_id=ds.id,
           details={"model": f"{mv.name}:{mv.version}", "conditions": spec, "total_images": total,
                    "format": ds.format.value, "heatmaps": ds.heatmaps, "seed": ds.seed})
    session.flush()

    auto_max = settings.auto_approve_max_images
    if 0 < auto_max and total <= auto_max:
        transitions.transition(session, ds, S.approved, actor=SYSTEM,
                               details={"policy": "auto_approve", "auto_approve_max_images": auto_max})
        return Requested(ds, mv, True)
    return Requested(ds, mv, False)


# ---------------------------------------------------------------- actions


def commit_and_enqueue(session: Session, *, dataset_id: uuid.UUID) -> bool:
    """Commit the approval first (a worker must find the dataset approved), then send the task by name.
    A broker outage does not undo the approval: the worker's sweeper enqueues approved datasets that
    have no work."""
    session.commit()
    try:
        task_id = queue.enqueue_generation(dataset_id)
    except Exception as exc:  # noqa: BLE001 — whatever the broker raises, the sweeper enqueues it later
        log.warning("dataset %s is approved but generation could not be enqueued (%s); "
                    "the worker's sweeper will pick it up", dataset_id, type(exc).__name__)
        return False
    log.info("dataset %s: generation enqueued (task %s)", dataset_id, task_id)
    return True


def cancel(session: Session, *, dataset_id: uuid.UUID, account: Account, reason: str | None = None) -> Dataset:
    ds = get_owned(session, dataset_id=dataset_id, account=account, for_update=True)
    _require_action(ds, S.cancelled, "cancel")
    transitions.transition(session, ds, S.cancelled, actor=_actor(account), reason=reason)
    return ds


def retry(session: Session, *, dataset_id: uuid.UUID, actor: Actor, note: str | None = None) -> Dataset:
    ds = lock(session, dataset_id=dataset_id)
    # Only the table's "retry" (failed → approved): this route must never approve a pending request
    # past its review, although pending → approved is in the table for the review policy.
    _require_action(ds, S.approved, "retry")
    models_service.refuse_if_retired(session, model_id=ds.model_version_id, action="retried",
                                     advice="it stays failed")
    transitions.transition(session, ds, S.approved, actor=actor, reason=note)
    return ds


def revoke(session: Session, *, dataset_id: uuid.UUID, actor: Actor, reason: str) -> Dataset:
    """ready → revoked, deleting every released object so URLs issued earlier stop working.

    Objects are deleted before the status change commits: if storage fails nothing changes and the admin
    can simply retry; the reverse order could leave a 'revoked' dataset whose files still download.
    """
    ds = lock(session, dataset_id=dataset_id)
    _require_action(ds, S.revoked, "revoke")
    if not transitions.allowed(ds.status, S.revoked, actor.role):
        raise transitions.InvalidTransition(f"dataset is {ds.status.value}; it cannot become revoked")
    try:
        deleted = storage.delete_prefix(get_settings().release_bucket, layout.release_prefix(ds.id))
    except Exception as exc:  # noqa: BLE001 — any storage failure is a 503 that changed nothing
        log.error("revoking dataset %s: deleting its objects failed (%s)", ds.id, type(exc).__name__)
        raise ApiError("object storage is unavailable; nothing was changed, try again",
                       status_code=503, code="storage_unavailable") from None
    transitions.transition(session, ds, S.revoked, actor=actor, reason=reason, details={"objects_deleted": deleted})
    return ds


def lock(session: Session, *, dataset_id: uuid.UUID) -> Dataset:
    """SELECT … FOR UPDATE: the caller then moves the dataset with transitions.transition()."""
    ds = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id).with_for_update().execution_options(populate_existing=True)
    )
    if ds is None:
        raise NotFound("dataset not found")
    return ds


def _require_action(ds: Dataset, target: DatasetStatus, action: str) -> None:
    """A route performs one named action of the table; the same target reached by another action (e.g.
    approved by review vs by retry) is not this route's to make."""
    rule = transitions.TABLE.get((ds.status, target))
    if rule is None or rule.action != action:
        raise transitions.InvalidTransition(f"dataset is {ds.status.value}; {action!r} is not possible from this state")


def _actor(account: Account) -> Actor:
    return Actor(id=account.id, name=account.name, role=account.role.value)
