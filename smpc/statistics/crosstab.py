"""`crosstab`: pooled counts of every (row level, column level) pair of two categorical columns.

Levels come from the declared schema (booleans: `False`, `True`), sorted, so every site has
the same table even where a level is absent locally. Each party shares its count per cell;
every cell is compared with `min_count` inside MPC and only released cells are opened; a
suppressed cell is `null`. A table's `n` (and the overall `n`) is opened only when none of its
cells is suppressed, so that no suppressed cell can be recovered by subtraction. With
`group_by`, one table per group.

Cost: one secure comparison per cell when `min_count` > 0; independent of rows.

With `dp`: each cell's pooled count gets discrete Laplace noise of scale 1/ε inside MPC
(`smpc.dp`); cells are disjoint, so the whole result spends ε once. `min_count` is applied
to the noisy counts, released counts are max(0, noisy count), and n is the sum of released
counts.

Reveals: the pooled (with `dp`: noisy) count of each released cell; which cells are
suppressed; n where safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from smpc.cells import CellLayout
from smpc.query import QueryBase
from smpc.statistics.base import Opened, SecureStatistic
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd

    from tessera.schemas import DatasetSchema


class CrosstabQuery(QueryBase):
    statistic: Literal["crosstab"]
    rows: ColumnName
    columns: ColumnName

    def statistic_columns(self) -> list[str]:
        return [self.rows, self.columns]


class Crosstab(SecureStatistic):
    name = "crosstab"
    query_model = CrosstabQuery
    supports_dp = True
    result_fields = {
        "row_levels": list[str],
        "column_levels": list[str],
        "counts": list[list[int | None]],
    }
    value_column = False
    binned = True
    query: CrosstabQuery

    def __init__(self, query: CrosstabQuery, schema: DatasetSchema) -> None:
        super().__init__(query, schema)
        declared = CellLayout.build([query.rows, query.columns], schema)
        # DESIGN.md: crosstab levels are sorted (whatever order the schema declares them in)
        self.table = CellLayout(
            declared.group_columns, tuple(tuple(sorted(v)) for v in declared.levels)
        )
        self.layout = CellLayout.build(list(query.group_by), schema, self.table.size)

    def validate(self) -> None:
        q = self.query
        if q.rows == q.columns:
            raise QueryInvalid("crosstab: rows and columns must be different columns")
        for name in (q.rows, q.columns):
            spec = self.schema.column(name)
            assert spec is not None
            if spec.type not in ("categorical", "boolean"):
                raise QueryInvalid(
                    f"crosstab: column {name!r} is {spec.type}; rows and columns must be "
                    "categorical or boolean",
                    {"column": name},
                )
            if name in q.group_by:
                raise QueryInvalid(f"crosstab: {name!r} is both an axis and a group_by column")

    def bin_index(self, data: pd.DataFrame) -> Any:
        return self.table.group_codes(data)

    def group_result(self, opened: Opened, g: int) -> dict[str, Any]:
        size = self.table.size
        flat = [
            opened.counts[c] if opened.released[c] else None
            for c in range(g * size, (g + 1) * size)
        ]
        return self._table(flat)

    def _table(self, flat: list[int | None]) -> dict[str, Any]:
        row_levels, column_levels = (list(levels) for levels in self.table.levels)
        width = len(column_levels)
        counts = [flat[i * width : (i + 1) * width] for i in range(len(row_levels))]
        shown = [c for c in flat if c is not None]
        n = sum(shown) if len(shown) == len(flat) else None
        return {"n": n, "row_levels": row_levels, "column_levels": column_levels, "counts": counts}

    def reference_group(self, sub: pd.DataFrame, min_count: int) -> dict[str, Any]:
        q = self.query
        flat: list[int | None] = []
        for row_level, column_level in self.table.groups:
            hit = _level_mask(sub, q.rows, row_level, self.schema) & _level_mask(
                sub, q.columns, column_level, self.schema
            )
            count = int(hit.sum())
            flat.append(count if count >= min_count else None)
        return self._table(flat)

    def reference_count(self, entry: dict[str, Any]) -> int:
        return sum(sum(row) for row in entry["counts"])


def _level_mask(frame: pd.DataFrame, column: str, level: str, schema: DatasetSchema) -> Any:
    spec = schema.column(column)
    assert spec is not None
    if spec.type == "boolean":
        return frame[column] == (1.0 if level == "True" else 0.0)
    return frame[column] == level
