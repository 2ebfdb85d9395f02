"""A lost peer ends the run at once, naming the party.

MPyC by itself notices nothing when a peer goes away mid-protocol: a connection closed by the
peer's death is treated as a normal goodbye (or its error is logged from the event loop), and
the other parties wait for that peer's next message until the run's deadline (two minutes by
default), after which every node reports a timeout and nobody knows who left. Here, in the
party process:

- A connection that closes before this party began its own shutdown sets `Watch.lost` to the
  peer's party id; the run stops with `PeerLost` naming it (`smpc.party`). A peer process
  killed, or its node agent killed (its parties die with it: `smpc.forkserver`), closes its
  connections at once, so the others stop within milliseconds.
- Every connection has TCP keepalive probes every second after two idle seconds, so a peer
  whose machine or network went silent (nothing closes its connections) is declared lost after
  about `KEEPALIVE_IDLE_S + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_S` = 5 s, by the kernel.
- A peer that never connects stops the run after `START_TIMEOUT_S` (`party._run`): parties of a
  run are started within milliseconds of each other once every node accepted, so one still
  missing after that is gone (or unreachable), not late.

Only the party id is known here; the node agent maps it to the node (`PartyAddress.node`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

KEEPALIVE_IDLE_S = 2
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
START_TIMEOUT_S = 8.0


class PeerLost(Exception):
    """A peer's connection closed (or it never connected) before the run ended."""

    def __init__(self, party_ids: list[int], when: str) -> None:
        self.party_ids = sorted(party_ids)
        self.when = when
        names = ", ".join(f"party {p}" for p in self.party_ids)
        super().__init__(f"lost {names} {when}")


class Watch:
    """The run's view of its peers' connections (one per party process)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost: asyncio.Future[int] = loop.create_future()
        self.closing = False  # set when this party begins its own shutdown

    def peer_gone(self, peer_pid: int) -> None:
        if not self.closing and not self.lost.done():
            self.lost.set_result(peer_pid)


def _keepalive(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux; elsewhere the system's keepalive timing
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def watch(mpc: Any) -> Watch:
    """Install the watch on MPyC's connections for this run (call before `mpc.start()`)."""
    from mpyc import asyncoro

    state = Watch(mpc._loop)
    exchanger = asyncoro.MessageExchanger
    made, lost = exchanger.connection_made, exchanger.connection_lost

    def connection_made(self: Any, transport: Any) -> None:
        _keepalive(transport)
        made(self, transport)

    def connection_lost(self: Any, exc: BaseException | None) -> None:
        if self.peer_pid is None:  # a connection that never said who it is
            return
        if not state.closing:
            state.peer_gone(self.peer_pid)
            return  # MPyC's bookkeeping is for goodbyes; this run is over
        if exc is None:
            lost(self, exc)
        else:
            mpc.unset_protocol(self.peer_pid)

    exchanger.connection_made = connection_made
    exchanger.connection_lost = connection_lost
    return state


async def guarded(watch: Watch, work: Any) -> Any:
    """Await `work` (a coroutine), unless a peer is lost first: then cancel it and raise
    `PeerLost` naming the peer."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task, watch.lost}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    raise PeerLost([watch.lost.result()], "mid-protocol: its connection closed")


def missing(mpc: Any) -> list[int]:
    """The parties this one has no connection with yet."""
    return [p.pid for p in mpc.parties if p.pid != mpc.pid and p.protocol is None]
