"""Result tables for the terminal: every result shape of DESIGN.md's table, and the progress
line `tessera query submit` rewrites while the nodes work."""

from __future__ import annotations

import io

import pytest

from cli.query import Progress, dry_run_pairs, progress_line
from cli.tables import cell, render_pairs, render_result


def lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"n": 2450, "count": 2450}, ["n      2450", "count  2450"]),
        ({"n": 2450, "sum": 41234.5}, ["n       2450", "sum  41234.5"]),
        ({"n": 2450, "mean": 17.234567891}, ["n        2450", "mean  17.2346"]),
        (
            {"n": 30, "mean": 4.5, "variance": 2.25, "std": 1.5},
            ["n           30", "mean       4.5", "variance  2.25", "std        1.5"],
        ),
        ({"n": 40, "min": 0}, ["n    40", "min   0"]),
        ({"n": 40, "max": 215}, ["n     40", "max  215"]),
        (
            {"statistic": -2.5, "p_value": 0.0131, "df": 57.3, "n": 60},
            ["statistic    -2.5", "p_value    0.0131", "df           57.3", "n              60"],
        ),
        ({"n": 12, "count": None}, ["n              12", "count  suppressed"]),
    ],
    ids=["count", "sum", "mean", "variance", "min", "max", "ttest", "suppressed"],
)
def test_scalar_results_are_key_value_rows(result: dict[str, object], expected: list[str]) -> None:
    assert lines(render_result(result)) == expected


def test_chi2_is_key_value_rows() -> None:
    text = render_result({"n": 500, "statistic": 3.84, "p_value": 0.05, "df": 1})
    assert lines(text) == [
        "n           500",
        "statistic  3.84",
        "p_value    0.05",
        "df            1",
    ]


def test_group_by_is_one_row_per_group() -> None:
    result = {
        "n": 2450,
        "groups": [
            {"group": {"sex": "F", "icu": False}, "n": 1180, "mean": 17.25},
            {"group": {"sex": "F", "icu": True}, "n": None, "mean": None},
            {"group": {"sex": "M", "icu": False}, "n": 1200, "mean": 18.125},
        ],
    }
    assert lines(render_result(result)) == [
        "n  2450",
        "",
        "sex  icu             n        mean",
        "---  -----  ----------  ----------",
        "F    false        1180       17.25",
        "F    true   suppressed  suppressed",
        "M    false        1200      18.125",
    ]


def test_histogram_is_a_row_per_bin_half_open_but_the_last() -> None:
    result = {"n": 90, "edges": [0, 12, 24, 60], "counts": [40, None, 45]}
    assert lines(render_result(result)) == [
        "n  90",
        "",
        "bin            count",
        "--------  ----------",
        "[0, 12)           40",
        "[12, 24)  suppressed",
        "[24, 60]          45",
    ]


def test_crosstab_is_a_grid_named_after_its_variables() -> None:
    result = {
        "n": 80,
        "row_levels": ["F", "M"],
        "column_levels": [False, True],
        "counts": [[30, None], [40, 10]],
    }
    query = {"statistic": "crosstab", "rows": "sex", "columns": "icu"}
    assert lines(render_result(result, query)) == [
        "n  80",
        "",
        "sex \\ icu  false        true",
        "---------  -----  ----------",
        "F             30  suppressed",
        "M             40          10",
    ]


def test_correlation_is_a_square_matrix() -> None:
    result = {
        "n": 300,
        "columns": ["age", "weight"],
        "matrix": [[1.0, 0.8123456], [0.8123456, 1.0]],
    }
    assert lines(render_result(result)) == [
        "n  300",
        "",
        "             age    weight",
        "------  --------  --------",
        "age            1  0.812346",
        "weight  0.812346         1",
    ]


def test_linear_regression_is_a_row_per_term() -> None:
    result = {
        "n": 300,
        "coefficients": {"const": 3.5, "age": 0.25},
        "std_errors": {"const": 0.1, "age": 0.002},
        "p_values": {"const": 1.5e-40, "age": 0.0004},
        "r_squared": 0.91,
    }
    assert lines(render_result(result)) == [
        "n           300",
        "r_squared  0.91",
        "",
        "term   coefficient  std_error  p_value",
        "-----  -----------  ---------  -------",
        "const          3.5        0.1  1.5e-40",
        "age           0.25      0.002   0.0004",
    ]


def test_logistic_regression_shows_its_iterations() -> None:
    result = {
        "n": 300,
        "coefficients": {"const": -1.0, "age": 0.05},
        "std_errors": {"const": 0.3, "age": None},
        "p_values": {"const": 0.001, "age": None},
        "iterations": 6,
    }
    text = lines(render_result(result))
    assert text[:2] == ["n           300", "iterations    6"]
    assert text[-1] == "age           0.05  suppressed  suppressed"


