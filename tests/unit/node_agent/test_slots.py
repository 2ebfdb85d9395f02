"""`ProtocolSlots`: at most `limit` protocols at once, the waiting ones in query order."""

from __future__ import annotations

import threading
import time

import pytest

from node_agent.ports import PortPool
from node_agent.slots import ProtocolSlots
from tessera.errors import ConfigInvalid, ProtocolFailed

from .test_ports import free_range


def never() -> str | None:
    return None


def test_the_limit_cannot_exceed_the_ports() -> None:
    low = free_range(2)
    with pytest.raises(ConfigInvalid, match="needs as many MPC ports"):
        ProtocolSlots(3, PortPool("127.0.0.1", low, low + 1))


def test_waiting_tasks_start_lowest_query_first_whatever_their_arrival() -> None:
    low = free_range(4)
    slots = ProtocolSlots(1, PortPool("127.0.0.1", low, low + 3))
    first = slots.take((1, 1), never)
    assert not slots.free_now()
    started: list[int] = []
    lock = threading.Lock()

    def wait(query: int) -> None:
        port = slots.take((query, query), never)
        with lock:
            started.append(query)
        time.sleep(0.05)
        slots.release(port)

    threads = []
    for query in (9, 4, 7):  # arrive out of order
        thread = threading.Thread(target=wait, args=(query,))
        thread.start()
        threads.append(thread)
        while slots.waiting < len(threads):
            time.sleep(0.01)
    slots.release(first)
    for thread in threads:
        thread.join(10)
    assert started == [4, 7, 9]
    assert slots.running == 0 and slots.waiting == 0 and slots.free_now()


def test_never_more_than_the_limit_at_once() -> None:
    low = free_range(8)
    slots = ProtocolSlots(3, PortPool("127.0.0.1", low, low + 7))
    peak, now, lock = [0], [0], threading.Lock()
    ports: set[int] = set()

    def run(query: int) -> None:
        port = slots.take((query, query), never)
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
            assert port not in ports
            ports.add(port)
        time.sleep(0.02)
        with lock:
            now[0] -= 1
            ports.discard(port)
        slots.release(port)

    threads = [threading.Thread(target=run, args=(q,)) for q in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] == 3
    assert slots.running == 0 and slots.ports.in_use == frozenset()


def test_a_task_that_gives_up_leaves_the_queue_and_lets_the_next_one_go() -> None:
    low = free_range(2)
    slots = ProtocolSlots(1, PortPool("127.0.0.1", low, low + 1))
    held = slots.take((1, 1), never)
    stop = threading.Event()
    failures: list[str] = []

    def doomed() -> None:
        try:
            slots.take((2, 2), lambda: "the query's deadline passed" if stop.is_set() else None)
        except ProtocolFailed as exc:
            failures.append(exc.message)

    thread = threading.Thread(target=doomed)
    thread.start()
    while slots.waiting < 1:
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert failures == ["the query's deadline passed"]
    assert slots.waiting == 0 and slots.running == 1
    slots.release(held)
    assert slots.free_now()
    port = slots.take((3, 3), never)  # the slot the one that gave up never took
    slots.release(port)
