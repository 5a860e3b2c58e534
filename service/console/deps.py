"""Dependencies of console pages: the signed-in caller (from the session cookie), role checks, and forms
whose CSRF token has been checked."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from service.accounts.models import Role
from service.console import sessions
from service.console.sessions import ConsoleCaller
from service.deps import SessionDep
from service.errors import Forbidden, Unprocessable
from service.text import control_character


def _signed_in(session: Session, request: Request) -> ConsoleCaller:
    try:
        caller = sessions.current(session, request)
    except BaseException:
        session.rollback()
        raise
    session.commit()  # the session's last use; its connection goes back before the page's own hop
    return caller


async def page_caller(request: Request, session: SessionDep) -> ConsoleCaller:
    """The signed-in caller, in a thread hop that ends its transaction (as the REST key lookup does):
    no page holds a connection while it waits for the thread that renders it."""
    return await run_in_threadpool(_signed_in, session, request)


PageCaller = Annotated[ConsoleCaller, Depends(page_caller)]


def admin_page(caller: PageCaller) -> ConsoleCaller:
    if caller.account.role != Role.admin:
        raise Forbidden("this page is for hospital admins")
    return caller


def researcher_page(caller: PageCaller) -> ConsoleCaller:
    if caller.account.role != Role.researcher:
        raise Forbidden("this page is for researcher accounts")
    return caller


AdminPage = Annotated[ConsoleCaller, Depends(admin_page)]
ResearcherPage = Annotated[ConsoleCaller, Depends(researcher_page)]


async def checked_form(request: Request, caller: PageCaller) -> FormData:
    """The posted form, refused (403, nothing written) unless it carries this session's CSRF token, and
    (422) if any field holds a control character (NUL cannot even be stored)."""
    form = await request.form()
    if not sessions.csrf_ok(caller.csrf_token, form.get("csrf_token")):
        raise Forbidden("this form is missing its security token (CSRF); reload the page and try again", code="csrf")
    for name, value in form.multi_items():
        found = control_character(value) if isinstance(value, str) else None
        if found:
            raise Unprocessable(f"{name}: must not contain control characters other than tab and line breaks "
                                f"(found {found})", field=name)
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


def field_errors(exc: ValidationError, prefix_map: dict[str, str] | None = None) -> dict[str, str]:
    """pydantic errors keyed by the form field they belong to ("conditions.Mass" -> "count.Mass")."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        key = ".".join(loc) or "form"
        for old, new in (prefix_map or {}).items():
            if key.startswith(old):
                key = new + key[len(old):]
        msg = err.get("msg", "invalid value")
        msg = msg.removeprefix("Value error, ")
        out.setdefault(key, msg)
    return out