def test_quantiles_are_a_row_per_level() -> None:
    result = {"n": 1000, "quantiles": {"0.25": 12, "0.5": 30.5, "0.975": None}}
    assert lines(render_result(result)) == [
        "n  1000",
        "",
        "    q       value",
        "-----  ----------",
        " 0.25          12",
        "  0.5        30.5",
        "0.975  suppressed",
    ]


def test_kaplan_meier_is_a_table_per_group_and_the_logrank_test() -> None:
    result = {
        "n": 120,
        "groups": {
            "F": {"time": [1, 5], "survival": [0.95, 0.875], "at_risk": [60, 41]},
            "M": {"time": [2], "survival": [0.9], "at_risk": [None]},
        },
        "logrank": {"statistic": 1.25, "p_value": 0.2636},
    }
    assert lines(render_result(result)) == [
        "n                     120",
        "logrank statistic    1.25",
        "logrank p_value    0.2636",
        "",
        "group F",
        "time  survival  at_risk",
        "----  --------  -------",
        "   1      0.95       60",
        "   5     0.875       41",
        "",
        "group M",
        "time  survival     at_risk",
        "----  --------  ----------",
        "   2       0.9  suppressed",
    ]


def test_group_by_of_a_structured_result_is_a_section_per_group() -> None:
    result = {
        "n": 70,
        "groups": [
            {"group": {"sex": "F"}, "n": 40, "edges": [0, 1, 2], "counts": [25, 15]},
            {"group": {"sex": "M"}, "n": None, "edges": [0, 1, 2], "counts": [None, None]},
        ],
    }
    text = render_result(result)
    assert "group sex=F\nn  40\n\nbin     count\n" in text
    assert "group sex=M\nn  suppressed\n" in text
    assert text.count("[1, 2]") == 2


def test_unknown_keys_still_print() -> None:
    text = render_result({"n": 5, "extra": {"a": 1, "b": [1.5, None]}})
    assert lines(text) == ["n        5", "extra a  1", "extra b  [1.5, suppressed]"]


def test_cells() -> None:
    assert cell(None) == "suppressed"
    assert cell(0.1 + 0.2) == "0.3"
    assert cell(12345678.9) == "12345678.90", "large sums keep their digits"
    assert cell(True) == "true" and cell(3) == "3" and cell("F") == "F"


def test_dry_run_summary() -> None:
    answer = {
        "valid": True,
        "statistic": "mean",
        "dataset": "cohort",
        "nodes": [
            {"id": 1, "name": "a", "organisation": "A", "takes_part": True, "reason": None},
            {"id": 2, "name": "b", "organisation": "B", "takes_part": True, "reason": None},
            {"id": 3, "name": "c", "organisation": "C", "takes_part": True, "reason": None},
            {"id": 4, "name": "d", "organisation": "D", "takes_part": False, "reason": "no data"},
        ],
        "parties": 3,
        "min_count_applied": 10,
        "reveals": "per released group the pooled n and mean " * 3,
        "intermediates": "",
        "epsilon": 0.0,
        "delta": 0.0,
    }
    text = render_pairs(dry_run_pairs(answer))
    assert "parties            3: a (A), b (B), c (C)" in text
    assert "left out           d (D): no data" in text
    assert "min_count applied  10" in text
    assert "intermediates      none" in text
    assert all(len(line) <= 19 + 72 for line in lines(text)), "long text wraps"


def view(status: str, tasks: list[tuple[str, str | None]]) -> dict[str, object]:
    return {
        "id": 12,
        "status": status,
        "tasks": [{"node": f"n{i}", "status": s, "stage": g} for i, (s, g) in enumerate(tasks)],
    }


def test_progress_lines() -> None:
    pending = view("pending", [("accepted", None), ("offered", None), ("pending", None)])
    assert progress_line(pending) == "query 12: pending — 1/3 nodes accepted"
    running = view("running", [("done", "mpc"), ("running", "mpc"), ("running", "local")])
    assert progress_line(running) == (
        "query 12: running — 3/3 nodes accepted, 1/3 done (local, mpc)"
    )
    assert progress_line(view("succeeded", [("done", None)] * 3)) == "query 12: succeeded"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_per_change_off_a_terminal_and_rewritten_on_one() -> None:
    plain = io.StringIO()
    progress = Progress(plain)
    for line in ["a", "a", "b", "b", "c"]:
        progress.show(line)
    progress.close()
    assert plain.getvalue() == "a\nb\nc\n"

    tty = Terminal()
    progress = Progress(tty)
    for line in ["a", "a", "b"]:
        progress.show(line)
    progress.close()
    progress.close()
    assert tty.getvalue() == "\ra\x1b[K\rb\x1b[K\n"
