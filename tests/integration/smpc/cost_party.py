"""Test helper, not a test: one MPC party that runs a query's real protocol (the prelude and
the statistic) and counts the secure comparisons and bit decompositions it performs.

Run as ``python cost_party.py -I i --no-log -P host:port ...`` with ``TESSERA_COST`` set to a
JSON object ``{"query": {...}, "schema": {...}, "floor": F}``; party i computes its local
summary over `cohort(i)`. Every value compared by MPyC's `np_sgn` (secure comparisons, minima
and maxima: `smpc.protocol.at_least`) and every value decomposed by `smpc.rounded.low_bits`
(cell keys, rounding) counts one. Prints one JSON line: ``{"comparisons": N, "n": result n}``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd


def cohort(party: int, rows: int = 60) -> pd.DataFrame:
    """Party `party`'s rows: every combination of sex and ward several times over (so every
    cell of the tests' queries holds at least the floor), x and t spread over their bounds."""
    rng = np.random.default_rng(20261208 + party)
    return pd.DataFrame(
        {
            "x": rng.uniform(1.0, 99.0, rows).round(3),
            "sex": np.resize(["F", "M"], rows),
            "ward": np.resize(["a", "a", "b", "b", "c", "c"], rows),
            "t": rng.integers(0, 11, rows),
            "event": rng.random(rows) < 0.6,
        }
    )


def main() -> None:
    from mpyc.runtime import mpc

    import smpc.cellkey as cellkey
    import smpc.rounded as rounded
    from smpc.disclosure import prelude
    from smpc.job import PartyJob
    from smpc.statistics import compile_query
    from tessera.schemas import DatasetSchema

    task = json.loads(os.environ["TESSERA_COST"])
    counted = [0]

    def size(values: object) -> int:
        return int(np.prod(getattr(values, "shape", (1,))))

    sign = mpc.np_sgn

    def counting_sign(a, *args, **kwargs):  # type: ignore[no-untyped-def]
        counted[0] += size(a)
        return sign(a, *args, **kwargs)

    decompose = rounded.low_bits

    def counting_low_bits(m, x, bits):  # type: ignore[no-untyped-def]
        counted[0] += size(x)
        return decompose(m, x, bits)

    mpc.np_sgn = counting_sign  # type: ignore[method-assign]
    rounded.low_bits = counting_low_bits  # type: ignore[assignment]
    cellkey.low_bits = counting_low_bits  # type: ignore[attr-defined]

    schema = DatasetSchema.model_validate(task["schema"])

    async def run() -> dict[str, object]:
        await mpc.start()
        statistic = compile_query(task["query"], schema)
        statistic.key_secret = f"party-{mpc.pid:010d}"
        summary = statistic.local_summary(cohort(mpc.pid))
        job = PartyJob.model_validate(
            {
                "query": task["query"],
                "schema": task["schema"],
                "summary": summary.model_dump(),
                "party_id": mpc.pid,
                "parties": [("127.0.0.1", 0)] * len(mpc.parties),
                "min_count_floor": task.get("floor", 0),
            }
        )
        await prelude(mpc, statistic, job)
        opened = await statistic.compute(mpc, job)
        result = statistic.finish(opened)
        await mpc.shutdown()
        return {"comparisons": counted[0], "n": result.get("n")}

    print(json.dumps(mpc.run(run())))


if __name__ == "__main__":
    main()
