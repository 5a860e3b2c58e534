"""One object per running event loop: asyncio clients, locks and futures belong to the loop that made
them, and tests and the one-box service run several loops in turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar
from weakref import WeakKeyDictionary

T = TypeVar("T")


class LoopLocal(Generic[T]):
    def __init__(self) -> None:
        self._by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, T] = WeakKeyDictionary()

    def get(self, make: Callable[[], T], *, still_fits: Callable[[T], bool] = lambda _: True) -> T:
        """The running loop's object, made (or remade, when it no longer fits) on first use."""
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None or not still_fits(found):
            found = self._by_loop[loop] = make()
        return found

    def pop(self) -> T | None:
        return self._by_loop.pop(asyncio.get_running_loop(), None)

    def clear(self) -> None:
        self._by_loop.clear()
