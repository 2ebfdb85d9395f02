"""The coordinator killed (SIGKILL) and restarted mid-query, on PostgreSQL (a fresh database
for the test): each query it held either completes or fails with a clear error within its
deadline, never stays pending or running; no audit entry is written twice, the audit chain
verifies; the node agents reconnect and serve the next query."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .world import QUERY_TIMEOUT_S, World, network, wait_for

pytestmark = pytest.mark.postgres

COUNT = {"statistic": "count"}


@pytest.fixture
def world(fresh_pg_url: str, tmp_path: Path) -> Iterator[World]:
    with network(tmp_path, database_url=fresh_pg_url) as world:
        yield world


def crash_and_restart(world: World) -> None:
    assert world.net.coordinator is not None
    world.net.coordinator.kill()  # SIGKILL: no shutdown, requests cut mid-way
    world.net.coordinator.log.close()
    time.sleep(1.0)
    world.net.start_coordinator(ready_timeout_s=90)  # a loaded CI machine starts slowly


def settled(world: World, query_id: int, submitted_at: float) -> dict[str, Any]:
    """The query once it ended, which it must within its deadline (and the sweep)."""
    view = world.researcher.wait_query(query_id, timeout=QUERY_TIMEOUT_S + 15)
    assert view["status"] in ("succeeded", "failed"), view
    assert time.monotonic() - submitted_at < QUERY_TIMEOUT_S + 15
    if view["status"] == "failed":
        assert view["error"]["message"] and view["result"] is None, view
    else:
        assert view["result"]["count"] > 0 and view["error"] is None, view
    return view


def test_a_coordinator_killed_mid_query_leaves_nothing_stuck_or_twice(world: World) -> None:
    outcomes = []
    for phase in ("pending", "running"):
        submitted_at = time.monotonic()
        query = world.submit(COUNT)

        def reached(query_id: int = query["id"], phase: str = phase) -> bool:
            tasks = world.researcher.get_query(query_id)["tasks"]
            if phase == "pending":  # some node accepted, not yet every one
                return any(t["status"] == "accepted" for t in tasks) or all(
                    t["status"] != "pending" for t in tasks
                )
            return any(t["status"] in ("running", "done") for t in tasks)

        wait_for(reached, QUERY_TIMEOUT_S, f"query {query['id']} {phase}")
        crash_and_restart(world)
        view = settled(world, query["id"], submitted_at)
        outcomes.append(view["status"])
        subject = f"query:{query['id']}"
        assert len(world.audit("query.submitted", subject)) == 1
        assert len(world.audit("task.accepted", subject)) <= 3
        assert len(world.audit("query.started", subject)) <= 1
        ended = world.audit("result.opened", subject) + world.audit("query.failed", subject)
        assert len(ended) == 1, ended

    # the agents reconnected: the next query runs as if nothing happened
    after = world.run(COUNT)
    assert after["status"] == "succeeded", (outcomes, after)
    world.alive()
    assert world.admin.audit_verify()["ok"] is True
    for name in world.net.nodes:
        assert "coordinator reachable again" in world.log(name)
    running = [
        q
        for q in world.researcher.study_queries(world.study)
        if q["status"] in ("pending", "running")
    ]
    assert running == []
