"""What a node hands its MPC party process, and what the party hands back.

A `PartyJob` holds the validated query, the dataset schema (for the result's cell layout), the
node's *local summary* (counts, fixed-point sums, histograms: rows only for logistic
regression, below) and the network
addresses of all parties. It travels as JSON on the party process's standard input; the
`PartyOutcome` comes back as JSON on its standard output.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from smpc.tls import PartyTLS
from tessera.schemas import MAX_THRESHOLD, DatasetSchema, DisclosureRules


class LocalSummary(BaseModel):
    """One party's private input to the protocol, laid out per result cell.

    `counts[c]` is the number of rows in cell c; `moments[name][c]` a fixed-point sum
    (integer, scaled by 2**FRAC_BITS) such as Σx or Σx². `vectors` holds a
    statistic's own integer inputs (e.g. a fixed-point Gram matrix, per-time event counts).

    `rows` is for the one protocol that iterates over this party's own rows (logistic
    regression): base64 of a float64 `.npy` matrix of the *selected* rows and only the
    columns the statistic reads. It is handed to this node's own party process and is never
    sent anywhere else; the party process never secret-shares or opens it, only summaries of it.
    """

    model_config = ConfigDict(extra="forbid")

    counts: list[int]
    moments: dict[str, list[int]] = {}
    vectors: dict[str, list[int]] = {}
    rows: str | None = None
    # [rows in the dataset, rows the `where` selects, rows entering the statistic, selected rows
    # breaking the statistic's row rule]: checked inside MPC before anything else
    # (`smpc.disclosure.prelude`), never opened
    selection: list[int] | None = None

    @staticmethod
    def pack_rows(matrix: np.ndarray) -> str:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(matrix, dtype=np.float64), allow_pickle=False)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def unpack_rows(self) -> np.ndarray:
        if self.rows is None:
            raise ValueError("this statistic's local summary carries no rows")
        data = base64.b64decode(self.rows.encode("ascii"))
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float64)


class PartyJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    query: dict[str, Any]
    dataset_schema: DatasetSchema = Field(alias="schema")
    summary: LocalSummary
    party_id: int = Field(ge=0)
    parties: list[tuple[str, int]] = Field(min_length=1)
    min_count_floor: int = Field(0, ge=0, le=MAX_THRESHOLD)
    rules: DisclosureRules = DisclosureRules()  # this node's rules for the dataset
    timeout_s: float = Field(60.0, gt=0)
    tls: PartyTLS | None = None  # None only for trusted local runs (tests, benchmarks)


class PartyOutcome(BaseModel):
    """The opened, pooled result (identical at every party) and how it was obtained."""

    result: dict[str, Any]
    min_count_applied: int
    seconds: float
