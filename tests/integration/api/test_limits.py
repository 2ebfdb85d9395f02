"""Limits on the work a researcher and a study may ask (`api.services.limits`): concurrency
and a submission rate answered 429 with `Retry-After`, per-query cost refused 422 at dry run
and submission alike; on SQLite and PostgreSQL, over a real coordinator process."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from smpc.statistics import query_cost
from tessera.client import TesseraClient
from tessera.errors import QueryTooCostly, RateLimited, TesseraError, TooManyQueries
from tessera.schemas import DatasetSchema

from .conftest import (
    DATASET,
    RESEARCHER_PASSWORD,
    SCHEMA,
    Backend,
    Coordinator,
    People,
    Setup,
    build,
    logged_in,
    start_coordinator,
)

LIMITS = {
    "max_concurrent_queries_per_researcher": 2,
    "max_queries_per_minute": 4,
    "max_concurrent_queries_per_study": 3,
    "max_query_cells": 100,
    "max_query_comparisons": 2_000,
    "concurrency_retry_after_s": 3,
    "accept_timeout_s": 20,
    "query_timeout_s": 40,
}
COUNT = {"statistic": "count", "dataset": DATASET}
WIDE = {
    "statistic": "histogram",
    "dataset": DATASET,
    "column": "weight_kg",
    "bins": [i * 0.5 + 0.5 for i in range(201)],
}  # 200 cells
DEEP = {
    "statistic": "quantile",
    "dataset": DATASET,
    "column": "weight_kg",
    "q": [round(0.01 + i * 0.019, 3) for i in range(50)],
}  # 51 cells, ~2 500 comparisons


@pytest.fixture(scope="module")
def limited(backend: Backend) -> Iterator[Coordinator]:
    made = start_coordinator(backend.root, backend.new_database(), **LIMITS)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def setup(limited: Coordinator) -> Iterator[Setup]:
    """A study of three played nodes and a researcher of its own (counts are per researcher)."""
    admin = logged_in(limited.url, "admin", limited.admin_password)
    name = f"lim{secrets.token_hex(3)}"
    admin.create_user(name, RESEARCHER_PASSWORD, role="researcher")
    researcher = logged_in(limited.url, name, RESEARCHER_PASSWORD)
    with httpx.Client(timeout=40) as http:
        yield build(limited.url, People(admin, researcher, name, http))
    admin.close()
    researcher.close()


def member(setup: Setup) -> TesseraClient:
    """Another researcher in the same study."""
    name = f"oth{secrets.token_hex(3)}"
    setup.admin.create_user(name, RESEARCHER_PASSWORD, role="researcher")
    setup.admin.add_study_member(setup.study_id, name)
    return logged_in(setup.url, name, RESEARCHER_PASSWORD)


def raw_submit(setup: Setup, client: TesseraClient, query: dict[str, Any]) -> httpx.Response:
    return setup.http.post(
        f"{setup.url}/api/v1/studies/{setup.study_id}/queries",
        json=query,
        headers={"Authorization": f"Bearer {client.token}"},
    )


def finish(setup: Setup, query_id: int) -> None:
    """End a query: the first node refuses its task (the query fails, nothing stored)."""
    for node in setup.nodes:
        tasks = node.ok("GET", "/nodes/me/tasks")
        for task in tasks:
            if task["query_id"] == query_id:
                node.ok("POST", f"/tasks/{task['id']}/reject", json={"reason": "test"})
                return
    raise AssertionError(f"no open task of query {query_id}")


def test_concurrency_limit_then_success_once_a_query_finishes(setup: Setup) -> None:
    first = setup.submit({"statistic": "count"})
    setup.submit({"statistic": "count"})
    refused = raw_submit(setup, setup.researcher, COUNT)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "3"
    error = refused.json()["error"]
    assert error["code"] == "too_many_queries"
    assert error["details"]["limit"] == "max_concurrent_queries_per_researcher"
    assert (error["details"]["max"], error["details"]["current"]) == (2, 2)
    assert len(setup.researcher.study_queries(setup.study_id)) == 2, "nothing stored"
    with pytest.raises(TooManyQueries) as caught:
        setup.submit({"statistic": "count"})
    assert caught.value.http_status == 429 and "retry in 3 s" in caught.value.message

    finish(setup, first["id"])
    assert setup.researcher.get_query(first["id"])["status"] == "failed"
    third = setup.submit({"statistic": "count"})
    assert third["status"] == "pending"


def test_rate_limit_answers_retry_after_until_the_window_frees_a_place(setup: Setup) -> None:
    for _ in range(4):
        finish(setup, setup.submit({"statistic": "count"})["id"])
    refused = raw_submit(setup, setup.researcher, COUNT)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["limit"] == "max_queries_per_minute"
    assert (error["details"]["max"], error["details"]["current"]) == (4, 4)
    retry = int(refused.headers["Retry-After"])
    assert 1 <= retry <= 60 and retry == error["details"]["retry_after_s"]
    assert len(setup.researcher.study_queries(setup.study_id)) == 4
    # another researcher's rate is their own
    other = member(setup)
    assert setup.submit({"statistic": "count"}, via=other)["status"] == "pending"


def test_study_limit_names_no_one_elses_queries(setup: Setup) -> None:
    other, third = member(setup), member(setup)
    setup.submit({"statistic": "count"})
    setup.submit({"statistic": "count"})
    setup.submit({"statistic": "count"}, via=other)
    refused = raw_submit(setup, third, COUNT)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
    error = refused.json()["error"]
    assert error["code"] == "too_many_queries"
    assert error["details"] == {
        "errors": [],
        "limit": "max_concurrent_queries_per_study",
        "max": 3,
        "retry_after_s": 3,
    }
    assert setup.researcher_name not in error["message"]
    # the dry run still answers (it schedules nothing) and shows the caller's own use only
    answer = third.dry_run_query(setup.study_id, COUNT)
    assert answer["limits"]["concurrent_queries"] == 0


def test_costs_beyond_the_limits_are_refused_at_dry_run_and_submission(setup: Setup) -> None:
    schema = DatasetSchema.model_validate(SCHEMA)
    for query, limit, value in (
        (WIDE, "max_cells", query_cost(WIDE, schema, 3).cells),
        (DEEP, "max_comparisons", query_cost(DEEP, schema, 3).comparisons),
    ):
        errors: list[TesseraError] = []
        for call in (setup.researcher.dry_run_query, setup.researcher.submit_query):
            with pytest.raises(QueryTooCostly) as caught:
                call(setup.study_id, query)
            errors.append(caught.value)
        dry, submitted = errors
        assert dry.http_status == submitted.http_status == 422
        assert dry.message == submitted.message and dry.code == "query_too_costly"
        assert dry.details["limit"] == limit and dry.details["value"] == value
    assert setup.researcher.study_queries(setup.study_id) == [], "nothing stored"


def test_the_dry_run_shows_cost_and_limits(setup: Setup) -> None:
    query = {"statistic": "mean", "dataset": DATASET, "column": "weight_kg", "group_by": ["sex"]}
    answer = setup.researcher.dry_run_query(setup.study_id, query)
    expected = query_cost(query, DatasetSchema.model_validate(SCHEMA), 3)
    assert answer["cost"] == expected.to_json()
    assert answer["limits"] == {
        "max_cells": 100,
        "max_comparisons": 2_000,
        "max_concurrent_queries_per_researcher": 2,
        "max_concurrent_queries_per_study": 3,
        "max_queries_per_minute": 4,
        "concurrent_queries": 0,
        "queries_last_minute": 0,
    }
    setup.submit({"statistic": "count"})
    answer = setup.researcher.dry_run_query(setup.study_id, query)
    assert (answer["limits"]["concurrent_queries"], answer["limits"]["queries_last_minute"]) == (
        1,
        1,
    )


def test_a_flooding_researcher_cannot_starve_another(setup: Setup) -> None:
    other = member(setup)

    def flood(_: int) -> int:
        return raw_submit(setup, setup.researcher, COUNT).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(flood, range(24)))
    assert statuses.count(201) == 2, "the flood gets its own two places, no more"
    assert set(statuses) == {201, 429}
    assert setup.submit({"statistic": "count"}, via=other)["status"] == "pending"
    mine = [q for q in setup.researcher.study_queries(setup.study_id)]
    assert len(mine) == 3


def test_admins_are_bound_too(setup: Setup) -> None:
    setup.admin.add_study_member(setup.study_id, "admin")
    setup.submit({"statistic": "count"}, via=setup.admin)
    setup.submit({"statistic": "count"}, via=setup.admin)
    with pytest.raises(RateLimited) as caught:
        setup.submit({"statistic": "count"}, via=setup.admin)
    assert caught.value.code == "too_many_queries"
