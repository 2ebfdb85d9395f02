"""At most `max_concurrent_protocols` MPC protocols at once on this node, the rest queued in the
order the coordinator scheduled them.

A task takes a slot (and an MPC port) before the node accepts it, and gives both back when its
party has finished. Waiting tasks are served lowest query id first, not first come: every
node then admits queries in the same order, so no two nodes can each hold a slot for a query
the other has not admitted yet and wait on each other (the lowest unfinished query always
holds a slot at each of its nodes). A waiting task gives up when `give_up` names a reason (the
task's deadline passed, the agent is stopping); it then leaves the queue without having taken
anything.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable

from node_agent.ports import PortPool
from tessera.errors import ConfigInvalid, ProtocolFailed

RECHECK_S = 0.5  # a waiting task asks `give_up` this often


class ProtocolSlots:
    def __init__(self, limit: int, ports: PortPool) -> None:
        size = ports.high - ports.low + 1
        if limit > size:
            raise ConfigInvalid(
                f"max_concurrent_protocols = {limit} needs as many MPC ports; mpc_ports "
                f"{ports.low}-{ports.high} has {size}"
            )
        self.limit = limit
        self.ports = ports
        self._running = 0
        self._waiting: list[tuple[int, int]] = []
        self._cond = threading.Condition()

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def free_now(self) -> bool:
        """Whether a task asking now would start at once (nothing queued, a slot free)."""
        with self._cond:
            return not self._waiting and self._running < self.limit

    def take(self, order: tuple[int, int], give_up: Callable[[], str | None]) -> int:
        """Wait for `order`'s turn (query id, task id) and a free slot; return the MPC port the
        task listens on. `ProtocolFailed` with `give_up`'s reason if it names one first."""
        with self._cond:
            heapq.heappush(self._waiting, order)
            try:
                while not (self._waiting[0] == order and self._running < self.limit):
                    reason = give_up()
                    if reason is not None:
                        raise ProtocolFailed(reason)
                    self._cond.wait(RECHECK_S)
                heapq.heappop(self._waiting)
                self._running += 1
            except BaseException:
                if order in self._waiting:
                    self._waiting.remove(order)
                    heapq.heapify(self._waiting)
                self._cond.notify_all()  # the next in line may be free to go now
                raise
        try:
            return self.ports.take()
        except BaseException:
            self._give_back()
            raise

    def release(self, port: int) -> None:
        """The task's party has finished: its port and slot go to the next in line."""
        self.ports.release(port)
        self._give_back()

    def _give_back(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()
