"""Test helper, not a test: one MPC party that opens rounded ratios of given big integers.

Run as ``python rounded_party.py -I i --no-log -P host:port ...`` (one ``-P`` per party, or
none for one party) with ``TESSERA_RATIOS`` set to a JSON object ``{"bits": N, "pairs":
[[num, den], ...], "shared": [num, ...]}`` (numerators and denominators as decimal strings;
`shared` numerators all divide one denominator, passed as one secure object, the last pair's).
Prints one JSON line: the opened values (floats or null) in order.
"""

from __future__ import annotations

import json
import os


def main() -> None:
    from mpyc.runtime import mpc

    from smpc.exact import exact_type
    from smpc.rounded import open_rounded_ratios, ratio_field_bits

    task = json.loads(os.environ["TESSERA_RATIOS"])
    bits = int(task["bits"])

    async def run() -> list[float | None]:
        await mpc.start()
        stype = exact_type(mpc, ratio_field_bits(bits))
        numerators = [stype(int(n)) for n, _ in task["pairs"]]
        denominators = [stype(int(d)) for _, d in task["pairs"]]
        if task["shared"]:
            numerators += [stype(int(n)) for n in task["shared"]]
            denominators += [denominators[-1]] * len(task["shared"])
        out = await open_rounded_ratios(mpc, numerators, denominators, bits)
        await mpc.shutdown()
        return out

    print(json.dumps(mpc.run(run())))


if __name__ == "__main__":
    main()
