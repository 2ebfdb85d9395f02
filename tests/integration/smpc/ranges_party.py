"""Test helper, not a test: one MPC party that checks its own values with `smpc.ranges`.

Run as ``python ranges_party.py -I i --no-log -P host:port ...`` with ``TESSERA_RANGES`` set to
a JSON object ``{"values": [[...], ...], "bits": B, "claimed": {party: [...]}, "forged":
{party: [value index, bit index]}, "private": false}``: party i inputs values[i]; where
`claimed` names it, it derives its bits from the claimed values instead (bits that do not add
up to its input); where `forged` names it, it moves weight within its bits so they still add
up but one is a 2; `private` opens only whether Z is 0.
Prints one JSON line: whether every value passed; with ``"record": true`` in the task, an
object of that outcome (``passed``) and every value the check opened (``opened``: the
challenge, then Z, as decimal strings of their residues) and the field's ``modulus``.
"""

from __future__ import annotations

import json
import os


def main() -> None:
    import numpy as np
    from mpyc.runtime import mpc

    import smpc.ranges as ranges

    task = json.loads(os.environ["TESSERA_RANGES"])
    bits = int(task["bits"])

    async def run() -> object:
        await mpc.start()
        me = mpc.pid
        secint = mpc.SecInt(2 * bits + 80)
        mine = np.array(task["values"][me], dtype=object)
        shares = mpc.input(secint.array(mine.copy()))
        own = np.array(task.get("claimed", {}).get(str(me), task["values"][me]), dtype=np.int64)
        forged = task.get("forged", {}).get(str(me))
        if forged is not None:
            honest = ranges.bit_matrix

            def forge(values: np.ndarray, width: int) -> np.ndarray:
                out = honest(values, width).copy()
                i, j = forged
                assert out[i, j] == 0 and out[i, j + 1] == 1
                out[i, j], out[i, j + 1] = 2, 0  # 2·2**j in place of 2**(j + 1): same sum
                return out

            ranges.bit_matrix = forge  # type: ignore[assignment]
        opened: list[str] = []
        if task.get("record"):
            output = mpc.output

            def recording(x, *args, **kwargs):  # type: ignore[no-untyped-def]
                future = output(x, *args, **kwargs)
                future.add_done_callback(lambda f: opened.append(str(int(f.result()))))
                return future

            mpc.output = recording  # type: ignore[method-assign]
        private = bool(task.get("private"))
        passed = await ranges.all_in_range(mpc, secint, shares, own, bits, private=private)
        await mpc.shutdown()
        if task.get("record"):
            return {"passed": passed, "opened": opened, "modulus": str(secint.field.modulus)}
        return passed

    print(json.dumps(mpc.run(run())))


if __name__ == "__main__":
    main()
