"""Run one MPC party in a child process and collect its outcome.

A fresh OS process per protocol run keeps MPyC's global runtime state out of the caller (the
node agent or `simulate`) and lets a stuck protocol be killed cleanly. On Linux each party is
forked from one preloaded zygote (`smpc.forkserver`): milliseconds and no import CPU per run.
Elsewhere (or with TESSERA_PARTY_LAUNCH=spawn) a fresh ``python -m smpc.party`` starts in
about 0.3 s (it imports numpy and MPyC, not pandas), or in milliseconds when a warm process
from `WarmParties` is waiting.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from smpc.forkserver import ForkedParty, Zygote
from smpc.job import PartyJob, PartyOutcome
from smpc.party import ERROR, OUTCOME
from tessera.errors import ERRORS_BY_CODE, DisclosureRefused, ProtocolFailed, TesseraError


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGKILL when the parent dies, so a party never
    outlives a killed node agent (elsewhere it ends at its own deadline)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawn(module: str = "smpc.party") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


class WarmParties:
    """Party processes started ahead of time, waiting on stdin with their imports done.

    `take()` hands out a warm process (or a fresh one when none is ready); `refill_soon()`,
    called when a run ends, starts replacements. The pool grows to the largest number taken at
    once, up to `limit`. Idle processes exit by themselves when their parent dies (stdin
    closes).
    """

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._idle: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()
        self._want = 1
        self._wake = threading.Event()
        self._refiller: threading.Thread | None = None
        atexit.register(self.close)

    def take(self, count: int = 1) -> list[subprocess.Popen[str]]:
        with self._lock:
            self._want = min(self.limit, max(self._want, count))
            alive = [p for p in self._idle if p.poll() is None]
            taken, self._idle = alive[:count], alive[count:]
        taken += [_spawn() for _ in range(count - len(taken))]
        return taken

    def refill_soon(self) -> None:
        """Start replacements in the background (after a run, not during it: they compete
        for the CPU while importing)."""
        with self._lock:
            if self._refiller is None:
                # One long-lived thread spawns every warm process: on Linux a child's
                # parent-death signal fires when the *thread* that forked it ends.
                self._refiller = threading.Thread(
                    target=self._refill_forever, daemon=True, name="warm-parties"
                )
                self._refiller.start()
        self._wake.set()

    def _refill_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                self._idle = [p for p in self._idle if p.poll() is None]
                missing = self._want - len(self._idle)
                self._idle += [_spawn() for _ in range(max(missing, 0))]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for proc in idle:
            proc.kill()
            proc.communicate()


_pool: WarmParties | None = None
_pool_lock = threading.Lock()


def warm_parties() -> WarmParties:
    """The process-wide pool, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WarmParties()
        return _pool


_zygote: Zygote | None = None


def forking() -> bool:
    """Whether parties are forked from the preloaded zygote (`smpc.forkserver`): on Linux,
    unless TESSERA_PARTY_LAUNCH=spawn asks for fresh processes from the warm pool."""
    return sys.platform.startswith("linux") and os.environ.get("TESSERA_PARTY_LAUNCH") != "spawn"


def zygote() -> Zygote:
    global _zygote
    with _pool_lock:
        if _zygote is None:
            _zygote = Zygote()
            atexit.register(_zygote.close)
        return _zygote


def start_parties(jobs: list[PartyJob]) -> list[Any]:
    """Hand each job to a party process (forked from the zygote, or a warm one); returns at
    once."""
    if forking():
        procs: list[Any] = [zygote().spawn() for _ in jobs]
    else:
        procs = warm_parties().take(len(jobs))
    for proc, job in zip(procs, jobs, strict=True):
        _hand_over(proc, job.model_dump_json(by_alias=True))
    return procs


def start_party(job: PartyJob) -> Any:
    """Launch one party and hand it its job (non-blocking)."""
    return start_parties([job])[0]


def _hand_over(proc: Any, payload: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(payload)
    proc.stdin.close()
    proc.stdin = None  # handed over; `communicate` must not touch it again


def wait_party(proc: Any, job: PartyJob) -> PartyOutcome:
    """Wait for a started party; kill it past its deadline (plus a grace second)."""
    try:
        return PartyOutcome.model_validate(wait_program(proc, job.timeout_s, job.party_id))
    finally:
        if not isinstance(proc, ForkedParty):
            warm_parties().refill_soon()


def wait_program(proc: Any, timeout_s: float, party_id: int) -> dict[str, Any]:
    """A started party's outcome (`parse_outcome`; a `start_program` party's, or any other's),
    the process killed a second past `timeout_s`."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s + 1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ProtocolFailed(
            f"party {party_id} did not finish within {timeout_s:.0f} s", {"party_id": party_id}
        ) from None
    return parse_outcome(stdout, stderr, proc.returncode, party_id)


def parse_outcome(stdout: str, stderr: str, returncode: int, party_id: int) -> dict[str, Any]:
    """A party process's outcome line, or its error raised as the `TesseraError` it names."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(OUTCOME) and returncode == 0:
            outcome: dict[str, Any] = json.loads(line[len(OUTCOME) :])
            return outcome
        if line.startswith(ERROR):
            body: dict[str, Any] = json.loads(line[len(ERROR) :])
            cls = ERRORS_BY_CODE.get(body.get("code", ""), ProtocolFailed)
            if cls is TesseraError:
                cls = ProtocolFailed
            details: dict[str, Any] = {} if cls is DisclosureRefused else {"party_id": party_id}
            if isinstance(body.get("parties"), list):  # the parties lost (`smpc.liveness`)
                details["parties"] = [p for p in body["parties"] if isinstance(p, int)]
                details["when"] = str(body.get("when", ""))
            error = cls(body.get("message", "party failed"), details)
            error.code = body.get("code", error.code)
            raise error
    tail = stderr.strip().splitlines()[-1:] or ["no output"]
    raise ProtocolFailed(
        f"party {party_id} exited with status {returncode}: {tail[0]}",
        {"party_id": party_id},
    )


def run_party(job: PartyJob) -> PartyOutcome:
    """Run one party of the protocol to the end (blocking); raise `ProtocolFailed` if it fails."""
    return wait_party(start_party(job), job)


def start_program(module: str, payload: str) -> subprocess.Popen[str]:
    """Start ``python -m module`` as a party process (a program built on `smpc.party.main`
    with its own job model) and hand it `payload` on stdin; returns at once."""
    proc = _spawn(module)
    _hand_over(proc, payload)
    return proc


def wait_all(procs: list[Any], wait: Any) -> list[Any]:
    """Every party's outcome (`wait(i, proc)`); when one fails, the others still running are
    killed (they would wait for it until their deadline) and the first failure is raised."""
    outcomes, errors = [], []
    for i, proc in enumerate(procs):
        try:
            outcomes.append(wait(i, proc))
        except ProtocolFailed as exc:
            errors.append(exc)
            for other in procs:
                if other.poll() is None:
                    other.kill()
    if errors:
        raise errors[0]
    return outcomes
