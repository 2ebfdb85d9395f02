"""The node's MPC listen ports: one per task in flight, from the configured range."""

from __future__ import annotations

import errno
import socket
import threading
from contextlib import closing

from tessera.errors import ConfigInvalid, ProtocolFailed


class PortPool:
    """Hands out ports of `low..high` that are neither in use by another task of this node
    nor taken by another program (checked by binding `host`), round robin so that a port just
    released (its connections possibly in TIME_WAIT) is the last to be reused."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host, self.low, self.high = host, low, high
        self._busy: set[int] = set()
        self._next = low
        self._lock = threading.Lock()

    @property
    def in_use(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._busy)

    def take(self) -> int:
        with self._lock:
            size = self.high - self.low + 1
            for i in range(size):
                port = self.low + (self._next - self.low + i) % size
                if port not in self._busy and self._bindable(port):
                    self._busy.add(port)
                    self._next = port + 1 if port < self.high else self.low
                    return port
        raise ProtocolFailed(
            f"no free MPC port in {self.low}-{self.high} ({len(self._busy)} in use by this node)"
        )

    def release(self, port: int) -> None:
        with self._lock:
            self._busy.discard(port)

    def _bindable(self, port: int) -> bool:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise ConfigInvalid(
                    f"cannot listen on {self.host!r} ({exc.strerror}): mpc_host must be an "
                    "address of this machine, or set mpc_bind_host (e.g. 0.0.0.0) when the "
                    "other parties reach this node through another address"
                ) from None
        return True
