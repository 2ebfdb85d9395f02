"""The limits' rules (`api.services.limits`) on the fake clock: the rate's sliding window and
its Retry-After, the concurrency counts, the per-query cost."""

from __future__ import annotations

import pytest

from api.services import limits
from smpc.cost import QueryCost
from tessera.errors import QueryTooCostly, RateLimited, TooManyQueries


@pytest.fixture
def bounds(make) -> limits.Limits:  # type: ignore[no-untyped-def]
    make.settings = make.settings.model_copy(
        update={"max_queries_per_minute": 3, "max_concurrent_queries_per_researcher": 2}
    )
    return limits.Limits.of(make.settings)


def test_the_rate_window_slides_and_retry_after_is_when_a_place_frees(  # type: ignore[no-untyped-def]
    make, net, clock, bounds
) -> None:
    for _ in range(3):
        query = make.submit(net)
        query.status = "failed"  # finished: only the rate counts it
        clock.advance(10)
    with pytest.raises(RateLimited) as caught:
        make.submit(net)
    # submitted at t = 0, 10, 20; now t = 30: the first leaves the window at t = 60
    assert caught.value.details["retry_after_s"] == 30
    assert caught.value.details["current"] == 3
    clock.advance(30.5)
    assert make.submit(net).status == "pending"


def test_pending_and_running_queries_count_finished_ones_do_not(  # type: ignore[no-untyped-def]
    make, net, bounds
) -> None:
    first = make.submit(net)
    second = make.submit(net)
    second.status = "running"
    with pytest.raises(TooManyQueries) as caught:
        make.submit(net)
    assert caught.value.details["current"] == 2
    first.status = "succeeded"
    assert make.submit(net).status == "pending"


def test_a_cost_beyond_a_limit_names_it() -> None:
    bounds = limits.Limits(cells=10, comparisons=100)
    limits.check_cost(QueryCost(10, 100), bounds)
    with pytest.raises(QueryTooCostly) as caught:
        limits.check_cost(QueryCost(11, 5), bounds)
    assert caught.value.details["limit"] == "max_cells"
    with pytest.raises(QueryTooCostly) as caught:
        limits.check_cost(QueryCost(1, 101), bounds)
    assert caught.value.details["limit"] == "max_comparisons"
    assert caught.value.code == "query_too_costly"
