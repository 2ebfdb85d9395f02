"""Synthesis: the published policy's refusals, requests into jobs, the job's states, publishing
a release, the deadline."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select

from api import audit
from api.models import Node, Release, ReleaseFile
from api.pagination import PageRequest
from api.services import synthesis
from tessera.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from tessera.schemas import (
    GateOutcome,
    PooledApproval,
    ReleaseCard,
    ReleaseContent,
    StewardDecision,
    SynthesisCandidate,
    SynthesisProgress,
    SynthesisRejection,
    SynthesisSpec,
    TaskAccept,
    TaskFailure,
)
from tessera.signing import statement_message, synthesis_message, verify_ed25519

# the `stewards` fixture's keys of sam and sue (tests/conftest.py StewardKeys)
KEYS = {
    "sam": "ed25519:82Kfgyj9sP6AzunyERvWyt/BiU8K/XxhwDF31RaAzEc=",
    "sue": "ed25519:84WHVfF+gbkgDsCtWRnAmP8I1EukG8k3PS1ifn9o0rY=",
}
ALLOWS = {
    "synthesis": {
        "generators": ["cart", "mst"],
        "max_epsilon": 2.0,
        "max_rows": 1000,
        "stewards": KEYS,
    }
}
SPEC = SynthesisSpec(dataset="cohort", generator="cart", rows=3)
FRAME = pd.DataFrame({"age": [4, 50, 71], "sex": ["F", "M", "F"]})
REPORT = b"<!DOCTYPE html><html><body>report</body></html>"


def _parquet(frame: pd.DataFrame = FRAME) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


STEWARDS: Any = None  # tests/conftest.py's StewardKeys, set for every test


@pytest.fixture(autouse=True)
def _stewards(stewards: Any) -> None:
    global STEWARDS
    STEWARDS = stewards


def _decision(
    steward: str, decision: str = "approve", job_id: int = 0, hashes: dict | None = None
) -> StewardDecision:
    """`steward`'s decision signed for job `job_id` at h1 (over made-up hashes by default)."""
    made_up = {"data_sha256": "1" * 64, "card_sha256": "2" * 64, "report_sha256": "3" * 64}
    return STEWARDS.decision(
        steward,
        node="h1",
        job_id=job_id,
        hashes=hashes or made_up,
        decision=decision,
        at=datetime(2030, 1, 1, 10, tzinfo=UTC),
    )


def _card(
    data: bytes,
    approvals: tuple[str, ...] = ("sam", "sue"),
    job_id: int = 0,
    report: bytes = REPORT,
    **changes,
) -> ReleaseCard:
    """A card for `data`, approved by `approvals`, each signing it for job `job_id` at h1."""
    fields = {
        "generator": "cart",
        "generator_license": "MIT",
        "params": {},
        "rows": 3,
        "columns": ["age", "sex"],
        "metrics": {},
        "gates": [],
        "sha256": hashlib.sha256(data).hexdigest(),
        "device": "cpu",
        "fit_seconds": 1.5,
    }
    content = ReleaseContent(**{**fields, **changes})
    hashes = {
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "card_sha256": content.digest(),
        "report_sha256": hashlib.sha256(report).hexdigest(),
    }
    signed = [_decision(s, job_id=job_id, hashes=hashes) for s in approvals]
    return ReleaseCard(**content.model_dump(), approvals=signed)


def _gate(name: str, passed: bool) -> GateOutcome:
    return GateOutcome(name=name, passed=passed, value=0.5, threshold=0.4)


@pytest.fixture
def syn(make):
    """Nodes h1 and h3 allow cart and mst; h2 publishes no synthesis policy."""
    return make.network(policies=[ALLOWS, None, ALLOWS])


def _request(db, syn, settings, spec: SynthesisSpec = SPEC):
    return synthesis.request(db, syn.study, syn.researcher, spec, settings)


def _training(db, syn, settings):
    """A request's job at h1, accepted (training)."""
    job = _request(db, syn, settings).jobs[0]
    synthesis.accept(db, syn.nodes[0], job.id)
    return job


def _awaiting_review(db, syn, settings, approvals_required: int = 2):
    job = _training(db, syn, settings)
    candidate = SynthesisCandidate(
        gates=[_gate("dcr", True)], approvals_required=approvals_required
    )
    synthesis.candidate(db, syn.nodes[0], job.id, candidate)
    return job


