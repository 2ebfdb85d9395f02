"""MPC ports: one per task in flight, never one in use, reused last."""

from __future__ import annotations

import socket
import threading
from contextlib import closing

import pytest

from node_agent.ports import PortPool
from tessera.errors import ConfigInvalid, ProtocolFailed


def free_range(size: int) -> int:
    """A start port whose `size` successors are free right now."""
    for _ in range(50):
        with closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            low = s.getsockname()[1]
        if low + size > 65535:
            continue
        pool = PortPool("127.0.0.1", low, low + size - 1)
        if all(pool._bindable(p) for p in range(low, low + size)):
            return low
    raise RuntimeError("no free port range")


def test_ports_in_flight_are_never_handed_out_twice() -> None:
    low = free_range(4)
    pool = PortPool("127.0.0.1", low, low + 3)
    taken = [pool.take() for _ in range(4)]
    assert sorted(taken) == list(range(low, low + 4))
    with pytest.raises(ProtocolFailed, match=f"no free MPC port in {low}-{low + 3}"):
        pool.take()
    pool.release(taken[1])
    assert pool.take() == taken[1]


def test_a_released_port_is_the_last_to_come_back() -> None:
    low = free_range(3)
    pool = PortPool("127.0.0.1", low, low + 2)
    first = pool.take()
    pool.release(first)
    assert pool.take() == low + 1
    assert pool.take() == low + 2
    assert pool.take() == first


def test_a_port_another_program_listens_on_is_skipped() -> None:
    low = free_range(2)
    with closing(socket.socket()) as busy:
        busy.bind(("127.0.0.1", low))
        busy.listen()
        pool = PortPool("127.0.0.1", low, low + 1)
        assert pool.take() == low + 1


def test_concurrent_tasks_get_distinct_ports() -> None:
    low = free_range(8)
    pool = PortPool("127.0.0.1", low, low + 7)
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        port = pool.take()
        with lock:
            got.append(port)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and pool.in_use == frozenset(got)


def test_an_address_not_of_this_machine_is_a_config_error() -> None:
    pool = PortPool("192.0.2.1", 21000, 21001)  # TEST-NET-1: never local
    with pytest.raises(
        ConfigInvalid,
        match=r"cannot listen on '192\.0\.2\.1' .*: mpc_host must be an address of this",
    ):
        pool.take()
