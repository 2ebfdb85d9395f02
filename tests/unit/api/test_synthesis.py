"""Synthesis: the published policy's refusals, requests into jobs, the job's states, publishing
a release, the deadline."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from api.models import Node, ReleaseFile
from api.services import synthesis
from tessera.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from tessera.schemas import (
    GateOutcome,
    ReleaseCard,
    ReleaseContent,
    StewardDecision,
    SynthesisCandidate,
    SynthesisProgress,
    SynthesisRejection,
    SynthesisSpec,
    TaskFailure,
)

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
