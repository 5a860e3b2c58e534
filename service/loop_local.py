"""One object per running event loop: asyncio clients, locks and futures belong to the loop that made
them, and tests and the one-box service run several loops in turn."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar
from weakref import WeakKeyDictionary

T = TypeVar("T")


class LoopLocal(Generic[T]):
    def __init__(self) -> None:
        self._by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, T] = WeakKeyDictionary()
        # The last loop asked about and its object: a WeakKeyDictionary lookup makes a weak reference
        # per call, which several lookups per request made a measurable share of a status read.
        self._last: tuple[weakref.ref, T] | None = None

    def get(self, make: Callable[[], T], *, still_fits: Callable[[T], bool] = lambda _: True) -> T:
        """The running loop's object, made (or remade, when it no longer fits) on first use."""
        loop = asyncio.get_running_loop()
        last = self._last
        found = last[1] if last is not None and last[0]() is loop else self._by_loop.get(loop)
        if found is None or not still_fits(found):
            found = self._by_loop[loop] = make()
        if last is None or last[1] is not found:
            self._last = (weakref.ref(loop), found)
        return found

    def pop(self) -> T | None:
        self._last = None
        return self._by_loop.pop(asyncio.get_running_loop(), None)

    def clear(self) -> None:
        self._last = None
        self._by_loop.clear()
