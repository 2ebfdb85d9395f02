"""The sweeper: fails queries that missed their deadline, every `sweep_interval_s`.

Safe with several coordinator replicas: each overdue query is locked (skipping rows another
replica holds) and re-checked before it is failed.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from api.db import Database
from api.notify import Notifier
from api.services import queries

log = logging.getLogger("tessera.coordinator")


async def sweep_forever(database: Database, notifier: Notifier, interval: float) -> None:
    while True:
        try:
            failed = await run_in_threadpool(_sweep_once, database)
            for query_id, node_ids in failed:
                log.info("query %s failed: deadline passed", query_id)
                notifier.notify(f"query:{query_id}", *(f"node:{n}" for n in node_ids))
        except Exception:  # the sweeper must outlive a database hiccup
            log.exception("sweep failed; retrying")
        await asyncio.sleep(interval)


def _sweep_once(database: Database) -> list[tuple[int, list[int]]]:
    with database.session() as db:
        return [(q.id, queries.node_ids(q)) for q in queries.sweep(db)]
