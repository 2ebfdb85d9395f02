"""Limits on the work one researcher and one study may ask of the nodes.

Every node of a study takes part in every query, so one researcher's queries can hold every
hospital's machines (a 48 000-cell histogram held three nodes for a minute). The coordinator
bounds, before anything is scheduled:

- **a query's cost** (`smpc.cost`, from the query and the declared schema alone): its result
  cells and its secure comparisons, each at most `max_query_cells` / `max_query_comparisons`.
  A query beyond them will never fit: `QueryTooCostly` (422), at submission and dry run alike;
- **concurrency**: each researcher's queries pending or running at once
  (`max_concurrent_queries_per_researcher`), each study's (`max_concurrent_queries_per_study`),
  and each researcher's synthesis requests still computing
  (`max_concurrent_synthesis_per_researcher`): `TooManyQueries` (429, `Retry-After`);
- **a rate**: query submissions accepted per researcher in any 60 s (`max_queries_per_minute`,
  a sliding window over the stored queries): `RateLimited` (429, `Retry-After` the seconds until
  the oldest submission in the window leaves it).

The counts are read from the database, under a lock on the study and one on the researcher
held until the transaction commits (PostgreSQL advisory locks; SQLite's write lock), so several
coordinator replicas see one count and two simultaneous submissions cannot both take the last
place. Administrators are bound like everyone else. A refusal names the limit and the
researcher's own count, never another researcher's activity (a study's refusal gives its limit
only). Refusals are logged (`query.limited`, `synthesis.limited`: the user, the study and the
limit), not appended to the audit trail: nothing was submitted, and a flood of refused
requests must not become a flood of appends under the audit chain's one lock, which every
other researcher's submission needs too (a login lockout is audited once, when it starts).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import clock
from api.db import is_sqlite, write_lock
from api.models import Query, Study, SynthesisJob, SynthesisRequest, User
from api.settings import CoordinatorSettings
from tessera.errors import QueryTooCostly, RateLimited, TooManyQueries

if TYPE_CHECKING:
    from smpc.cost import QueryCost

log = logging.getLogger("tessera.coordinator")

OPEN_QUERY = ("pending", "running")
RATE_WINDOW_S = 60
# advisory lock namespaces (two-key form: a space apart from the audit chain's one-key lock)
_STUDY_LOCK = 0x7E55A
_RESEARCHER_LOCK = 0x7E55B


@dataclass(frozen=True)
class Limits:
    """The coordinator's limits (`CoordinatorSettings.max_*`)."""

    researcher_concurrent: int = 8
    researcher_per_minute: int = 120
    study_concurrent: int = 32
    researcher_synthesis: int = 4
    cells: int = 10_000
    comparisons: int = 250_000
    retry_after_s: int = 2

    @classmethod
    def of(cls, settings: CoordinatorSettings) -> Limits:
        return cls(
            researcher_concurrent=settings.max_concurrent_queries_per_researcher,
            researcher_per_minute=settings.max_queries_per_minute,
            study_concurrent=settings.max_concurrent_queries_per_study,
            researcher_synthesis=settings.max_concurrent_synthesis_per_researcher,
            cells=settings.max_query_cells,
            comparisons=settings.max_query_comparisons,
            retry_after_s=settings.concurrency_retry_after_s,
        )

    def describe(self) -> dict[str, int]:
        """The limits as the dry run shows them."""
        return {
            "max_cells": self.cells,
            "max_comparisons": self.comparisons,
            "max_concurrent_queries_per_researcher": self.researcher_concurrent,
            "max_concurrent_queries_per_study": self.study_concurrent,
            "max_queries_per_minute": self.researcher_per_minute,
        }


def check_cost(cost: QueryCost, limits: Limits) -> None:
    """`QueryTooCostly` naming the first per-query limit the cost exceeds."""
    for name, value, limit, what in (
        ("max_cells", cost.cells, limits.cells, "result cells"),
        ("max_comparisons", cost.comparisons, limits.comparisons, "secure comparisons"),
    ):
        if value > limit:
            raise QueryTooCostly(
                f"the query would compute {value:,} {what}; the coordinator accepts at most "
                f"{limit:,} per query ({name}): fewer groups, bins, levels or grid points, or a "
                "coarser time unit, bring it down",
                {"limit": name, "max": limit, "value": value, **cost.to_json()},
            )


def _lock(db: Session, study: Study, user: User) -> None:
    """Hold the study's and the researcher's admission locks until the transaction ends (in
    that order everywhere)."""
    if is_sqlite(db):
        write_lock(db)
        return
    db.execute(select(func.pg_advisory_xact_lock(_STUDY_LOCK, study.id)))
    db.execute(select(func.pg_advisory_xact_lock(_RESEARCHER_LOCK, user.id)))


def _over(
    error: type[RateLimited],
    message: str,
    limit: str,
    maximum: int,
    retry_after_s: int,
    current: int | None = None,
) -> RateLimited:
    """The 429 for `limit`: its details name the limit, its maximum, the caller's own current
    count where there is one (never another researcher's), and when to retry."""
    own = {} if current is None else {"current": current}
    return error(message, {"limit": limit, "max": maximum, **own, "retry_after_s": retry_after_s})


