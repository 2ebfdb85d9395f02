"""`POST /studies/{id}/queries/dry-run`: submission's checks, nothing created, what it reveals;
on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tessera.client import TesseraClient
from tessera.errors import Conflict, NotFound, PolicyDenied, QueryInvalid
from tessera.schemas import DisclosureRules

from .conftest import DATASET, RESEARCHER_PASSWORD, Setup, logged_in

MEAN = {"statistic": "mean", "dataset": DATASET, "column": "weight_kg", "min_count": 5}


def dry_run(setup: Setup, query: dict[str, object]) -> dict[str, object]:
    return setup.researcher.dry_run_query(setup.study_id, query)


def test_a_valid_dry_run_describes_the_run_and_creates_nothing(setup: Setup) -> None:
    setup.nodes[1].ok(
        "POST", "/nodes/me/hello", json={"agent_version": "t", "policy": {"min_count": 8}}
    )
    before = setup.researcher.study_queries(setup.study_id)
    answer = dry_run(setup, MEAN)
    assert setup.researcher.study_queries(setup.study_id) == before == []
    assert setup.nodes[0].ok("GET", "/nodes/me/tasks") == [], "no task was offered"

    assert answer["valid"] is True
    assert (answer["statistic"], answer["dataset"]) == ("mean", DATASET)
    assert answer["min_count_applied"] == 8, "the highest published floor wins over the query's"
    assert answer["parties"] == 3
    assert answer["nodes"] == [
        {
            "id": answer["nodes"][i]["id"],  # type: ignore[index]
            "name": node.name,
            "organisation": f"Hospital {setup.n}-{i}",
            "takes_part": True,
            "reason": None,
            "disclosure": DisclosureRules().model_dump(),
        }
        for i, node in enumerate(setup.nodes)
    ]
    assert isinstance(answer["reveals"], str) and answer["reveals"]
    assert answer["intermediates"] == "", "a mean opens nothing besides its output"
    assert (answer["epsilon"], answer["delta"]) == (0, 0)

    audit = setup.admin.audit()
    subject = f"study:pilot {setup.n}"
    ours = [e for e in audit if e["action"] == "query.dry_run" and e["subject"] == subject]
    assert len(ours) == 1 and ours[0]["actor"] == f"user:{setup.researcher_name}"
    assert ours[0]["details"]["statistic"] == "mean"


def test_the_query_min_count_and_a_node_without_the_dataset(setup: Setup) -> None:
    org = setup.admin.create_organisation(f"Late {setup.n}")
    late = setup.admin.create_node(f"late-{setup.n}", org["id"])
    setup.admin._call(
        "POST", f"/studies/{setup.study_id}/organisations", json={"organisation_id": org["id"]}
    )
    answer = dry_run(setup, {**MEAN, "min_count": 12})
    assert answer["min_count_applied"] == 12
    assert answer["parties"] == 3
    last = answer["nodes"][-1]  # type: ignore[index]
    assert last["name"] == late["name"] and last["organisation"] == f"Late {setup.n}"
    assert (
        last["takes_part"] is False and f"has not registered dataset '{DATASET}'" in last["reason"]
    )


DP_MEAN = {**MEAN, "dp": {"epsilon": 0.5, "delta": 1e-6}}


def test_a_dp_query_without_budgets_is_refused_as_its_submission_would_be(setup: Setup) -> None:
    with pytest.raises(PolicyDenied) as dry:
        dry_run(setup, DP_MEAN)
    with pytest.raises(PolicyDenied) as submitted:
        setup.researcher.submit_query(setup.study_id, DP_MEAN)
    assert "differential-privacy budget" in dry.value.message
    assert (dry.value.message, dry.value.details) == (
        submitted.value.message,
        submitted.value.details,
    )


def test_a_dp_query_reports_the_epsilon_and_delta_it_would_spend(setup: Setup) -> None:
    for node in setup.nodes:
        node.ok(
            "POST",
            "/nodes/me/hello",
            json={"agent_version": "t", "policy": {"dp_budget": {"epsilon": 6, "delta": 1e-5}}},
        )
    answer = dry_run(setup, DP_MEAN)
    assert (answer["epsilon"], answer["delta"]) == (0.5, 1e-6)
    assert answer["parties"] == 3 and answer["valid"] is True
    assert setup.researcher.study_queries(setup.study_id) == []

    with pytest.raises(QueryInvalid, match=r"differential privacy .* not for 'max'"):
        dry_run(setup, {**DP_MEAN, "statistic": "max"})


def test_a_dp_mode_dataset_refuses_an_exact_query_and_the_dry_run_shows_the_mode(
    setup: Setup,
) -> None:
    dp_mode = {"mode": "dp", "subset_min": 5}
    for i, node in enumerate(setup.nodes):
        policy: dict[str, object] = {"dp_budget": {"epsilon": 6, "delta": 1e-5}}
        if i == 1:
            policy["dataset_disclosure"] = {DATASET: dp_mode}
        node.ok("POST", "/nodes/me/hello", json={"agent_version": "t", "policy": policy})
    with pytest.raises(PolicyDenied) as dry:
        dry_run(setup, MEAN)
    with pytest.raises(PolicyDenied) as submitted:
        setup.researcher.submit_query(setup.study_id, MEAN)
    assert dry.value.message == (
        f"node {setup.nodes[1].name}: dataset '{DATASET}' is in the 'dp' disclosure mode: "
        "every query must carry 'dp'"
    )
    assert (dry.value.message, dry.value.details) == (
        submitted.value.message,
        submitted.value.details,
    )
    answer = dry_run(setup, DP_MEAN)
    modes = [n["disclosure"]["mode"] for n in answer["nodes"]]  # type: ignore[index]
    assert modes == ["exact", "dp", "exact"]
    assert answer["nodes"][1]["disclosure"] == DisclosureRules(**dp_mode).model_dump()  # type: ignore[index]
    assert setup.researcher.study_queries(setup.study_id) == []


def test_invalid_queries_get_the_error_submission_gives(setup: Setup) -> None:
    with pytest.raises(QueryInvalid, match="unknown column 'bmi'"):
        dry_run(setup, {"statistic": "mean", "dataset": DATASET, "column": "bmi"})
    with pytest.raises(NotFound, match="not part of study"):
        dry_run(setup, {"statistic": "count", "dataset": "elsewhere"})
    setup.nodes[2].ok(
        "POST",
        "/nodes/me/hello",
        json={"agent_version": "t", "policy": {"allowed_statistics": ["count"]}},
    )
    with pytest.raises(PolicyDenied, match=f"{setup.nodes[2].name} does not allow 'mean'") as e:
        dry_run(setup, MEAN)
    assert e.value.details == {"errors": [], "node": setup.nodes[2].name, "allowed": ["count"]}
    setup.nodes[0].register(body={"columns": [{"name": "weight_kg", "type": "integer"}]})
    with pytest.raises(Conflict, match=r"declare column .weight_kg.*differently"):
        dry_run(setup, {**MEAN, "statistic": "sum"})
    assert setup.researcher.study_queries(setup.study_id) == []

    response = setup.http.post(
        f"{setup.url}/api/v1/studies/{setup.study_id}/queries/dry-run",
        json={"statistic": "mean", "dataset": DATASET, "column": "bmi"},
        headers={"Authorization": f"Bearer {setup.researcher.token}"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "query_invalid"
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_only_members_may_dry_run(setup: Setup) -> None:
    response = setup.http.post(
        f"{setup.url}/api/v1/studies/{setup.study_id}/queries/dry-run", json=MEAN
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"

    outsider_name = f"olga{setup.n}"
    setup.admin.create_user(outsider_name, RESEARCHER_PASSWORD, role="researcher")
    outsider: TesseraClient = logged_in(setup.url, outsider_name, RESEARCHER_PASSWORD)
    with outsider, pytest.raises(NotFound, match=f"no study {setup.study_id}"):
        outsider.dry_run_query(setup.study_id, MEAN)
    assert setup.admin.dry_run_query(setup.study_id, MEAN)["valid"] is True
