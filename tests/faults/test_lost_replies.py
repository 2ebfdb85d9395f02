"""Lost replies: the coordinator did a node's step and committed, but its reply never reached
the node (a `LossyProxy` between them closes the connection without it). The node retries the
same request, is answered the first answer again, and the query or synthesis job completes
exactly once: one result, no audit entry twice, nothing released twice.

One test per kind of node step: a query task's accept, progress, result and refusal; a
synthesis job's accept, candidate and release upload.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from demo.cohort import HOSPITALS, cohort, schema
from demo.network import DataSource, NodeSpec

from .proxy import LossyProxy
from .world import DATASET, NODES, World, network, node_specs, wait_for

COUNT = {"statistic": "count"}
SYNTHESIS = {"dataset": DATASET, "generator": "cart", "rows": 200, "target": "icu_admission"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, stewards: Any) -> Iterator[World]:
    root = tmp_path_factory.mktemp("lost-replies")
    sam = stewards.public("sam")
    specs = node_specs(root, synthesis={"generators": ["cart"], "stewards": {"sam": sam}})
    held = root / "node-d.csv"
    cohort(HOSPITALS[0]).to_csv(held, index=False)
    # node-d holds every query for a steward's approval, and refuses it after a second
    specs.append(
        NodeSpec(
            "node-d",
            "Hospital D",
            [DataSource(DATASET, "csv", schema(), path=str(held))],
            approval="manual",
            approval_timeout_s=1.0,
            stewards={"sam": sam},
        )
    )
    with network(root, lossy=True, specs=specs) as world:
        held_study = world.admin.create_study(
            "held",
            organisation_ids=[world.organisations[n] for n in ("node-a", "node-b", "node-d")],
            datasets=[DATASET],
            members=["rita"],
        )
        world.extra["held_study"] = held_study["id"]
        world.extra["key"] = stewards.write("sam", root / "keys")
        world.extra["baseline"] = world.run(COUNT)
        assert world.extra["baseline"]["status"] == "succeeded", world.extra["baseline"]
        yield world


def lost_then_replayed(proxy: LossyProxy, path: str) -> None:
    """Of the exchanges of POST `path`, the one answered 2xx and lost is sent again and
    answered again as a replay (soon: the node retries after its first backoff)."""

    def replayed() -> bool:
        seen = proxy.seen("POST", path)
        dropped = [e for e in seen if e.dropped]
        if not dropped:  # the proxy records an exchange once the coordinator's answer is in:
            return False  # that can be a moment after the query it completed was seen done
        assert len(dropped) == 1 and 200 <= dropped[0].status < 300, seen
        after = seen[seen.index(dropped[0]) + 1 :]
        return any(e.path == dropped[0].path and e.replayed for e in after)

    wait_for(replayed, 15, f"the retry of the lost POST {path}")


def drop(world: World, path: str) -> None:
    assert world.proxy is not None
    world.proxy.drop_reply("POST", path)


def run_with_a_lost_reply(world: World, path: str) -> dict[str, Any]:
    drop(world, path)
    done = world.run(COUNT)
    assert world.proxy is not None and world.proxy.armed() == 0, "no reply was lost"
    lost_then_replayed(world.proxy, path)
    world.alive()
    return done


def assert_once(world: World, query: dict[str, Any]) -> None:
    """The query succeeded with the undisturbed run's result, and no audit entry twice."""
    assert query["status"] == "succeeded", query
    assert query["result"] == world.extra["baseline"]["result"]
    subject = f"query:{query['id']}"
    assert len(world.audit("task.accepted", subject)) == len(NODES)
    assert len(world.audit("query.started", subject)) == 1
    assert len(world.audit("result.opened", subject)) == 1
    assert [t["status"] for t in query["tasks"]] == ["done"] * len(NODES)


def test_a_lost_accept_reply(world: World) -> None:
    assert_once(world, run_with_a_lost_reply(world, r"/api/v1/tasks/\d+/accept"))


def test_a_lost_result_reply(world: World) -> None:
    assert_once(world, run_with_a_lost_reply(world, r"/api/v1/tasks/\d+/result"))


