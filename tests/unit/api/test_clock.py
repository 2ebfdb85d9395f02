"""The injected clock: the fake one for tests, and how a database hands it to the services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api import clock as clocks
from api.db import Database
from api.models import Query
from api.scheduler import sweep_once


def test_a_fake_clock_stands_still_until_moved() -> None:
    clock = clocks.FakeClock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC))

    assert clock.now() == clock.now() == datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    assert clock.advance(1.5) == datetime(2030, 5, 1, 12, 0, 1, 500000, tzinfo=UTC)
    assert clock.advance(timedelta(minutes=1)) == datetime(2030, 5, 1, 12, 1, 1, 500000, tzinfo=UTC)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="naive"):
        clock.set(datetime(2030, 5, 1))


def test_the_sessions_of_a_database_carry_its_clock(database, clock) -> None:
    with database.session() as db:
        assert clocks.clock_of(db) is clock
        assert clocks.now(db) == clock.now()


def test_a_database_keeps_the_system_time_by_default() -> None:
    database = Database("sqlite://")
    try:
        with database.session() as db:
            before = datetime.now(UTC)
            assert clocks.clock_of(db) is clocks.SYSTEM
            assert before <= clocks.now(db) <= datetime.now(UTC)
    finally:
        database.dispose()


def test_the_sweeper_fails_what_is_overdue_by_the_databases_clock(
    make, db, net, database, clock
) -> None:
    query = make.submit(net)
    db.commit()
    assert sweep_once(database) == []

    clock.advance(31)
    assert sweep_once(database) == [(query.id, [n.id for n in net.nodes])]

    db.expire_all()
    failed = db.get(Query, query.id)
    assert (failed.status, failed.error_code, failed.finished_at) == (
        "failed",
        "timeout",
        clock.now(),
    )
