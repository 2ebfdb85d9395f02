"""Synthesis requests and releases between coordinator and nodes, over HTTP, on SQLite and
PostgreSQL: who takes part, the job's states, uploads checked against their card, downloads,
refusals, gates, rejections, deadlines and who may see what."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from typing import Any

import httpx
import pandas as pd
import pytest

from tessera.client import TesseraClient
from tessera.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from tessera.schemas import ReleaseContent
from tessera.stewards import fingerprint

from .conftest import DATASET, RESEARCHER_PASSWORD, FakeNode, Setup

# the `stewards` fixture's keys of sam and sue (tests/conftest.py StewardKeys)
KEYS = {
    "sam": "ed25519:82Kfgyj9sP6AzunyERvWyt/BiU8K/XxhwDF31RaAzEc=",
    "sue": "ed25519:84WHVfF+gbkgDsCtWRnAmP8I1EukG8k3PS1ifn9o0rY=",
}
POLICY = {"generators": ["cart", "mst"], "max_epsilon": 5.0, "max_rows": 1000, "stewards": KEYS}
STEWARDS: Any = None  # tests/conftest.py's StewardKeys, set for every test


@pytest.fixture(autouse=True)
def _stewards(stewards: Any) -> None:
    global STEWARDS
    STEWARDS = stewards


SPEC = {"dataset": DATASET, "generator": "cart", "rows": 40, "target": "icu_admission"}
GATES = [{"name": "min_fidelity", "passed": True, "value": 0.93, "threshold": 0.75}]


def allow_synthesis(node: FakeNode, policy: dict[str, Any] | None = POLICY) -> None:
    body = {"agent_version": "test", "policy": {"synthesis": policy} if policy else {}}
    node.ok("POST", "/nodes/me/hello", json=body)


def synthetic(rows: int = 40) -> bytes:
    frame = pd.DataFrame(
        {
            "age_months": range(rows),
            "sex": ["F", "M"] * (rows // 2),
            "weight_kg": [10.5] * rows,
            "icu_admission": [True, False] * (rows // 2),
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def card(
    data: bytes,
    job_id: int,
    node: str,
    approvals: tuple[str, ...] = ("sam",),
    report: bytes | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """A release card for `data` (with `changes`), approved by `approvals`, each signing the
    card, data and report for job `job_id` at `node`, as `tessera steward approve` does."""
    body = {
        "generator": "cart",
        "generator_license": "Apache-2.0",
        "params": {},
        "rows": 40,
        "columns": ["age_months", "sex", "weight_kg", "icu_admission"],
        "epsilon": None,
        "delta": None,
        "metrics": {"fidelity": {"score": 0.93}},
        "gates": GATES,
        "sha256": hashlib.sha256(data).hexdigest(),
        "device": "cpu",
        "fit_seconds": 0.4,
        "training_rows": 160,
        "holdout_rows": 40,
    }
    body |= {k: v for k, v in changes.items() if k != "approvals"}
    hashes = {
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "card_sha256": ReleaseContent.model_validate(body).digest(),
        "report_sha256": hashlib.sha256(REPORT if report is None else report).hexdigest(),
    }
    signed = [
        STEWARDS.decision(s, node=node, job_id=job_id, hashes=hashes).model_dump(mode="json")
        for s in approvals
    ]
    return body | {"approvals": changes.get("approvals", signed)}


REPORT = b"<!doctype html><html><body>report</body></html>"


def upload(
    node: FakeNode, job_id: int, data: bytes, body: dict[str, Any], report: bytes = REPORT
) -> httpx.Response:
    return node.call(
        "POST",
        f"/synthesis-jobs/{job_id}/release",
        data={"card": json.dumps(body)},
        files={"data": ("s.parquet", data), "report": ("r.html", report)},
    )


def audit_actions(setup: Setup) -> list[str]:
    """Every audit action, oldest first (the coordinator is shared: page to the end)."""
    return [e["action"] for e in setup.admin.audit()]


def take_job(node: FakeNode, wait: float = 5) -> dict[str, Any]:
    jobs = node.ok("GET", "/nodes/me/synthesis-jobs", params={"wait": wait})
    assert len(jobs) == 1, jobs
    return jobs[0]  # type: ignore[no-any-return]


def to_review(node: FakeNode, approvals: int = 1) -> dict[str, Any]:
    job = take_job(node)
    node.ok("POST", f"/synthesis-jobs/{job['id']}/accept")
    body = {"gates": GATES, "approvals_required": approvals}
    assert node.ok("POST", f"/synthesis-jobs/{job['id']}/candidate", json=body) == {
        "status": "awaiting_review"
    }
    return job


def test_a_request_goes_to_the_nodes_whose_policy_allows_it(setup: Setup) -> None:
    allow_synthesis(setup.nodes[0])
    allow_synthesis(setup.nodes[1], {"generators": ["mst"], "dp_required": True})
    # nodes[2] publishes no synthesis policy at all
    made = setup.researcher.request_synthesis(setup.study_id, SPEC)
    assert made["status"] == "running" and not made["at_rest"]
    assert [j["node"] for j in made["jobs"]] == [setup.nodes[0].name]
    assert made["jobs"][0]["status"] == "pending"
    assert made["skipped"] == [
        {
            "node": setup.nodes[1].name,
            "reason": "its policy does not allow generator 'cart' (allowed: mst)",
        },
        {"node": setup.nodes[2].name, "reason": "its policy allows no synthesis"},
    ]
    job = take_job(setup.nodes[0])
    assert job["spec"]["rows"] == 40 and job["spec"]["holdout"] == 0.2
    assert job["requested_by"] == setup.researcher_name and job["study_id"] == setup.study_id
    assert setup.nodes[0].ok("GET", "/nodes/me/synthesis-jobs") == [], "offered once"
    assert setup.nodes[1].ok("GET", "/nodes/me/synthesis-jobs") == []


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({"generator": "gan"}, InvalidRequest, "unknown generator 'gan'"),
        ({"generator": "mst"}, InvalidRequest, "is differentially private: give epsilon"),
        ({"epsilon": 1.0}, InvalidRequest, "is not differentially private"),
        ({"rows": 0}, InvalidRequest, "rows"),
        ({"dataset": "other"}, NotFound, "dataset 'other' is not part of study"),
        ({"target": "nope"}, InvalidRequest, "target 'nope' is not a column"),
        ({"generator": "mst", "epsilon": 9.0}, PolicyDenied, "allows epsilon up to 5"),
        ({"rows": 5000}, PolicyDenied, "up to 1000 synthetic rows"),
    ],
)
def test_bad_requests_are_refused_up_front(
    setup: Setup, spec: dict[str, Any], error: type[Exception], message: str
) -> None:
    for node in setup.nodes:
        allow_synthesis(node)
    with pytest.raises(error, match=message):
        setup.researcher.request_synthesis(setup.study_id, SPEC | spec)
    assert setup.researcher.study_synthesis(setup.study_id) == []


def test_an_approved_candidate_is_published_and_downloadable(setup: Setup) -> None:
    node = setup.nodes[0]
    allow_synthesis(node)
    made = setup.researcher.request_synthesis(setup.study_id, SPEC)
    job = take_job(node)
    node.ok("POST", f"/synthesis-jobs/{job['id']}/accept")
    progress = {"stage": "training", "message": "", "epoch": 3, "epochs": 10, "loss": 0.5}
    node.ok("POST", f"/synthesis-jobs/{job['id']}/progress", json=progress)
    view = setup.researcher.get_synthesis(made["id"])
    assert view["jobs"][0]["status"] == "training"
    assert view["jobs"][0]["progress"] == progress
    node.ok(
        "POST",
        f"/synthesis-jobs/{job['id']}/candidate",
        json={"gates": GATES, "approvals_required": 1},
    )
    view = setup.researcher.get_synthesis(made["id"], wait=5)
    assert view["at_rest"] and view["status"] == "running"
    assert view["jobs"][0]["status"] == "awaiting_review"
    assert view["jobs"][0]["gates"][0]["name"] == "min_fidelity"

    data = synthetic()
    response = upload(node, job["id"], data, card(data, job["id"], node.name))
    assert response.status_code == 200, response.text
    release = response.json()
    assert release["rows"] == 40 and release["sha256"] == hashlib.sha256(data).hexdigest()
    assert release["card"]["approvals"][0]["steward"] == "sam"
    assert release["signed_by"] == [
        {
            "steward": "sam",
            "fingerprint": fingerprint(KEYS["sam"]),
            "at": release["card"]["approvals"][0]["at"],
            "node": node.name,
        }
    ]
    assert (release["scope"], release["parties"]) == ("local", [node.name])

    done = setup.researcher.get_synthesis(made["id"])
    assert done["status"] == "done" and done["jobs"][0]["status"] == "released"
    assert done["jobs"][0]["release_id"] == release["id"]
    [listed] = setup.researcher.releases(setup.study_id)
    assert listed["id"] == release["id"] and listed["node"] == node.name
    parquet = setup.researcher.release_data(release["id"], "parquet")
    assert parquet == data
    csv = setup.researcher.release_data(release["id"], "csv")
    assert hashlib.sha256(csv).hexdigest() == release["csv_sha256"]
    pd.testing.assert_frame_equal(
        pd.read_csv(io.BytesIO(csv)), pd.read_parquet(io.BytesIO(data)), check_dtype=False
    )
    assert setup.researcher.release_report(release["id"]) == REPORT
    again = upload(node, job["id"], data, card(data, job["id"], node.name))
    assert again.status_code == 409, "published once"
    metrics = setup.http.get(
        f"{setup.url}/api/v1/metrics", headers={"Authorization": f"Bearer {setup.admin.token}"}
    ).text
    assert re.search(r'^tessera_synthesis_jobs\{status="released"\} [1-9]\d*$', metrics, re.M)
    assert re.search(r"^tessera_releases [1-9]\d*$", metrics, re.M)
    actions = audit_actions(setup)
    for action in (
        "synthesis.requested",
        "synthesis.accepted",
        "synthesis.awaiting_review",
        "release.published",
        "release.downloaded",
    ):
        assert action in actions


@pytest.mark.parametrize(
    ("changes", "data_rows", "status", "message"),
    [
        ({"sha256": "0" * 64}, 40, 422, "does not hash to the card"),
        ({"rows": 20}, 40, 422, "the card says 20"),
        ({}, 20, 422, "holds 20 rows"),
        ({"approvals": []}, 40, 422, "approvals"),
        ({"generator": "mst", "epsilon": 1.0}, 40, 422, "names generator 'mst'"),
        ({"epsilon": 1.0}, 40, 422, "epsilon is given exactly for"),
    ],
)
def test_an_upload_that_does_not_match_its_card_or_request_is_refused(
    setup: Setup, changes: dict[str, Any], data_rows: int, status: int, message: str
) -> None:
    node = setup.nodes[0]
    allow_synthesis(node)
    made = setup.researcher.request_synthesis(setup.study_id, SPEC)
    job = to_review(node)
    data = synthetic(data_rows)
    body = card(data, job["id"], node.name, **changes)
    response = upload(node, job["id"], data, body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert setup.researcher.get_synthesis(made["id"])["jobs"][0]["status"] == "awaiting_review"
    assert setup.researcher.releases(setup.study_id) == []


def test_uploads_beyond_the_size_limit_and_too_few_approvals_are_refused(setup: Setup) -> None:
    node = setup.nodes[0]
    allow_synthesis(node)
    setup.researcher.request_synthesis(setup.study_id, SPEC)
    job = to_review(node, approvals=2)
    data = synthetic()
    response = upload(node, job["id"], data, card(data, job["id"], node.name))
    assert response.status_code == 422
    assert "this node's policy requires 2" in response.json()["error"]["message"]
    big = upload(
        node,
        job["id"],
        data,
        card(data, job["id"], node.name),
        report=b"<!doctype html>" + b"x" * 300_000,
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    assert upload(node, job["id"], b"", card(data, job["id"], node.name)).status_code == 422


def test_gated_rejected_refused_and_failed_jobs_publish_nothing(setup: Setup) -> None:
    for node in setup.nodes:
        allow_synthesis(node)
    made = setup.researcher.request_synthesis(setup.study_id, SPEC)
    gated, rejected, refused = (take_job(n) for n in setup.nodes)
    a, b, c = setup.nodes
    a.ok("POST", f"/synthesis-jobs/{gated['id']}/accept")
    failing = [*GATES, {"name": "min_dcr_ratio", "passed": False, "value": 0.01, "threshold": 0.02}]
    answer = a.ok(
        "POST",
        f"/synthesis-jobs/{gated['id']}/candidate",
        json={"gates": failing, "approvals_required": 1},
    )
    assert answer == {"status": "gated"}
    b.ok("POST", f"/synthesis-jobs/{rejected['id']}/accept")
    b.ok(
        "POST",
        f"/synthesis-jobs/{rejected['id']}/candidate",
        json={"gates": GATES, "approvals_required": 1},
    )
    decision = STEWARDS.decision(
        "sam",
        node=b.name,
        job_id=rejected["id"],
        hashes={"data_sha256": "1" * 64, "card_sha256": "2" * 64, "report_sha256": "3" * 64},
        decision="reject",
        reason="too few rows for age over 15",
    ).model_dump(mode="json")
    b.ok("POST", f"/synthesis-jobs/{rejected['id']}/reject", json={"decisions": [decision]})
    c.ok("POST", f"/synthesis-jobs/{refused['id']}/refuse", json={"reason": "not today"})
    view = setup.researcher.wait_synthesis(made["id"], timeout=10, until="done")
    jobs = {j["node"]: j for j in view["jobs"]}
    assert view["status"] == "done"
    assert jobs[a.name]["status"] == "gated"
    assert jobs[a.name]["error"] == {
        "code": "release_gate_failed",
        "message": "release gate(s) failed: min_dcr_ratio",
    }
    assert jobs[b.name]["status"] == "rejected"
    assert jobs[b.name]["decisions"][0]["reason"] == "too few rows for age over 15"
    assert jobs[c.name]["error"]["message"] == "not today"
    data = synthetic()
    for node, job in ((a, gated), (b, rejected), (c, refused)):
        response = upload(node, job["id"], data, card(data, job["id"], node.name))
        assert response.status_code == 409, response.text
    assert setup.researcher.releases(setup.study_id) == []
    actions = audit_actions(setup)
    assert {"synthesis.gated", "synthesis.rejected", "synthesis.refused"} <= set(actions)


def test_nodes_and_people_see_only_their_own(setup: Setup, coordinator: Any) -> None:
    a, b, _ = setup.nodes
    allow_synthesis(a)
    made = setup.researcher.request_synthesis(setup.study_id, SPEC)
    job = to_review(a)
    response = b.call("POST", f"/synthesis-jobs/{job['id']}/accept")
    assert response.status_code == 404, "another node's job does not exist for it"
    data = synthetic()
    release = upload(a, job["id"], data, card(data, job["id"], a.name)).json()
    setup.admin.create_user("olga", RESEARCHER_PASSWORD, role="researcher")
    outsider = TesseraClient(setup.url)
    outsider.login("olga", RESEARCHER_PASSWORD)
    with pytest.raises(NotFound):
        outsider.get_synthesis(made["id"])
    with pytest.raises(NotFound):
        outsider.release(release["id"])
    with pytest.raises(NotFound):
        outsider.release_data(release["id"])
    assert setup.http.get(f"{setup.url}/api/v1/releases/{release['id']}/data").status_code == 401
    as_node = a.call("GET", f"/releases/{release['id']}")
    assert as_node.status_code == 403


def test_a_job_nobody_trains_fails_at_its_deadline(replica_setup: Setup) -> None:
    setup = replica_setup
    allow_synthesis(setup.nodes[0])
    made = setup.researcher.request_synthesis(setup.study_id, SPEC)
    deadline = time.monotonic() + 15
    while True:
        view = setup.researcher.get_synthesis(made["id"], wait=2)
        if view["status"] == "done" or time.monotonic() > deadline:
            break
    job = view["jobs"][0]
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"
    assert "did not finish training within 2 s" in job["error"]["message"]
    late = setup.nodes[0].call("POST", f"/synthesis-jobs/{job['id']}/accept")
    assert late.status_code == 409


# ---- pooled synthesis -------------------------------------------------------------------

POOLED_SPEC = SPEC | {"generator": "mst", "epsilon": 1.0, "scope": "pooled"}
MEASURED = "4" * 64


def pooled_card(data: bytes, job_id: int, node: str, parties: list[str]) -> dict[str, Any]:
    """`node`'s card of the pooled candidate `data`, its own metrics, approved by sam."""
    return card(
        data,
        job_id,
        node,
        report=node_report(node),
        generator="mst",
        epsilon=1.0,
        scope="pooled",
        parties=parties,
        measurement_sha256=MEASURED,
        metrics={"fidelity": {"score": 0.9}, "node": node},
        training_rows=None,
        holdout_rows=None,
    )


