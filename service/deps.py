"""FastAPI dependencies: the DB session per request, the caller (Bearer API key), role checks, rate limits.

Threads and connections. Database work runs in worker threads, and a thread gives its connection back
before it ends its hop: authentication ends its read-only transaction before it returns, and a route
of a `UnitOfWorkRoute` router runs, commits and closes its session in one hop (its answer is then
serialised on the event loop). So no request ever holds a connection while it waits for a thread, a
thread waiting for a connection waits only for threads that are running, and no number of clients
can starve the pool against the thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any
from weakref import WeakKeyDictionary

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.orm import Session

from service.accounts import keycache
from service.accounts.keys import hash_api_key
from service.accounts.models import Account, ApiKey, Role
from service.accounts.service import account_for_key, actor_of
from service.audit.service import Actor
from service.db import get_sessionmaker
from service.errors import Forbidden, RateLimited, Unauthorized
from service.settings import get_settings


def _end(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def get_session() -> AsyncIterator[Session]:
    """The request's session. It holds no connection until its first query, so creating it needs no
    thread; whatever is still open when the route is done (a route outside `UnitOfWorkRoute`) is
    committed, or rolled back on an error, in a thread of its own."""
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_end, session, False, limiter=anyio.CapacityLimiter(1))
        else:
            session.close()
        raise
    if session.in_transaction():
        # Its own limiter: finishing a unit of work never waits for a thread behind new requests.
        await anyio.to_thread.run_sync(_end, session, True, limiter=anyio.CapacityLimiter(1))
    else:
        session.close()


# scope="function": committed (or rolled back) before the response is sent, so a client that saw 2xx
# can rely on the change being durable, and a failed commit is an error answer instead of a silent loss.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _unit_of_work(endpoint: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    session = next((v for v in kwargs.values() if isinstance(v, Session)), None)
    if session is None:
        return endpoint(**kwargs)
    ok = False
    try:
        result = endpoint(**kwargs)
        ok = True
    finally:
        _end(session, ok)
    return result


def one_hop(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A sync route as an async one that runs the route and its commit in one worker-thread hop."""

    @functools.wraps(endpoint)
    async def run(**kwargs: Any) -> Any:
        return await run_in_threadpool(_unit_of_work, endpoint, kwargs)

    return run


class UnitOfWorkRoute(APIRoute):
    """Route class of the REST routers: each sync route is one unit of work in one thread hop."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        if not inspect.iscoroutinefunction(endpoint):  # include_router copies routes already wrapped
            endpoint = one_hop(endpoint)
        super().__init__(path, endpoint, **kwargs)


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


# The request path checks the limit on the event loop (no thread); an asyncio client belongs to the
# loop that made it, hence one limiter per loop.
_async_limiters: WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncMovingWindowRateLimiter] = WeakKeyDictionary()


def _async_limiter() -> AsyncMovingWindowRateLimiter:
    loop = asyncio.get_running_loop()
    limiter = _async_limiters.get(loop)
    if limiter is None:
        url = get_settings().rate_limit_storage_url
        options = {"implementation": "redispy", "retry_on_error": [RedisConnectionError]} if url.startswith("redis") else {}
        limiter = AsyncMovingWindowRateLimiter(storage_from_string(f"async+{url}", **options))
        _async_limiters[loop] = limiter
    return limiter


def reset_limiter() -> None:
    _limiter.cache_clear()
    _async_limiters.clear()
    keycache.clear()


def _rate_limited(reset_at: float) -> RateLimited:
    retry_after = max(1, int(reset_at - time.time()) + 1)
    return RateLimited(
        f"rate limit of {get_settings().rate_limit} per API key exceeded; retry in {retry_after}s",
        headers={"Retry-After": str(retry_after)},
    )


def _check_rate(key: ApiKey) -> None:
    limit = parse(get_settings().rate_limit)
    limiter = _limiter()
    if not limiter.hit(limit, "api-key", str(key.id)):
        raise _rate_limited(limiter.get_window_stats(limit, "api-key", str(key.id)).reset_time)


async def _check_rate_async(key: ApiKey) -> None:
    limit = parse(get_settings().rate_limit)
    limiter = _async_limiter()
    if not await limiter.hit(limit, "api-key", str(key.id)):
        raise _rate_limited((await limiter.get_window_stats(limit, "api-key", str(key.id))).reset_time)


def _authenticate(session: Session, token: str, digest: str) -> Caller:
    seen = keycache.generation()
    ok = False
    try:
        found = account_for_key(session, plain_key=token)
        if found is None:
            raise Unauthorized("unknown or revoked API key")
        account, key = found
        keycache.put(digest, account, key, ttl_s=get_settings().auth_cache_s, seen_generation=seen)
        if account.disabled:
            raise Forbidden("this account is disabled", code="account_disabled")
        _check_rate(key)
        ok = True
        return Caller(account=account, key=key)
    finally:
        # End the read-only transaction here, so the connection is back in the pool before this thread
        # is; commit keeps the account loaded (expire_on_commit=False), rollback (on a refusal) need not.
        if ok:
            session.commit()
        else:
            session.rollback()


async def current_caller(request: Request, session: SessionDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    digest = hash_api_key(token, get_settings().api_key_pepper)
    hit = keycache.get(digest)
    if hit is None:
        return await run_in_threadpool(_authenticate, session, token, digest)
    # Copies of the verified rows in the request's session, without a query (load=False).
    account, key = session.merge(hit[0], load=False), session.merge(hit[1], load=False)
    if account.disabled:
        raise Forbidden("this account is disabled", code="account_disabled")
    await _check_rate_async(key)
    return Caller(account=account, key=key)


async def require_researcher(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if caller.account.role != Role.researcher:
        raise Forbidden("this route is for researcher accounts")
    return caller


async def require_admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if caller.account.role != Role.admin:
        raise Forbidden("this route is for hospital admins")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
ResearcherDep = Annotated[Caller, Depends(require_researcher)]
AdminDep = Annotated[Caller, Depends(require_admin)]
