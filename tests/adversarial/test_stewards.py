"""Steward approvals as an attacker tries them: one person with write access to a node's
work_dir (the candidate store, the candidate's files), or a node that uploads a crafted release.

Each attack is refused twice: by the node, which counts a decision only as a signature by the
key its policy lists for that steward over this node, job and the candidate's data, card and
report hashes, and re-hashes what it uploads; and by the coordinator, which checks every
signature against the keys the node published at its hello and counts one key once.

- a forged signature (an approval "by bob" signed with another key);
- a signature over other bytes (other data, another card, another job);
- one steward signing twice (the same key under one name twice, or under two names);
- data swapped after the approvals (the card's hash rewritten to match).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from demo.network import Network
from node_agent.candidates import CandidateStore
from node_agent.config import NodeSettings
from node_agent.policy import Policy
from node_agent.synthesis import SynthesisService
from tessera.client import TesseraClient
from tessera.schemas import ReleaseCard, ReleaseContent, StewardDecision
from tessera.stewards import sign

NODE = "node-a"
COLUMNS = """columns = [
  { name = "age", type = "integer", min = 0, max = 120 },
  { name = "sex", type = "categorical", levels = ["F", "M"] },
]"""
GATES = [{"name": "min_fidelity", "passed": True, "value": 0.9, "threshold": 0.8, "message": ""}]
ROWS = 40


def parquet(seed: int = 0) -> bytes:
    frame = pd.DataFrame({"age": [(i * 7 + seed) % 90 for i in range(ROWS)], "sex": ["F"] * ROWS})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


REPORT = b"<!doctype html><html><body>the report the stewards read</body></html>"


def card_fields(data: bytes, **changes: Any) -> dict[str, Any]:
    return {
        "generator": "cart",
        "generator_license": "Apache-2.0",
        "params": {},
        "rows": ROWS,
        "columns": ["age", "sex"],
        "epsilon": None,
        "delta": None,
        "metrics": {"fidelity": {"score": 0.9}},
        "sha256": hashlib.sha256(data).hexdigest(),
        "device": "cpu",
        "fit_seconds": 0.1,
        "training_rows": 160,
        "holdout_rows": 40,
        **changes,
    }


def hashes(data: bytes, card: dict[str, Any], report: bytes = REPORT) -> dict[str, str]:
    return {
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "card_sha256": ReleaseContent.model_validate({**card, "gates": GATES}).digest(),
        "report_sha256": hashlib.sha256(report).hexdigest(),
    }


def forged(decision: StewardDecision, signer: Any) -> StewardDecision:
    """The decision with its signature replaced by `signer`'s: what someone without the
    steward's key can make."""
    message = decision.model_dump_json(exclude={"signature"}).encode()
    return decision.model_copy(update={"signature": sign(signer, message)})


# ---- at the node ------------------------------------------------------------------------


class FakeCoordinator:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def release(self, job_id: int, card: ReleaseCard, data: bytes, report: bytes) -> Any:
        self.calls.append(("release", (job_id, card, data, report)))
        return {"id": 70 + job_id}

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


@dataclass
class Node:
    service: SynthesisService
    coordinator: FakeCoordinator
    audited: list[tuple[str, dict[str, Any]]]
    folder: Path
    data: bytes

    @property
    def store(self) -> CandidateStore:
        return self.service.store

    def sign(self, stewards: Any, name: str, **changes: Any) -> StewardDecision:
        """`name`'s approval of the candidate as it is on disk (as `tessera steward approve`
        makes it), with `changes` to what is signed."""
        signing = {
            "node": NODE,
            "job_id": 5,
            "hashes": self.store.get(5).hashes(),
            "decision": "approve",
        } | changes
        return stewards.decision(name, **signing)  # type: ignore[no-any-return]

    def write(self, decision: StewardDecision) -> None:
        """Write a decision straight into the store, as anyone with write access can."""
        with sqlite3.connect(self.store.path) as conn:
            conn.execute(
                "INSERT INTO steward_decisions (job_id, steward, decision, reason, at, key, "
                "data_sha256, card_sha256, report_sha256, signature) "
                "VALUES (5, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.steward,
                    decision.decision,
                    decision.reason,
                    decision.at.isoformat(),
                    decision.key,
                    decision.data_sha256,
                    decision.card_sha256,
                    decision.report_sha256,
                    decision.signature,
                ),
            )

    def refused(self) -> list[str]:
        return [str(f.get("reason")) for a, f in self.audited if a == "steward.refused"]


