"""FastAPI dependencies: the DB session per request, the caller (Bearer API key), role checks, rate limits.

Threads and connections. The polled reads (status, lists) need no session and no thread: they run
on asyncio connections (service.datasets.reads). Other database work runs in worker threads, and a
thread gives its connection back before it ends its hop: a key lookup uses a short session of its
own, and a route of a `UnitOfWorkRoute` router runs, commits and closes its session in one hop (its
answer is then serialised on the event loop). So no request ever holds a connection while it waits
for a thread, a thread waiting for a connection waits only for threads that are running, and no
number of clients can starve the pool against the thread pool.

Units of work run in at most `route_threads` threads per process, taken in arrival order. Twenty
clients creating requests at once in forty threads handed the GIL to each other in the middle of
every ORM flush: the unlucky waited 2.5 times the median (p99 267-319 ms against 112-141); with four
threads they queue instead, and the slowest waits 1.5 times the median.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import anyio
from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from service.accounts import keycache, ratelimit
from service.accounts.keys import hash_api_key
from service.accounts.models import Account, ApiKey, Role
from service.accounts.service import account_for_key_hash, actor_of
from service.audit.service import Actor
from service.coalesce import coalescer
from service.db import get_sessionmaker
from service.errors import Forbidden, RateLimited, Unauthorized
from service.loop_local import LoopLocal
from service.observability.logs import bind
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


_route_threads: LoopLocal[anyio.CapacityLimiter] = LoopLocal()


def one_hop(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A sync route as an async one that runs the route and its commit in one worker-thread hop."""

    @functools.wraps(endpoint)
    async def run(**kwargs: Any) -> Any:
        limiter = _route_threads.get(lambda: anyio.CapacityLimiter(get_settings().route_threads))
        return await anyio.to_thread.run_sync(functools.partial(_unit_of_work, endpoint, kwargs), limiter=limiter)

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
    """The console's sign-in limiter (per client address; rare, so one Redis call each is fine)."""
    return MovingWindowRateLimiter(storage_from_string(get_settings().rate_limit_storage_url))


def reset_limiter() -> None:
    _limiter.cache_clear()
    ratelimit.reset()
    keycache.clear()


async def _check_rate(key: ApiKey) -> None:
    settings = get_settings()
    decision = await ratelimit.limiter_for_loop(settings.rate_limit_storage_url, settings.rate_limit).hit(key.id)
    if not decision.allowed:
        raise RateLimited(f"rate limit of {settings.rate_limit} per API key exceeded; retry in {decision.retry_after_s}s",
                          headers={"Retry-After": str(decision.retry_after_s)})


def _look_up(digest: str) -> tuple[Account, ApiKey] | None:
    """The key's rows, read in a short session of their own (its connection is back in the pool
    before this thread is) and kept in the key cache."""
    seen = keycache.generation()
    with get_sessionmaker()() as session:
        found = account_for_key_hash(session, key_hash=digest)
        session.commit()  # ends the read; the rows stay loaded (expire_on_commit=False; a rollback would expire them)
    if found is not None:
        keycache.put(digest, *found, ttl_s=get_settings().auth_cache_s, seen_generation=seen)
    return found


# The API key scheme: FastAPI routes depend on it; service.hot_reads calls it with the request.
bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _identify(credentials: HTTPAuthorizationCredentials | None) -> tuple[Account, ApiKey]:
    """The verified caller's account and key as detached rows, the rate limit charged."""
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    digest = hash_api_key(token, get_settings().api_key_pepper)
    # Concurrent first requests of one key share a lookup (service.coalesce), as do those that
    # arrive together when its cache entry expires.
    found = keycache.get(digest) or await coalescer().read(("api-key", digest), lambda: run_in_threadpool(_look_up, digest))
    if found is None:
        raise Unauthorized("unknown or revoked API key")
    account, key = found
    if account.disabled:
        raise Forbidden("this account is disabled", code="account_disabled")
    await _check_rate(key)
    return account, key


async def current_reader(credentials: BearerDep) -> Caller:
    """The verified caller, once per request (every REST route depends on it through its router), as
    detached rows: read them, never change them. A route that needs no session depends on this alone."""
    account, key = await _identify(credentials)
    bind(account_id=str(account.id))  # on every log line of the request
    return Caller(account=account, key=key)


ReaderDep = Annotated[Caller, Depends(current_reader)]


async def current_caller(reader: ReaderDep, session: SessionDep) -> Caller:
    # Copies of the verified rows in the request's session, without a query (load=False).
    return Caller(account=session.merge(reader.account, load=False), key=session.merge(reader.key, load=False))


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
