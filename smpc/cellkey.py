"""Cell-key perturbation (the ABS TableBuilder method), computed inside MPC.

**Row keys.** Every row of a node's dataset carries a persistent secret key: the row's declared
columns hashed (`pandas.util.hash_pandas_object`), and that hash hashed again by SipHash keyed
with the node's secret (16 characters kept in the node's work directory, never sent; pandas
keys only text, so the row hash is keyed as text). The same row always has the same key;
without the secret nobody can compute it, and the keys of different rows look independent.

**Cell keys.** A cell's key is the sum of its rows' keys, over every site, modulo 2²⁴: each
party inputs, per cell and per key field, the sum of its rows' 24-bit fields modulo 2²⁴, and the
parties take the low 24 bits of the pooled sum inside MPC (`smpc.rounded.low_bits`; nothing is
opened but a masked value). Two fields of each row's 64-bit hash give two independent cell
keys, A and B.

**Perturbations.** From the bits of a cell key, inside MPC (`Perturbation`):

- counts: p = b₀ + b₁ + 2·(b₂ + b₃) − 3, in {−3, …, 3} with probabilities
  (1, 2, 3, 4, 3, 2, 1)/16: mean 0, standard deviation 1.58, never more than 3 away;
- magnitudes: u = (2·Σⱼ 2ʲ·b₄₊ⱼ + 1 − 2¹²) / 2¹², twelve bits, uniform on (−1, 1).
- models (linear regression, correlation): a pseudo-row weight w = ω / 2⁹ · 2·magnitude with
  ω = 2·W + 1, W the eight bits 16–23 of key A (w uniform on (0, 2·magnitude), independent of
  p and u_a), and one corner bit per column from twelve bits of key B (bits 0–3 and 16–23; a
  column takes the bit `sign_slot` of its name): its low (1) or high (0) corner (a 0/1 column
  is spread over its levels instead: `GramStatistic.corner_bounds`); logistic regression's
  pseudo-observation residual from u_b.

A released count is n + p (a cell with no row stays 0). A sum is Σx + u·magnitude·M, where M is
the cell's largest |x| (a secure maximum over the parties' local maxima), rounded inside MPC to
the published precision (`SUM_PRECISION_BITS`). The same cell always has the same key, so the
same query always gets the same answer: repeating it averages nothing away. Two selections that
differ by a few rows have unrelated keys, so subtracting their answers leaves the difference of
two perturbations, not a child's value.

A model's Gram matrix G = Σ zzᵀ of [1, terms…] gets one pseudo-row: G + w·z̃z̃ᵀ with
z̃ = (1, c₁, …, c_k), cⱼ the low or high declared bound of term j by its corner bit (a term
without declared bounds: the group's own smallest or largest value, a secure minimum and
maximum over the sites; `smpc.statistics.gram`). A rank-one positive term keeps G positive
semi-definite, so every model stays well defined, and every statistic computed from the
matrix (coefficients, their errors, R², correlations) moves with it, consistently: the same
rows always get the same model.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from smpc.rounded import low_bits

if TYPE_CHECKING:
    import pandas as pd

KEY_FIELD_BITS = 24
KEY_FIELDS = 2  # A (counts and sums) and B (second moments and extremes)
_KEY_MASK = (1 << KEY_FIELD_BITS) - 1
COUNT_NOISE_BITS = 4
MAGNITUDE_BITS = 12  # u has 2**12 steps on (-1, 1)
MAGNITUDE_SCALE_BITS = 8  # the policy's `magnitude` and `noise`, in 1/256
LARGEST_SCALE_BITS = 8  # a cell's largest |x| travels rounded up to 1/256
SUM_PRECISION_BITS = 16  # opened sums are rounded down to multiples of 2**-16
WEIGHT_AT = 16  # key A's bits 16–23: W, the pseudo-row weight's numerator ω = 2W + 1
WEIGHT_BITS = 8
SIGN_BITS_AT = (0, 1, 2, 3, 16, 17, 18, 19, 20, 21, 22, 23)  # key B's bits left for the signs
CORNER_LIMIT_BITS = 33  # a pseudo-row's corner, scaled 2**8: |z| < 2**25; empty sites input ±2**33
SECRET_LENGTH = 16  # SipHash's key: 16 characters (urlsafe base64 of 12 random bytes)


def new_secret() -> str:
    """A fresh row-key secret for a node's work directory (96 bits)."""
    return secrets.token_urlsafe(12)


