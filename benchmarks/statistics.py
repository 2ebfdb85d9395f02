"""Every secure statistic against its plaintext twin: seconds, ratio, accuracy, targets.

For each statistic of DESIGN.md it times the real protocol (`smpc.simulate`: local summaries,
then one MPyC party process per hospital over TLS on loopback, party processes from the warm
pool) with 3 and 5 parties at 1 k / 10 k / 100 k pooled rows, split unevenly (party i holds a
share proportional to i + 1), next to the plaintext reference on the pooled frame
(`smpc.reference`: pandas / numpy / scipy / statsmodels / lifelines).

Accuracy. `smpc.simulate` runs the `exact` disclosure mode (docs/disclosure.md), whose cell-key
perturbation moves the released values of count, sum, mean, variance, min, max, quantile,
histogram and crosstab. Every secure result is compared with its plaintext twin,
`smpc.statistics.reference_parties` on the same frames: for those nine statistics the exact
perturbed result (twin "cell-key": the MPC must give exactly the same numbers, tolerance 0),
for linear regression and correlation the model of the Gram matrix with its cell-key
pseudo-row, computed exactly (twin "model": the MPC rounds every opened ratio to 25
significant bits; tolerance 1e-5), for the others the pooled reference (twin "pooled", with
the rounding of n and χ² that leakage.md documents; tolerance 1e-6). The error is the largest
relative error over all the result's numbers (|twin| floored at 1e-9, so a value near zero is
compared absolutely); above the tolerance the row is flagged MISMATCH. For a "cell-key" or
"model" twin the table also gives the perturbation's size: the largest relative difference
between the secure result and the exact, unperturbed answer (`smpc.reference` on the pooled
frame), and where.

Targets (at 100 k rows and 5 parties): 15 s for a 10-predictor logistic regression, 5 s for
every other statistic. A statistic whose run exceeds `--practical` seconds is not run at
larger row counts (with that many parties), and the table says where it stopped.

The naive baseline: the same mean and OLS by *record-level* MPC, every row secret-shared as
96-bit secure fixed point (`benchmarks/naive_party.py`, one process per party over TLS), to
show what summary-level MPC saves.

Data: a synthetic paediatric admissions cohort (fixed seed), with numeric vitals and labs, a
binary outcome from a logistic model, categorical ward, diagnosis and sex, and integer
follow-up days with an event flag; the declared schema gives every numeric column bounds.

Run: `.venv/bin/python benchmarks/statistics.py [--quick] [--parties 3 5] [--rows 1000 10000]
[--repeat N] [--only mean,quantile] [--naive-rows 1000 10000]`. Prints one table and writes
benchmarks/results/statistics-<timestamp>.json.

The table's columns: statistic, parties, rows, secure s and ref s (medians over `--repeat`),
ratio, target (at 100 k rows and 5 parties), max rel err (against the twin), twin ("cell-key",
"model" or "pooled"), matches (yes / MISMATCH at the worst path), perturbation (not for pooled:
the largest relative difference from the exact answer, its path and the absolute difference
there).

The JSON: `machine`, `seed`, `repeat`, `tolerance` (the pooled twins'), `twin_tolerance`
(per kind of twin), `perturbed_statistics`, `targets`, `skipped`, `rows`, `limits`,
`naive_bits`, `naive`. Each entry of `rows` (a run) has `statistic`, `query`, `parties`,
`rows`, `rows_per_party`, `target_s`, `secure_s`, `secure_runs_s`, `reference_s`,
`reference_runs_s`, `ratio`, `target_met`, `twin`, `max_rel_error` and `error_at` (against
the twin), `matches` (the error is within the twin's tolerance), `perturbation_rel_error`,
`perturbation_abs` and `perturbation_at` (against the exact answer; null for a pooled twin),
`extended` and `note`; a run that did not finish has `secure_s` null and says why in `note`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Run as a script, this file's folder comes first on sys.path, and its name would shadow the
# standard library's `statistics` (which MPyC imports): put the repository there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
sys.path.insert(0, str(ROOT.parent))

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import smpc  # noqa: E402
from smpc.frames import uneven_shares as split  # noqa: E402
from smpc.simulation import free_ports  # noqa: E402
from smpc.statistics import reference_parties  # noqa: E402
from smpc.tls import install, local_parties  # noqa: E402
from tessera.errors import TesseraError  # noqa: E402
from tessera.schemas import ColumnSpec, DatasetSchema  # noqa: E402

SEED = 20261125
DATASET = "admissions"
TOLERANCE = 1e-6
# the statistics whose exact-mode perturbation has a plaintext twin in `reference_parties`
# (docs/disclosure.md): their secure result must equal it exactly
PERTURBED = {
    "count",
    "sum",
    "mean",
    "variance",
    "min",
    "max",
    "quantile",
    "histogram",
    "crosstab",
}
# the models and the t-test perturbed by a cell-key pseudo-row (`smpc.statistics.gram`,
# `smpc.statistics.ttest`): their twin computes the same perturbed statistic exactly; the MPC
# rounds every opened ratio to 25 significant bits (2**-24 relative; a p-value far in the tail
# moves a little more than its t statistic)
MODELS = {"linear_regression", "logistic_regression", "correlation", "ttest"}
# Kaplan–Meier's curves come from the same perturbed counts as its twin's; its log-rank
# statistic is rounded to 2**-48 inside MPC (the twin's is lifelines')
CURVES = {"kaplan_meier"}
TWIN_TOLERANCE = {"cell-key": 0.0, "model": 1e-5, "pooled": TOLERANCE}
REL_FLOOR = 1e-9
TARGET_ROWS, TARGET_PARTIES = 100_000, 5
NAIVE_BITS = 96  # the naive baseline's secure fixed point: 48 fractional bits
WARDS = ["icu", "medical", "surgical"]
DIAGNOSES = ["cardiac", "infection", "other", "respiratory", "trauma"]
FOLLOW_UP_DAYS = 365
PREDICTORS_10 = [
    "age_years",
    "weight_kg",
    "sbp",
    "heart_rate",
    "resp_rate",
    "temperature",
    "spo2",
    "crp",
    "lactate",
    "hemoglobin",
]

BOUNDS: dict[str, tuple[float, float]] = {
    "age_years": (0.0, 18.0),
    "weight_kg": (1.5, 150.0),
    "sbp": (50.0, 200.0),
    "heart_rate": (40.0, 220.0),
    "resp_rate": (8.0, 80.0),
    "temperature": (34.0, 42.0),
    "spo2": (60.0, 100.0),
    "crp": (0.0, 500.0),
    "lactate": (0.0, 20.0),
    "hemoglobin": (4.0, 20.0),
}


def declared_schema() -> DatasetSchema:
    """What every hospital registers: types, levels and bounds (follow-up: whole days)."""
    numeric = [ColumnSpec(name=n, type="float", min=lo, max=hi) for n, (lo, hi) in BOUNDS.items()]
    return DatasetSchema(
        columns=[
            *numeric,
            ColumnSpec(name="sex", type="categorical", levels=["F", "M"]),
            ColumnSpec(name="ward", type="categorical", levels=WARDS),
            ColumnSpec(name="diagnosis", type="categorical", levels=DIAGNOSES),
            ColumnSpec(name="icu_transfer", type="boolean"),
            ColumnSpec(name="follow_up_days", type="integer", min=0, max=FOLLOW_UP_DAYS),
            ColumnSpec(name="died", type="boolean"),
        ]
    )


def cohort(rows: int, seed: int = SEED) -> pd.DataFrame:
    """`rows` synthetic admissions: vitals and labs that depend on age and diagnosis, an ICU
    transfer drawn from a logistic model, survival times drawn per ward and administratively
    censored at a year."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 18, rows)
    sex = rng.choice(["F", "M"], rows)
    ward = rng.choice(WARDS, rows, p=[0.15, 0.55, 0.30])
    diagnosis = rng.choice(DIAGNOSES, rows, p=[0.1, 0.3, 0.2, 0.3, 0.1])
    infection = diagnosis == "infection"
    male = sex == "M"

    def clip(name: str, values: np.ndarray) -> np.ndarray:
        return np.clip(values, *BOUNDS[name])

    weight = clip("weight_kg", 3.5 + 3.3 * age + 2.0 * male + rng.normal(0, 2 + 0.6 * age, rows))
    sbp = clip("sbp", 82 + 1.8 * age + 0.1 * weight + 3 * male + rng.normal(0, 9, rows))
    heart_rate = clip("heart_rate", 140 - 3.6 * age + 12 * infection + rng.normal(0, 14, rows))
    resp_rate = clip("resp_rate", 38 - 1.3 * age + 4 * infection + rng.normal(0, 5, rows))
    temperature = clip("temperature", 37.0 + 1.1 * infection + rng.normal(0, 0.5, rows))
    spo2 = clip("spo2", 98.5 - rng.gamma(1.2, 1.6, rows) - 2 * (diagnosis == "respiratory"))
    crp = clip("crp", rng.lognormal(1.5 + 1.6 * infection, 1.0, rows))
    lactate = clip("lactate", rng.lognormal(0.2 + 0.3 * (ward == "icu"), 0.45, rows))
    hemoglobin = clip("hemoglobin", 11.5 + 0.12 * age + rng.normal(0, 1.3, rows))
    logit = (
        -2.6
        + 0.025 * (heart_rate - 110)
        + 0.08 * (resp_rate - 28)
        - 0.12 * (spo2 - 96)
        + 0.004 * crp
        + 0.55 * lactate
        - 0.03 * age
    )
    icu_transfer = rng.random(rows) < 1 / (1 + np.exp(-logit))
    hazard = np.select([ward == "icu", ward == "surgical"], [1 / 500, 1 / 1500], 1 / 2500)
    event_time = rng.exponential(1 / (hazard * np.exp(0.4 * icu_transfer)))
    censor_time = rng.uniform(30, FOLLOW_UP_DAYS + 200, rows)
    observed = np.minimum(np.minimum(event_time, censor_time), FOLLOW_UP_DAYS)
    return pd.DataFrame(
        {
            "age_years": age,
            "weight_kg": weight,
            "sbp": sbp,
            "heart_rate": heart_rate,
            "resp_rate": resp_rate,
            "temperature": temperature,
            "spo2": spo2,
            "crp": crp,
            "lactate": lactate,
            "hemoglobin": hemoglobin,
            "sex": sex,
            "ward": ward,
            "diagnosis": diagnosis,
            "icu_transfer": icu_transfer,
            "follow_up_days": np.floor(observed).astype(np.int64),
            "died": event_time <= observed,
        }
    )


