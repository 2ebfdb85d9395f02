"""Pooled results as plain-text tables for the terminal (`tessera query submit` / `result`).

One function, `render_result`, takes any result of DESIGN.md's table and lays it out by its
shape, not by the statistic's name, so a statistic added later still prints sensibly: scalars
as key/value rows, `groups` one row per group, a histogram one row per bin, a crosstab or a
correlation matrix as a grid, regression terms one row each with their standard errors and
p-values, Kaplan-Meier one table per group. A suppressed value (`null`) reads `suppressed`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SUPPRESSED = "suppressed"

# Per-term dicts of a regression, in the order they are shown (others follow, alphabetically).
TERM_COLUMNS = ("coefficients", "std_errors", "p_values")
TERM_HEADERS = {"coefficients": "coefficient", "std_errors": "std_error", "p_values": "p_value"}


def cell(value: Any) -> str:
    """One value as text: `suppressed` for null, floats to 6 significant digits."""
    if value is None:
        return SUPPRESSED
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # 6 significant digits, but large sums keep their integer part rather than an exponent
        return f"{value:.2f}" if 1e6 <= abs(value) < 1e15 else f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def _numeric(text: str) -> bool:
    if text == SUPPRESSED:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Table:
    """Rows of cells under optional headers; `title` is printed above it."""

    rows: list[list[str]] = field(default_factory=list)
    headers: list[str] | None = None
    title: str | None = None

    def render(self) -> str:
        grid = ([self.headers] if self.headers else []) + self.rows
        if not grid:
            return self.title or ""
        width = max(len(r) for r in grid)
        grid = [r + [""] * (width - len(r)) for r in grid]
        sizes = [max(len(r[i]) for r in grid) for i in range(width)]
        # a column is right-aligned when every body cell in it is a number (or suppressed)
        right = [all(_numeric(r[i]) or r[i] == "" for r in self.rows) for i in range(width)]

        def line(row: list[str]) -> str:
            parts = [
                c.rjust(sizes[i]) if right[i] else c.ljust(sizes[i]) for i, c in enumerate(row)
            ]
            return "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        if self.headers:
            out.append(line(self.headers))
            out.append("  ".join("-" * s for s in sizes))
        out.extend(line(r) for r in self.rows)
        return "\n".join(out)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _bin_label(edges: Sequence[float], i: int) -> str:
    closing = "]" if i == len(edges) - 2 else ")"
    return f"[{cell(edges[i])}, {cell(edges[i + 1])}{closing}"


def _histogram(result: Mapping[str, Any]) -> Table:
    edges, counts = result["edges"], result["counts"]
    rows = [[_bin_label(edges, i), cell(c)] for i, c in enumerate(counts)]
    return Table(rows, ["bin", "count"])


def _grid(row_levels: Sequence[Any], values: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [
        [cell(level), *(cell(v) for v in row)]
        for level, row in zip(row_levels, values, strict=False)
    ]


def _crosstab(result: Mapping[str, Any], corner: str) -> Table:
    rows, columns = result["row_levels"], result["column_levels"]
    return Table(_grid(rows, result["counts"]), [corner, *(cell(c) for c in columns)])


def _correlation(result: Mapping[str, Any]) -> Table:
    names = result["columns"]
    return Table(_grid(names, result["matrix"]), ["", *(cell(c) for c in names)])


def _terms(result: Mapping[str, Any]) -> Table:
    """Regression terms, one row each: coefficient, std_error, p_value (what is present)."""
    keys = [k for k in TERM_COLUMNS if isinstance(result.get(k), dict)]
    terms = list(result["coefficients"])
    headers = ["term", *(TERM_HEADERS[k] for k in keys)]
    rows = [[t, *(cell(result[k].get(t)) for k in keys)] for t in terms]
    return Table(rows, headers)


def _quantiles(quantiles: Mapping[str, Any]) -> Table:
    return Table([[str(q), cell(v)] for q, v in quantiles.items()], ["q", "value"])


def _survival(curve: Mapping[str, Any]) -> Table:
    keys = [k for k in ("time", "survival", "at_risk") if isinstance(curve.get(k), list)]
    keys += [k for k in curve if k not in keys and isinstance(curve[k], list)]
    length = max((len(curve[k]) for k in keys), default=0)
    rows = [[cell(curve[k][i]) if i < len(curve[k]) else "" for k in keys] for i in range(length)]
    return Table(rows, keys)


def _key_values(pairs: list[tuple[str, Any]]) -> Table:
    return Table([[k, cell(v)] for k, v in pairs])


def _flat_pairs(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """A nested dict as `a.b` keys (for parts of a result no table below knows)."""
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out.extend(_flat_pairs(f"{prefix} {k}" if prefix else str(k), v))
        return out
    return [(prefix, value)]


def result_tables(result: Mapping[str, Any], corner: str = "") -> list[Table]:
    """The tables for one result (or one group's part of it), by the shape of its keys.
    `corner` heads a crosstab's row labels (e.g. ``sex \\ icu_admission``)."""
    tables: list[Table] = []
    used: set[str] = set()
    if isinstance(result.get("groups"), list):
        tables.extend(_group_by(result["groups"], corner))
        used.add("groups")
    elif isinstance(result.get("groups"), dict):  # Kaplan-Meier: a curve per group
        for name, curve in result["groups"].items():
            table = _survival(curve)
            table.title = f"group {cell(name)}"
            tables.append(table)
        used.add("groups")
    if isinstance(result.get("edges"), list) and isinstance(result.get("counts"), list):
        tables.append(_histogram(result))
        used |= {"edges", "counts"}
    if {"row_levels", "column_levels", "counts"} <= set(result):
        tables.append(_crosstab(result, corner))
        used |= {"row_levels", "column_levels", "counts"}
    if isinstance(result.get("columns"), list) and isinstance(result.get("matrix"), list):
        tables.append(_correlation(result))
        used |= {"columns", "matrix"}
    if isinstance(result.get("coefficients"), dict):
        tables.append(_terms(result))
        used |= {k for k in TERM_COLUMNS if isinstance(result.get(k), dict)}
    if isinstance(result.get("quantiles"), dict):
        tables.append(_quantiles(result["quantiles"]))
        used.add("quantiles")
    rest: list[tuple[str, Any]] = []
    for key, value in result.items():
        if key not in used:
            rest.extend(_flat_pairs(key, value))
    if rest:
        tables.insert(0, _key_values(rest))
    return tables


def _group_by(groups: Sequence[Mapping[str, Any]], corner: str) -> list[Table]:
    """One row per group when every group's values are scalars; else a section per group."""
    if not groups:
        return [Table([["groups", "none"]])]
    columns = list(groups[0].get("group", {}))
    keys: list[str] = []
    for entry in groups:
        keys.extend(k for k in entry if k != "group" and k not in keys)
    if all(_is_scalar(entry.get(k)) for entry in groups for k in keys):
        rows = [
            [cell(entry["group"].get(c)) for c in columns] + [cell(entry.get(k)) for k in keys]
            for entry in groups
        ]
        return [Table(rows, [*columns, *keys])]
    tables = []
    for entry in groups:
        label = ", ".join(f"{c}={cell(v)}" for c, v in entry["group"].items())
        parts = result_tables({k: v for k, v in entry.items() if k != "group"}, corner)
        if parts:
            parts[0].title = f"group {label}"
        tables.extend(parts)
    return tables


def render_result(result: Mapping[str, Any], query: Mapping[str, Any] | None = None) -> str:
    """A result as text: its tables, separated by blank lines. With the query, a crosstab's
    corner names its row and column variables."""
    corner = ""
    if query and isinstance(query.get("rows"), str) and isinstance(query.get("columns"), str):
        corner = f"{query['rows']} \\ {query['columns']}"
    return "\n\n".join(t.render() for t in result_tables(result, corner))


def render_pairs(pairs: Sequence[tuple[str, Any]], width: int = 72) -> str:
    """Key/value rows (the dry run's summary); long text wraps under its own column."""
    rows: list[list[str]] = []
    for key, value in pairs:
        lines = textwrap.wrap(cell(value), width) or [""]
        rows.append([key, lines[0]])
        rows.extend(["", more] for more in lines[1:])
    return Table(rows).render()


def budget_tables(budget: Mapping[str, Any]) -> list[Table]:
    """A study's privacy budget: per dataset, one row per node (spent / limit / available)."""
    tables = []
    for entry in budget.get("datasets", []):
        rows = []
        for node in entry["nodes"]:
            total = node.get("dataset_total") or {}
            rows.append(
                [
                    node["node"],
                    cell(node["epsilon_spent"]),
                    cell(node["epsilon_limit"]) if node["epsilon_limit"] is not None else "no dp",
                    cell(total.get("epsilon_remaining")) if total else "",
                    cell(node["epsilon_available"]),
                    cell(node["delta_spent"]),
                    cell(node["delta_available"]),
                    cell(node.get("reported_at") or "never"),
                ]
            )
        left = entry.get("epsilon_remaining")
        title = (
            f"dataset {entry['dataset']}: the study can still spend epsilon "
            f"{cell(left) if left is not None else 'nothing'}"
        )
        headers = [
            "node",
            "eps spent",
            "eps limit",
            "eps left over all studies",
            "eps available",
            "delta spent",
            "delta available",
            "reported",
        ]
        tables.append(Table(rows, headers, title))
    return tables


def render_budget(budget: Mapping[str, Any]) -> str:
    tables = budget_tables(budget)
    if not tables:
        return "the study has no datasets yet"
    return "\n\n".join(t.render() for t in tables)
