"""A party connects to a peer that is not listening yet within milliseconds, not MPyC's 0.1 s."""

import asyncio
import time

import pytest

from smpc import party


def test_a_refused_connection_is_retried_within_milliseconds() -> None:
    calls: list[float] = []

    async def connect(*args: object, **kwargs: object) -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise ConnectionRefusedError("not listening yet")
        return f"connected {args} {kwargs}"

    started = time.monotonic()
    out = asyncio.run(party._connect_soon(connect, "127.0.0.1", 5000, ssl=None))
    assert out == "connected ('127.0.0.1', 5000) {'ssl': None}"
    assert len(calls) == 4
    assert time.monotonic() - started < 0.09  # three retries, each far below MPyC's 0.1 s


def test_a_peer_that_never_listens_falls_back_to_mpycs_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(party, "CONNECT_PATIENCE_S", 0.05)
    calls = 0

    async def connect(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("nobody there")

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(party._connect_soon(connect))
    assert calls >= 3


def test_other_errors_are_not_retried_here() -> None:
    async def connect(*args: object, **kwargs: object) -> None:
        raise OSError("no route to host")

    with pytest.raises(OSError, match="no route"):
        asyncio.run(party._connect_soon(connect))
