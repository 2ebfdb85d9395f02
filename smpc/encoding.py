"""How local summaries become integers for secret sharing, and back.

Everything a party secret-shares is an integer:

- counts, as they are;
- moments (Σx, Σx²), as fixed-point integers ``round(v · 2**FRAC_BITS)`` in a 128-bit secure
  integer type. Each party rounds its *local* sum once (error ≤ 2**-41 per party), so the pooled
  sum is exact to about 1e-12 whatever the number of rows. The pooled value must satisfy
  |v| < 2**(MOMENT_BITS - FRAC_BITS - 2) ≈ 7.7e25 (e.g. Σx² of 10⁷ rows with |x| ≤ 2·10⁹);
- local extremes, as fixed-point integers like the moments (they are checked against the
  declared bounds and moved inside MPC, `smpc.protocol`);
- a quantile's values, as a histogram over 2**12 equal bins of the declared range
  (`smpc.statistics.quantile`).
"""

from __future__ import annotations

import math
from fractions import Fraction

FRAC_BITS = 40
MOMENT_BITS = 128
KEY_BITS = 66  # the secure integers of counts, selections and the rules' vectors
MOMENT_LIMIT = 2 ** (MOMENT_BITS - FRAC_BITS - 2)


def encode_moment(value: float) -> int:
    """Fixed-point integer of a local sum; raises OverflowError outside the supported range."""
    if not math.isfinite(value) or abs(value) >= MOMENT_LIMIT:
        raise OverflowError(  # the limit only: never a hospital's own sum in a message
            f"a local sum is outside the secure fixed-point range (|sum| < "
            f"{float(MOMENT_LIMIT):.3g}); rescale the column"
        )
    return round(math.ldexp(value, FRAC_BITS))


def decode_moment(value: int) -> Fraction:
    return Fraction(value, 1 << FRAC_BITS)
