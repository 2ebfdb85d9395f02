"""Parties forked from the preloaded zygote (`smpc.forkserver`), and the spawn fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.forkserver import Zygote
from smpc.runner import forking

ROOT = Path(__file__).resolve().parents[3]
QUERY = {"statistic": "mean", "dataset": "d", "column": "x"}


def frames() -> list[pd.DataFrame]:
    return [pd.DataFrame({"x": np.arange(40.0) + i}) for i in range(3)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pid: int, within: float = 15.0) -> bool:
    """Whether the process ends within `within` seconds (a killed child is reaped by the
    kernel a moment after its pipes close)."""
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_forked_party_answers_a_bad_job_with_an_error_line_and_exits() -> None:
    zygote = Zygote()
    try:
        party = zygote.spawn()
        assert party.stdin is not None
        party.stdin.write("not a job")
        out, _ = party.communicate(timeout=30)
        assert "TESSERA-ERROR" in out and "invalid_request" in out
        assert party.returncode == 1 and party.poll() == 1
    finally:
        zygote.close()


def test_a_waiting_forked_party_can_be_killed() -> None:
    zygote = Zygote()
    try:
        party = zygote.spawn()  # waits on its stdin for a job (its stdin stays open)
        time.sleep(0.3)
        assert party.poll() is None
        party.kill()
        party.communicate(timeout=10)  # its pipes close when it dies
        assert party.returncode == 1
        assert gone(party.pid)
    finally:
        zygote.close()


def test_the_zygote_and_its_parties_end_with_the_launcher() -> None:
    """A launcher that dies (here: exits without cleaning up) takes the zygote and every
    party still waiting with it: no party outlives a killed node agent."""
    script = (
        "import os, sys\n"
        "from smpc.forkserver import Zygote\n"
        "z = Zygote(); p = z.spawn()\n"
        "print(z._process.pid, p.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    zygote_pid, party_pid = (int(v) for v in run.stdout.split())
    assert gone(zygote_pid) and gone(party_pid)


def test_forked_and_spawned_parties_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    assert forking()
    forked = simulate(QUERY, frames())
    monkeypatch.setenv("TESSERA_PARTY_LAUNCH", "spawn")
    assert not forking()
    assert simulate(QUERY, frames()) == forked


def test_a_zygote_that_died_is_started_again() -> None:
    zygote = Zygote()
    try:
        zygote.spawn().kill()
        assert zygote._process is not None
        zygote._process.kill()
        zygote._process.wait()
        party = zygote.spawn()
        assert party.stdin is not None
        party.stdin.write("not a job")
        out, _ = party.communicate(timeout=30)
        assert "invalid_request" in out
    finally:
        zygote.close()