def query(statistic: str, **params: Any) -> dict[str, Any]:
    return {"statistic": statistic, "dataset": DATASET, **params}


LINEAR = {"outcome": "sbp", "predictors": ["age_years", "weight_kg", "sex", "ward"]}
QUERIES: dict[str, dict[str, Any]] = {
    "count": query("count"),
    "sum": query("sum", column="lactate"),
    "mean": query("mean", column="weight_kg"),
    "variance": query("variance", column="sbp"),
    "min": query("min", column="spo2"),
    "max": query("max", column="crp"),
    "quantile": query("quantile", column="crp", q=[0.25, 0.5, 0.75]),
    "histogram": query("histogram", column="age_years", bins=list(range(0, 19, 2))),
    "crosstab": query("crosstab", rows="ward", columns="diagnosis"),
    "correlation": query("correlation", columns=["age_years", "weight_kg", "sbp", "heart_rate"]),
    "linear_regression": query("linear_regression", **LINEAR),
    "logistic_regression": query(
        "logistic_regression",
        outcome="icu_transfer",
        predictors=["heart_rate", "spo2", "crp", "lactate"],
    ),
    "logistic_regression_10": query(
        "logistic_regression", outcome="icu_transfer", predictors=PREDICTORS_10
    ),
    "kaplan_meier": query("kaplan_meier", time="follow_up_days", event="died", group="ward"),
    "ttest": query("ttest", column="sbp", group="sex"),
    "chi2": query("chi2", rows="diagnosis", columns="ward"),
}
# the 10-predictor logistic regression runs at the largest configuration only
LARGEST_ONLY = {"logistic_regression_10"}
# run on at larger row counts (`--extend-rows`, with the most parties) to find their limit
EXTEND = {"quantile", "kaplan_meier"}
QUICK = ["count", "mean", "quantile", "linear_regression", "kaplan_meier"]
TARGET_S = {name: 15.0 if name == "logistic_regression_10" else 5.0 for name in QUERIES}