# ---- the published policy ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "spec", "reason"),
    [
        ({}, SPEC, "its policy allows no synthesis"),
        (
            {"synthesis": {"generators": ["mst", "tvae"]}},
            SPEC,
            "its policy does not allow generator 'cart' (allowed: mst, tvae)",
        ),
        (
            {"synthesis": {"generators": ["cart"], "dp_required": True}},
            SPEC,
            "its policy requires a differentially private generator",
        ),
        (
            {"synthesis": {"generators": ["mst"], "max_epsilon": 1.0}},
            SynthesisSpec(dataset="cohort", generator="mst", rows=3, epsilon=1.5),
            "its policy allows epsilon up to 1, not 1.5",
        ),
        (
            {"synthesis": {"generators": ["cart"], "max_rows": 2}},
            SPEC,
            "its policy allows up to 2 synthetic rows, not 3",
        ),
        (
            {"synthesis": {"generators": ["cart"]}},
            SPEC,
            "its policy publishes no steward keys, so no release of it could be verified",
        ),
        (ALLOWS, SPEC, None),
    ],
    ids=["no-synthesis", "generator", "dp-required", "epsilon", "rows", "no-keys", "allowed"],
)
def test_published_refusal_gives_the_rule_that_refuses(policy, spec, reason) -> None:
    assert synthesis.published_refusal(Node(name="n", policy=policy), spec) == reason


# ---- requests ---------------------------------------------------------------------------


def test_a_request_skips_the_refusing_nodes_and_lists_them(make, db, syn, settings, clock) -> None:
    record = _request(db, syn, settings)

    assert [job.node_id for job in record.jobs] == [syn.nodes[0].id, syn.nodes[2].id]
    assert {job.status for job in record.jobs} == {"pending"}
    assert {job.deadline for job in record.jobs} == {clock.now() + timedelta(seconds=600)}
    assert record.skipped == [{"node": "h2", "reason": "its policy allows no synthesis"}]
    (event,) = make.events("synthesis.requested")
    assert (event.details["nodes"], event.details["skipped"]) == (["h1", "h3"], ["h2"])


def test_a_request_no_node_may_take_is_policy_denied(make, db, syn, settings) -> None:
    too_many = SynthesisSpec(dataset="cohort", generator="cart", rows=5000)

    with pytest.raises(PolicyDenied, match="no node of the study may take this request") as caught:
        _request(db, syn, settings, too_many)
    assert [s["node"] for s in caught.value.details["skipped"]] == ["h1", "h2", "h3"]
    assert "h1: its policy allows up to 1000 synthetic rows, not 5000" in str(caught.value)
    assert make.events("synthesis.requested") == []


# ---- the job's states -------------------------------------------------------------------


def test_a_job_is_offered_once(db, syn, settings) -> None:
    record = _request(db, syn, settings)

    (offered,) = synthesis.offer_jobs(db, syn.nodes[0])
    assert (offered.id, offered.requested_by, offered.spec) == (record.jobs[0].id, "rita", SPEC)
    assert record.jobs[0].status == "offered"
    assert synthesis.offer_jobs(db, syn.nodes[0]) == []
    assert synthesis.offer_jobs(db, syn.nodes[1]) == []  # h2 was skipped


def test_another_nodes_job_is_not_found(db, syn, settings) -> None:
    job = _request(db, syn, settings).jobs[0]

    with pytest.raises(NotFound, match=f"no synthesis job {job.id}"):
        synthesis.accept(db, syn.nodes[2], job.id)


def test_accepting_starts_training_once(make, db, syn, settings) -> None:
    job = _training(db, syn, settings)

    assert job.status == "training"
    assert make.actions(f"synthesis_job:{job.id}") == ["synthesis.accepted"]
    with pytest.raises(Conflict, match=f"synthesis job {job.id} is training"):
        synthesis.accept(db, syn.nodes[0], job.id)


def test_accepting_past_the_deadline_is_a_conflict(db, syn, settings, clock) -> None:
    job = _request(db, syn, settings).jobs[0]
    clock.advance(settings.synthesis_timeout_s + 1)

    with pytest.raises(Conflict, match="is past its deadline"):
        synthesis.accept(db, syn.nodes[0], job.id)
    assert job.status == "pending"


def test_a_node_refuses_a_job_it_has_not_accepted(make, db, syn, settings) -> None:
    job = _request(db, syn, settings).jobs[0]

    synthesis.refuse(db, syn.nodes[0], job.id, "holdout too small")

    assert (job.status, job.error_code, job.error_message) == (
        "refused",
        "node_refused",
        "holdout too small",
    )
    assert make.actions(f"synthesis_job:{job.id}") == ["synthesis.refused"]