def node_report(node: str) -> bytes:
    return f"<!doctype html><html><body>{node}</body></html>".encode()


def approve(node: FakeNode, job_id: int, body: dict[str, Any], data: bytes | None = None):
    files = {"report": ("r.html", node_report(node.name))}
    if data is not None:
        files["data"] = ("s.parquet", data)
    return node.call(
        "POST", f"/synthesis-jobs/{job_id}/release", data={"card": json.dumps(body)}, files=files
    )


def pooled_jobs(setup: Setup) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A pooled request every node allows, and each node's job as offered (node order)."""
    for node in setup.nodes:
        allow_synthesis(node, POLICY | {"pooled": True})
    made = setup.researcher.request_synthesis(setup.study_id, POOLED_SPEC)
    return made, [take_job(node) for node in setup.nodes]


def test_a_pooled_synthesis_measures_approves_and_publishes_once(setup: Setup) -> None:
    made, jobs = pooled_jobs(setup)
    names = [n.name for n in setup.nodes]
    assert made["scope"] == "pooled" and [j["party_id"] for j in made["jobs"]] == [0, 1, 2]
    by_party = sorted(zip(jobs, setup.nodes, strict=True), key=lambda jn: jn[0]["party_id"])
    parties = [n.name for _, n in by_party]
    assert sorted(parties) == sorted(names)
    assert {(j["n_parties"], j["spec"]["scope"]) for j in jobs} == {(3, "pooled")}

    first_job, first = by_party[0]
    refused = first.call("POST", f"/synthesis-jobs/{first_job['id']}/accept")
    assert refused.status_code == 422 and "MPC address" in refused.text
    for port, (job, node) in enumerate(by_party[:2], start=31000):
        address = {"mpc_host": "127.0.0.1", "mpc_port": port, "mpc_certificate": "PEM"}
        node.ok("POST", f"/synthesis-jobs/{job['id']}/accept", json=address)
    start = f"/synthesis-jobs/{first_job['id']}/start"
    assert first.ok("GET", start, params={"wait": 0.2}) == {
        "start": False,
        "status": "pending",
        "parties": [],
        "deadline": None,
    }
    last_job, last = by_party[2]
    address = {"mpc_host": "127.0.0.1", "mpc_port": 31002}
    last.ok("POST", f"/synthesis-jobs/{last_job['id']}/accept", json=address)
    go = first.ok("GET", start, params={"wait": 5})
    assert (go["start"], go["status"]) == (True, "running")
    assert [(p["party_id"], p["node"], p["port"]) for p in go["parties"]] == [
        (i, name, 31000 + i) for i, name in enumerate(parties)
    ]
    assert go["parties"][0]["certificate"] == "PEM"
    assert first.call("GET", f"/synthesis-jobs/{last_job['id']}/start").status_code == 404

    data = synthetic()
    candidate = {
        "gates": GATES,
        "candidate_sha256": hashlib.sha256(data).hexdigest(),
        "measurement_sha256": MEASURED,
    }
    for job, node in by_party:
        answer = node.ok("POST", f"/synthesis-jobs/{job['id']}/candidate", json=candidate)
        assert answer == {"status": "awaiting_review"}
    cards = {n.name: pooled_card(data, j["id"], n.name, parties) for j, n in by_party}

    answer = approve(first, first_job["id"], cards[first.name])
    assert answer.status_code == 202, answer.text
    assert answer.json() == {
        "status": "approved",
        "waiting_for": parties[1:],
        "data_wanted": False,
        "release_id": None,
    }
    assert approve(first, first_job["id"], cards[first.name]).json() == answer.json()
    early = approve(last, last_job["id"], cards[last.name], data)
    assert early.status_code == 409 and "waits for the approval of" in early.text
    assert setup.researcher.releases(setup.study_id) == []
    view = setup.researcher.get_synthesis(made["id"])
    assert [j["status"] for j in view["jobs"]] == ["approved", "awaiting_review", "awaiting_review"]
    for job, node in by_party[1:]:
        answer = approve(node, job["id"], cards[node.name])
        assert answer.status_code == 202, answer.text
    assert answer.json()["data_wanted"] is True

    published = approve(last, last_job["id"], cards[last.name], data)
    assert published.status_code == 201, published.text
    release = published.json()
    assert (release["scope"], release["parties"], release["node"]) == (
        "pooled",
        parties,
        parties[0],
    )
    assert release["sha256"] == hashlib.sha256(data).hexdigest()
    assert [p["node"] for p in release["card"]["nodes"]] == parties
    assert [(s["node"], s["steward"]) for s in release["signed_by"]] == [
        (n, "sam") for n in parties
    ]
    again = approve(first, first_job["id"], cards[first.name], data)
    assert again.status_code == 409 and again.json()["error"]["details"]["status"] == "released"

    view = setup.researcher.get_synthesis(made["id"])
    assert view["status"] == "done"
    assert {(j["status"], j["release_id"]) for j in view["jobs"]} == {("released", release["id"])}
    listed = setup.researcher.releases(setup.study_id)
    assert [r["id"] for r in listed] == [release["id"]]
    for name in parties:
        assert setup.researcher.release_report(release["id"], name) == node_report(name)
    assert setup.researcher.release_report(release["id"]) == node_report(parties[0])
    with pytest.raises(NotFound, match="has no report of node 'nowhere'"):
        setup.researcher.release_report(release["id"], "nowhere")
    assert setup.researcher.release_data(release["id"], "parquet") == data
    assert "release.published" in audit_actions(setup)


