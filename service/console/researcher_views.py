"""Researcher pages: the catalogue, the request form, my datasets, one dataset (card, preview, cancel,
download list). These read the release zone only; the dataset pages dispatch admins to their own views."""

from __future__ import annotations

import uuid

from botocore.exceptions import ClientError
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import layout, storage
from service.accounts.models import Role
from service.console.admin_review import admin_dataset_page, admin_datasets_page
from service.console.deps import CheckedForm, PageCaller, ResearcherPage, field_errors
from service.console.render import PageRoute, redirect, render, state_diagram
from service.console.sessions import ConsoleCaller
from service.datasets import service as datasets_service
from service.datasets.models import DatasetStatus
from service.datasets.schemas import DatasetCreate
from service.datasets.transitions import TABLE
from service.deps import SessionDep
from service.errors import ApiError, NotFound
from service.modelversions import service as models_service
from service.modelversions.models import ModelStatus
from service.releases import service as release
from service.settings import get_settings

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


def _catalogue(session: Session) -> tuple[list[dict], list[dict]]:
    min_patients = get_settings().min_training_patients
    conditions = models_service.catalogue(session, min_patients=min_patients)
    cards = [models_service.public_card(m, min_patients=min_patients)
             for m in models_service.list_models(session, statuses=[ModelStatus.published])]
    return conditions, cards


@router.get("/catalogue")
def catalogue(request: Request, session: SessionDep, caller: PageCaller):
    conditions, cards = _catalogue(session)
    return render(request, "catalogue.html", caller=caller, conditions=conditions, cards=cards)


def request_page(request: Request, session: Session, caller: ConsoleCaller, *, errors: dict | None = None,
                 form: dict | None = None, status_code: int = 200):
    conditions, cards = _catalogue(session)
    return render(request, "request_new.html", status_code=status_code, caller=caller, conditions=conditions,
                  cards=cards, errors=errors or {}, form=form or {"heatmaps": "on", "format": "png"},
                  remaining=datasets_service.remaining_quota(session, account=caller.account))


@router.get("/requests/new")
def new_request(request: Request, session: SessionDep, caller: ResearcherPage):
    return request_page(request, session, caller)


def _parse_request(form) -> tuple[dict, dict[str, str]]:
    """Form fields -> the REST body; only what a form cannot say as JSON (text to integers) is done here,
    every rule stays in DatasetCreate and the datasets service."""
    errors: dict[str, str] = {}
    counts: dict[str, int] = {}
    for field, value in form.multi_items():
        if not field.startswith("count.") or not str(value).strip():
            continue
        try:
            counts[field[len("count."):]] = int(str(value).strip())
        except ValueError:
            errors[field] = "enter a whole number of images"
    body: dict = {"conditions": counts, "format": form.get("format") or "png", "heatmaps": form.get("heatmaps") == "on",
                  "purpose": str(form.get("purpose") or "")}
    if str(form.get("model") or "").strip():
        body["model"] = str(form.get("model")).strip()
    seed = str(form.get("seed") or "").strip()
    if seed:
        try:
            body["seed"] = int(seed)
        except ValueError:
            errors["seed"] = "enter a whole number, or leave empty for a random seed"
    return body, errors


@router.post("/requests")
def create_request(request: Request, session: SessionDep, caller: ResearcherPage, form: CheckedForm):
    body, errors = _parse_request(form)
    data = None
    try:
        data = DatasetCreate(**body)
    except ValidationError as exc:
        errors = {**field_errors(exc, {"conditions.": "count."}), **errors}
        if "conditions" in errors and not body["conditions"]:  # the schema's rule, said for a form
            errors["conditions"] = "ask for at least one image of one condition"
            if any(k.startswith("count.") for k in errors):  # a count was typed, just not a whole number
                del errors["conditions"]
    if errors or data is None:
        return request_page(request, session, caller, errors=errors, form=dict(form), status_code=422)
    try:
        ds, _, auto_approved = datasets_service.create_dataset(session, account=caller.account, actor=caller.actor, data=data)
    except ApiError as exc:
        if not exc.field:
            raise
        field = "count." + exc.field[len("conditions."):] if exc.field.startswith("conditions.") else exc.field
        return request_page(request, session, caller, errors={field: exc.message}, form=dict(form),
                            status_code=exc.status_code)
    if auto_approved:
        datasets_service.commit_and_enqueue(session, dataset_id=ds.id)
    return redirect(f"/ui/datasets/{ds.id}?done=requested")


@router.get("/datasets")
def datasets(request: Request, session: SessionDep, caller: PageCaller, status: str | None = None):
    if caller.account.role == Role.admin:
        return admin_datasets_page(request, session, caller, status)
    rows = datasets_service.to_public_many(session, datasets_service.list_datasets(session, account_id=caller.account.id))
    return render(request, "my_datasets.html", caller=caller, datasets=rows)


def _download_command(request: Request, dataset_id: uuid.UUID) -> str:
    base = str(request.base_url).rstrip("/")
    return f"XRAYSYNTH_API_KEY=<your key> xraysynth download {dataset_id} --out ./dataset-{str(dataset_id)[:8]} --api-url {base}"


@router.get("/datasets/{dataset_id}")
def dataset(dataset_id: uuid.UUID, request: Request, session: SessionDep, caller: PageCaller):
    if caller.account.role == Role.admin:
        return admin_dataset_page(request, session, caller, dataset_id)
    ds = datasets_service.get_owned(session, dataset_id=dataset_id, account=caller.account)
    card = release.dataset_card(session, dataset=ds, viewer=caller.account)
    manifest = None
    if ds.status == DatasetStatus.ready:
        manifest = release.download_manifest(session, dataset=ds, actor=caller.actor, expires_in=None)
    cancellable = any(rule.action == "cancel" for (src, _), rule in TABLE.items() if src == ds.status)
    return render(request, "dataset.html", caller=caller, ds=datasets_service.to_public(session, ds), card=card,
                  manifest=manifest, cancellable=cancellable, diagram=state_diagram(ds.status.value),
                  command=_download_command(request, ds.id) if manifest else None)


@router.post("/datasets/{dataset_id}/cancel")
def cancel(dataset_id: uuid.UUID, session: SessionDep, caller: PageCaller, form: CheckedForm):
    reason = str(form.get("reason") or "").strip()[:500] or None
    datasets_service.cancel(session, dataset_id=dataset_id, account=caller.account, reason=reason)
    return redirect(f"/ui/datasets/{dataset_id}?done=cancelled")


@router.get("/datasets/{dataset_id}/preview.png")
def preview(dataset_id: uuid.UUID, session: SessionDep, caller: ResearcherPage):
    """The released preview grid (synthetic images and heatmaps), from the release bucket only."""
    ds = datasets_service.get_owned(session, dataset_id=dataset_id, account=caller.account)
    if ds.status != DatasetStatus.ready:
        raise NotFound("the preview is published with the release")
    try:
        obj = storage.internal_client().get_object(Bucket=get_settings().release_bucket,
                                                   Key=layout.release_key(ds.id, layout.PREVIEW))
    except ClientError:
        raise NotFound("this release has no preview") from None
    return StreamingResponse(obj["Body"].iter_chunks(1 << 16), media_type="image/png",
                             headers={"Cache-Control": "private, no-store"})