@pytest.fixture
def node(tmp_path: Path, stewards: Any) -> Node:
    (tmp_path / "cohort.csv").write_text("age,sex\n3,F\n10,M\n45,F\n")
    path = tmp_path / "node.toml"
    path.write_text(
        f'name = "{NODE}"\ncoordinator_url = "http://127.0.0.1:8000"\napi_key = "key-123"\n'
        'mpc_ports = "21000-21009"\nwork_dir = "state"\n[policy]\n\n'
        '[policy.synthesis]\ngenerators = ["cart"]\napprovals_required = 2\n'
        f"[policy.synthesis.stewards]\n{stewards.table('ada', 'bob', 'cy')}\n"
        f'[[datasets]]\nname = "cohort"\nsource = "csv"\npath = "cohort.csv"\n{COLUMNS}\n'
    )
    settings = NodeSettings.load(path)
    coordinator = FakeCoordinator()
    audited: list[tuple[str, dict[str, Any]]] = []
    service = SynthesisService(
        settings,
        coordinator,  # type: ignore[arg-type]
        Policy(settings.policy, settings.datasets),
        lambda action, outcome, **fields: audited.append((action, fields)),
        threading.Event(),
    )
    folder = settings.synthesis_dir / "job-5"
    folder.mkdir(parents=True)
    data = parquet()
    (folder / "synthetic.parquet").write_bytes(data)
    (folder / "report.html").write_bytes(REPORT)
    service.store.create(5, 1, 2, "cohort", "cart", "rita", {"rows": ROWS}, folder)
    assert service.store.set_candidate(5, card_fields(data), GATES, 2) == "awaiting_review"
    return Node(service, coordinator, audited, folder, data)


def test_the_node_does_not_count_a_forged_signature(node: Node, stewards: Any) -> None:
    node.store.decide(5, node.sign(stewards, "ada"))
    bob = node.sign(stewards, "bob")  # what bob would sign; signed by mallory instead
    node.write(forged(bob, stewards.private("mallory")))
    node.service.review_once()
    assert node.coordinator.calls == [], "nothing uploaded, nothing told"
    assert node.store.get(5).status == "awaiting_review"
    assert node.refused() == ["'bob''s signature does not verify with their key"]
    # a decision whose fields do not even read as a signed one is refused as well
    with sqlite3.connect(node.store.path) as conn:
        conn.execute("UPDATE steward_decisions SET key = 'none' WHERE steward = 'bob'")
        conn.execute("UPDATE steward_decisions SET audited = 0 WHERE steward = 'bob'")
    node.service.review_once()
    assert node.coordinator.calls == [] and node.store.get(5).status == "awaiting_review"
    assert node.refused()[-1] == "it does not read as a signed decision"


def test_the_node_does_not_count_a_signature_for_another_job_or_node(
    node: Node, stewards: Any
) -> None:
    node.store.decide(5, node.sign(stewards, "ada"))
    node.write(node.sign(stewards, "bob", job_id=6))  # bob's real approval of another job
    node.service.review_once()
    assert node.coordinator.calls == [] and node.store.get(5).status == "awaiting_review"
    with sqlite3.connect(node.store.path) as conn:
        conn.execute("DELETE FROM steward_decisions WHERE steward = 'bob'")
    node.write(node.sign(stewards, "bob", node="node-b"))  # ... at another hospital
    node.service.review_once()
    assert node.coordinator.calls == [] and node.store.get(5).status == "awaiting_review"
    assert node.refused() == ["'bob''s signature does not verify with their key"] * 2


