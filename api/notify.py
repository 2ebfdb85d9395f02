"""Wake long-polls in this process as soon as something changes.

Across replicas the long-polls also re-check the database every `RECHECK_S`; this only makes
the common single-process case answer within milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

RECHECK_S = 0.25


class Notifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, *topics: str) -> None:
        """Callable from any thread (routes run in a thread pool)."""
        if self._loop is None:
            return
        with self._lock:
            events = [e for t in topics for e in self._events.get(t, ())]
        for e in events:
            self._loop.call_soon_threadsafe(e.set)

    async def wait(self, topic: str, timeout: float) -> None:
        """Return when `topic` is notified or after `timeout` seconds."""
        event = asyncio.Event()
        with self._lock:
            self._events[topic].add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._events[topic].discard(event)
