"""Admin pages for models (publish / retire), accounts and keys, and the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.accounts import service as accounts_service
from service.accounts.schemas import AccountCreate, AccountUpdate
from service.audit.service import actor_filter, list_events
from service.console.deps import AdminPage, CheckedForm, field_errors
from service.console.render import PageRoute, redirect, render
from service.console.sessions import ConsoleCaller
from service.deps import SessionDep
from service.errors import ApiError
from service.modelversions import service as models_service
from service.modelversions.models import ModelStatus
from service.reviews.service import visible_details
from service.settings import get_settings
from service.text import line

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)

AUDIT_PAGE = 50


def _models_page(request: Request, session: Session, caller: ConsoleCaller, *, errors: dict | None = None,
                 status_code: int = 200):
    min_patients = get_settings().min_training_patients
    models = models_service.list_models(session, statuses=list(ModelStatus))
    cards = [models_service.public_card(m, min_patients=min_patients, admin=True) for m in models]
    return render(request, "models.html", status_code=status_code, caller=caller, cards=cards,
                  min_patients=min_patients, errors=errors or {})


@router.get("/models")
def models_page(request: Request, session: SessionDep, caller: AdminPage):
    return _models_page(request, session, caller)


@router.post("/models/{model_id}/{action}")
def model_action(model_id: uuid.UUID, action: str, request: Request, session: SessionDep, caller: AdminPage,
                 form: CheckedForm):
    note = str(form.get("note") or "").strip()[:500] or None
    if action == "publish":
        models_service.publish(session, model_id=model_id, actor=caller.actor, note=note)
        return redirect("/ui/models?done=published")
    if action == "retire":
        # Retiring cannot be undone and stops every pending request on the model: one click is not enough.
        if form.get("confirm") != "yes":
            return _models_page(request, session, caller, status_code=422, errors={
                str(model_id): "tick the box to confirm: a retired version cannot be published again"})
        models_service.retire(session, model_id=model_id, actor=caller.actor, note=note)
        return redirect("/ui/models?done=retired")
    raise ApiError("no such action", status_code=404, code="not_found")


def accounts_page(request: Request, session: Session, caller: ConsoleCaller, *, new_key: dict | None = None,
                  errors: dict | None = None, form: dict | None = None, status_code: int = 200):
    accounts = [accounts_service.to_public(session, a) for a in accounts_service.list_accounts(session)]
    return render(request, "accounts.html", status_code=status_code, caller=caller, accounts=accounts,
                  new_key=new_key, errors=errors or {}, form=form or {},
                  default_quota=get_settings().default_image_quota)


@router.get("/accounts")
def accounts(request: Request, session: SessionDep, caller: AdminPage):
    return accounts_page(request, session, caller)


def _int_or_none(value) -> int | str | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text  # left for the schema to refuse, with its own message


@router.post("/accounts")
def create_account(request: Request, session: SessionDep, caller: AdminPage, form: CheckedForm):
    try:
        body = AccountCreate(name=form.get("name") or "", role=form.get("role") or "",
                             image_quota=_int_or_none(form.get("image_quota")))
    except ValidationError as exc:
        return accounts_page(request, session, caller, errors=field_errors(exc), form=dict(form), status_code=422)
    try:
        account = accounts_service.create_account(session, name=body.name, role=body.role, actor=caller.actor,
                                                  image_quota=body.image_quota)
    except ApiError as exc:
        if not exc.field:
            raise
        return accounts_page(request, session, caller, errors={exc.field: exc.message}, form=dict(form),
                             status_code=exc.status_code)
    key, plain = accounts_service.create_key(session, account=account, actor=caller.actor)
    session.commit()  # the key is shown once: only after it is stored
    return accounts_page(request, session, caller, new_key={"account": account.name, "prefix": key.prefix, "key": plain})


@router.post("/accounts/{account_id}")
def update_account(account_id: uuid.UUID, request: Request, session: SessionDep, caller: AdminPage, form: CheckedForm):
    disabled = {"disable": True, "enable": False}.get(str(form.get("disabled_action") or ""))
    try:
        body = AccountUpdate(image_quota=_int_or_none(form.get("image_quota")), disabled=disabled)
    except ValidationError as exc:
        # The row's form has one field: "nothing to change" (its box left empty) is said beside it.
        errors = {f"{account_id}.{'image_quota' if k == 'form' else k}":
                  "enter the new quota: a whole number of images, 0 or more" if k == "form" else v
                  for k, v in field_errors(exc).items()}
        return accounts_page(request, session, caller, errors=errors, status_code=422)
    accounts_service.update_account(session, account_id=account_id, actor=caller.actor,
                                    image_quota=body.image_quota, disabled=body.disabled)
    return redirect("/ui/accounts?done=updated")


@router.post("/accounts/{account_id}/keys")
def issue_key(account_id: uuid.UUID, request: Request, session: SessionDep, caller: AdminPage, form: CheckedForm):
    account = accounts_service.get_account(session, account_id=account_id)
    key, plain = accounts_service.create_key(session, account=account, actor=caller.actor)
    session.commit()
    return accounts_page(request, session, caller, new_key={"account": account.name, "prefix": key.prefix, "key": plain})


@router.post("/accounts/{account_id}/keys/{key_id}/revoke")
def revoke_key(account_id: uuid.UUID, key_id: uuid.UUID, session: SessionDep, caller: AdminPage, form: CheckedForm):
    accounts_service.revoke_account_key(session, account_id=account_id, key_id=key_id, actor=caller.actor)
    return redirect("/ui/accounts?done=key_revoked")


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(f"{text!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)", status_code=422,
                       code="validation_error") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


# A filter is one line: a control character (NUL cannot even be sent to the database) is a 422 page.
Filter = line()


@router.get("/audit")
def audit(request: Request, session: SessionDep, caller: AdminPage, action: Filter = "", target_id: Filter = "",
          actor: Filter = "", since: Filter = "", until: Filter = "",
          before_id: int | None = Query(None, ge=1, le=2**63 - 1)):
    action, target_id, actor = action.strip()[:64], target_id.strip()[:64], actor.strip()[:120]
    actor_id, actor_name = actor_filter(actor)
    events = list_events(session, action=action or None, target_id=target_id or None, actor_id=actor_id,
                         actor_name=actor_name, since=_when(since), until=_when(until), limit=AUDIT_PAGE,
                         before_id=before_id)
    seen = visible_details(session, viewer=caller.account, events=events)  # the same rule as GET /v1/audit
    rows = [{"id": e.id, "at": e.at, "actor": e.actor_name, "action": e.action, "target_type": e.target_type,
             "target_id": e.target_id, "details": details} for e, details in zip(events, seen, strict=True)]
    filters = {"action": action, "target_id": target_id, "actor": actor, "since": since, "until": until}
    older = None
    if len(events) == AUDIT_PAGE:
        older = "/ui/audit?" + urlencode({**{k: v for k, v in filters.items() if v}, "before_id": events[-1].id})
    return render(request, "audit.html", caller=caller, events=rows, filters=filters, older_url=older)