def test_a_refusal_blocks_every_node_of_a_pooled_synthesis(setup: Setup) -> None:
    made, jobs = pooled_jobs(setup)
    by_party = sorted(zip(jobs, setup.nodes, strict=True), key=lambda jn: jn[0]["party_id"])
    (job0, node0), (job1, node1), (job2, node2) = by_party
    node0.ok("POST", f"/synthesis-jobs/{job0['id']}/accept", json={"mpc_host": "h", "mpc_port": 1})

    node1.ok("POST", f"/synthesis-jobs/{job1['id']}/refuse", json={"reason": "no budget"})

    start = node0.ok("GET", f"/synthesis-jobs/{job0['id']}/start", params={"wait": 5})
    assert (start["start"], start["status"]) == (False, "failed")
    late = node2.call(
        "POST", f"/synthesis-jobs/{job2['id']}/accept", json={"mpc_host": "h", "mpc_port": 2}
    )
    assert late.status_code == 409
    error = late.json()["error"]
    assert error["details"]["status"] == "failed" and error["details"]["code"] == "pooled_blocked"
    assert f"node {node1.name} refused: no budget" in error["message"]
    view = setup.researcher.get_synthesis(made["id"])
    assert view["status"] == "done"
    assert sorted(j["status"] for j in view["jobs"]) == ["failed", "failed", "refused"]


