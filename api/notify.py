"""Long-polls, woken in this process as soon as something changes.

A route that changes a query or a node's tasks notifies its topic (`query:<id>`, `node:<id>`)
after committing; long-polls waiting on that topic re-check at once. They also re-check the
database every `RECHECK_S`, which is how a change made by another replica reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

RECHECK_S = 0.25
T = TypeVar("T")


class Notifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, *topics: str) -> None:
        """Wake every long-poll on these topics; callable from any thread (sync routes run in
        a thread pool)."""
        if self._loop is None:
            return
        with self._lock:
            events = [e for t in topics for e in self._events.get(t, ())]
        for e in events:
            self._loop.call_soon_threadsafe(e.set)

    @contextlib.contextmanager
    def subscription(self, topic: str) -> Iterator[asyncio.Event]:
        """An event set whenever `topic` is notified, while the block runs."""
        event = asyncio.Event()
        with self._lock:
            self._events[topic].add(event)
        try:
            yield event
        finally:
            with self._lock:
                self._events[topic].discard(event)
                if not self._events[topic]:
                    del self._events[topic]


async def long_poll(
    request: Request, wait: float, topic: str, check: Callable[[], T | None]
) -> T | None:
    """Call `check` (in a worker thread, with its own database session) until it answers
    something other than None or `wait` (capped at `long_poll_max_s`) runs out; re-check as
    soon as `topic` is notified, and every `RECHECK_S` in any case. No database session is
    held while waiting."""
    settings = request.app.state.settings
    notifier: Notifier = request.app.state.notifier
    deadline = time.monotonic() + min(wait, settings.long_poll_max_s)
    with notifier.subscription(topic) as news:
        while True:
            news.clear()  # a notification from here on triggers the next check
            answer = await run_in_threadpool(check)
            left = deadline - time.monotonic()
            if answer is not None or left <= 0 or await request.is_disconnected():
                return answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), min(left, RECHECK_S))