# ---- accuracy -----------------------------------------------------------------------------


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """A result's numbers (and nulls, strings) by path, e.g. 'coefficients.const'."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(leaves(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list | tuple):
        out = {f"{path}[#]": len(value)}
        for i, item in enumerate(value):
            out.update(leaves(item, f"{path}[{i}]"))
        return out
    return {path: value}


def max_relative_error(secure: dict[str, Any], reference: dict[str, Any]) -> tuple[float, str]:
    """The largest |secure − ref| / max(|ref|, 1e-9) over every number, and where.

    A key present in one result only, a null against a number, or differing text count as
    an infinite error.
    """
    worst, where, _ = largest_difference(secure, reference)
    return worst, where


def largest_difference(
    secure: dict[str, Any], reference: dict[str, Any]
) -> tuple[float, str, float]:
    """`max_relative_error`'s (relative error, path), with |secure − ref| at that path."""
    got, want = leaves(secure), leaves(reference)
    worst, where, absolute = 0.0, "", 0.0
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key, "<missing>"), want.get(key, "<missing>")
        if isinstance(a, bool | str) or isinstance(b, bool | str) or a is None or b is None:
            error = 0.0 if a == b else math.inf
        elif math.isnan(a) or math.isnan(b):
            error = 0.0 if math.isnan(a) and math.isnan(b) else math.inf
        else:
            error = abs(a - b) / max(abs(b), REL_FLOOR)
        if error > worst:
            worst, where = error, key
            absolute = math.inf if math.isinf(error) else abs(a - b)
    return worst, where, absolute