def test_a_pooled_synthesis_needs_three_nodes(setup: Setup) -> None:
    allow_synthesis(setup.nodes[0], POLICY | {"pooled": True})
    allow_synthesis(setup.nodes[1], POLICY | {"pooled": True})
    allow_synthesis(setup.nodes[2], POLICY)

    with pytest.raises(Conflict, match="a pooled synthesis needs at least 3 nodes") as caught:
        setup.researcher.request_synthesis(setup.study_id, POOLED_SPEC)
    assert caught.value.http_status == 409
    assert [s["node"] for s in caught.value.details["skipped"]] == [setup.nodes[2].name]


# ---- a node's retries: the first answer again, nothing twice ------------------------------


def twice(node: FakeNode, path: str, body: Any = None) -> Any:
    """Post the same request twice (the first reply lost): both answers alike, the second a
    replay; returns the answer."""
    first = node.call("POST", path, json=body)
    again = node.call("POST", path, json=body)
    assert first.status_code == 200, first.text
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    return first.json()


def job_audit(setup: Setup, job_id: int, action: str) -> list[dict[str, Any]]:
    return [e for e in setup.admin.audit(action) if e["subject"] == f"synthesis_job:{job_id}"]


def test_retried_synthesis_steps_and_upload_change_nothing_twice(setup: Setup) -> None:
    node = setup.nodes[0]

    def hellos() -> int:
        return sum(e["actor"] == f"node:{node.name}" for e in setup.admin.audit("node.hello"))

    allow_synthesis(node)
    before = hellos()
    allow_synthesis(node)
    assert hellos() == before, "the same hello again (a retry) records nothing"
    setup.researcher.request_synthesis(setup.study_id, SPEC)
    job = take_job(node)
    path = f"/synthesis-jobs/{job['id']}"
    assert twice(node, f"{path}/accept") == {"status": "training"}
    progress = {"stage": "training", "message": "", "epoch": 3, "epochs": 10, "loss": 0.5}
    twice(node, f"{path}/progress", progress)
    node.ok("POST", f"{path}/progress", json=progress | {"epoch": 4})
    candidate = {"gates": GATES, "approvals_required": 1}
    assert twice(node, f"{path}/candidate", candidate) == {"status": "awaiting_review"}
    other = node.call("POST", f"{path}/candidate", json=candidate | {"approvals_required": 2})
    assert other.status_code == 409 and "already took another candidate" in other.text
    assert other.json()["error"]["details"]["status"] == "awaiting_review"
    assert len(job_audit(setup, job["id"], "synthesis.accepted")) == 1
    assert len(job_audit(setup, job["id"], "synthesis.awaiting_review")) == 1

    data = synthetic()
    body = card(data, job["id"], node.name)
    first, again = upload(node, job["id"], data, body), upload(node, job["id"], data, body)
    assert first.status_code == 200, first.text
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert [r["id"] for r in setup.researcher.releases(setup.study_id)] == [first.json()["id"]]
    published = [
        e
        for e in setup.admin.audit("release.published")
        if e["subject"] == f"release:{first.json()['id']}"
    ]
    assert len(published) == 1
    changed = upload(node, job["id"], data, body, report=REPORT.replace(b"report", b"other"))
    assert changed.status_code == 409 and "already took another release" in changed.text
    assert changed.json()["error"]["details"]["status"] == "released"


