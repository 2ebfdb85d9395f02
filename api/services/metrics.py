"""What `/metrics` exposes, in the Prometheus text format: counts only, never a result."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import clock
from api.models import (
    QUERY_STATUSES,
    SYNTHESIS_JOB_STATUSES,
    TASK_STATUSES,
    Node,
    Query,
    Release,
    SynthesisJob,
    Task,
)

SEEN_WINDOW = timedelta(minutes=1)


def _gauge(name: str, help_text: str, samples: list[tuple[str, int]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"] + [
        f"{name}{labels} {value}" for labels, value in samples
    ]


def prometheus_text(db: Session) -> str:
    queries = dict(db.execute(select(Query.status, func.count()).group_by(Query.status)).all())
    tasks = dict(db.execute(select(Task.status, func.count()).group_by(Task.status)).all())
    since = clock.now(db) - SEEN_WINDOW
    seen = db.scalar(select(func.count()).select_from(Node).where(Node.last_seen_at >= since))
    total = db.scalar(select(func.count()).select_from(Node))
    jobs = dict(
        db.execute(select(SynthesisJob.status, func.count()).group_by(SynthesisJob.status)).all()
    )
    releases = db.scalar(select(func.count()).select_from(Release))
    lines = [
        *_gauge(
            "tessera_queries",
            "Queries by status.",
            [(f'{{status="{s}"}}', queries.get(s, 0)) for s in QUERY_STATUSES],
        ),
        *_gauge(
            "tessera_tasks",
            "Tasks (one per node and query) by status.",
            [(f'{{status="{s}"}}', tasks.get(s, 0)) for s in TASK_STATUSES],
        ),
        *_gauge(
            "tessera_nodes_seen_last_minute",
            "Nodes that called the coordinator in the last minute.",
            [("", seen or 0)],
        ),
        *_gauge("tessera_nodes", "Enrolled nodes.", [("", total or 0)]),
        *_gauge(
            "tessera_synthesis_jobs",
            "Synthesis jobs (one per node and request) by status.",
            [(f'{{status="{s}"}}', jobs.get(s, 0)) for s in SYNTHESIS_JOB_STATUSES],
        ),
        *_gauge("tessera_releases", "Published synthetic releases.", [("", releases or 0)]),
    ]
    return "\n".join(lines) + "\n"