def test_the_node_refuses_approvals_of_other_bytes(node: Node, stewards: Any) -> None:
    """bob's genuine signature, but over another candidate's data: the approvals reach two,
    and the upload is refused when the node re-hashes what it would send."""
    node.store.decide(5, node.sign(stewards, "ada"))
    other = hashes(parquet(seed=1), card_fields(parquet(seed=1)))
    node.store.decide(5, node.sign(stewards, "bob", hashes=other))
    node.service.review_once()
    assert [name for name, _ in node.coordinator.calls] == ["fail_synthesis"]
    candidate = node.store.get(5)
    assert candidate.status == "failed"
    assert candidate.error == (
        "'bob' signed other data than this candidate's (data changed after their decision); "
        "nothing uploaded"
    )


def test_one_steward_signing_twice_counts_once_at_the_node(node: Node, stewards: Any) -> None:
    ada = node.sign(stewards, "ada")
    node.store.decide(5, ada)
    # ada's own signature filed again under bob's name (with ada's key): not bob's key
    node.write(ada.model_copy(update={"steward": "bob"}))
    # a new statement naming bob, signed with ada's key
    node.write(node.sign(stewards, "cy", signer="ada"))
    node.service.review_once()
    assert node.coordinator.calls == [] and node.store.get(5).status == "awaiting_review"
    prints = node.refused()
    assert len(prints) == 2 and all("not the key node node-a lists for them" in p for p in prints)
    # the store itself takes one decision per steward and per key
    from tessera.errors import Conflict

    with pytest.raises(Conflict, match="ada already decided"):
        node.store.decide(5, node.sign(stewards, "ada", reason="again"))
    # and setting the candidate `approved` by hand uploads nothing: one key is one approval
    node.store.set_status(5, "approved")
    node.service.review_once()
    assert node.coordinator.calls == [] and node.store.get(5).status == "awaiting_review"


@pytest.mark.parametrize("swapped", ["data", "report", "card"])
def test_the_node_never_uploads_what_changed_after_the_approvals(
    node: Node, stewards: Any, swapped: str
) -> None:
    node.store.decide(5, node.sign(stewards, "ada"))
    node.store.decide(5, node.sign(stewards, "bob"))
    if swapped == "data":  # new bytes, and the card's hash rewritten to match them
        other = parquet(seed=3)
        (node.folder / "synthetic.parquet").write_bytes(other)
        change = {"sha256": hashlib.sha256(other).hexdigest()}
    elif swapped == "report":
        (node.folder / "report.html").write_bytes(REPORT.replace(b"read", b"never read"))
        change = {}
    else:  # a better-looking card
        change = {"metrics": {"fidelity": {"score": 0.99}}}
    with sqlite3.connect(node.store.path) as conn:
        [(raw,)] = conn.execute("SELECT card FROM candidates WHERE job_id = 5")
        conn.execute("UPDATE candidates SET card = ?", (json.dumps(json.loads(raw) | change),))
    node.service.review_once()
    assert [name for name, _ in node.coordinator.calls] == ["fail_synthesis"]
    failed = node.store.get(5)
    assert failed.status == "failed"
    assert f"'ada' signed other {swapped} than this candidate's" in str(failed.error)


def test_the_node_uploads_what_two_keys_signed(node: Node, stewards: Any) -> None:
    """The control: the same candidate, approved by two stewards' keys, is uploaded with both
    signatures (and the coordinator checks them again, below)."""
    node.store.decide(5, node.sign(stewards, "ada"))
    node.store.decide(5, node.sign(stewards, "bob"))
    node.service.review_once()
    [(name, (job, card, data, report))] = node.coordinator.calls
    assert (name, job, data, report) == ("release", 5, node.data, REPORT)
    assert [a.steward for a in card.approvals] == ["ada", "bob"]
    assert {a.card_sha256 for a in card.approvals} == {card.digest()}


# ---- at the coordinator ----------------------------------------------------------------


