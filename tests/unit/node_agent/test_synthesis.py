"""The node's side of synthesis without a coordinator: the synthesis policy in node.toml, the
candidate store, the reviewer's k-of-n approvals, rejections and uploads, recovery after a
restart, and `tessera steward` on the store."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from node_agent.candidates import CandidateStore
from node_agent.policy import Policy
from node_agent.synthesis import SynthesisService
from tessera.errors import ConfigInvalid, Conflict, NotFound
from tessera.schemas import ReleaseCard, SynthesisRejection

SYNTHESIS = """
[policy.synthesis]
generators = ["cart", "mst"]
stewards = ["ada", "bob", "cy"]
approvals_required = 2
max_epsilon = 2.0

[policy.synthesis.gates]
min_fidelity = 0.8
max_mia_advantage = 0.3
"""
GATES = [{"name": "min_fidelity", "passed": True, "value": 0.9, "threshold": 0.8, "message": ""}]


def card(data: bytes) -> dict[str, Any]:
    return {
        "generator": "cart",
        "generator_license": "Apache-2.0",
        "params": {},
        "rows": 10,
        "columns": ["age"],
        "epsilon": None,
        "delta": None,
        "metrics": {"fidelity": {"score": 0.9}},
        "sha256": hashlib.sha256(data).hexdigest(),
        "device": "cpu",
        "fit_seconds": 0.1,
        "training_rows": 40,
        "holdout_rows": 10,
    }


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.release_error: Exception | None = None

    def release(self, job_id: int, body: ReleaseCard, data: bytes, report: bytes) -> Any:
        self.calls.append(("release", (job_id, body, data, report)))
        if self.release_error is not None:
            raise self.release_error
        return {"id": 70 + job_id}

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


@pytest.fixture
def service(configs) -> tuple[SynthesisService, FakeClient, list[tuple[str, dict[str, Any]]]]:  # type: ignore[no-untyped-def]
    settings = configs.settings(
        configs.node_toml(configs.dataset(), top='work_dir = "state"') + SYNTHESIS
    )
    client = FakeClient()
    audited: list[tuple[str, dict[str, Any]]] = []

    def audit(action: str, outcome: str, **fields: Any) -> None:
        audited.append((action, fields))

    made = SynthesisService(
        settings,
        client,
        Policy(settings.policy, settings.datasets),
        audit,  # type: ignore[arg-type]
        threading.Event(),
    )
    return made, client, audited


def add_candidate(store: CandidateStore, folder: Path, job_id: int = 5) -> bytes:
    folder.mkdir(parents=True)
    data = b"parquet bytes"
    (folder / "synthetic.parquet").write_bytes(data)
    (folder / "report.html").write_text("<!doctype html><p>report</p>")
    store.create(job_id, 1, 2, "cohort", "cart", "rita", {"rows": 10}, folder)
    assert store.set_candidate(job_id, card(data), GATES, 2) == "awaiting_review"
    return data


def test_the_synthesis_policy_is_read_and_checked(configs) -> None:  # type: ignore[no-untyped-def]
    settings = configs.settings(configs.node_toml(configs.dataset()) + SYNTHESIS)
    rules = settings.policy.synthesis
    assert rules is not None and rules.approvals_required == 2
    assert rules.release_gates().min_fidelity == 0.8
    assert rules.release_gates().max_mia_advantage == 0.3
    assert rules.release_gates().dcr_alpha == 0.01  # the default stays
    summary = settings.policy.summary().synthesis
    assert summary is not None and summary.generators == ["cart", "mst"]
    assert summary.max_epsilon == 2.0 and summary.approvals_required == 2
    for change, message in [
        (("approvals_required = 2", "approvals_required = 4"), "exceeds the number of stewards"),
        (('"cart", "mst"', '"cart", "gan"'), "unknown generator(s) 'gan'"),
        (("min_fidelity = 0.8", "min_fidelty = 0.8"), "invalid release gates"),
        (("min_fidelity = 0.8", "min_fidelity = 2"), "min_fidelity must lie in [0, 1]"),
        (
            ('generators = ["cart", "mst"]', 'generators = ["cart"]\ndp_required = true'),
            "dp_required allows only differentially private generators",
        ),
        (('stewards = ["ada", "bob", "cy"]', 'stewards = ["ada", "ada"]'), "named twice"),
    ]:
        text = configs.node_toml(configs.dataset()) + SYNTHESIS.replace(*change)
        with pytest.raises(ConfigInvalid, match=re.escape(message)):
            configs.settings(text)


def test_the_store_keeps_candidates_and_one_decision_per_steward(tmp_path: Path) -> None:
    store = CandidateStore(tmp_path / "c.sqlite3")
    data = add_candidate(store, tmp_path / "job-5")
    assert not store.create(5, 1, 2, "cohort", "cart", "rita", {}, tmp_path), "known already"
    store.decide(5, "ada", "approve", "looks fine")
    with pytest.raises(Conflict, match="ada already decided on candidate 5"):
        store.decide(5, "ada", "reject", "changed my mind")
    with pytest.raises(NotFound, match="no candidate 9"):
        store.decide(9, "ada", "approve")
    again = CandidateStore(tmp_path / "c.sqlite3")  # another process: the CLI
    got = again.get(5)
    assert got.status == "awaiting_review" and [a.steward for a in got.approvals] == ["ada"]
    assert got.card is not None and got.card["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(j, d.steward) for j, d in again.unaudited()] == [(5, "ada")]
    again.mark_audited(5, "ada")
    assert store.unaudited() == []
    store.create(6, 1, 2, "cohort", "cart", "rita", {}, tmp_path / "job-6")
    failing = [{**GATES[0], "passed": False}]
    assert store.set_candidate(6, {}, failing, 1) == "gated"
    with pytest.raises(Conflict, match="candidate 6 is gated, not awaiting_review"):
        store.decide(6, "ada", "approve")
    assert [c.job_id for c in store.list(("awaiting_review",))] == [5]


def test_a_candidate_is_uploaded_at_the_second_approval(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc, client, audited = service
    data = add_candidate(svc.store, svc.settings.synthesis_dir / "job-5")
    svc.store.decide(5, "ada", "approve")
    svc.review_once()
    assert [name for name, _ in client.calls] == []
    assert [a for a, _ in audited] == ["steward.approved"]
    svc.store.decide(5, "bob", "approve", "report read")
    svc.review_once()
    [(name, (job_id, sent, body, report))] = client.calls
    assert name == "release" and job_id == 5 and body == data
    assert [a.steward for a in sent.approvals] == ["ada", "bob"]
    assert sent.gates[0].name == "min_fidelity" and report.startswith(b"<!doctype html>")
    done = svc.store.get(5)
    assert done.status == "released" and done.release_id == 75
    assert [a for a, _ in audited][-2:] == ["steward.approved", "release.uploaded"]
    svc.review_once()
    assert len(client.calls) == 1, "uploaded once"


def test_one_rejection_rejects_and_nothing_is_uploaded(service) -> None:  # type: ignore[no-untyped-def]
    svc, client, audited = service
    folder = svc.settings.synthesis_dir / "job-5"
    add_candidate(svc.store, folder)
    svc.store.decide(5, "ada", "approve")
    svc.store.decide(5, "cy", "reject", "a rare diagnosis is recognisable")
    svc.review_once()
    [(name, (job_id, rejection))] = client.calls
    assert name == "reject_synthesis" and job_id == 5
    assert isinstance(rejection, SynthesisRejection)
    assert [d.decision for d in rejection.decisions] == ["approve", "reject"]
    assert svc.store.get(5).status == "rejected"
    assert not (folder / "synthetic.parquet").exists() and (folder / "report.html").exists()
    assert "synthesis.rejected" in [a for a, _ in audited]


def test_a_changed_data_file_is_never_uploaded(service) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = service
    folder = svc.settings.synthesis_dir / "job-5"
    add_candidate(svc.store, folder)
    (folder / "synthetic.parquet").write_bytes(b"something else")
    svc.store.decide(5, "ada", "approve")
    svc.store.decide(5, "bob", "approve")
    svc.review_once()
    assert [name for name, _ in client.calls] == ["fail_synthesis"]
    assert svc.store.get(5).status == "failed"


def test_an_upload_that_already_landed_counts_as_released(service) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = service
    add_candidate(svc.store, svc.settings.synthesis_dir / "job-5")
    client.release_error = Conflict("synthesis job 5 is released", {"status": "released"})
    svc.store.decide(5, "ada", "approve")
    svc.store.decide(5, "bob", "approve")
    svc.review_once()
    assert svc.store.get(5).status == "released"


def test_a_restart_fails_what_was_training_and_uploads_what_was_approved(service) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = service
    svc.store.create(4, 1, 2, "cohort", "cart", "rita", {}, svc.settings.synthesis_dir / "job-4")
    add_candidate(svc.store, svc.settings.synthesis_dir / "job-5")
    svc.store.decide(5, "ada", "approve")
    svc.store.decide(5, "bob", "approve")
    svc.store.set_status(5, "approved")  # the agent stopped before its upload
    svc._recover()
    assert svc.store.get(4).status == "failed"
    assert client.calls[0][0] == "fail_synthesis" and client.calls[0][1][1] == "node_restarted"
    svc.review_once()
    assert svc.store.get(5).status == "released"


def test_the_steward_commands_on_the_store(configs, tessera_cli) -> None:  # type: ignore[no-untyped-def]
    path = configs.write(configs.node_toml(configs.dataset(), top='work_dir = "state"') + SYNTHESIS)
    empty = tessera_cli("steward", "list", "--config", str(path))
    assert empty.returncode == 2 and "no candidates at this node yet" in empty.stderr
    store = CandidateStore(configs.root / "state" / "synthesis" / "candidates.sqlite3")
    add_candidate(store, configs.root / "state" / "synthesis" / "job-5")
    listed = tessera_cli("steward", "list", "--config", str(path))
    assert listed.returncode == 0 and "    5  awaiting_review" in listed.stdout
    assert "0/2" in listed.stdout and "rita" in listed.stdout
    shown = tessera_cli("steward", "show", "5", "--config", str(path))
    assert "gate min_fidelity: passed" in shown.stdout and "report: " in shown.stdout
    outsider = tessera_cli("steward", "approve", "5", "--config", str(path), "--as", "eve")
    assert outsider.returncode == 2
    assert "'eve' is not a steward of node node-a (stewards: ada, bob, cy)" in outsider.stderr
    no_reason = tessera_cli(
        "steward", "reject", "5", "--config", str(path), "--as", "ada", "--reason", " "
    )
    assert no_reason.returncode == 2 and "needs a --reason" in no_reason.stderr
    ok = tessera_cli("steward", "approve", "5", "--config", str(path), "--as", "ada")
    assert ok.returncode == 0 and "approved by ada (1 of 2); 1 more approval(s) needed" in ok.stdout
    missing = tessera_cli("steward", "approve", "8", "--config", str(path), "--as", "bob")
    assert missing.returncode == 2 and "no candidate 8 at this node" in missing.stderr
    assert "Traceback" not in missing.stderr + outsider.stderr
