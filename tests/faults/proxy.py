"""A lossy HTTP/1.1 proxy for fault tests: node agents talk to the coordinator through it, and
it loses the coordinator's reply to a chosen request.

One request per connection (it asks the coordinator to close, and so does its answer): it
reads a request, forwards it on a fresh connection, reads the whole answer and sends it back.
A request matching an armed rule (`drop_reply`) is forwarded too, so the coordinator does the
work and commits, but its answer is thrown away and the node's connection closed: the node sees
the connection end without a reply, exactly as when a reply is lost on the way or the
coordinator crashes between its commit and its reply. Listens on 127.0.0.1 on a free port, in
an asyncio loop of its own thread.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field


@dataclass
class Exchange:
    """One request through the proxy and what became of its answer."""

    method: str
    path: str
    status: int  # the coordinator's (0: it did not answer)
    replayed: bool  # the coordinator's `Idempotent-Replayed: true`
    dropped: bool  # the answer was thrown away


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    times: int


@dataclass
class LossyProxy:
    upstream_port: int
    exchanges: list[Exchange] = field(default_factory=list)
    port: int = 0
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LossyProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="lossy-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(10)

    def drop_reply(self, method: str, path: str, times: int = 1) -> None:
        """Lose the answer to the next `times` requests `method` whose path matches the
        regular expression `path` (in full)."""
        with self._lock:
            self._rules.append(_Rule(method, re.compile(path), times))

    def armed(self) -> int:
        """How many answers the rules still wait to lose."""
        with self._lock:
            return sum(r.times for r in self._rules)

    def seen(self, method: str, path: str) -> list[Exchange]:
        """The exchanges of `method` on paths matching `path` (in full), in order."""
        pattern = re.compile(path)
        with self._lock:
            return [e for e in self.exchanges if e.method == method and pattern.fullmatch(e.path)]

    def _take_rule(self, method: str, path: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule.method == method and rule.times > 0 and rule.pattern.fullmatch(path):
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                    return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._one(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = [tuple(line.split(":", 1)) for line in lines if line]
        names = {name.strip().lower(): value.strip() for name, value in headers}
        if "chunked" in names.get("transfer-encoding", ""):
            raise ValueError("chunked request bodies are not supported by this proxy")
        body = await reader.readexactly(int(names.get("content-length", "0")))
        path = target.split("?", 1)[0]
        drop = self._take_rule(method, path)
        kept = [
            f"{name}:{value}"
            for name, value in headers
            if name.strip().lower() not in ("connection", "keep-alive")
        ]
        forwarded = "\r\n".join([request_line, *kept, "Connection: close", "", ""])
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the coordinator is down: as if the connection was refused
            self._record(Exchange(method, path, 0, False, drop))
            writer.transport.abort()
            return
        try:
            up_writer.write(forwarded.encode("latin-1") + body)
            await up_writer.drain()
            answer = await up_reader.read()  # to the end: the coordinator closes after it
        finally:
            up_writer.close()
        status, replayed = _status(answer)
        self._record(Exchange(method, path, status, replayed, drop))
        if drop or not answer:
            writer.transport.abort()  # the reply is lost: the connection ends without it
            return
        writer.write(answer)
        await writer.drain()

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)


def _status(answer: bytes) -> tuple[int, bool]:
    if not answer:
        return 0, False
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    first, *lines = head.split("\r\n")
    replayed = any(
        line.split(":", 1)[0].strip() == "idempotent-replayed" and line.endswith("true")
        for line in lines
    )
    return int(first.split(" ", 2)[1]), replayed