@dataclass
class Coordinator:
    url: str
    researcher: TesseraClient
    study: int
    node_key: str
    http: httpx.Client

    def node(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.node_key}"}
        return self.http.request(method, f"{self.url}/api/v1{path}", headers=headers, **kwargs)

    def hello(self, stewards: dict[str, str], approvals_required: int = 2) -> None:
        policy = {
            "synthesis": {
                "generators": ["cart"],
                "approvals_required": approvals_required,
                "stewards": stewards,
            }
        }
        answer = self.node("POST", "/nodes/me/hello", json={"agent_version": "t", "policy": policy})
        assert answer.status_code == 200, answer.text

    def job_in_review(self) -> int:
        """A new synthesis job of this node, awaiting its stewards (approvals_required 2)."""
        self.researcher.request_synthesis(
            self.study, {"dataset": "cohort", "generator": "cart", "rows": ROWS}
        )
        [job] = self.node("GET", "/nodes/me/synthesis-jobs", params={"wait": 5}).json()
        assert self.node("POST", f"/synthesis-jobs/{job['id']}/accept").status_code == 200
        body = {"gates": GATES, "approvals_required": 2}
        answer = self.node("POST", f"/synthesis-jobs/{job['id']}/candidate", json=body)
        assert answer.json() == {"status": "awaiting_review"}
        return int(job["id"])

    def upload(
        self, job: int, data: bytes, card: dict[str, Any], approvals: list[StewardDecision]
    ) -> httpx.Response:
        body = {**card, "gates": GATES, "approvals": [a.model_dump(mode="json") for a in approvals]}
        return self.node(
            "POST",
            f"/synthesis-jobs/{job}/release",
            data={"card": json.dumps(body)},
            files={"data": ("s.parquet", data), "report": ("r.html", REPORT)},
        )

    def status(self, job: int) -> str:
        views = self.researcher.study_synthesis(self.study)
        return next(j["status"] for v in views for j in v["jobs"] if j["id"] == job)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    from demo.cohort import schema

    net = Network(tmp_path_factory.mktemp("stewards"))
    try:
        net.start_coordinator()
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        org = admin.create_organisation("Hospital A")
        key = admin.create_node(NODE, org["id"])["api_key"]
        admin.create_user("rita", "rita-password-1", role="researcher")
        with httpx.Client(timeout=30) as http:
            made = Coordinator(net.url, TesseraClient(net.url), 0, key, http)
            body = schema().model_dump(mode="json", exclude_none=True)
            assert made.node("PUT", "/nodes/me/datasets/cohort", json=body).status_code == 200
            study = admin.create_study(
                "s", organisation_ids=[org["id"]], datasets=["cohort"], members=["rita"]
            )
            made.study = study["id"]
            made.researcher.login("rita", "rita-password-1")
            yield made
    finally:
        net.stop()


def signed(
    stewards: Any, name: str, job: int, data: bytes, card: dict[str, Any], **changes: Any
) -> StewardDecision:
    signing = {"node": NODE, "job_id": job, "hashes": hashes(data, card)} | changes
    return stewards.decision(name, **signing)  # type: ignore[no-any-return]


def refused(answer: httpx.Response, says: str) -> None:
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["error"]["message"], answer.json()


@pytest.fixture
def published(coordinator: Coordinator, stewards: Any) -> Coordinator:
    coordinator.hello({n: stewards.public(n) for n in ("ada", "bob", "cy")})
    return coordinator


def test_the_coordinator_refuses_a_forged_signature(published: Coordinator, stewards: Any) -> None:
    job = published.job_in_review()
    data, card = parquet(), card_fields(parquet())
    ada = signed(stewards, "ada", job, data, card)
    bob = forged(signed(stewards, "bob", job, data, card), stewards.private("mallory"))
    refused(published.upload(job, data, card, [ada, bob]), "'bob''s signature does not verify")
    mallory = signed(stewards, "mallory", job, data, card)  # a key nobody listed
    refused(published.upload(job, data, card, [ada, mallory]), "'mallory' is not a steward")
    posing = signed(stewards, "bob", job, data, card, signer="mallory")  # her key, bob's name
    refused(
        published.upload(job, data, card, [ada, posing]),
        "'bob' signed with key sha256:",
    )
    assert published.status(job) == "awaiting_review"
    assert published.researcher.releases(published.study) == []