def _refuse(error: RateLimited, action: str, study: Study, user: User) -> RateLimited:
    """Log the refusal (one line: who, which study, which limit) and return the error."""
    fields = {"user": user.username, "study": study.name, "limit": error.details["limit"]}
    log.info(
        "%s %s %s",
        f"user:{user.username}",
        action,
        fields["limit"],
        extra={"event": action, "fields": fields},
    )
    return error


def admit_query(db: Session, study: Study, user: User, limits: Limits) -> None:
    """Take the admission locks and check the concurrency and rate limits of a new query;
    `TooManyQueries` or `RateLimited` (429) if it may not be scheduled now. Call before adding
    the query, in the transaction that adds it."""
    _lock(db, study, user)
    own = db.scalar(
        select(func.count())
        .select_from(Query)
        .where(Query.submitted_by == user.id, Query.status.in_(OPEN_QUERY))
    )
    if own is not None and own >= limits.researcher_concurrent:
        raise _refuse(
            _over(
                TooManyQueries,
                f"you have {own} queries pending or running; at most "
                f"{limits.researcher_concurrent} at once (max_concurrent_queries_per_researcher): "
                f"retry in {limits.retry_after_s} s or once one finishes",
                "max_concurrent_queries_per_researcher",
                limits.researcher_concurrent,
                limits.retry_after_s,
                current=own,
            ),
            "query.limited",
            study,
            user,
        )
    in_study = db.scalar(
        select(func.count())
        .select_from(Query)
        .where(Query.study_id == study.id, Query.status.in_(OPEN_QUERY))
    )
    if in_study is not None and in_study >= limits.study_concurrent:
        raise _refuse(
            _over(
                TooManyQueries,
                f"study {study.name!r} has as many queries pending or running as the coordinator "
                f"allows ({limits.study_concurrent}, max_concurrent_queries_per_study): retry in "
                f"{limits.retry_after_s} s",
                "max_concurrent_queries_per_study",
                limits.study_concurrent,
                limits.retry_after_s,
            ),
            "query.limited",
            study,
            user,
        )
    now = clock.now(db)
    since = now - timedelta(seconds=RATE_WINDOW_S)
    recent = list(
        db.scalars(
            select(Query.created_at)
            .where(Query.submitted_by == user.id, Query.created_at > since)
            .order_by(Query.created_at)
        )
    )
    if len(recent) >= limits.researcher_per_minute:
        # the window frees a place when the oldest submission in it is RATE_WINDOW_S old
        leaves = recent[len(recent) - limits.researcher_per_minute]
        wait = (leaves + timedelta(seconds=RATE_WINDOW_S) - now).total_seconds()
        retry_after = max(1, math.ceil(wait))
        raise _refuse(
            _over(
                RateLimited,
                f"you submitted {len(recent)} queries in the last {RATE_WINDOW_S} s; at most "
                f"{limits.researcher_per_minute} (max_queries_per_minute): retry in "
                f"{retry_after} s",
                "max_queries_per_minute",
                limits.researcher_per_minute,
                retry_after,
                current=len(recent),
            ),
            "query.limited",
            study,
            user,
        )


def admit_synthesis(db: Session, study: Study, user: User, limits: Limits) -> None:
    """The concurrency limit of a new synthesis request: the researcher's requests with a job
    still computing (not yet awaiting review, nor ended); `TooManyQueries` (429) at the limit."""
    from api.services.synthesis import AT_REST

    _lock(db, study, user)
    computing = db.scalar(
        select(func.count(func.distinct(SynthesisRequest.id)))
        .select_from(SynthesisRequest)
        .join(SynthesisJob, SynthesisJob.request_id == SynthesisRequest.id)
        .where(SynthesisRequest.requested_by == user.id, SynthesisJob.status.not_in(AT_REST))
    )
    if computing is not None and computing >= limits.researcher_synthesis:
        raise _refuse(
            _over(
                TooManyQueries,
                f"you have {computing} synthesis requests still computing; at most "
                f"{limits.researcher_synthesis} at once "
                "(max_concurrent_synthesis_per_researcher): retry once one reaches review",
                "max_concurrent_synthesis_per_researcher",
                limits.researcher_synthesis,
                limits.retry_after_s,
                current=computing,
            ),
            "synthesis.limited",
            study,
            user,
        )


def usage(db: Session, user: User) -> dict[str, Any]:
    """The researcher's own current use of the limits (dry run): queries pending or running,
    and submissions in the last 60 s."""
    since = clock.now(db) - timedelta(seconds=RATE_WINDOW_S)
    open_queries = db.scalar(
        select(func.count())
        .select_from(Query)
        .where(Query.submitted_by == user.id, Query.status.in_(OPEN_QUERY))
    )
    recent = db.scalar(
        select(func.count())
        .select_from(Query)
        .where(Query.submitted_by == user.id, Query.created_at > since)
    )
    return {"concurrent_queries": int(open_queries or 0), "queries_last_minute": int(recent or 0)}