def twin_kind(name: str) -> str:
    """The twin's kind: 'cell-key' where `reference_parties` is the exact perturbed result,
    'model' where it is the perturbed model or curve computed exactly (the MPC rounds its
    ratios to 25 bits, the log-rank statistic to 2**-48)."""
    statistic = QUERIES[name]["statistic"]
    if statistic in PERTURBED:
        return "cell-key"
    return "model" if statistic in MODELS | CURVES else "pooled"


def accuracy(
    name: str,
    secure: dict[str, Any],
    frames: list[pd.DataFrame],
    exact: dict[str, Any],
    schema: DatasetSchema,
) -> dict[str, Any]:
    """The secure result against its plaintext twin (`reference_parties` on the same frames,
    no floors and the default rules, as `run_secure` runs it) and, for a cell-key twin, the
    perturbation's size against `exact` (the pooled reference)."""
    twin = twin_kind(name)
    expected = reference_parties(QUERIES[name], frames, schema)
    error, where = max_relative_error(secure, expected)
    out: dict[str, Any] = {
        "twin": twin,
        "max_rel_error": error,
        "error_at": where,
        "matches": error <= TWIN_TOLERANCE[twin],
        "perturbation_rel_error": None,
        "perturbation_abs": None,
        "perturbation_at": None,
    }
    if twin != "pooled":
        moved, at, absolute = largest_difference(secure, exact)
        out.update(perturbation_rel_error=moved, perturbation_abs=absolute, perturbation_at=at)
    return out


# ---- timing -------------------------------------------------------------------------------


def run_secure(
    name: str, frames: list[pd.DataFrame], schema: DatasetSchema, repeat: int, timeout_s: float
) -> tuple[list[float], dict[str, Any]]:
    times, result = [], {}
    for _ in range(repeat):
        started = time.perf_counter()
        result = smpc.simulate(QUERIES[name], frames, schema, timeout_s=timeout_s)
        times.append(time.perf_counter() - started)
        time.sleep(0.3 * len(frames))  # let the warm pool refill, as between real queries
    return times, result


def run_reference(
    name: str, pooled: pd.DataFrame, schema: DatasetSchema, repeat: int
) -> tuple[list[float], dict[str, Any]]:
    result = smpc.reference(QUERIES[name], pooled, schema)  # imports statsmodels, lifelines …
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = smpc.reference(QUERIES[name], pooled, schema)
        times.append(time.perf_counter() - started)
    return times, result


# ---- the naive record-level baseline -------------------------------------------------------