def test_the_coordinator_refuses_signatures_over_other_bytes(
    published: Coordinator, stewards: Any
) -> None:
    job = published.job_in_review()
    data, card = parquet(), card_fields(parquet())
    ada = signed(stewards, "ada", job, data, card)
    other = parquet(seed=1)
    for bob, says in [
        (
            signed(stewards, "bob", job, data, card, hashes=hashes(other, card_fields(other))),
            "'bob' signed other data than this candidate's",
        ),
        (
            signed(stewards, "bob", job, data, card, hashes=hashes(data, card, b"<!doctype x>")),
            "'bob' signed other report than this candidate's",
        ),
        (
            signed(stewards, "bob", job, data, card_fields(data, metrics={})),
            "'bob' signed other card than this candidate's",
        ),
        (
            signed(stewards, "bob", job + 1000, data, card),
            "'bob''s signature does not verify",
        ),
        (
            signed(stewards, "bob", job, data, card, node="node-b"),
            "'bob''s signature does not verify",
        ),
    ]:
        refused(published.upload(job, data, card, [ada, bob]), says)
    # the rejection the node relays is checked the same way: one forged is refused
    rejection = forged(
        signed(stewards, "cy", job, data, card, decision="reject", reason="no"),
        stewards.private("mallory"),
    )
    answer = published.node(
        "POST",
        f"/synthesis-jobs/{job}/reject",
        json={"decisions": [rejection.model_dump(mode="json")]},
    )
    refused(answer, "'cy''s signature does not verify")
    assert published.status(job) == "awaiting_review"


def test_the_coordinator_counts_one_key_once(
    coordinator: Coordinator, published: Coordinator, stewards: Any
) -> None:
    job = published.job_in_review()
    data, card = parquet(), card_fields(parquet())
    ada = signed(stewards, "ada", job, data, card)
    again = signed(stewards, "ada", job, data, card, at=datetime(2031, 1, 1, tzinfo=UTC))
    refused(published.upload(job, data, card, [ada, again]), "a steward appears twice")
    # a node that publishes one key under two names gets one approval from it
    coordinator.hello({"ada": stewards.public("ada"), "ada2": stewards.public("ada")})
    twin = signed(stewards, "ada2", job, data, card, signer="ada")
    refused(
        coordinator.upload(job, data, card, [ada, twin]),
        "1 distinct steward key(s) approved; this node's policy requires 2 (one key counts once)",
    )
    # and one steward's approval alone is one
    coordinator.hello({n: stewards.public(n) for n in ("ada", "bob")})
    refused(coordinator.upload(job, data, card, [ada]), "1 distinct steward key(s) approved")
    assert coordinator.status(job) == "awaiting_review"


def test_the_coordinator_refuses_data_swapped_after_the_approvals(
    published: Coordinator, stewards: Any
) -> None:
    job = published.job_in_review()
    data, card = parquet(), card_fields(parquet())
    approvals = [signed(stewards, n, job, data, card) for n in ("ada", "bob")]
    swapped = parquet(seed=5)  # and a card whose hash matches the new bytes
    answer = published.upload(job, swapped, card_fields(swapped), approvals)
    refused(answer, "'ada' signed other data than this candidate's")
    assert published.status(job) == "awaiting_review"
    # the control: what they signed is published, naming who signed
    answer = published.upload(job, data, card, approvals)
    assert answer.status_code == 200, answer.text
    release = answer.json()
    assert [s["steward"] for s in release["signed_by"]] == ["ada", "bob"]
    assert all(s["fingerprint"].startswith("sha256:") for s in release["signed_by"])


def test_a_node_that_publishes_no_keys_releases_nothing(
    coordinator: Coordinator, stewards: Any
) -> None:
    coordinator.hello({n: stewards.public(n) for n in ("ada", "bob")})
    job = coordinator.job_in_review()
    data, card = parquet(), card_fields(parquet())
    approvals = [signed(stewards, n, job, data, card) for n in ("ada", "bob")]
    coordinator.hello({})
    answer = coordinator.upload(job, data, card, approvals)
    assert answer.status_code == 409, answer.text
    assert "published no steward keys" in answer.json()["error"]["message"]
