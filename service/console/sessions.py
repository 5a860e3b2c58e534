"""Console sign-in: an API key posted once is exchanged for a server-side session (a random cookie token
whose sha256 is the row's key), a CSRF token per session, and a rate limit on failed sign-ins.

Every request re-checks the API key the session was opened with, so revoking that key or disabling the
account ends the session on the browser's next request; an idle session expires.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, timedelta

from fastapi import Request
from limits import parse
from sqlalchemy import delete
from sqlalchemy.orm import Session

from service.accounts.models import Account, ApiKey
from service.accounts.service import account_for_key
from service.audit.service import Actor, record
from service.console.models import ConsoleSession
from service.deps import Caller, _limiter
from service.errors import ApiError, RateLimited
from service.settings import get_settings
from service.timeutil import utcnow

COOKIE = "xraysynth_session"
LOGIN_CSRF_COOKIE = "xraysynth_login_csrf"
ANONYMOUS = Actor(id=None, name="anonymous", role="anonymous")


class SignInRequired(ApiError):
    status_code, code = 401, "sign_in_required"


@dataclass(frozen=True)
class ConsoleCaller(Caller):
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _login_limit():
    return parse(get_settings().console_login_rate_limit)


def check_login_rate(request: Request) -> None:
    """Refuse sign-in attempts from an address that has failed too often (counted only on failures, so a
    person who signs in correctly is never locked out by their own successes)."""
    limit, limiter, who = _login_limit(), _limiter(), client_address(request)
    if not limiter.test(limit, "console-login", who):
        reset_at = limiter.get_window_stats(limit, "console-login", who).reset_time
        retry_after = max(1, int(reset_at - time.time()) + 1)
        raise RateLimited(f"too many failed sign-ins; try again in {retry_after}s",
                          headers={"Retry-After": str(retry_after)})


def failed_sign_in(session: Session, request: Request, *, reason: str, account: Account | None = None) -> None:
    """Count the failure against the address and put it on the audit record (never the key typed)."""
    _limiter().hit(_login_limit(), "console-login", client_address(request))
    record(session, actor=ANONYMOUS if account is None else Actor(id=account.id, name=account.name, role=account.role.value),
           action="console.sign_in_failed", target_type="console", target_id=client_address(request)[:64],
           details={"reason": reason, "client": client_address(request)})


def sign_in(session: Session, request: Request, *, plain_key: str) -> tuple[str, Account] | str:
    """The new session's cookie token and its account, or the reason the key was refused."""
    found = account_for_key(session, plain_key=plain_key.strip()) if plain_key.strip() else None
    if found is None:
        failed_sign_in(session, request, reason="unknown or revoked API key")
        return "That API key is not valid (unknown or revoked)."
    account, key = found
    if account.disabled:
        failed_sign_in(session, request, reason="account disabled", account=account)
        return "This account is disabled."
    # Sessions nobody came back to are removed here rather than by a scheduled job.
    cutoff = utcnow() - timedelta(seconds=get_settings().console_idle_timeout_s)
    session.execute(delete(ConsoleSession).where(ConsoleSession.last_seen_at < cutoff))
    token = secrets.token_urlsafe(32)
    session.add(ConsoleSession(token_hash=_digest(token), account_id=account.id, key_id=key.id,
                               csrf_token=secrets.token_urlsafe(32)))
    record(session, actor=Actor(id=account.id, name=account.name, role=account.role.value), action="console.sign_in",
           target_type="account", target_id=account.id, details={"key_prefix": key.prefix})
    return token, account


def current(session: Session, request: Request) -> ConsoleCaller:
    """The signed-in caller, or SignInRequired. Ends sessions that are idle, or whose key or account no
    longer works, in the same step."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired("please sign in")
    row = session.get(ConsoleSession, _digest(token))
    if row is None:
        raise SignInRequired("your session has ended; please sign in again")
    now = utcnow()
    key = session.get(ApiKey, row.key_id)
    account = session.get(Account, row.account_id)
    seen = row.last_seen_at if row.last_seen_at.tzinfo else row.last_seen_at.replace(tzinfo=UTC)  # SQLite: naive UTC
    idle = now - seen > timedelta(seconds=get_settings().console_idle_timeout_s)
    if idle or key is None or key.revoked_at is not None or account is None or account.disabled:
        session.delete(row)
        session.commit()  # the end of the session must stick although the request is refused
        raise SignInRequired("your session has ended; please sign in again")
    row.last_seen_at = now
    return ConsoleCaller(account=account, key=key, csrf_token=row.csrf_token)


def sign_out(session: Session, request: Request) -> None:
    token = request.cookies.get(COOKIE)
    if token:
        session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == _digest(token)))


def csrf_ok(expected: str | None, given: object) -> bool:
    return bool(expected) and isinstance(given, str) and secrets.compare_digest(expected, given)

