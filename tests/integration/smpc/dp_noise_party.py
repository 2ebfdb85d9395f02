"""Test helper, not a test: one MPC party that draws discrete Laplace noise and OPENS it.

Run as ``python dp_noise_party.py -I i --no-log -P host:port ...`` (one ``-P`` per party) with
``TESSERA_DP_SAMPLES`` set to a JSON list of ``{"epsilon", "sensitivity", "count"}``. Prints
one JSON line: the opened samples per entry and the seconds the noise took. Opening noise is
what the real protocol never does; it exists here only so the tests can check its distribution.
"""

from __future__ import annotations

import json
import os
import time


def main() -> None:
    from smpc.dp import NoiseSpec, discrete_laplace
    from smpc.encoding import MOMENT_BITS

    wanted = json.loads(os.environ["TESSERA_DP_SAMPLES"])
    specs = [
        NoiseSpec(float(w["epsilon"]), int(w["sensitivity"]))
        for w in wanted
        for _ in range(int(w["count"]))
    ]

    from mpyc.runtime import mpc

    async def run() -> dict[str, object]:
        await mpc.start()
        sectype = mpc.SecInt(MOMENT_BITS)
        started = time.perf_counter()
        values = [int(v) for v in await mpc.output(discrete_laplace(mpc, sectype, specs))]
        seconds = time.perf_counter() - started
        await mpc.shutdown()
        samples, at = [], 0
        for w in wanted:
            samples.append(values[at : at + int(w["count"])])
            at += int(w["count"])
        return {"samples": samples, "seconds": seconds}

    print(json.dumps(mpc.run(run())), flush=True)


if __name__ == "__main__":
    main()
