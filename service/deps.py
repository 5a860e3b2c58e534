"""FastAPI dependencies: the DB session per request, the caller (Bearer API key), role checks, rate limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from service.accounts.models import Account, ApiKey, Role
from service.accounts.service import account_for_key, actor_of
from service.audit.service import Actor
from service.db import session_scope
from service.errors import Forbidden, RateLimited, Unauthorized
from service.settings import get_settings


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# scope="function": commit (or roll back) before the response is sent, so a client that saw 2xx
# can rely on the change being durable, and a failed commit becomes a 500 instead of a silent loss.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    account: Account
    key: ApiKey

    @property
    def actor(self) -> Actor:
        return actor_of(self.account)

    @property
    def is_admin(self) -> bool:
        return self.account.role == Role.admin


@lru_cache
def _limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage_from_string(get_settings().rate_limit_storage_url))


def reset_limiter() -> None:
    _limiter.cache_clear()


def _check_rate(key: ApiKey) -> None:
    limit = parse(get_settings().rate_limit)
    limiter = _limiter()
    if not limiter.hit(limit, "api-key", str(key.id)):
        reset_at = limiter.get_window_stats(limit, "api-key", str(key.id)).reset_time
        retry_after = max(1, int(reset_at - time.time()) + 1)
        raise RateLimited(
            f"rate limit of {get_settings().rate_limit} per API key exceeded; retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )


def current_caller(request: Request, session: SessionDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    found = account_for_key(session, plain_key=token.strip())
    if found is None:
        raise Unauthorized("unknown or revoked API key")
    account, key = found
    if account.disabled:
        raise Forbidden("this account is disabled", code="account_disabled")
    _check_rate(key)
    return Caller(account=account, key=key)


def require_researcher(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if caller.account.role != Role.researcher:
        raise Forbidden("this route is for researcher accounts")
    return caller


def require_admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if caller.account.role != Role.admin:
        raise Forbidden("this route is for hospital admins")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
ResearcherDep = Annotated[Caller, Depends(require_researcher)]
AdminDep = Annotated[Caller, Depends(require_admin)]