def test_retried_refusal_rejection_and_failure_are_answered_alike(setup: Setup) -> None:
    for node in setup.nodes:
        allow_synthesis(node)
    setup.researcher.request_synthesis(setup.study_id, SPEC)
    refused, rejected, failed = (take_job(n) for n in setup.nodes)
    a, b, c = setup.nodes
    assert twice(a, f"/synthesis-jobs/{refused['id']}/refuse", {"reason": "no"}) == {
        "status": "refused"
    }
    b.ok("POST", f"/synthesis-jobs/{rejected['id']}/accept")
    b.ok("POST", f"/synthesis-jobs/{rejected['id']}/candidate", json={"gates": GATES})
    decision = STEWARDS.decision(
        "sam",
        node=b.name,
        job_id=rejected["id"],
        hashes={"data_sha256": "1" * 64, "card_sha256": "2" * 64, "report_sha256": "3" * 64},
        decision="reject",
    ).model_dump(mode="json")
    rejection = {"decisions": [decision]}
    assert twice(b, f"/synthesis-jobs/{rejected['id']}/reject", rejection) == {"status": "rejected"}
    c.ok("POST", f"/synthesis-jobs/{failed['id']}/accept")
    failure = {"code": "node_error", "message": "out of memory"}
    assert twice(c, f"/synthesis-jobs/{failed['id']}/fail", failure) == {"status": "failed"}
    for job, action in (
        (refused, "synthesis.refused"),
        (rejected, "synthesis.rejected"),
        (failed, "synthesis.failed"),
    ):
        assert len(job_audit(setup, job["id"], action)) == 1, action


