"""Party processes forked from one preloaded process, so a run does not pay for imports.

A party process spends about half a second of CPU importing numpy, MPyC's finite fields and
the statistics before it can take a job; a warm pool (`smpc.runner.WarmParties`) hides that
latency but not the CPU, which three parties per query pay again and again (on a 2-core
machine, more than the protocols themselves). Here one *zygote* process imports everything
once (`smpc.party._preload`, never `mpyc.runtime`, which reads `sys.argv` when imported) and
then forks one child per party on request: a fork costs milliseconds and shares the imported
pages.

Protocol between the launcher and the zygote: a Unix socket pair. For each party the launcher
makes three pipes (the child's stdin, stdout and stderr), sends the child's ends with
SCM_RIGHTS, and reads back the child's pid. The zygote forks; the child moves the pipes onto
its fds 0, 1 and 2, re-seeds every random generator it inherited (Python's `random`, numpy's
global one: each party's randomness must be its own; MPyC's shares and masks come from
`secrets`, the OS's, which a fork does not copy), restores default signal handling, asks for
SIGKILL when the zygote dies, and runs `smpc.party.main()` exactly as ``python -m smpc.party``
would. The zygote ignores SIGCHLD (children are reaped by the kernel) and exits when the
launcher's end of the socket closes.

`ForkedParty` gives the launcher the part of `subprocess.Popen` that `smpc.runner` uses:
`stdin`, `communicate(timeout)`, `poll()`, `kill()` and `returncode` (0 when the party printed
its outcome, else 1: the child is the zygote's, so its exit status is not ours to wait for).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import IO

_PID = struct.Struct("!q")


class ForkedParty:
    """A party forked by the zygote: the subset of `subprocess.Popen` that `smpc.runner`
    uses."""

    def __init__(self, pid: int, stdin: IO[str], stdout: int, stderr: int) -> None:
        self.pid = pid
        self.stdin: IO[str] | None = stdin
        self._stdout, self._stderr = stdout, stderr
        self._chunks: dict[int, list[bytes]] = {stdout: [], stderr: []}
        self._open = {stdout, stderr}
        self.returncode: int | None = None

    def _read(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            for fd in self._open:
                selector.register(fd, selectors.EVENT_READ)
            while self._open:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired("smpc.party", timeout or 0.0)
                for key, _ in selector.select(left):
                    fd = int(key.fd)
                    data = os.read(fd, 65536)
                    if data:
                        self._chunks[fd].append(data)
                    else:
                        selector.unregister(fd)
                        self._open.discard(fd)
                        os.close(fd)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read stdout and stderr to their end (the child's exit), or raise
        `subprocess.TimeoutExpired` past `timeout` (what was read so far is kept)."""
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        self._read(timeout)
        out = b"".join(self._chunks[self._stdout]).decode("utf-8", "replace")
        err = b"".join(self._chunks[self._stderr]).decode("utf-8", "replace")
        if self.returncode is None:
            from smpc.party import OUTCOME

            self.returncode = 0 if OUTCOME in out else 1
        return out, err

    def poll(self) -> int | None:
        """None while the child may still run (its pipes are open), else its returncode."""
        if self._open:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, 0)
                return None
            self.returncode = 1 if self.returncode is None else self.returncode
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """The launcher's side: one preloaded zygote process, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _start(self) -> socket.socket:
        if self._socket is not None:  # a dead zygote's end
            self._socket.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # no parent-death signal here: on Linux it follows the *thread* that started the
        # zygote, which may end long before the launcher does. The zygote ends instead when
        # the launcher's end of the socket closes (the launcher exited), and its children,
        # which do ask for SIGKILL when their parent dies, end with it.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "smpc.forkserver", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._socket = ours
        return ours

    def spawn(self) -> ForkedParty:
        """A forked party waiting on its stdin for a `PartyJob`."""
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            with self._lock:
                pid = None
                for attempt in range(2):  # a zygote that died is started again, once
                    alive = self._process is not None and self._process.poll() is None
                    sock = self._socket if alive and self._socket is not None else self._start()
                    try:
                        socket.send_fds(sock, [b"spawn"], [job_r, out_w, err_w])
                        (pid,) = _PID.unpack(_receive(sock, _PID.size))
                        break
                    except OSError:  # ConnectionError included
                        if attempt:
                            raise
                        self._process = None  # start a fresh zygote on the next attempt
        finally:
            for fd in (job_r, out_w, err_w):
                os.close(fd)
        assert pid is not None
        return ForkedParty(pid, os.fdopen(job_w, "w", encoding="utf-8"), out_r, err_r)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=2)
                if self._process.poll() is None:
                    self._process.kill()
                    self._process.wait()
                self._process = None


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the party zygote has gone")
        data += chunk
    return data


def _child(fds: list[int], sock: socket.socket) -> None:
    """In the forked child: become ``python -m smpc.party`` on the given pipes."""
    import random

    sock.close()
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = os.fdopen(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = os.fdopen(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = os.fdopen(2, "w", encoding="utf-8", closefd=False)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    random.seed()
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed()
    from smpc.runner import _die_with_parent

    _die_with_parent()
    code = 1
    try:
        from smpc.party import main

        code = main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(fd: int) -> None:
    """The zygote: preload, then fork a party per request until the launcher goes."""
    from smpc.party import _preload

    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(sock, 16, 3)
        except OSError:
            return
        if len(fds) != 3:
            return  # the launcher closed its end
        pid = os.fork()
        if pid == 0:
            _child(fds, sock)
        for received in fds:
            os.close(received)
        try:
            sock.sendall(_PID.pack(pid))
        except OSError:
            return


if __name__ == "__main__":
    serve(int(sys.argv[1]))