def naive_inputs(kind: str, frames: list[pd.DataFrame]) -> list[np.ndarray]:
    """Each party's rows as the naive protocol shares them.

    mean: the weight column. ols: [1, age, weight, sex=M, ward=medical, ward=surgical, sbp], the
    numeric columns scaled into [0, 1] by their declared bounds.
    """
    if kind == "mean":
        return [f["weight_kg"].to_numpy(dtype=float) for f in frames]

    def scaled(f: pd.DataFrame, name: str) -> np.ndarray:
        lo, hi = BOUNDS[name]
        return (f[name].to_numpy(dtype=float) - lo) / (hi - lo)

    return [
        np.column_stack(
            [
                np.ones(len(f)),
                scaled(f, "age_years"),
                scaled(f, "weight_kg"),
                (f["sex"] == "M").to_numpy(dtype=float),
                (f["ward"] == "medical").to_numpy(dtype=float),
                (f["ward"] == "surgical").to_numpy(dtype=float),
                scaled(f, "sbp"),
            ]
        )
        for f in frames
    ]


def unscale_ols(beta: list[float]) -> dict[str, float]:
    """Coefficients in the columns' own units, named as `linear_regression` names them."""
    (ay, hy), (aa, ha), (aw, hw) = BOUNDS["sbp"], BOUNDS["age_years"], BOUNDS["weight_kg"]
    sy, sa, sw = hy - ay, ha - aa, hw - aw
    b_age, b_weight = sy * beta[1] / sa, sy * beta[2] / sw
    return {
        "const": ay + sy * beta[0] - b_age * aa - b_weight * aw,
        "age_years": b_age,
        "weight_kg": b_weight,
        "sex[M]": sy * beta[3],
        "ward[medical]": sy * beta[4],
        "ward[surgical]": sy * beta[5],
    }


