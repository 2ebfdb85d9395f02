"""Long-polls, woken in this process as soon as something changes.

A route that changes a query or a node's tasks notifies its topic (`query:<id>`, `node:<id>`)
after committing; long-polls waiting on that topic re-check at once. On PostgreSQL the topic
also goes to every other replica on the same database (`Broadcast`: LISTEN/NOTIFY on one
channel), whose long-polls re-check at once too. Every long-poll also re-checks the database
every `long_poll_recheck_s` (2 s by default) in any case: the safety net for a notification
lost with a broken connection. (Until issue 14 that was every 0.25 s, and it was how other
replicas' changes arrived: with 25 waiting clients, 100 database checks a second, which took
more of the coordinator's CPU than everything else it did for a query.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

T = TypeVar("T")
log = logging.getLogger("tessera.coordinator")


class Notifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._lock = threading.Lock()

        self.broadcast: Broadcast | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, *topics: str) -> None:
        """Wake every long-poll on these topics, here and (with a `Broadcast`) in every other
        replica; callable from any thread (sync routes run in a thread pool)."""
        if self.broadcast is not None:
            self.broadcast.publish(topics)
        self.wake(*topics)

    def wake(self, *topics: str) -> None:
        """Wake this process's long-polls on these topics."""
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
    soon as `topic` is notified, and every `long_poll_recheck_s` in any case. No database session is
    held while waiting."""
    settings = request.app.state.settings
    notifier: Notifier = request.app.state.notifier
    deadline = time.monotonic() + min(wait, settings.long_poll_max_s)
    recheck = settings.long_poll_recheck_s
    with notifier.subscription(topic) as news:
        # The client leaving wakes the wait too: the poll ends at once (a node agent that
        # stops, a coordinator shutting down waits for no abandoned poll).
        gone = asyncio.create_task(_disconnected(request, news))
        try:
            while True:
                news.clear()  # a notification from here on triggers the next check
                if gone.done():
                    return None  # nobody to answer: take nothing (a task offered here is lost)
                answer = await run_in_threadpool(check)
                left = deadline - time.monotonic()
                if answer is not None or left <= 0 or gone.done():
                    return answer
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), min(left, recheck))
        finally:
            gone.cancel()


async def _disconnected(request: Request, wake: asyncio.Event) -> None:
    """Return once the client of `request` (a GET: no body to read) disconnected, and set
    `wake`. The server answers every later receive with the disconnect as well, so
    `request.is_disconnected()` still sees it afterwards."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    wake.set()


class Broadcast:
    """Topics shared by the replicas of one PostgreSQL database: `publish` sends each topic
    with PostgreSQL's NOTIFY on one channel, and a listener thread wakes this replica's
    long-polls for the topics the *other* replicas sent (each replica tags what it sends with
    a random origin id). Two connections of their own, outside the pool: one sends (a thread
    draining a queue, so a route never waits for it), one listens. A broken connection is
    opened again with a growing pause; what was sent meanwhile is lost, and the long-polls'
    own re-checks (`long_poll_recheck_s`) cover it. Payloads are topic names only
    (`query:<id>`, `node:<id>`, `synthesis:<id>`): no result, name or secret travels."""

    CHANNEL = "tessera_news"

    def __init__(self, database_url: str, notifier: Notifier) -> None:
        from sqlalchemy.engine import make_url

        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._notifier = notifier
        self._origin = secrets.token_hex(8)
        self._outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self.listening = threading.Event()  # set while the listener is subscribed
        self._threads = [
            threading.Thread(target=self._send_forever, name="broadcast-send", daemon=True),
            threading.Thread(target=self._listen_forever, name="broadcast-listen", daemon=True),
        ]

    def start(self) -> Broadcast:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def publish(self, topics: tuple[str, ...] | list[str]) -> None:
        for topic in topics:
            self._outbox.put(topic)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)

    def _pause(self, attempt: int) -> None:
        self._stopping.wait(min(10.0, 0.2 * 2**attempt))

    def _send_forever(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    attempt = 0
                    while True:
                        topic = self._outbox.get()
                        if topic is None:
                            return
                        batch = {topic}
                        with contextlib.suppress(queue.Empty):
                            while len(batch) < 256:
                                more = self._outbox.get_nowait()
                                if more is None:
                                    self._outbox.put(None)
                                    break
                                batch.add(more)
                        for item in sorted(batch):
                            conn.execute(
                                "SELECT pg_notify(%s, %s)", (self.CHANNEL, f"{self._origin} {item}")
                            )
            except Exception as exc:  # any failure: reconnect, keep serving
                if self._stopping.is_set():
                    return
                log.warning("replica notifications: sending failed (%s); reconnecting", exc)
                self._pause(attempt)
                attempt += 1

    def _listen_forever(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    self.listening.set()
                    attempt = 0
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            origin, _, topic = note.payload.partition(" ")
                            if origin != self._origin and topic:
                                self._notifier.wake(topic)
            except Exception as exc:  # any failure: reconnect, keep serving
                self.listening.clear()
                if self._stopping.is_set():
                    return
                log.warning("replica notifications: listening failed (%s); reconnecting", exc)
                self._pause(attempt)
                attempt += 1
        self.listening.clear()