def frame_secret(frame: pd.DataFrame) -> str:
    """A secret derived from a frame's own contents: for local use (`simulate`), where whoever
    runs the query holds every frame anyway; the same frame always gets the same keys."""
    import pandas as pd

    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:SECRET_LENGTH]


def row_keys(data: pd.DataFrame, secret: str) -> np.ndarray:
    """Each row's 64-bit key: a SipHash of its values keyed with the node's secret. `data` holds
    the dataset's declared columns, conformed (`smpc.frames.conform`), in schema order."""
    import pandas as pd

    if len(secret.encode("utf-8")) != SECRET_LENGTH:
        raise ValueError(f"a row-key secret is {SECRET_LENGTH} ASCII characters")
    if len(data) == 0:
        return np.zeros(0, dtype=np.uint64)
    # pandas keys only the hashes of text columns: hash every row unkeyed first, then key the
    # row hashes themselves (as text) with the secret, so numeric rows are keyed too
    plain = pd.util.hash_pandas_object(data, index=False, categorize=False).to_numpy()
    return pd.util.hash_array(plain.astype(str).astype(object), hash_key=secret)


# Frames their owner keeps unchanged (a node's cached dataset, `unchanging`): their row keys
# are computed once per secret and schema, not for every query. By the frame's id, with a weak
# reference to it: a frame that is dropped (its file changed and was read again) takes its
# keys along, before its id can be reused.
_UNCHANGING: dict[int, tuple[weakref.ref[pd.DataFrame], dict[tuple[str, str], np.ndarray]]] = {}
_UNCHANGING_LOCK = threading.Lock()


def _forget(frame_id: int) -> None:
    with _UNCHANGING_LOCK:
        _UNCHANGING.pop(frame_id, None)


def unchanging(frame: pd.DataFrame) -> pd.DataFrame:
    """Declare that `frame` will not be modified from here on, so that the row keys of its
    rows may be remembered (`remembered_row_keys`); returns it. Only for frames nobody
    writes to: the node's dataset cache (`node_agent.datasets.DatasetCache`) reads a changed
    file into a new frame."""
    with _UNCHANGING_LOCK:
        if id(frame) not in _UNCHANGING:
            _UNCHANGING[id(frame)] = (weakref.ref(frame), {})
            weakref.finalize(frame, _forget, id(frame))
    return frame