def test_progress_is_taken_only_while_training(db, syn, settings) -> None:
    job = _request(db, syn, settings).jobs[0]
    step = SynthesisProgress(stage="training", message="epoch 3", epoch=3, epochs=10, loss=0.25)
    with pytest.raises(Conflict, match=f"synthesis job {job.id} is pending"):
        synthesis.progress(db, syn.nodes[0], job.id, step)

    synthesis.accept(db, syn.nodes[0], job.id)
    synthesis.progress(db, syn.nodes[0], job.id, step)

    assert (job.progress_stage, job.epoch, job.epochs, job.loss) == ("training", 3, 10, 0.25)


def test_a_candidate_failing_a_gate_is_gated(make, db, syn, settings) -> None:
    job = _training(db, syn, settings)
    gates = [_gate("fidelity", True), _gate("dcr", False), _gate("utility", False)]

    synthesis.candidate(db, syn.nodes[0], job.id, SynthesisCandidate(gates=gates))

    assert (job.status, job.error_code) == ("gated", "release_gate_failed")
    assert job.error_message == "release gate(s) failed: dcr, utility"
    assert [g["name"] for g in job.gates] == ["fidelity", "dcr", "utility"]
    (event,) = make.events("synthesis.gated")
    assert event.details == {"failed": ["dcr", "utility"]}


def test_a_candidate_passing_every_gate_awaits_review(make, db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings, approvals_required=2)

    assert (job.status, job.approvals_required, job.error_code) == ("awaiting_review", 2, None)
    assert make.actions(f"synthesis_job:{job.id}")[-1] == "synthesis.awaiting_review"


def test_a_rejection_names_the_stewards_who_rejected(make, db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings)
    approvals_only = SynthesisRejection(decisions=[_decision("sam", job_id=job.id)])
    with pytest.raises(InvalidRequest, match="names at least one steward who rejected"):
        synthesis.reject(db, syn.nodes[0], job.id, approvals_only)

    body = SynthesisRejection(
        decisions=[_decision("sam", job_id=job.id), _decision("sue", "reject", job_id=job.id)]
    )
    synthesis.reject(db, syn.nodes[0], job.id, body)

    assert (job.status, job.error_code, job.error_message) == (
        "rejected",
        "steward_rejected",
        "rejected by sue",
    )
    assert [d["steward"] for d in job.decisions] == ["sam", "sue"]
    (event,) = make.events("synthesis.rejected")
    assert event.details == {"stewards": ["sue"]}


def test_a_failed_job_takes_nothing_more(db, syn, settings) -> None:
    job = _training(db, syn, settings)

    synthesis.fail(db, syn.nodes[0], job.id, TaskFailure(code="oom", message="out of memory"))

    assert (job.status, job.error_code, job.error_message) == ("failed", "oom", "out of memory")
    with pytest.raises(Conflict, match=f"synthesis job {job.id} is failed: out of memory"):
        synthesis.progress(db, syn.nodes[0], job.id, SynthesisProgress(stage="sampling"))


# ---- publishing -------------------------------------------------------------------------


def test_publish_refuses_data_that_does_not_hash_to_the_card(db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings)
    data = _parquet()

    with pytest.raises(InvalidRequest, match="does not hash to the card's sha256"):
        synthesis.publish(db, syn.nodes[0], job.id, _card(data, job_id=job.id), data + b"x", REPORT)
    assert job.status == "awaiting_review"


def test_publish_refuses_data_that_is_not_parquet(db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings)
    data = b"age,sex\n4,F\n"

    with pytest.raises(InvalidRequest, match="the data is not a Parquet file"):
        synthesis.publish(db, syn.nodes[0], job.id, _card(data, job_id=job.id), data, REPORT)


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (FRAME.head(2), "holds 2 rows and columns ['age', 'sex']; the card says 3"),
        (FRAME.rename(columns={"sex": "gender"}), "columns ['age', 'gender']; the card says 3"),
    ],
    ids=["rows", "columns"],
)
def test_publish_refuses_data_unlike_the_card(db, syn, settings, frame, says) -> None:
    job = _awaiting_review(db, syn, settings)
    data = _parquet(frame)

    with pytest.raises(InvalidRequest) as caught:
        synthesis.publish(db, syn.nodes[0], job.id, _card(data, job_id=job.id), data, REPORT)
    assert says in str(caught.value)


def test_publish_refuses_too_few_approvals(db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings, approvals_required=2)
    data = _parquet()

    with pytest.raises(InvalidRequest, match="1 distinct steward key\\(s\\) approved; this node's"):
        synthesis.publish(
            db, syn.nodes[0], job.id, _card(data, ("sam",), job_id=job.id), data, REPORT
        )


