"""The node's hash-chained audit log: it verifies, and any edit is found at its line."""

from __future__ import annotations

import itertools
import json

import pytest

from node_agent.audit_log import GENESIS, AuditLog, verify
from tessera.errors import ConfigInvalid


def filled(tmp_path, n: int = 4) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.record("task.received", "received", task=i, query=10 + i, statistic="count")
    return log


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_entries_chain_and_verify(tmp_path) -> None:
    log = filled(tmp_path)
    entries = lines(log.path)
    assert len(entries) == 4
    assert entries[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert {"at", "action", "outcome", "task", "query", "statistic"} <= set(entries[0])
    report = verify(log.path)
    assert report.ok and report.entries == 4 and report.last_hash == entries[-1]["hash"]


def test_a_reopened_log_continues_the_chain(tmp_path) -> None:
    first = filled(tmp_path, 2)
    again = AuditLog(first.path)
    assert again.last_hash == first.last_hash and again.entries == 2
    again.record("task.refused", "refused", task=9, reason="policy")
    assert verify(first.path).entries == 3


@pytest.mark.parametrize(
    ("tamper", "line", "problem"),
    [
        (lambda e: e[1].update(outcome="refused"), 2, "hash does not match its content"),
        (lambda e: e.pop(1), 2, "prev_hash does not match the line before"),
        (lambda e: e.insert(0, e.pop(2)), 1, "prev_hash does not match the line before"),
    ],
)
def test_tampering_is_found_at_its_line(tmp_path, tamper, line, problem) -> None:
    log = filled(tmp_path)
    entries = lines(log.path)
    tamper(entries)
    log.path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    report = verify(log.path)
    assert not report.ok
    assert report.first_bad_line == line and report.problem == problem


def test_a_torn_line_is_reported_and_the_agent_will_not_append(tmp_path) -> None:
    log = filled(tmp_path, 2)
    with log.path.open("a") as f:
        f.write('{"at": "2026-01-01", "act')
    report = verify(log.path)
    assert (report.ok, report.first_bad_line, report.problem) == (
        False,
        3,
        "not a complete audit entry",
    )
    with pytest.raises(ConfigInvalid, match="fails verification at line 3"):
        AuditLog(log.path)


def test_audit_verify_command(configs, tmp_path, tessera_cli) -> None:
    settings = configs.settings(configs.node_toml(configs.dataset()))
    log = filled(tmp_path)
    assert log.path == settings.audit_path
    argv = ["node", "audit-verify", "--config", str(configs.root / "node.toml")]
    done = tessera_cli(*argv)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries"] == 4

    text = log.path.read_text().replace('"statistic": "count"', '"statistic": "mean"', 1)
    log.path.write_text(text)
    done = tessera_cli(*argv)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["first_bad_line"] == 1


# ---- signed by the node's key ------------------------------------------------------------------


def signed_log(tmp_path, n: int = 4):  # type: ignore[no-untyped-def]
    from node_agent.identity import NodeIdentity

    identity = NodeIdentity.create(tmp_path, "node-a")
    log = AuditLog(tmp_path / "audit.jsonl", identity)
    for i in range(n):
        log.record("task.received", "received", task=i, query=10 + i)
    return log, identity


def rechain(entries: list[dict]) -> list[dict]:
    """What a node operator without the key can do: recompute every hash (not the sigs)."""
    from node_agent.audit_log import _digest

    prev = GENESIS
    for e in entries:
        body = {k: v for k, v in e.items() if k not in ("prev_hash", "hash", "sig")}
        e["prev_hash"], e["hash"] = prev, _digest(prev, body)
        prev = e["hash"]
    return entries


def test_signed_entries_verify_with_the_node_certificate(tmp_path) -> None:
    log, identity = signed_log(tmp_path)
    report = verify(log.path, identity.certificate_pem)
    assert report.ok and (report.signed, report.legacy_unsigned) == (4, 0)
    assert log.head() == (4, report.last_hash, lines(log.path)[-1]["sig"])
    other = signed_log(tmp_path / "other")[1]
    wrong = verify(log.path, other.certificate_pem)
    assert (wrong.ok, wrong.first_bad_line) == (False, 1)
    assert wrong.problem == "signature is not the node key's"


@pytest.mark.parametrize(
    "tamper",
    [lambda e: e.pop(1), lambda e: e[2].update(outcome="refused"), lambda e: e.pop()],
)
def test_a_recomputed_chain_without_the_key_is_caught(tmp_path, tamper) -> None:
    log, identity = signed_log(tmp_path)
    entries = lines(log.path)
    tamper(entries)
    log.path.write_text("".join(json.dumps(e) + "\n" for e in rechain(entries)))
    assert verify(log.path).ok, "the plain chain alone passes"
    report = verify(log.path, identity.certificate_pem)
    if len(entries) == 3 and entries[-1]["task"] == 2:  # the last line cut off: still valid
        assert report.ok and report.entries == 3  # caught by the coordinator's record
    else:
        assert not report.ok and report.problem == "signature is not the node key's"


def test_legacy_entries_are_sealed_and_cannot_follow_signed_ones(tmp_path) -> None:
    from node_agent.identity import NodeIdentity

    path = filled(tmp_path, 3).path  # written before the node had a key
    identity = NodeIdentity.create(tmp_path, "node-a")
    unsealed = verify(path, identity.certificate_pem)
    assert not unsealed.ok and "ends with unsigned entries" in unsealed.problem

    log = AuditLog(path, identity)  # the agent starting with its key seals them

    assert lines(path)[-1]["action"] == "audit.signing_started"
    report = verify(path, identity.certificate_pem)
    assert report.ok and (report.legacy_unsigned, report.signed) == (3, 1)
    log.record("task.received", "received", task=9)
    AuditLog(path).record("task.received", "received", task=10)  # no key: unsigned
    late = verify(path, identity.certificate_pem)
    assert (late.ok, late.first_bad_line, late.problem) == (
        False,
        6,
        "unsigned, after signing began",
    )
    assert verify(path).problem == "unsigned, after signing began"


def test_fields_cannot_overwrite_the_chain(tmp_path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match="chain's own"):
        log.record("x", "y", hash="0" * 64)
