"""Test helper, not a test: one MPC party that opens rounded ratios of given big integers.

Run as ``python rounded_party.py -I i --no-log -P host:port ...`` (one ``-P`` per party, or
none for one party) with ``TESSERA_RATIOS`` set to a JSON object ``{"bits": N, "pairs":
[[num, den], ...], "shared": [num, ...], "flags": {...}}`` (numerators and denominators as
decimal strings; `shared` numerators all divide one denominator, passed as one secure object,
the last pair's; `flags`, optional, are `open_rounded_ratios`' keyword options, `precision`
given as [range_bits, fine_bits]). Prints one JSON line: the opened values (floats or null)
in order.

With ``TESSERA_LOW_BITS`` set instead (``{"bits": l, "width": L, "values": [...]}``) it opens
`smpc.rounded.low_bits` of the values (SecInt(L)) and prints the bits, one list per value.
With ``TESSERA_RECIPROCALS`` (``{"bits": b, "scale": F, "values": [...]}``) it opens
`smpc.rounded.risk_reciprocals` of the values (in `smpc.prf.field_type`, as a survival table's
risk sets) and prints [u, y] as decimal strings, one pair per value.
"""

from __future__ import annotations

import json
import os


def main() -> None:
    from mpyc.runtime import mpc

    from smpc.exact import exact_type
    from smpc.rounded import DEFAULT_PRECISION, Precision, open_rounded_ratios

    if "TESSERA_LOW_BITS" in os.environ:
        print(json.dumps(mpc.run(low_bits(json.loads(os.environ["TESSERA_LOW_BITS"])))))
        return
    if "TESSERA_RECIPROCALS" in os.environ:
        print(json.dumps(mpc.run(reciprocals(json.loads(os.environ["TESSERA_RECIPROCALS"])))))
        return
    task = json.loads(os.environ["TESSERA_RATIOS"])
    bits = int(task["bits"])

    flags = dict(task.get("flags", {}))
    if "precision" in flags:
        flags["precision"] = Precision(*flags["precision"])
    precision = flags.get("precision", DEFAULT_PRECISION)

    async def run() -> list[float | None]:
        await mpc.start()
        stype = exact_type(mpc, precision.field_bits(bits))
        numerators = [stype(int(n)) for n, _ in task["pairs"]]
        denominators = [stype(int(d)) for _, d in task["pairs"]]
        if task["shared"]:
            numerators += [stype(int(n)) for n in task["shared"]]
            denominators += [denominators[-1]] * len(task["shared"])
        out = await open_rounded_ratios(mpc, numerators, denominators, bits, **flags)
        await mpc.shutdown()
        return out

    print(json.dumps(mpc.run(run())))


async def low_bits(task: dict) -> list[list[int]]:
    import numpy as np
    from mpyc.runtime import mpc

    from smpc.rounded import low_bits

    await mpc.start()
    stype = mpc.SecInt(int(task["width"]))
    values = stype.array(np.array([int(v) for v in task["values"]], dtype=object))
    opened = await mpc.output(low_bits(mpc, values, int(task["bits"])))
    await mpc.shutdown()
    return [[int(b) for b in row] for row in np.asarray(opened).tolist()]


async def reciprocals(task: dict) -> list[list[str]]:
    import numpy as np
    from mpyc.runtime import mpc

    from smpc.prf import field_type
    from smpc.rounded import risk_reciprocals

    await mpc.start()
    secint = field_type(mpc)
    values = secint.array(np.array([int(v) for v in task["values"]], dtype=object))
    u, y = await risk_reciprocals(mpc, values, int(task["bits"]), int(task["scale"]))
    opened = await mpc.output(mpc.np_hstack((u, y)))
    await mpc.shutdown()
    out = [str(int(v)) for v in np.asarray(opened).ravel()]
    half = len(out) // 2
    return [[a, b] for a, b in zip(out[:half], out[half:], strict=True)]


if __name__ == "__main__":
    main()