def test_publish_refuses_a_report_that_is_not_html(db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings)
    data = _parquet()

    with pytest.raises(InvalidRequest, match="the report is not an HTML document"):
        synthesis.publish(db, syn.nodes[0], job.id, _card(data, job_id=job.id), data, b"%PDF-1.7")


def test_publish_stores_the_release_and_its_files(make, db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings)
    data = _parquet()
    card = _card(data, job_id=job.id)

    release = synthesis.publish(db, syn.nodes[0], job.id, card, data, REPORT)

    assert job.status == "released"
    assert [d["steward"] for d in job.decisions] == ["sam", "sue"]
    assert (release.sha256, release.rows, release.parquet_bytes) == (card.sha256, 3, len(data))
    csv = synthesis.parquet_to_csv(data)
    assert csv == b"age,sex\n4,F\n50,M\n71,F\n"
    assert release.csv_sha256 == hashlib.sha256(csv).hexdigest()
    assert db.get(ReleaseFile, (release.id, "data")).content == data
    assert db.get(ReleaseFile, (release.id, "report")).content == REPORT
    (event,) = make.events("release.published")
    assert (event.subject, event.details["approvals"]) == (f"release:{release.id}", ["sam", "sue"])
    with pytest.raises(Conflict, match="is released"):
        synthesis.publish(db, syn.nodes[0], job.id, card, data, REPORT)


# ---- the deadline -----------------------------------------------------------------------


def test_an_open_job_past_its_deadline_expires_once(make, db, syn, settings, clock) -> None:
    record = _request(db, syn, settings)
    first, second = record.jobs
    synthesis.accept(db, syn.nodes[0], first.id)
    clock.advance(settings.synthesis_timeout_s)
    assert synthesis.overdue_jobs(db) == []

    clock.advance(1)
    assert synthesis.overdue_jobs(db) == [first.id, second.id]
    expired = synthesis.expire(db, first.id)

    assert expired is first
    assert (first.status, first.error_code) == ("failed", "timeout")
    assert first.error_message == "node h1 did not finish training within 600 s"
    assert synthesis.expire(db, first.id) is None
    assert synthesis.overdue_jobs(db) == [second.id]
    assert len(make.events("synthesis.failed")) == 1


def test_a_candidate_awaiting_review_has_no_deadline(db, syn, settings, clock) -> None:
    job = _awaiting_review(db, syn, settings)
    clock.advance(10 * settings.synthesis_timeout_s)

    assert job.id not in synthesis.overdue_jobs(db)
    assert synthesis.expire(db, job.id) is None
    assert job.status == "awaiting_review"


# ---- pooled synthesis -------------------------------------------------------------------

POOLED = {"synthesis": {**ALLOWS["synthesis"], "pooled": True}}
POOLED_SPEC = SynthesisSpec(dataset="cohort", generator="mst", rows=3, epsilon=1.0, scope="pooled")
CANDIDATE = hashlib.sha256(_parquet()).hexdigest()
MEASURED = "4" * 64


@pytest.fixture
def pool(make):
    """Nodes h1, h2 and h3, each taking pooled syntheses."""
    return make.network(policies=[POOLED, POOLED, POOLED])


def _pooled(db, pool, settings):
    return synthesis.request(db, pool.study, pool.researcher, POOLED_SPEC, settings)


def _address(node: Node) -> TaskAccept:
    return TaskAccept(mpc_host=f"{node.name}.example", mpc_port=21000 + node.id)


def _accepted(db, pool, settings):
    record = _pooled(db, pool, settings)
    for job, node in zip(record.jobs, pool.nodes, strict=True):
        synthesis.accept(db, node, job.id, _address(node))
    return record


def _pooled_candidate(candidate: str = CANDIDATE, passed: bool = True) -> SynthesisCandidate:
    return SynthesisCandidate(
        gates=[_gate("dcr", passed)], candidate_sha256=candidate, measurement_sha256=MEASURED
    )


def _reviewed(db, pool, settings):
    """A pooled request whose every node holds the same candidate, awaiting its stewards."""
    record = _accepted(db, pool, settings)
    for job, node in zip(record.jobs, pool.nodes, strict=True):
        synthesis.candidate(db, node, job.id, _pooled_candidate())
    return record


