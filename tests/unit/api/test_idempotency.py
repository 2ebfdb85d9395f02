"""`Idempotency-Key`: a retry replays the first answer, another body is a conflict, a failed
first attempt claims nothing, and keys are forgotten after their time."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from api.models import IdempotencyKey, Query
from api.services import idempotency, queries
from tessera.errors import Conflict, InvalidRequest, QueryInvalid

COUNT = {"statistic": "count", "dataset": "cohort"}


def submit(db, net, settings, key, body=COUNT):  # type: ignore[no-untyped-def]
    def work() -> idempotency.Answer:
        query = queries.submit(db, net.study, net.researcher, body, settings)
        return idempotency.Answer(201, {"id": query.id})

    return idempotency.once(db, net.researcher, key, "POST /studies/1/queries", body, work)


def count(db, model) -> int:  # type: ignore[no-untyped-def]
    return db.scalar(select(func.count()).select_from(model))


def test_a_retry_replays_the_first_answer_and_creates_nothing(db, net, settings) -> None:
    first = submit(db, net, settings, "k-1")
    again = submit(db, net, settings, "k-1")
    assert not first.replayed and again.replayed
    assert (again.status_code, again.body) == (first.status_code, first.body)
    assert count(db, Query) == 1
    fresh = submit(db, net, settings, None)
    assert fresh.body["id"] != first.body["id"], "without a key every request creates"


def test_the_same_key_with_another_request_is_a_conflict(db, net, settings) -> None:
    submit(db, net, settings, "k-2")
    with pytest.raises(Conflict, match="was used for another request"):
        submit(db, net, settings, "k-2", {**COUNT, "min_count": 9})


def test_a_failed_first_attempt_claims_nothing(db, net, settings) -> None:
    db.commit()
    with pytest.raises(QueryInvalid):
        submit(db, net, settings, "k-3", {"statistic": "mean", "dataset": "cohort"})
    db.rollback()  # what the request's unit of work does with an error
    assert count(db, IdempotencyKey) == 0
    assert not submit(db, net, settings, "k-3").replayed


def test_unusable_keys_are_refused(db, net, settings) -> None:
    for key in ("", "x" * 256, "tab\there"):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            submit(db, net, settings, key)


def test_keys_are_forgotten_after_their_time(db, net, settings, clock) -> None:
    submit(db, net, settings, "k-4")
    clock.advance(3600)
    assert idempotency.forget_older_than(db, ttl_s=7200) == 0
    clock.advance(3601)
    assert idempotency.forget_older_than(db, ttl_s=7200) == 1
    assert not submit(db, net, settings, "k-4").replayed, "a forgotten key creates anew"