def remembered_row_keys(
    frame: pd.DataFrame, secret: str, schema_key: str, compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """`compute()` (the row keys of `frame` under `secret` and a schema, `schema_key` naming
    it), remembered for a frame declared `unchanging`, read-only. Computing them was 40 % of a
    node agent's CPU per query (hashing and conforming every row)."""
    with _UNCHANGING_LOCK:
        entry = _UNCHANGING.get(id(frame))
    if entry is None or entry[0]() is not frame:
        return compute()
    memo = entry[1]
    key = (hashlib.sha256(secret.encode("utf-8")).hexdigest(), schema_key)
    with _UNCHANGING_LOCK:
        known = memo.get(key)
    if known is None:
        known = compute()
        known.setflags(write=False)
        with _UNCHANGING_LOCK:
            memo[key] = known
    return known


def key_sums(keys: np.ndarray, cells: np.ndarray, size: int) -> list[int]:
    """Per key field and cell, the sum of the rows' field modulo 2²⁴ (field-major: A's cells,
    then B's)."""
    out: list[int] = []
    for field in range(KEY_FIELDS):
        part = (keys >> np.uint64(KEY_FIELD_BITS * field)) & np.uint64(_KEY_MASK)
        totals = np.zeros(size, dtype=np.uint64)
        np.add.at(totals, cells, part)
        out.extend(int(t) & _KEY_MASK for t in totals)
    return out


def sign_slot(name: str) -> int:
    """Which of key B's corner bits a model column's pseudo-row takes (by its name, so that a
    column gets the same corner in every design of the same rows)."""
    return zlib.crc32(name.encode("utf-8")) % len(SIGN_BITS_AT)


def corners(z: np.ndarray, groups: np.ndarray, size: int) -> list[int]:
    """Per group and column of `z` (rows × columns), this site's smallest and largest value
    (scaled 2**8, rounded outwards): a pseudo-row's corners where no bounds are declared (the
    models', the t-test's), each within ±(2**33 − 1) (a corner is only where the pseudo-row
    sits: beyond |z| of 2**25 it stays at that limit). A site without rows in a group inputs
    ±2**33, which loses every secure min and max."""
    empty = [1 << CORNER_LIMIT_BITS, -(1 << CORNER_LIMIT_BITS)]
    out: list[int] = []
    for g in range(size):
        rows = z[groups == g]
        for j in range(z.shape[1]):
            if len(rows):
                low = int(np.floor(np.ldexp(rows[:, j].min(), LARGEST_SCALE_BITS)))
                high = int(np.ceil(np.ldexp(rows[:, j].max(), LARGEST_SCALE_BITS)))
                out += [corner_limited(low), corner_limited(high)]
            else:
                out += empty
    return out


def corner_limited(value: int) -> int:
    """A corner (scaled 2**8) within ±(2**33 − 1): the range the protocols move corners in."""
    limit = (1 << CORNER_LIMIT_BITS) - 1
    return min(max(value, -limit), limit)


def largest(values: np.ndarray, cells: np.ndarray, size: int) -> list[int]:
    """Per cell, this party's largest |x|, rounded up to 1/256 (0 for an empty cell)."""
    top = np.zeros(size, dtype=float)
    np.maximum.at(top, cells, np.abs(values))
    return [int(np.ceil(np.ldexp(v, LARGEST_SCALE_BITS))) for v in top]


# ---- inside MPC -----------------------------------------------------------------------------


@dataclass
class Perturbation:
    """Per cell, secret: the count perturbation p (from key A) and two magnitude draws
    u_a, u_b (keys A and B), as integers: u = magnitude / 2**MAGNITUDE_BITS."""

    count: Any
    magnitude_a: Any
    magnitude_b: Any
    weight: Any = None  # ω = 2W + 1 in [1, 2**9): a model's pseudo-row weight, in 2**-9 units
    signs: Any = None  # per cell, the SIGN_BITS_AT bits of key B (a model term's corner: 1 low)


def count_perturbation(bits: Any) -> Any:
    """The count law p = b₀ + b₁ + 2·(b₂ + b₃) − 3 from the first `COUNT_NOISE_BITS` columns of
    a matrix of bits: secure (inside MPC) or numpy (the plaintext twins) alike."""
    return bits[:, 0] + bits[:, 1] + 2 * (bits[:, 2] + bits[:, 3]) - 3


def _magnitude(bits: Any) -> Any:
    weights = np.array([2 * (1 << j) for j in range(MAGNITUDE_BITS)], dtype=object)
    window = bits[:, COUNT_NOISE_BITS : COUNT_NOISE_BITS + MAGNITUDE_BITS]
    return window @ weights + (1 - (1 << MAGNITUDE_BITS))


def perturbation(mpc: Any, pooled_keys: Any, size: int) -> Perturbation:
    """The perturbations of `size` cells from their pooled key sums (a secure vector: the
    cells' key A sums, then their key B sums). Opens nothing but the masked value of the bit
    decomposition (`smpc.rounded.low_bits`)."""
    bits = low_bits(mpc, pooled_keys, KEY_FIELD_BITS)
    a, b = bits[:size], bits[size:]
    count = count_perturbation(a)
    weights = np.array([2 * (1 << j) for j in range(WEIGHT_BITS)], dtype=object)
    weight = a[:, WEIGHT_AT : WEIGHT_AT + WEIGHT_BITS] @ weights + 1
    return Perturbation(
        count=count,
        magnitude_a=_magnitude(a),
        magnitude_b=_magnitude(b),
        weight=weight,
        signs=b[:, np.array(SIGN_BITS_AT)],
    )


def plain_model_shift(key_a: int, key_b: int) -> tuple[int, list[int]]:
    """`perturbation`'s model part of one cell, in plaintext: (ω, the sign bits)."""
    w = (key_a >> WEIGHT_AT) & ((1 << WEIGHT_BITS) - 1)
    return 2 * w + 1, [(key_b >> j) & 1 for j in SIGN_BITS_AT]


def scale_factor(ratio: float) -> int:
    """A policy ratio (magnitude, noise) in 1/256 (at least 1)."""
    return max(1, round(ratio * (1 << MAGNITUDE_SCALE_BITS)))


async def floor_bits(mpc: Any, values: Any, drop: int) -> Any:
    """values rounded down to a multiple of 2**drop, exactly (bit decomposition of the low
    `drop` bits; values may be negative)."""
    low = low_bits(mpc, values, drop)
    weights = np.array([1 << j for j in range(drop)], dtype=object)
    return values - low @ weights
