"""Test helper, not a test: one MPC party that evaluates `smpc.prf.legendre_bits`.

Run as ``python prf_party.py -I i --no-log -P host:port ...`` with ``TESSERA_PRF`` set to a JSON
object ``{"keys": [[k_0, ...], ...], "offsets": [c_0, ...]}``: party i inputs keys[i], one
integer per key (the pooled key is their sum, as the parties pool a group's key sums), and
every key is evaluated at the same offsets. Prints one JSON line: the opened bits, one list
per key.
"""

from __future__ import annotations

import functools
import json
import operator
import os


def main() -> None:
    import numpy as np
    from mpyc.runtime import mpc

    from smpc import prf

    task = json.loads(os.environ["TESSERA_PRF"])

    async def run() -> list[list[int]]:
        await mpc.start()
        stype = prf.field_type(mpc)
        mine = np.array([int(k) for k in task["keys"][mpc.pid]], dtype=object)
        keys = functools.reduce(operator.add, mpc.input(stype.array(mine)))
        offsets = np.tile(np.array(task["offsets"], dtype=object), (len(mine), 1))
        bits = await prf.legendre_bits(mpc, keys, offsets)
        opened = await mpc.output(bits)
        await mpc.shutdown()
        return [[int(v) for v in row] for row in np.asarray(opened)]

    print(json.dumps(mpc.run(run())))


if __name__ == "__main__":
    main()