def _pooled_card(
    node: str, job_id: int, approvals: tuple[str, ...] = ("sam",), signer_node: str = "", **changes
) -> ReleaseCard:
    """`node`'s card of the pooled candidate, approved by `approvals` signing it for `job_id`
    at `signer_node` (default: `node`)."""
    fields = {
        "generator": "mst",
        "generator_license": "Apache-2.0",
        "params": {},
        "rows": 3,
        "columns": ["age", "sex"],
        "epsilon": 1.0,
        "metrics": {"fidelity": {"node": node}},
        "gates": [_gate("dcr", True)],
        "sha256": CANDIDATE,
        "device": "cpu",
        "fit_seconds": 2.0,
        "scope": "pooled",
        "parties": ["h1", "h2", "h3"],
        "measurement_sha256": MEASURED,
    }
    content = ReleaseContent(**{**fields, **changes})
    hashes = {
        "data_sha256": content.sha256,
        "card_sha256": content.digest(),
        "report_sha256": hashlib.sha256(_report(node)).hexdigest(),
    }
    signed = [
        STEWARDS.decision(s, node=signer_node or node, job_id=job_id, hashes=hashes)
        for s in approvals
    ]
    return ReleaseCard(**content.model_dump(), approvals=signed)


def _report(node: str) -> bytes:
    return f"<!DOCTYPE html><html><body>report of {node}</body></html>".encode()


def _approve(db, pool, job, index: int):
    node = pool.nodes[index]
    card = _pooled_card(node.name, job.id)
    return synthesis.upload(db, node, job.id, card, None, _report(node.name))


def test_a_pooled_request_needs_three_nodes_that_take_it(make, db, settings) -> None:
    net = make.network(policies=[POOLED, ALLOWS, POOLED])

    with pytest.raises(Conflict, match="a pooled synthesis needs at least 3 nodes") as caught:
        synthesis.request(db, net.study, net.researcher, POOLED_SPEC, settings)
    assert caught.value.details["nodes"] == ["h1", "h3"]
    assert caught.value.details["skipped"] == [
        {"node": "h2", "reason": "its policy takes no pooled synthesis (synthesis.pooled is false)"}
    ]
    assert "h2: its policy takes no pooled synthesis" in str(caught.value)
    assert make.events("synthesis.requested") == []


def test_a_pooled_request_needs_every_column_declared_alike(make, db, settings) -> None:
    other = {
        "columns": [{**c, "max": 99} if c["name"] == "age" else c for c in make.schema["columns"]]
    }
    net = make.network(policies=[POOLED] * 3, schemas=[make.schema, make.schema, other])

    with pytest.raises(Conflict, match="the nodes declare column 'age' of dataset 'cohort'"):
        synthesis.request(db, net.study, net.researcher, POOLED_SPEC, settings)


def test_a_pooled_request_gives_party_ids_in_node_order(make, db, pool, settings) -> None:
    record = _pooled(db, pool, settings)

    assert record.scope == "pooled"
    assert [(j.node_id, j.party_id) for j in record.jobs] == [
        (n.id, i) for i, n in enumerate(pool.nodes)
    ]
    (offered,) = synthesis.offer_jobs(db, pool.nodes[1])
    assert (offered.party_id, offered.n_parties, offered.spec.scope) == (1, 3, "pooled")
    # signed as a query task is, under its own tag: spec, party id and party count included
    public = audit.signer(db).public_pem
    assert verify_ed25519(public, synthesis_message(offered.statement()), offered.signature)
    assert offered.statement()["spec"]["epsilon"] == 1.0
    for update in ({"party_id": 0}, {"n_parties": 2}):
        altered = offered.model_copy(update=update)
        assert not verify_ed25519(public, synthesis_message(altered.statement()), offered.signature)
    assert not verify_ed25519(public, statement_message(offered.statement()), offered.signature)
    view = synthesis.request_view(db, record)
    assert view["scope"] == "pooled" and [j["party_id"] for j in view["jobs"]] == [0, 1, 2]
    (event,) = make.events("synthesis.requested")
    assert event.details["scope"] == "pooled"


def test_a_local_job_has_no_party(db, syn, settings) -> None:
    _request(db, syn, settings)

    (offered,) = synthesis.offer_jobs(db, syn.nodes[0])
    assert (offered.party_id, offered.n_parties) == (None, None)


def test_a_pooled_job_is_accepted_with_its_mpc_address(db, pool, settings) -> None:
    job = _pooled(db, pool, settings).jobs[0]

    with pytest.raises(InvalidRequest, match="accept it with the node's MPC address"):
        synthesis.accept(db, pool.nodes[0], job.id)
    assert job.status == "pending"
    synthesis.accept(db, pool.nodes[0], job.id, _address(pool.nodes[0]))
    assert (job.status, job.mpc_host, job.mpc_port) == (
        "training",
        "h1.example",
        21000 + pool.nodes[0].id,
    )


