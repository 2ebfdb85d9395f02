"""The node's side of synthesis without a coordinator: the synthesis policy in node.toml, the
candidate store, the reviewer's k-of-n approvals, rejections and uploads, recovery after a
restart, and `tessera steward` on the store."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from node_agent.candidates import CandidateStore
from node_agent.policy import Policy
from node_agent.synthesis import SynthesisService
from tessera.errors import ConfigInvalid, Conflict, NotFound
from tessera.schemas import ReleaseCard, ReleaseContent, SynthesisRejection
from tessera.stewards import card_sha256

POLICY = """
[policy.synthesis]
generators = ["cart", "mst"]
approvals_required = 2
max_epsilon = 2.0

[policy.synthesis.gates]
min_fidelity = 0.8
max_mia_advantage = 0.3

[policy.synthesis.stewards]
"""


def synthesis(stewards: Any, *names: str, **keys: str) -> str:
    """The policy above with `names` (default ada, bob, cy) as stewards, each with their own
    key unless `keys` gives a name another's."""
    names = names or ("ada", "bob", "cy")
    return POLICY + stewards.table(*names, keys={n: keys.get(n, n) for n in names})


def decide(
    store: CandidateStore,
    stewards: Any,
    name: str,
    decision: str = "approve",
    reason: str = "",
    job_id: int = 5,
    **signing: Any,
) -> Any:
    """`name`'s decision on the candidate as it is on disk, signed (as `tessera steward`)."""
    signed = stewards.decision(
        name,
        node=signing.pop("node", "node-a"),
        job_id=job_id,
        hashes=signing.pop("hashes", None) or store.get(job_id).hashes(),
        decision=decision,
        reason=reason,
        **signing,
    )
    return store.decide(job_id, signed)


OTHER = {"data_sha256": "1" * 64, "card_sha256": "2" * 64, "report_sha256": "3" * 64}
GATES = [{"name": "min_fidelity", "passed": True, "value": 0.9, "threshold": 0.8, "message": ""}]


VERDICT = {
    "verdict": "needs attention",
    "reasons": ["Utility was tested on only 10 real rows: too few to tell."],
}


