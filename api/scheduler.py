"""The sweeper: fails queries and synthesis jobs that missed their deadline, every
`sweep_interval_s`; and, once a minute, forgets the idempotency keys older than
`idempotency_ttl_s` and the login sessions that ended more than a day ago.

Safe with several coordinator replicas: each overdue query (job) is failed by a conditional
update in its own transaction (`queries.expire`, `synthesis.expire`), so exactly one replica
fails it and writes its audit event; the others find it already failed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from api.db import Database
from api.errors import UNREACHABLE
from api.notify import Notifier
from api.services import accounts, idempotency, queries, synthesis

log = logging.getLogger("tessera.coordinator")


FORGET_EVERY_S = 60.0


async def sweep_forever(
    database: Database, notifier: Notifier, interval: float, idempotency_ttl_s: float = 86400.0
) -> None:
    forgotten_at = 0.0
    while True:
        try:
            if time.monotonic() - forgotten_at >= FORGET_EVERY_S:
                await run_in_threadpool(forget_idempotency_keys, database, idempotency_ttl_s)
                await run_in_threadpool(forget_ended_sessions, database)
                forgotten_at = time.monotonic()
            for query_id, node_ids in await run_in_threadpool(sweep_once, database):
                notifier.notify(f"query:{query_id}", *(f"node:{n}" for n in node_ids))
            for request_id in await run_in_threadpool(sweep_synthesis_once, database):
                notifier.notify(f"synthesis:{request_id}")
        except UNREACHABLE as exc:  # an outage: one line each sweep, no traceback
            log.warning("sweep: the database does not answer (%s); retrying", type(exc).__name__)
        except Exception:  # the sweeper must outlive a database hiccup
            log.exception("sweep failed; retrying")
        await asyncio.sleep(interval)


def forget_idempotency_keys(database: Database, ttl_s: float) -> int:
    """Delete the idempotency keys older than `ttl_s`; returns how many."""
    with database.session() as db:
        return idempotency.forget_older_than(db, ttl_s)


def forget_ended_sessions(database: Database) -> int:
    """Delete the login sessions that ended more than a day ago; returns how many."""
    with database.session() as db:
        return accounts.forget_ended_sessions(db)


def sweep_once(database: Database) -> list[tuple[int, list[int]]]:
    """Fail every overdue query; returns each one's id and its nodes' ids (to wake)."""
    with database.session() as db:
        overdue = queries.overdue_queries(db)
    failed = []
    for query_id in overdue:
        with database.session() as db:
            query = queries.expire(db, query_id)
            if query is not None:
                failed.append((query_id, [t.node_id for t in query.tasks]))
    return failed


def sweep_synthesis_once(database: Database) -> list[int]:
    """Fail every overdue synthesis job; returns the ids of their requests (to wake)."""
    with database.session() as db:
        overdue = synthesis.overdue_jobs(db)
    woken = []
    for job_id in overdue:
        with database.session() as db:
            job = synthesis.expire(db, job_id)
            if job is not None:
                woken.append(job.request_id)
    return woken