def test_the_go_waits_for_every_acceptance(make, db, pool, settings) -> None:
    record = _pooled(db, pool, settings)
    first = record.jobs[0]
    for job, node in list(zip(record.jobs, pool.nodes, strict=True))[:2]:
        synthesis.accept(db, node, job.id, _address(node))

    waiting = synthesis.start_info(db, pool.nodes[0], first.id)
    assert (waiting.start, waiting.status, waiting.parties) == (False, "pending", [])
    synthesis.accept(db, pool.nodes[2], record.jobs[2].id, _address(pool.nodes[2]))
    go = synthesis.start_info(db, pool.nodes[0], first.id)

    assert (go.start, go.status, go.deadline) == (True, "running", first.deadline)
    assert [(p.party_id, p.node, p.host, p.port) for p in go.parties] == [
        (i, n.name, f"{n.name}.example", 21000 + n.id) for i, n in enumerate(pool.nodes)
    ]
    assert make.actions(f"synthesis:{record.id}")[-1] == "synthesis.started"
    with pytest.raises(NotFound):
        synthesis.start_info(db, pool.nodes[1], first.id)


def test_the_go_of_a_local_job_is_a_conflict(db, syn, settings) -> None:
    job = _training(db, syn, settings)

    with pytest.raises(Conflict, match="is local"):
        synthesis.start_info(db, syn.nodes[0], job.id)


def test_a_refusal_fails_every_open_job_of_the_request(make, db, pool, settings) -> None:
    record = _pooled(db, pool, settings)
    synthesis.accept(db, pool.nodes[0], record.jobs[0].id, _address(pool.nodes[0]))

    synthesis.refuse(db, pool.nodes[1], record.jobs[1].id, "no budget left")

    assert [j.status for j in record.jobs] == ["failed", "refused", "failed"]
    for job in (record.jobs[0], record.jobs[2]):
        assert (job.error_code, job.error_message) == (
            "pooled_blocked",
            "node h2 refused: no budget left",
        )
    assert synthesis.start_info(db, pool.nodes[0], record.jobs[0].id).status == "failed"
    with pytest.raises(Conflict, match="is failed: node h2 refused") as caught:
        synthesis.accept(db, pool.nodes[2], record.jobs[2].id, _address(pool.nodes[2]))
    assert caught.value.details["status"] == "failed"
    assert synthesis.request_view(db, record)["status"] == "done"
    assert len(make.events("synthesis.failed")) == 2


def test_candidates_that_disagree_fail_the_whole_request(make, db, pool, settings) -> None:
    record = _accepted(db, pool, settings)
    first, second, _ = record.jobs
    synthesis.candidate(db, pool.nodes[0], first.id, _pooled_candidate())

    synthesis.candidate(db, pool.nodes[1], second.id, _pooled_candidate("5" * 64))

    assert (record.candidate_sha256, record.measurement_sha256) == (CANDIDATE, MEASURED)
    assert [j.status for j in record.jobs] == ["failed"] * 3
    assert {j.error_code for j in record.jobs} == {"candidates_disagree"}
    assert "node h2 reported candidate 555555555555" in first.error_message
    assert len(make.events("synthesis.failed")) == 3


def test_a_pooled_candidate_gives_its_hashes(db, pool, settings) -> None:
    job = _accepted(db, pool, settings).jobs[0]

    with pytest.raises(InvalidRequest, match="gives candidate_sha256 and measurement_sha256"):
        synthesis.candidate(db, pool.nodes[0], job.id, SynthesisCandidate(gates=[]))


def test_a_gated_candidate_fails_the_other_nodes(db, pool, settings) -> None:
    record = _accepted(db, pool, settings)
    synthesis.candidate(db, pool.nodes[0], record.jobs[0].id, _pooled_candidate())

    synthesis.candidate(db, pool.nodes[2], record.jobs[2].id, _pooled_candidate(passed=False))

    assert [j.status for j in record.jobs] == ["failed", "failed", "gated"]
    assert record.jobs[0].error_code == "pooled_blocked"
    assert record.jobs[1].error_message == (
        "node h3 gated the candidate: release gate(s) failed: dcr"
    )