def test_a_pooled_approval_and_upload_retried_publish_once(setup: Setup) -> None:
    """An approval without data sent again changes nothing and answers the request's state
    now (nodes poll with it); the data upload sent again is answered its release again."""
    _, jobs = pooled_jobs(setup)
    by_party = sorted(zip(jobs, setup.nodes, strict=True), key=lambda jn: jn[0]["party_id"])
    parties = [n.name for _, n in by_party]
    data = synthetic()
    candidate = {
        "gates": GATES,
        "candidate_sha256": hashlib.sha256(data).hexdigest(),
        "measurement_sha256": MEASURED,
    }
    for port, (job, node) in enumerate(by_party, start=31000):
        twice(node, f"/synthesis-jobs/{job['id']}/accept", {"mpc_host": "h", "mpc_port": port})
        twice(node, f"/synthesis-jobs/{job['id']}/candidate", candidate)
    cards = {n.name: pooled_card(data, j["id"], n.name, parties) for j, n in by_party}
    for job, node in by_party:
        answers = [approve(node, job["id"], cards[node.name]) for _ in range(2)]
        assert [a.status_code for a in answers] == [202, 202]
        assert len(job_audit(setup, job["id"], "synthesis.approved")) == 1
    assert answers[1].json()["data_wanted"] is True
    job, node = by_party[1]
    first = approve(node, job["id"], cards[node.name], data)
    again = approve(node, job["id"], cards[node.name], data)
    assert first.status_code == 201, first.text
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert [r["id"] for r in setup.researcher.releases(setup.study_id)] == [first.json()["id"]]