def test_a_lost_refusal_reply(world: World) -> None:
    path = r"/api/v1/tasks/\d+/reject"
    drop(world, path)
    failed = world.run(COUNT, world.extra["held_study"])
    assert world.proxy is not None and world.proxy.armed() == 0
    lost_then_replayed(world.proxy, path)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "node_refused"
    assert failed["error"]["message"].startswith("node node-d refused: ")
    subject = f"query:{failed['id']}"
    assert len(world.audit("task.refused", subject)) == 1
    assert len(world.audit("query.failed", subject)) == 1
    assert failed["result"] is None


# ---- synthesis jobs -------------------------------------------------------------------------


def job_of(world: World, request_id: int) -> dict[str, Any]:
    view = world.researcher.wait_synthesis(request_id, timeout=180)
    world.alive()
    [job] = view["jobs"]
    return job


def synthesis_once(world: World, job_id: int, *actions: str) -> None:
    for action in actions:
        entries = world.audit(action, f"synthesis_job:{job_id}")
        assert len(entries) == 1, (action, entries)


def test_a_lost_synthesis_accept_reply(world: World) -> None:
    path = r"/api/v1/synthesis-jobs/\d+/accept"
    drop(world, path)
    made = world.researcher.request_synthesis(world.study, SYNTHESIS)
    job = job_of(world, made["id"])
    assert world.proxy is not None
    lost_then_replayed(world.proxy, path)
    assert job["status"] == "awaiting_review", job
    synthesis_once(world, job["id"], "synthesis.accepted", "synthesis.awaiting_review")


def test_a_lost_synthesis_progress_reply(world: World) -> None:
    """A progress note whose reply is lost is sent again and answered as a replay; the job
    goes on to review once. (A query task's only progress note is `queued`, sent when its
    node's protocol slots are all busy; the coordinator sets `mpc` itself.)"""
    path = r"/api/v1/synthesis-jobs/\d+/progress"
    drop(world, path)
    made = world.researcher.request_synthesis(world.study, SYNTHESIS)
    job = job_of(world, made["id"])
    assert world.proxy is not None and world.proxy.armed() == 0, "no reply was lost"
    lost_then_replayed(world.proxy, path)
    assert job["status"] == "awaiting_review", job
    synthesis_once(world, job["id"], "synthesis.accepted", "synthesis.awaiting_review")


def test_lost_candidate_and_release_replies(world: World) -> None:
    """The candidate's reply is lost (the job awaits review once), then, once the steward
    approved, the upload's: one release, published once, the node's candidate released."""
    assert world.proxy is not None
    candidate = r"/api/v1/synthesis-jobs/\d+/candidate"
    drop(world, candidate)
    made = world.researcher.request_synthesis(world.study, SYNTHESIS)
    job = job_of(world, made["id"])
    lost_then_replayed(world.proxy, candidate)
    assert job["status"] == "awaiting_review", job
    synthesis_once(world, job["id"], "synthesis.accepted", "synthesis.awaiting_review")

    release = r"/api/v1/synthesis-jobs/\d+/release"
    drop(world, release)
    config = world.net.root / "node-a" / "node.toml"
    key = str(world.extra["key"])
    argv = ["steward", "approve", str(job["id"]), "--key", key, "--config", str(config)]
    approved = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approved.returncode == 0, approved.stderr
    done = world.researcher.wait_synthesis(made["id"], timeout=60, until="done")
    [job] = done["jobs"]
    assert job["status"] == "released", job
    lost_then_replayed(world.proxy, release)
    releases = [r for r in world.researcher.releases(world.study) if r["job_id"] == job["id"]]
    assert len(releases) == 1 and releases[0]["id"] == job["release_id"]
    published = world.audit("release.published", f"release:{job['release_id']}")
    assert len(published) == 1
    # the node took the replayed answer as its upload's: released, with the release's id
    uploaded = f"released as release {job['release_id']}"
    wait_for(lambda: uploaded in world.log("node-a"), 10, "the node's record of its upload")