def test_an_approval_names_the_nodes_still_waited_for(make, db, pool, settings) -> None:
    record = _reviewed(db, pool, settings)
    first = record.jobs[0]

    answer = _approve(db, pool, first, 0)

    assert answer == PooledApproval(status="approved", waiting_for=["h2", "h3"])
    assert first.status == "approved" and first.report == _report("h1")
    assert [d["steward"] for d in first.decisions] == ["sam"]
    assert _approve(db, pool, first, 0) == answer  # the same approval again
    assert len(make.events("synthesis.approved")) == 1
    view = synthesis.request_view(db, record)
    assert (view["status"], view["at_rest"]) == ("running", True)
    _approve(db, pool, record.jobs[1], 1)
    assert _approve(db, pool, record.jobs[2], 2) == PooledApproval(
        status="approved", waiting_for=[], data_wanted=True
    )
    assert synthesis.request_view(db, record)["at_rest"] is False  # the data is due


def test_the_data_before_every_approval_is_refused_and_not_stored(db, pool, settings) -> None:
    record = _reviewed(db, pool, settings)
    _approve(db, pool, record.jobs[0], 0)
    card = _pooled_card("h2", record.jobs[1].id)

    with pytest.raises(Conflict, match="waits for the approval of h3") as caught:
        synthesis.upload(db, pool.nodes[1], record.jobs[1].id, card, _parquet(), _report("h2"))
    assert caught.value.details["waiting_for"] == ["h3"]
    assert db.scalars(select(Release)).all() == []
    assert db.scalars(select(ReleaseFile)).all() == []


def test_data_that_is_not_the_pooled_candidate_is_refused(db, pool, settings) -> None:
    record = _reviewed(db, pool, settings)
    for index, job in enumerate(record.jobs):
        _approve(db, pool, job, index)
    other = _parquet(FRAME.assign(age=[5, 6, 7]))
    card = _pooled_card("h1", record.jobs[0].id)

    with pytest.raises(InvalidRequest, match="does not hash to the pooled candidate's sha256"):
        synthesis.upload(db, pool.nodes[0], record.jobs[0].id, card, other, _report("h1"))
    assert db.scalars(select(Release)).all() == []


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"parties": ["h2", "h1", "h3"]}, "the card's parties is"),
        ({"sha256": "6" * 64}, "the card's sha256 is"),
        ({"measurement_sha256": "7" * 64}, "the card's measurement_sha256 is"),
        ({"epsilon": 1.5}, "the card's epsilon is 1.5"),
        ({"scope": "local"}, "the card's scope is 'local'"),
        ({"rows": 4}, "the request asked for 3 rows, the card has 4"),
    ],
    ids=["parties", "candidate", "measurements", "epsilon", "scope", "rows"],
)
def test_a_pooled_card_unlike_the_request_is_refused(db, pool, settings, changes, says) -> None:
    job = _reviewed(db, pool, settings).jobs[0]
    card = _pooled_card("h1", job.id, **changes)

    with pytest.raises(InvalidRequest, match=says):
        synthesis.upload(db, pool.nodes[0], job.id, card, None, _report("h1"))
    assert job.status == "awaiting_review"


def test_a_card_unlike_another_nodes_of_the_same_candidate_is_refused(db, pool, settings) -> None:
    record = _reviewed(db, pool, settings)
    _approve(db, pool, record.jobs[0], 0)
    card = _pooled_card("h2", record.jobs[1].id, columns=["sex", "age"])

    with pytest.raises(InvalidRequest, match="the card's columns differ from node h1's card"):
        synthesis.upload(db, pool.nodes[1], record.jobs[1].id, card, None, _report("h2"))


@pytest.mark.parametrize("forgery", ["other-node", "other-key", "other-report"])
def test_a_forged_pooled_approval_is_refused(db, pool, settings, forgery) -> None:
    job = _reviewed(db, pool, settings).jobs[1]
    report = _report("h2")
    if forgery == "other-node":  # h1's steward approval replayed at h2
        card = _pooled_card("h2", job.id, signer_node="h1")
    elif forgery == "other-key":  # signed by sue's key under sam's name
        card = _pooled_card("h2", job.id)
        hashes = {
            "data_sha256": card.approvals[0].data_sha256,
            "card_sha256": card.approvals[0].card_sha256,
            "report_sha256": card.approvals[0].report_sha256,
        }
        forged = STEWARDS.decision("sam", node="h2", job_id=job.id, hashes=hashes, signer="sue")
        card = card.model_copy(update={"approvals": [forged]})
    else:  # approved over another report than the one posted
        card = _pooled_card("h2", job.id)
        report = _report("h2 (edited)")

    with pytest.raises(InvalidRequest, match="a steward decision does not verify"):
        synthesis.upload(db, pool.nodes[1], job.id, card, None, report)
    assert job.status == "awaiting_review"


