"""Start an MPC sub-protocol now and await its result later, alongside other work.

MPyC numbers every message by the program counter of the coroutine that sends it, so that all
parties agree on which message is which. A plain `async def` started with `asyncio` would share
its caller's counter and number its messages by timing, differently at each party; an MPyC
coroutine (`mpyc.asyncoro.mpc_coro`) gets its own counter when it is called. `soon` wraps an
awaitable factory in one: the sub-protocol starts at once (every party at the same point of its
program) and runs while the caller goes on; awaiting the returned future gives its result.

A caller must await every future it started before it ends or raises, so that no exchange is
left half-done at any party.
"""

from __future__ import annotations

from asyncio import Future
from collections.abc import Awaitable, Callable
from typing import Any


def soon(make: Callable[[], Awaitable[Any]]) -> Any:
    """`make()` run as an MPyC coroutine started now; a future of its result."""
    from mpyc import asyncoro

    @asyncoro.mpc_coro
    async def run():  # type: ignore[no-untyped-def]  # MPyC reads a return annotation
        await asyncoro.returnType(Future)
        return await make()

    return run()
