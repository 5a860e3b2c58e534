"""Sign-in, sign-out, the home page by role, and the JSON the progress bars poll."""

from __future__ import annotations

import secrets
import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from service.accounts.models import Role
from service.console import sessions
from service.console.deps import CheckedForm, PageCaller
from service.console.render import PageRoute, error_page, redirect, render
from service.datasets import service as datasets_service
from service.datasets.models import DatasetStatus
from service.deps import SessionDep, UnitOfWorkRoute
from service.errors import ApiError
from service.reviews import service as reviews_service
from service.settings import get_settings

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
api = APIRouter(prefix="/ui/api", route_class=UnitOfWorkRoute, include_in_schema=False)  # JSON: errors keep the one JSON shape
fallback = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)  # included last


def _cookie_args() -> dict:
    return {"httponly": True, "samesite": "strict", "secure": not get_settings().is_development, "path": "/ui"}


def _login_form(request: Request, *, error: str | None = None, status_code: int = 200, headers: dict | None = None):
    token = secrets.token_urlsafe(24)  # double-submit token: sign-in itself is CSRF-protected too
    response = render(request, "login.html", status_code=status_code, headers=headers, caller=None, error=error,
                      csrf_token=token)
    response.set_cookie(sessions.LOGIN_CSRF_COOKIE, token, max_age=3600, **_cookie_args())
    return response


@router.get("/login")
def login_page(request: Request):
    return _login_form(request)


@router.post("/login")
async def login(request: Request, session: SessionDep):
    form = await request.form()  # on the event loop; the sign-in itself (database, Redis) in one thread hop
    return await run_in_threadpool(_sign_in, request, session, form)


def _sign_in(request: Request, session: Session, form):
    if not sessions.csrf_ok(request.cookies.get(sessions.LOGIN_CSRF_COOKIE), form.get("csrf_token")):
        return _login_form(request, error="The sign-in form expired; please try again.", status_code=403)
    try:
        sessions.check_login_rate(request)
    except ApiError as exc:
        return _login_form(request, error=exc.message, status_code=exc.status_code, headers=exc.headers)
    outcome = sessions.sign_in(session, request, plain_key=str(form.get("api_key") or ""))
    session.commit()  # a failed attempt stays on the audit record although the answer is an error
    if isinstance(outcome, str):
        return _login_form(request, error=outcome, status_code=401)
    token, _ = outcome
    response = redirect("/ui/")
    response.set_cookie(sessions.COOKIE, token, **_cookie_args())
    response.delete_cookie(sessions.LOGIN_CSRF_COOKIE, path="/ui")
    return response


@router.get("/logout")
def logout_page(request: Request, caller: PageCaller):
    return render(request, "logout.html", caller=caller)


@router.post("/logout")
def logout(request: Request, session: SessionDep, form: CheckedForm):
    sessions.sign_out(session, request)
    response = redirect("/ui/login?done=signed_out")
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


@router.get("/")
def home(request: Request, session: SessionDep, caller: PageCaller):
    if caller.account.role == Role.admin:
        queue = reviews_service.review_queue(session, viewer=caller.account, status=DatasetStatus.pending_review)
        failed = datasets_service.list_datasets(session, account_id=None, status=DatasetStatus.failed, limit=500)
        return render(request, "home_admin.html", caller=caller, pending=len(queue), failed=len(failed))
    mine = datasets_service.to_public_many(
        session, datasets_service.list_datasets(session, account_id=caller.account.id, limit=5))
    return render(request, "home_researcher.html", caller=caller, datasets=mine,
                  remaining=datasets_service.remaining_quota(session, account=caller.account))


@api.get("/datasets/{dataset_id}/progress")  # one hop: a sync route of a UnitOfWorkRoute router
def progress(dataset_id: uuid.UUID, request: Request, session: SessionDep) -> dict:
    caller = sessions.current(session, request)
    ds = datasets_service.get_visible(session, dataset_id=dataset_id, account=caller.account)
    return {"status": ds.status.value, "done": ds.done_images, "total": ds.total_images, "note": ds.progress_note}


@fallback.get("/{path:path}")
def unknown_page(request: Request):
    return error_page(request, 404, "There is no such page.")