def test_a_pooled_release_holds_every_nodes_card_and_report(make, db, pool, settings) -> None:
    record = _reviewed(db, pool, settings)
    for index, job in enumerate(record.jobs):
        _approve(db, pool, job, index)
    card = _pooled_card("h2", record.jobs[1].id)

    release = synthesis.upload(
        db, pool.nodes[1], record.jobs[1].id, card, _parquet(), _report("h2")
    )

    assert isinstance(release, Release)
    assert (release.scope, release.job_id, release.node_id) == (
        "pooled",
        record.jobs[0].id,
        pool.nodes[0].id,
    )
    assert (release.sha256, release.rows) == (CANDIDATE, 3)
    assert [j.status for j in record.jobs] == ["released"] * 3
    assert all(j.report is None for j in record.jobs)
    shared = release.card
    assert (shared["scope"], shared["parties"], shared["measurement_sha256"]) == (
        "pooled",
        ["h1", "h2", "h3"],
        MEASURED,
    )
    assert "metrics" not in shared and "approvals" not in shared
    parts = shared["nodes"]
    assert [p["node"] for p in parts] == ["h1", "h2", "h3"]
    assert [p["metrics"] for p in parts] == [{"fidelity": {"node": n}} for n in ("h1", "h2", "h3")]
    assert [p["report_sha256"] for p in parts] == [
        hashlib.sha256(_report(n)).hexdigest() for n in ("h1", "h2", "h3")
    ]
    assert (
        parts[1]["card_sha256"]
        == ReleaseContent.model_validate(card.model_dump(exclude={"approvals"})).digest()
    )
    assert [[a["steward"] for a in p["approvals"]] for p in parts] == [["sam"]] * 3
    for name in ("h1", "h2", "h3"):
        assert db.get(ReleaseFile, (release.id, f"report:{name}")).content == _report(name)
    assert db.get(ReleaseFile, (release.id, "data")).content == _parquet()
    (event,) = make.events("release.published")
    assert event.details["approvals"] == {"h1": ["sam"], "h2": ["sam"], "h3": ["sam"]}
    assert event.details["scope"] == "pooled"

    view = synthesis.release_view(release)
    assert (view["scope"], view["parties"]) == ("pooled", ["h1", "h2", "h3"])
    assert [(s["node"], s["steward"]) for s in view["signed_by"]] == [
        ("h1", "sam"),
        ("h2", "sam"),
        ("h3", "sam"),
    ]
    assert {j["release_id"] for j in synthesis.request_view(db, record)["jobs"]} == {release.id}
    assert synthesis.request_view(db, record)["status"] == "done"
    content, _, name = synthesis.download(db, release, pool.researcher, "report", "h3")
    assert content == _report("h3") and name.endswith("-h3.html")
    assert synthesis.download(db, release, pool.researcher, "report")[0] == _report("h1")
    with pytest.raises(NotFound, match="has no report of node 'h9'"):
        synthesis.download(db, release, pool.researcher, "report", "h9")
    with pytest.raises(Conflict, match="is released"):
        synthesis.upload(db, pool.nodes[2], record.jobs[2].id, card, _parquet(), _report("h3"))
    found, _ = synthesis.list_releases(db, pool.study, PageRequest(), node="h3")
    assert [r.id for r in found] == [release.id]


def test_a_local_upload_needs_its_data(db, syn, settings) -> None:
    job = _awaiting_review(db, syn, settings)

    with pytest.raises(InvalidRequest, match=r"the synthetic data \(the file `data`\) is missing"):
        synthesis.upload(db, syn.nodes[0], job.id, _card(_parquet(), job_id=job.id), None, REPORT)


def test_a_pooled_job_past_its_deadline_fails_the_others(make, db, pool, settings, clock) -> None:
    record = _accepted(db, pool, settings)
    synthesis.candidate(db, pool.nodes[0], record.jobs[0].id, _pooled_candidate())
    _approve(db, pool, record.jobs[0], 0)
    synthesis.candidate(db, pool.nodes[1], record.jobs[1].id, _pooled_candidate())
    clock.advance(settings.synthesis_timeout_s + 1)

    assert synthesis.overdue_jobs(db) == [record.jobs[2].id]  # approved and reviewed: no clock
    synthesis.expire(db, record.jobs[2].id)

    assert [j.status for j in record.jobs] == ["failed", "failed", "failed"]
    assert record.jobs[2].error_code == "timeout"
    assert record.jobs[0].error_message == "node h3 did not reach review within 600 s"
    assert record.jobs[0].card is None and record.jobs[0].report is None
    assert synthesis.overdue_jobs(db) == []
