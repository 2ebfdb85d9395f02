"""How `tessera synth` shows requests and releases: a pooled job's party, a pooled release's
nodes and every node's signers."""

from __future__ import annotations

from cli.synth import job_line, release_line, request_lines

JOB = {"id": 7, "node": "hospital-a", "status": "training", "progress": None, "error": None}


def test_a_local_job_shows_its_node_and_status() -> None:
    assert job_line(JOB | {"party_id": None}) == "hospital-a training"


def test_a_pooled_request_shows_each_party_and_who_it_waits_for() -> None:
    view = {
        "id": 3,
        "generator": "mst",
        "dataset": "cohort",
        "scope": "pooled",
        "spec": {"rows": 500},
        "status": "running",
        "jobs": [
            JOB | {"party_id": 0, "status": "approved", "release_id": None},
            JOB
            | {
                "node": "hospital-b",
                "party_id": 1,
                "status": "awaiting_review",
                "approvals_required": 2,
                "release_id": None,
            },
        ],
        "skipped": [],
    }

    assert request_lines(view) == [
        "synthesis 3: mst on cohort, 500 rows pooled over every node — running",
        "  hospital-a [party 0] approved — its stewards approved; waiting for the other nodes'",
        "  hospital-b [party 1] awaiting_review — awaiting 2 steward approval(s) at the node",
    ]


def test_a_pooled_release_names_its_nodes_and_every_nodes_signers() -> None:
    approval = {"steward": "sam", "key": "k"}
    release = {
        "id": 4,
        "node": "a",
        "dataset": "cohort",
        "rows": 500,
        "scope": "pooled",
        "parties": ["a", "b"],
        "card": {
            "generator": "mst",
            "epsilon": 1.0,
            "nodes": [
                {"node": "a", "approvals": [approval]},
                {"node": "b", "approvals": [approval, {"steward": "sue", "key": "k2"}]},
            ],
        },
        "signed_by": [
            {"steward": "sam", "fingerprint": "sha256:aa", "node": "a"},
            {"steward": "sam", "fingerprint": "sha256:bb", "node": "b"},
            {"steward": "sue", "fingerprint": "sha256:cc", "node": "b"},
        ],
    }

    line = release_line(release)

    assert line.startswith("      4  pooled (a, b)  ")
    assert line.endswith("a: sam (sha256:aa); b: sam (sha256:bb), sue (sha256:cc)")