def card(data: bytes) -> dict[str, Any]:
    return {
        "verdict": VERDICT,
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
def service(
    configs, stewards
) -> tuple[SynthesisService, FakeClient, list[tuple[str, dict[str, Any]]]]:  # type: ignore[no-untyped-def]
    settings = configs.settings(
        configs.node_toml(configs.dataset(), top='work_dir = "state"') + synthesis(stewards)
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


def test_the_synthesis_policy_is_read_and_checked(configs, stewards) -> None:  # type: ignore[no-untyped-def]
    settings = configs.settings(configs.node_toml(configs.dataset()) + synthesis(stewards))
    rules = settings.policy.synthesis
    assert rules is not None and rules.approvals_required == 2
    assert rules.release_gates().min_fidelity == 0.8
    assert rules.release_gates().max_mia_advantage == 0.3
    assert rules.release_gates().dcr_alpha == 0.01  # the default stays
    summary = settings.policy.summary().synthesis
    assert summary is not None and summary.generators == ["cart", "mst"]
    assert summary.max_epsilon == 2.0 and summary.approvals_required == 2
    assert summary.stewards == {n: stewards.public(n) for n in ("ada", "bob", "cy")}
    for change, message in [
        (("approvals_required = 2", "approvals_required = 4"), "exceeds the number of stewards"),
        (('"cart", "mst"', '"cart", "gan"'), "unknown generator(s) 'gan'"),
        (("min_fidelity = 0.8", "min_fidelty = 0.8"), "invalid release gates"),
        (("min_fidelity = 0.8", "min_fidelity = 2"), "min_fidelity must lie in [0, 1]"),
        (
            ('generators = ["cart", "mst"]', 'generators = ["cart"]\ndp_required = true'),
            "dp_required allows only differentially private generators",
        ),
    ]:
        text = configs.node_toml(configs.dataset()) + synthesis(stewards).replace(*change)
        with pytest.raises(ConfigInvalid, match=re.escape(message)):
            configs.settings(text)
    shared = synthesis(stewards, "ada", "bob", "cy", bob="ada")
    with pytest.raises(ConfigInvalid, match="stewards 'ada' and 'bob' share one public key"):
        configs.settings(configs.node_toml(configs.dataset()) + shared)
    bad_key = POLICY + 'ada = "ed25519:AAAA"\n'
    with pytest.raises(ConfigInvalid, match="steward 'ada': an Ed25519 public key has 32 bytes"):
        configs.settings(configs.node_toml(configs.dataset()) + bad_key)


def test_a_policy_naming_stewards_without_keys_is_refused_with_what_to_do(configs) -> None:  # type: ignore[no-untyped-def]
    """The form before signed approvals (names only) must not load: no candidate may be
    released by names alone, and the operator is told to add each steward's key."""
    old = POLICY.replace("[policy.synthesis.stewards]\n", "").replace(
        "approvals_required = 2", 'stewards = ["ada", "bob"]\napprovals_required = 2'
    )
    with pytest.raises(ConfigInvalid) as caught:
        configs.settings(configs.node_toml(configs.dataset()) + old)
    assert "stewards lists names only (ada, bob)" in caught.value.message
    assert "tessera steward keygen" in caught.value.message
    assert '[policy.synthesis.stewards] NAME = "ed25519:..."' in caught.value.message


def test_the_store_keeps_candidates_and_one_decision_per_steward(tmp_path: Path, stewards) -> None:  # type: ignore[no-untyped-def]
    store = CandidateStore(tmp_path / "c.sqlite3")
    data = add_candidate(store, tmp_path / "job-5")
    assert not store.create(5, 1, 2, "cohort", "cart", "rita", {}, tmp_path), "known already"
    decide(store, stewards, "ada", "approve", "looks fine")
    with pytest.raises(Conflict, match="ada already decided on candidate 5"):
        decide(store, stewards, "ada", "reject", "changed my mind")
    with pytest.raises(NotFound, match="no candidate 9"):
        decide(store, stewards, "ada", "approve", job_id=9)
    again = CandidateStore(tmp_path / "c.sqlite3")  # another process: the CLI
    got = again.get(5)
    assert got.status == "awaiting_review" and [a.steward for a in got.approvals] == ["ada"]
    assert got.card is not None and got.card["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(j, n, d is not None) for j, n, d in again.unaudited()] == [(5, "ada", True)]
    again.mark_audited(5, "ada")
    assert store.unaudited() == []
    store.create(6, 1, 2, "cohort", "cart", "rita", {}, tmp_path / "job-6")
    failing = [{**GATES[0], "passed": False}]
    assert store.set_candidate(6, {}, failing, 1) == "gated"
    with pytest.raises(Conflict, match="candidate 6 is gated, not awaiting_review"):
        decide(store, stewards, "ada", "approve", job_id=6, hashes=OTHER)
    assert [c.job_id for c in store.list(("awaiting_review",))] == [5]


def test_a_candidate_is_uploaded_at_the_second_approval(service, stewards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc, client, audited = service
    data = add_candidate(svc.store, svc.settings.synthesis_dir / "job-5")
    decide(svc.store, stewards, "ada", "approve")
    svc.review_once()
    assert [name for name, _ in client.calls] == []
    assert [a for a, _ in audited] == ["steward.approved"]
    decide(svc.store, stewards, "bob", "approve", "report read")
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


def test_one_rejection_rejects_and_nothing_is_uploaded(service, stewards) -> None:  # type: ignore[no-untyped-def]
    svc, client, audited = service
    folder = svc.settings.synthesis_dir / "job-5"
    add_candidate(svc.store, folder)
    decide(svc.store, stewards, "ada", "approve")
    decide(svc.store, stewards, "cy", "reject", "a rare diagnosis is recognisable")
    svc.review_once()
    [(name, (job_id, rejection))] = client.calls
    assert name == "reject_synthesis" and job_id == 5
    assert isinstance(rejection, SynthesisRejection)
    assert [d.decision for d in rejection.decisions] == ["approve", "reject"]
    assert svc.store.get(5).status == "rejected"
    assert not (folder / "synthetic.parquet").exists() and (folder / "report.html").exists()
    assert "synthesis.rejected" in [a for a, _ in audited]


def test_a_changed_data_file_is_never_uploaded(service, stewards) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = service
    folder = svc.settings.synthesis_dir / "job-5"
    add_candidate(svc.store, folder)
    (folder / "synthetic.parquet").write_bytes(b"something else")
    decide(svc.store, stewards, "ada", "approve")
    decide(svc.store, stewards, "bob", "approve")
    svc.review_once()
    assert [name for name, _ in client.calls] == ["fail_synthesis"]
    assert svc.store.get(5).status == "failed"


def test_an_upload_that_already_landed_counts_as_released(service, stewards) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = service
    add_candidate(svc.store, svc.settings.synthesis_dir / "job-5")
    client.release_error = Conflict("synthesis job 5 is released", {"status": "released"})
    decide(svc.store, stewards, "ada", "approve")
    decide(svc.store, stewards, "bob", "approve")
    svc.review_once()
    assert svc.store.get(5).status == "released"


def test_a_restart_fails_what_was_training_and_uploads_what_was_approved(service, stewards) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = service
    svc.store.create(4, 1, 2, "cohort", "cart", "rita", {}, svc.settings.synthesis_dir / "job-4")
    add_candidate(svc.store, svc.settings.synthesis_dir / "job-5")
    decide(svc.store, stewards, "ada", "approve")
    decide(svc.store, stewards, "bob", "approve")
    svc.store.set_status(5, "approved")  # the agent stopped before its upload
    svc._recover()
    assert svc.store.get(4).status == "failed"
    assert client.calls[0][0] == "fail_synthesis" and client.calls[0][1][1] == "node_restarted"
    svc.review_once()
    assert svc.store.get(5).status == "released"


def test_the_steward_commands_on_the_store(configs, tessera_cli, stewards, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = configs.write(
        configs.node_toml(configs.dataset(), top='work_dir = "state"') + synthesis(stewards)
    )
    keys = tmp_path / "keys"
    ada, bob, eve = (stewards.write(n, keys) for n in ("ada", "bob", "eve"))
    empty = tessera_cli("steward", "list", "--config", str(path))
    assert empty.returncode == 2 and "no candidates at this node yet" in empty.stderr
    store = CandidateStore(configs.root / "state" / "synthesis" / "candidates.sqlite3")
    add_candidate(store, configs.root / "state" / "synthesis" / "job-5")
    listed = tessera_cli("steward", "list", "--config", str(path))
    assert listed.returncode == 0 and "    5  awaiting_review  needs attention" in listed.stdout
    assert "0/2" in listed.stdout and "rita" in listed.stdout
    shown = tessera_cli("steward", "show", "5", "--config", str(path))
    assert "gate min_fidelity: passed" in shown.stdout and "report: " in shown.stdout
    assert "verdict: NEEDS ATTENTION\n    - Utility was tested on only 10 real rows" in shown.stdout
    outsider = tessera_cli("steward", "approve", "5", "--config", str(path), "--key", str(eve))
    assert outsider.returncode == 2
    assert "is no steward's of node node-a (stewards: ada, bob, cy)" in outsider.stderr
    posing = tessera_cli(
        "steward", "approve", "5", "--config", str(path), "--key", str(ada), "--as", "bob"
    )
    assert posing.returncode == 2 and "lists this key for steward 'ada', not 'bob'" in posing.stderr
    no_reason = tessera_cli(
        "steward", "reject", "5", "--config", str(path), "--key", str(ada), "--reason", " "
    )
    assert no_reason.returncode == 2 and "needs a --reason" in no_reason.stderr
    ok = tessera_cli("steward", "approve", "5", "--config", str(path), "--key", str(ada))
    assert ok.returncode == 0 and "approved by ada (1 of 2); 1 more approval(s) needed" in ok.stdout
    [signed] = store.get(5).approvals
    assert signed.steward == "ada" and signed.key == stewards.public("ada")
    assert signed.data_sha256 == store.get(5).hashes()["data_sha256"]
    twice = tessera_cli("steward", "reject", "5", "-c", str(path), "-k", str(ada), "--reason", "x")
    assert twice.returncode == 2 and "ada already decided on candidate 5" in twice.stderr
    shown = tessera_cli("steward", "show", "5", "--config", str(path))
    assert "ada (sha256:" in shown.stdout and "approved at" in shown.stdout
    missing = tessera_cli("steward", "approve", "8", "--config", str(path), "--key", str(bob))
    assert missing.returncode == 2 and "no candidate 8 at this node" in missing.stderr
    assert "Traceback" not in missing.stderr + outsider.stderr


def test_a_steward_key_is_private_and_never_in_the_work_dir(
    configs, tessera_cli, stewards, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """keygen writes a 0600 key (encrypted with the passphrase), prints the public key and
    fingerprint; it refuses the node's work_dir, and approve refuses a key there or one that
    others may read; a wrong passphrase is one line."""
    from tessera.stewards import fingerprint

    path = configs.write(
        configs.node_toml(configs.dataset(), top='work_dir = "state"') + synthesis(stewards)
    )
    monkeypatch.setenv("TESSERA_STEWARD_PASSPHRASE", "correct horse")
    made = tessera_cli("steward", "keygen", "--out", str(tmp_path / "mine"), "--name", "ada")
    assert made.returncode == 0, made.stderr
    public, printed = made.stdout.splitlines()[:2]
    assert public.startswith("ed25519:") and printed == f"fingerprint {fingerprint(public)}"
    key = tmp_path / "mine" / "ada.key"
    assert key.stat().st_mode & 0o777 == 0o600 and b"ENCRYPTED" in key.read_bytes()
    assert (tmp_path / "mine" / "ada.pub").read_text().strip() == public
    again = tessera_cli("steward", "keygen", "--out", str(tmp_path / "mine"), "--name", "ada")
    assert again.returncode == 2 and "exists already" in again.stderr
    inside = tessera_cli(
        "steward", "keygen", "--out", str(configs.root / "state" / "k"), "--config", str(path)
    )
    assert inside.returncode == 2 and "inside the node's work_dir" in inside.stderr
    assert not (configs.root / "state" / "k").exists()

    # the policy lists this new key for ada: approve with it, passphrase from the environment
    listed = POLICY + f'ada = "{public}"\n' + stewards.table("bob", "cy")
    path.write_text(configs.node_toml(configs.dataset(), top='work_dir = "state"') + listed)
    store = CandidateStore(configs.root / "state" / "synthesis" / "candidates.sqlite3")
    add_candidate(store, configs.root / "state" / "synthesis" / "job-5")
    monkeypatch.setenv("TESSERA_STEWARD_PASSPHRASE", "wrong")
    wrong = tessera_cli("steward", "approve", "5", "-c", str(path), "-k", str(key))
    assert wrong.returncode == 2 and "or the passphrase is wrong" in wrong.stderr
    key.chmod(0o644)
    monkeypatch.setenv("TESSERA_STEWARD_PASSPHRASE", "correct horse")
    loose = tessera_cli("steward", "approve", "5", "-c", str(path), "-k", str(key))
    assert loose.returncode == 2 and "readable by others" in loose.stderr
    key.chmod(0o600)
    in_work_dir = stewards.write("bob", configs.root / "state")
    there = tessera_cli("steward", "approve", "5", "-c", str(path), "-k", str(in_work_dir))
    assert there.returncode == 2 and "inside the node's work_dir" in there.stderr
    ok = tessera_cli("steward", "approve", "5", "-c", str(path), "-k", str(key))
    assert ok.returncode == 0 and "approved by ada" in ok.stdout


def test_the_card_opens_with_its_verdict_and_its_hash_covers_it() -> None:
    with_verdict = ReleaseContent.model_validate({**card(b"x"), "gates": GATES})
    assert next(iter(with_verdict.model_dump())) == "verdict"
    assert with_verdict.verdict is not None and with_verdict.verdict.verdict == "needs attention"
    changed = with_verdict.model_copy(
        update={"verdict": with_verdict.verdict.model_copy(update={"verdict": "pass"})}
    )
    assert changed.digest() != with_verdict.digest()
    # A card made before verdicts hashes as it did then: its signatures still verify.
    before = {k: v for k, v in card(b"x").items() if k != "verdict"} | {"gates": GATES}
    old = ReleaseContent.model_validate(before)
    fields = json.loads(old.model_dump_json())
    assert fields.pop("verdict") is None
    assert old.digest() == card_sha256(fields)  # the card's fields as they were: no verdict
    with pytest.raises(ValueError, match="verdict"):
        ReleaseContent.model_validate({**before, "verdict": {"verdict": "fine", "reasons": []}})
