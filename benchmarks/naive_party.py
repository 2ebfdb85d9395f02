"""One party of the naive, record-level MPC baseline that `benchmarks/statistics.py` runs.

This is what Tessera does *not* do: every row is secret-shared. Each party inputs its own rows
as a secure fixed-point array (`mpc.SecFxp(bits)`; the benchmark uses 96 bits, 48 of them
fractional, which costs no more than 64 and keeps OLS exact to about 1e-9), and the
pooled statistic is computed on the shares:

- ``mean``: the secure sum of every party's column, opened (it is n · mean) and divided by
  the public n;
- ``ols``: every party's design [1, x…, y] (already scaled into [0, 1] by the declared bounds,
  so fixed point keeps its precision) enters the secure matrix product ZᵀZ; the pooled moment
  matrix ZᵀZ / n stays secret and the normal equations are solved on it by Gauss–Jordan with a
  secure fixed-point reciprocal per pivot; only the coefficients are opened (no standard errors
  or R², so this baseline does less than `linear_regression`).

The parties' row counts are public here (each receiver must know the shape of a sender's
array). Launched as ``python benchmarks/naive_party.py -I i -P host:port … [--ssl] --no-log``
with a JSON job on stdin ``{"kind", "data", "sizes", "bits"}``, where ``data`` is a float64
``.npy`` file of this party's rows; prints one line ``NAIVE-OUTCOME {"result", "seconds",
"input_seconds", "bytes_sent"}`` (protocol seconds from connecting to shutdown, of which input;
bytes this party sent to the others).

Reveals: the pooled mean, or the OLS coefficients; every party's row count.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, benchmarks/ comes first on sys.path, and benchmarks/statistics.py would
# shadow the standard library's `statistics` (which MPyC imports).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

OUTCOME = "NAIVE-OUTCOME "


def _share_rows(mpc: Any, secfxp: Any, rows: np.ndarray, sizes: list[int]) -> list[Any]:
    """Every party's rows as a secret-shared array (one input per sender: shapes differ)."""
    field = secfxp.field
    exact_int = np.frompyfunc(int, 1, 1)
    shared = []
    for sender, count in enumerate(sizes):
        shape = (count, *rows.shape[1:])
        if sender == mpc.pid:  # each value rounded once to the fixed-point grid
            value = exact_int(np.rint(np.ldexp(rows, secfxp.frac_length)))
        else:
            value = np.zeros(shape, dtype=object)
        local = secfxp.array(field.array(value), integral=False)
        shared.append(mpc.input(local, senders=sender))
    return shared


def _solve(mpc: Any, a: list[list[Any]], b: list[Any]) -> list[Any]:
    """x with a·x = b by Gauss–Jordan on secrets (no pivoting: a is a positive definite Gram)."""
    p = len(b)
    rows = [[*a[i], b[i]] for i in range(p)]
    for k in range(p):
        inverse = 1 / rows[k][k]
        pivot_row = [v * inverse for v in rows[k]]
        rows[k] = pivot_row
        for i in range(p):
            if i != k:
                factor = rows[i][k]
                rows[i] = [v - factor * w for v, w in zip(rows[i], pivot_row, strict=True)]
    return [rows[i][p] for i in range(p)]


async def _run(mpc: Any, job: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    loop = mpc._loop
    loop.create_server = functools.partial(loop.create_server, host="127.0.0.1")
    started = time.perf_counter()
    await mpc.start()
    secfxp = mpc.SecFxp(job["bits"])
    sizes = [int(s) for s in job["sizes"]]
    total_rows = sum(sizes)
    shared = _share_rows(mpc, secfxp, rows, sizes)
    await mpc.barrier()
    for x in shared:
        await mpc.gather(x)
    input_seconds = time.perf_counter() - started
    if job["kind"] == "mean":
        total = functools.reduce(lambda s, t: s + t, (mpc.np_sum(x) for x in shared))
        result: Any = float(await mpc.output(total)) / total_rows
    else:
        gram = functools.reduce(lambda s, t: s + t, (mpc.np_matmul(x.T, x) for x in shared))
        moments = gram * (1 / total_rows)
        k = rows.shape[1]
        p = k - 1
        a = [[moments[i, j] for j in range(p)] for i in range(p)]
        b = [moments[i, p] for i in range(p)]
        beta = _solve(mpc, a, b)
        result = [float(v) for v in await mpc.output(beta)]
    sent = sum(peer.protocol.nbytes_sent for peer in mpc.parties if peer.pid != mpc.pid)
    await mpc.shutdown()
    return {
        "result": result,
        "seconds": time.perf_counter() - started,
        "input_seconds": input_seconds,
        "bytes_sent": sent,
    }


def main() -> int:
    job = json.loads(sys.stdin.read())
    rows = np.load(job["data"], allow_pickle=False)
    from mpyc.runtime import mpc  # parses sys.argv: -I, -P, --ssl, --no-log

    outcome = mpc.run(_run(mpc, job, rows))
    print(OUTCOME + json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
