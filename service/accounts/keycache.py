"""API keys verified in the last few seconds, so a busy client is not looked up on every request.

An entry is a key's row and its account's row as last read from the database (detached copies), kept
`auth_cache_s` seconds (0: no cache). Any flush in this process that changes or deletes an account or
a key empties the cache, so revoking a key or disabling an account through this process (API, console,
CLI) takes effect on the next request; another process that does it is obeyed within `auth_cache_s`.
Entries are keyed by the key's HMAC, never by the key itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, make_transient_to_detached

from service.accounts.models import Account, ApiKey

MAX_ENTRIES = 10_000

_lock = threading.Lock()
_entries: OrderedDict[str, tuple[float, Account, ApiKey]] = OrderedDict()
_generation = 0  # bumped by every clear: a lookup that raced with a revocation is not stored


def generation() -> int:
    return _generation


def get(digest: str) -> tuple[Account, ApiKey] | None:
    with _lock:
        hit = _entries.get(digest)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del _entries[digest]
            return None
        return hit[1], hit[2]


def _detached_copy(obj):
    """A row's column values as a detached instance no session owns: other threads merge it freely."""
    cls = type(obj)
    copy = cls(**{attr.key: getattr(obj, attr.key) for attr in inspect(cls).column_attrs})
    make_transient_to_detached(copy)
    return copy


def put(digest: str, account: Account, key: ApiKey, *, ttl_s: float, seen_generation: int) -> None:
    if ttl_s <= 0:
        return
    account, key = _detached_copy(account), _detached_copy(key)
    with _lock:
        if seen_generation != _generation:
            return
        _entries[digest] = (time.monotonic() + ttl_s, account, key)
        _entries.move_to_end(digest)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def clear() -> None:
    global _generation
    with _lock:
        _generation += 1
        _entries.clear()


@event.listens_for(Session, "after_flush")
def _forget_on_change(session: Session, _context) -> None:
    # After a flush the session still lists what it flushed as dirty/deleted.
    if any(isinstance(obj, Account | ApiKey) for obj in (*session.dirty, *session.deleted)):
        clear()