def run_naive(
    kind: str, frames: list[pd.DataFrame], timeout_s: float, bits: int = NAIVE_BITS
) -> dict[str, Any]:
    """One run of the naive protocol: wall seconds (cold process start included), each party's
    protocol seconds (connect to shutdown) and input seconds, and the opened result."""
    inputs = naive_inputs(kind, frames)
    sizes = [len(x) for x in inputs]
    addresses = [f"127.0.0.1:{port}" for port in free_ports(len(frames))]
    material = local_parties(len(frames), "benchmark")
    with tempfile.TemporaryDirectory(prefix="tessera-naive-") as tmp:
        procs = []
        started = time.perf_counter()
        for i, rows in enumerate(inputs):
            folder = Path(tmp) / f"party_{i}"
            folder.mkdir()
            np.save(folder / "rows.npy", rows, allow_pickle=False)
            install(material[i], i, folder)
            argv = [sys.executable, str(ROOT / "naive_party.py"), "-I", str(i), "--ssl"]
            argv += ["--no-log", *itertools.chain.from_iterable(["-P", a] for a in addresses)]
            job = {"kind": kind, "data": str(folder / "rows.npy"), "sizes": sizes, "bits": bits}
            proc = subprocess.Popen(
                argv,
                cwd=folder,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            proc.stdin = None
            procs.append(proc)
        outcomes = []
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=timeout_s)
                lines = [x for x in out.splitlines() if x.startswith("NAIVE-OUTCOME ")]
                if proc.returncode != 0 or not lines:
                    tail = err.strip().splitlines()[-1:] or ["no output"]
                    raise RuntimeError(f"naive party failed ({proc.returncode}): {tail[0]}")
                outcomes.append(json.loads(lines[-1][len("NAIVE-OUTCOME ") :]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "protocol_s": max(o["seconds"] for o in outcomes),
        "input_s": max(o["input_seconds"] for o in outcomes),
        "bytes_sent": sum(o["bytes_sent"] for o in outcomes),
        "result": outcomes[0]["result"],
    }


def naive_error(kind: str, result: Any, reference: dict[str, Any]) -> float:
    if kind == "mean":
        return abs(result - reference["mean"]) / abs(reference["mean"])
    got = unscale_ols(result)
    want = reference["coefficients"]
    return max(abs(got[k] - want[k]) / max(abs(want[k]), REL_FLOOR) for k in want)


# ---- the table ----------------------------------------------------------------------------


def target_cell(row: dict[str, Any]) -> str:
    if row.get("target_s") is None:
        return ""
    if row["secure_s"] is None:
        return f"≤{row['target_s']:.0f} s: no"
    return f"≤{row['target_s']:.0f} s: {'yes' if row['target_met'] else 'NO'}"


HEADER = (
    f"{'statistic':<24} {'parties':>7} {'rows':>8} {'secure s':>9} {'ref s':>8} "
    f"{'ratio':>8}  {'target':<12} {'max rel err':>11} {'twin':<8} {'matches':<7}  "
    f"{'perturbation':<12}"
)


def print_row(row: dict[str, Any]) -> None:
    if row["secure_s"] is None:
        print(
            f"{row['statistic']:<24} {row['parties']:>7} {row['rows']:>8,} {'—':>9} {'':>8} "
            f"{'':>8}  {target_cell(row):<12} {'':>11}  {row['note']}",
            flush=True,
        )
        return
    matches = "yes" if row["matches"] else f"MISMATCH at {row['error_at']}"
    moved = row["perturbation_rel_error"]
    perturbation = (
        ""
        if moved is None
        else f"{moved:.1e} at {row['perturbation_at'] or '—'} (|Δ| {row['perturbation_abs']:.3g})"
    )
    print(
        f"{row['statistic']:<24} {row['parties']:>7} {row['rows']:>8,} {row['secure_s']:>9.2f} "
        f"{row['reference_s']:>8.4f} {row['ratio']:>8.0f}  {target_cell(row):<12} "
        f"{row['max_rel_error']:>11.1e} {row['twin']:<8} {matches:<7}  {perturbation}",
        flush=True,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 k rows, 3 parties, 5 statistics")
    parser.add_argument("--parties", type=int, nargs="+", help="party counts (default 3 5)")
    parser.add_argument("--rows", type=int, nargs="+", help="pooled rows (default 1e3 1e4 1e5)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    parser.add_argument("--only", help="comma-separated statistics (logistic_regression_10 too)")
    parser.add_argument(
        "--naive-rows", type=int, nargs="*", help="pooled rows for the naive baseline"
    )
    parser.add_argument(
        "--extend-rows",
        type=int,
        nargs="*",
        help="larger pooled rows for quantile and kaplan_meier (default 1e6; none with --quick)",
    )
    parser.add_argument(
        "--practical",
        type=float,
        default=120.0,
        help="a statistic slower than this (s) is not run at larger row counts",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per protocol run (s)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/statistics-*.json)")
    return parser.parse_args()


def bench_cell(
    name: str,
    frames: list[pd.DataFrame],
    pooled: pd.DataFrame,
    schema: DatasetSchema,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One table row: the secure runs, the reference runs and the comparison."""
    parties, rows = len(frames), len(pooled)
    target = TARGET_S[name] if (parties, rows) == (TARGET_PARTIES, TARGET_ROWS) else None
    row: dict[str, Any] = {
        "statistic": name,
        "query": QUERIES[name],
        "parties": parties,
        "rows": rows,
        "rows_per_party": [len(f) for f in frames],
        "target_s": target,
        "secure_s": None,
        "note": "",
    }
    try:
        secure_times, secure = run_secure(name, frames, schema, args.repeat, args.timeout)
    except TesseraError as exc:
        row["note"] = f"failed: {exc.message}"
        return row
    ref_times, reference = run_reference(name, pooled, schema, args.repeat)
    secure_s, ref_s = statistics.median(secure_times), statistics.median(ref_times)
    row.update(
        secure_s=secure_s,
        secure_runs_s=secure_times,
        reference_s=ref_s,
        reference_runs_s=ref_times,
        ratio=secure_s / ref_s,
        target_met=None if target is None else secure_s <= target,
        **accuracy(name, secure, frames, reference, schema),
    )
    return row


def selected(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The statistics to run and those skipped because smpc does not support them yet."""
    names = QUICK if args.quick and not args.only else list(QUERIES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in QUERIES]
        if unknown:
            sys.exit(f"unknown statistics {unknown}; known: {', '.join(QUERIES)}")
    supported = set(smpc.STATISTICS)
    skipped = [n for n in names if QUERIES[n]["statistic"] not in supported]
    for n in skipped:
        print(f"note: {n} is skipped: smpc does not support it yet", flush=True)
    return [n for n in names if n not in skipped], skipped


def main() -> None:
    args = parse_args()
    rows_list = sorted(args.rows or ([1_000] if args.quick else [1_000, 10_000, 100_000]))
    parties_list = sorted(args.parties or ([3] if args.quick else [3, 5]))
    default_naive = [1_000] if args.quick else [1_000, 10_000, 100_000]
    naive_rows = sorted(default_naive if args.naive_rows is None else args.naive_rows)
    default_extend = [] if args.quick else [1_000_000]
    extend = default_extend if args.extend_rows is None else args.extend_rows
    extend_rows = sorted(r for r in extend if r > max(rows_list))
    names, skipped = selected(args)
    largest = (max(parties_list), max(rows_list))

    schema = declared_schema()
    pooled_all = cohort(max([*rows_list, *naive_rows, *extend_rows]))
    rows_out: list[dict[str, Any]] = []
    stopped: dict[tuple[str, int], str] = {}
    print(HEADER)
    print("-" * len(HEADER))
    for parties in parties_list:
        warmed = False
        for rows in rows_list + extend_rows:
            pooled = pooled_all.iloc[:rows].reset_index(drop=True)
            frames = split(pooled, parties)
            for name in names:
                if name in LARGEST_ONLY and (parties, rows) != largest:
                    continue
                if rows not in rows_list and (name not in EXTEND or parties != largest[0]):
                    continue
                if (name, parties) in stopped:
                    row = {"statistic": name, "parties": parties, "rows": rows, "secure_s": None}
                    row.update(target_s=None, note=stopped[(name, parties)])
                else:
                    if not warmed:  # the first run fills the warm pool with `parties` processes
                        smpc.simulate(QUERIES["count"], frames, schema)
                        time.sleep(0.3 * parties)
                        warmed = True
                    row = bench_cell(name, frames, pooled, schema, args)
                    if row["secure_s"] is None:
                        stopped[(name, parties)] = f"not run: failed at {rows:,} rows"
                    elif row["secure_s"] > args.practical:
                        stopped[(name, parties)] = (
                            f"not run: {rows:,} rows took {row['secure_s']:.0f} s "
                            f"(> --practical {args.practical:.0f} s)"
                        )
                row["extended"] = rows not in rows_list
                rows_out.append(row)
                print_row(row)

    limits = practical_limits(rows_out, names)
    naive_out = run_naive_table(naive_rows, parties_list, pooled_all, schema, args, rows_out)
    out = args.out or ROOT / "results" / f"statistics-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                "seed": SEED,
                "repeat": args.repeat,
                "tolerance": TOLERANCE,
                "twin_tolerance": TWIN_TOLERANCE,
                "perturbed_statistics": sorted(PERTURBED),
                "targets": {
                    "rows": TARGET_ROWS,
                    "parties": TARGET_PARTIES,
                    "seconds": {n: TARGET_S[n] for n in names},
                },
                "skipped": skipped,
                "rows": rows_out,
                "limits": limits,
                "naive_bits": NAIVE_BITS,
                "naive": naive_out,
            },
            indent=2,
        )
    )
    print(f"\nwritten {out}")


def practical_limits(rows_out: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Where quantile and kaplan_meier stop being practical: the largest run per party count."""
    limits: dict[str, Any] = {}
    for name in (n for n in names if n in EXTEND):
        for parties in sorted({r["parties"] for r in rows_out if r["statistic"] == name}):
            runs = [r for r in rows_out if r["statistic"] == name and r["parties"] == parties]
            done = [r for r in runs if r["secure_s"] is not None]
            stop = next((r["note"] for r in runs if r["secure_s"] is None), None)
            top = max(done, key=lambda r: r["rows"]) if done else None
            limits[f"{name}/{parties}"] = {
                "statistic": name,
                "parties": parties,
                "largest_rows": top["rows"] if top else None,
                "largest_s": top["secure_s"] if top else None,
                "stopped": stop,
            }
            reach = (
                f"ran up to {top['rows']:,} rows ({top['secure_s']:.1f} s)"
                if top
                else "did not run"
            )
            print(
                f"limit: {name} with {parties} parties {reach}; "
                + (stop or "no run took longer than --practical"),
                flush=True,
            )
    return limits


def run_naive_table(
    naive_rows: list[int],
    parties_list: list[int],
    pooled_all: pd.DataFrame,
    schema: DatasetSchema,
    args: argparse.Namespace,
    rows_out: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Naive record-level MPC against summary-level for mean and OLS.

    A size whose naive run would take longer than `--practical` seconds, extrapolated linearly
    in rows from the previous size, is not run: the extrapolation is reported instead.
    """
    if not naive_rows:
        return []
    kinds = {"mean": "mean", "ols": "linear_regression"}
    header = (
        f"{'naive baseline':<18} {'parties':>7} {'rows':>8} {'naive wall s':>12} "
        f"{'naive MPC s':>11} {'naive MB':>8} {'summary s':>9} {'saving':>7} "
        f"{'naive rel err':>13}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    out: list[dict[str, Any]] = []
    for parties in parties_list:
        last: dict[str, tuple[int, float]] = {}
        for rows in naive_rows:
            pooled = pooled_all.iloc[:rows].reset_index(drop=True)
            frames = split(pooled, parties)
            for kind, statistic in kinds.items():
                entry: dict[str, Any] = {"kind": kind, "parties": parties, "rows": rows}
                summary = summary_seconds(statistic, frames, schema, args, rows_out)
                entry["summary_s"] = summary
                if kind in last:
                    seen_rows, seen_s = last[kind]
                    guess = seen_s * rows / seen_rows
                    if guess > args.practical:
                        entry.update(
                            extrapolated_wall_s=guess,
                            saving=guess / summary,
                            note=f"not run: extrapolated linearly from {seen_rows:,} rows",
                        )
                        out.append(entry)
                        print(
                            f"{kind:<18} {parties:>7} {rows:>8,} {f'~{guess:.0f}':>12} "
                            f"{'':>11} {'':>8} {summary:>9.2f} {guess / summary:>6.0f}×  "
                            f"(extrapolated from {seen_rows:,} rows: not run)",
                            flush=True,
                        )
                        continue
                reference = smpc.reference(QUERIES[statistic], pooled, schema)
                try:
                    runs = [run_naive(kind, frames, args.timeout) for _ in range(args.repeat)]
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"{kind:<18} {parties:>7} {rows:>8,}  failed: {exc}", flush=True)
                    out.append({**entry, "note": f"failed: {exc}"})
                    continue
                entry.update(
                    naive_wall_s=statistics.median(r["wall_s"] for r in runs),
                    naive_protocol_s=statistics.median(r["protocol_s"] for r in runs),
                    naive_input_s=statistics.median(r["input_s"] for r in runs),
                    naive_bytes_sent=runs[0]["bytes_sent"],
                    naive_max_rel_error=naive_error(kind, runs[0]["result"], reference),
                )
                entry["saving"] = entry["naive_wall_s"] / summary
                last[kind] = (rows, entry["naive_wall_s"])
                out.append(entry)
                print(
                    f"{kind:<18} {parties:>7} {rows:>8,} {entry['naive_wall_s']:>12.2f} "
                    f"{entry['naive_protocol_s']:>11.2f} {entry['naive_bytes_sent'] / 1e6:>8.1f} "
                    f"{summary:>9.2f} "
                    f"{entry['saving']:>6.1f}× {entry['naive_max_rel_error']:>13.1e}",
                    flush=True,
                )
    return out


def summary_seconds(
    statistic: str,
    frames: list[pd.DataFrame],
    schema: DatasetSchema,
    args: argparse.Namespace,
    rows_out: list[dict[str, Any]],
) -> float:
    """The summary-level protocol's seconds: from the main table, or measured now."""
    rows = sum(len(f) for f in frames)
    for row in rows_out:
        same = (row["statistic"], row["parties"], row["rows"]) == (statistic, len(frames), rows)
        if same and row["secure_s"] is not None:
            return float(row["secure_s"])
    times, _ = run_secure(statistic, frames, schema, args.repeat, args.timeout)
    return statistics.median(times)


if __name__ == "__main__":
    main()
