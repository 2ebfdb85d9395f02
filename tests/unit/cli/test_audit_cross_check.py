"""`tessera audit verify`'s cross-anchors on plain data: each kind of rewrite is named."""

from __future__ import annotations

from typing import Any

from api.signing import CoordinatorKey
from cli.audit import cross_check
from tessera.signing import audit_message

KEY = CoordinatorKey.generate()


def chain() -> list[dict[str, Any]]:
    events = []
    for i in range(1, 6):
        chain_hash = f"{i:064x}"
        events.append(
            {
                "id": i,
                "action": "query.submitted" if i == 3 else "login",
                "subject": "query:7" if i == 3 else "user:rita",
                "details": {"researcher": "rita", "statements": {"1": "s" * 64}} if i == 3 else {},
                "hash": chain_hash,
                "signature": KEY.sign_audit(chain_hash),
            }
        )
    return events


def node_log() -> list[dict[str, Any]]:
    return [
        {
            "action": "coordinator.head",
            "outcome": "recorded",
            "coordinator_seq": 4,
            "coordinator_hash": f"{4:064x}",
            "coordinator_sig": KEY.sign(audit_message(f"{4:064x}")),
            "hash": "n1",
        },
        {
            "action": "task.received",
            "task": 21,
            "query": 7,
            "party_id": 1,
            "statement_hash": "s" * 64,
            "researcher": "rita",
            "hash": "n2",
        },
        {"action": "task.accepted", "hash": "n3"},
    ]


HEADS = [{"node": "node-a", "entries": 2, "last_hash": "n2", "signature": "x"}]


def test_honest_trails_agree() -> None:
    report = cross_check(chain(), HEADS, "node-a", node_log(), KEY.public_pem)
    assert report == {
        "ok": True,
        "coordinator_heads_checked": 1,
        "node_heads_checked": 1,
        "tasks_checked": 1,
        "legacy_tasks": 0,
        "problems": [],
    }


def test_a_removed_or_changed_coordinator_event_is_named() -> None:
    gone = [e for e in chain() if e["id"] != 4]
    [problem] = cross_check(gone, HEADS, "node-a", node_log(), KEY.public_pem)["problems"]
    assert problem.startswith("coordinator event 4, whose hash the node recorded, is gone")
    changed = chain()
    changed[3]["hash"] = "f" * 64
    [problem] = cross_check(changed, HEADS, "node-a", node_log(), KEY.public_pem)["problems"]
    assert "no longer has the hash the node recorded" in problem


def test_a_head_recorded_under_another_key_is_named() -> None:
    other = CoordinatorKey.generate()
    [problem] = cross_check(chain(), HEADS, "node-a", node_log(), other.public_pem)["problems"]
    assert problem == "the coordinator head 4 the node recorded is not signed by it"


def test_a_cut_or_rewritten_node_log_is_named() -> None:
    cut = node_log()[:1]
    problems = cross_check(chain(), HEADS, "node-a", cut, KEY.public_pem)["problems"]
    assert problems == [
        "the node's log has 1 entries, but it showed the coordinator 2: entries were removed"
    ]
    rewritten = node_log()
    rewritten[1]["hash"] = "other"
    [problem] = cross_check(chain(), HEADS, "node-a", rewritten, KEY.public_pem)["problems"]
    assert problem.startswith("entry 2 of the node's log is not the one it showed")


def test_a_task_no_researcher_submitted_or_another_statement_is_named() -> None:
    unsubmitted = [e for e in chain() if e["action"] != "query.submitted"]
    [problem] = cross_check(unsubmitted, [], "node-a", node_log(), KEY.public_pem)["problems"]
    assert "(query 7) has no query.submitted event" in problem
    other = node_log()
    other[1] |= {"statement_hash": "t" * 64, "researcher": "mallory"}
    problems = cross_check(chain(), [], "node-a", other, KEY.public_pem)["problems"]
    assert problems == [
        "task 21: its signed statement is not the one the coordinator recorded for query 7",
        "task 21: researcher 'mallory', but query 7 was submitted by 'rita'",
    ]


def test_tasks_received_before_signing_are_counted_not_flagged() -> None:
    legacy = node_log()
    del legacy[1]["statement_hash"]
    report = cross_check(chain(), HEADS, "node-a", legacy, KEY.public_pem)
    assert report["ok"] and (report["tasks_checked"], report["legacy_tasks"]) == (0, 1)
