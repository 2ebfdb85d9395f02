"""Every synthetic-data generator on two real tables: time, fidelity, utility, privacy, targets.

Tables (shipped inside installed packages, nothing is downloaded):

- `gbsg2` (lifelines `load_gbsg2()`, 686 rows; German Breast Cancer Study Group 2), target
  `cens` (boolean: ROC AUC);
- `randhie` (statsmodels `randhie`, 20 190 rows; RAND health insurance experiment), target
  `mdvis` (integer count of visits with many values: R²).

Each table has a declared schema with *public, plausible* bounds (not the observed min/max, as a
node would register it); the metadata is `TableMetadata.from_schema(schema, train)`.

For every (table, generator, seed): `split_holdout(frame, 0.2, seed, target)`, train on the
training part, sample as many rows as it has (`sample(n, seed)`), then
`synth.evaluate(train, synthetic, holdout, target, metadata=model.metadata, seed=seed)`. Seeds
also seed numpy's and torch's global generators before each fit (CTGAN/TVAE training);
MST draws its privacy noise from fresh OS entropy by design, so its runs differ even on the
same seed.

Generators: cart, gaussian_copula (Tessera's defaults), ctgan and tvae (`--epochs`, default
300, on `--device`), mst at ε = 1 and ε = 5 (δ = 1e-6), and a baseline: SDV's own
`GaussianCopulaSynthesizer` with SDV's default settings, timed directly (fit seconds and
fidelity only), to read "fit time no worse than SDV's own" off the table.

Imports of SDV, torch, SDMetrics and mbi/JAX are done once before any timing (their seconds
are in the JSON as `import_seconds`), so no run's fit time includes them.

Run: `.venv/bin/python benchmarks/synth.py [--tables gbsg2,randhie] [--generators cart,...]
[--seeds 3] [--big-seeds 1] [--epochs 300] [--device auto|cpu|cuda] [--smoke] [--out PATH]`.
Prints a Markdown table per table and the target lines, and writes every raw number to
benchmarks/results/synth.json (the tables also to synth.md next to it).
"""

from __future__ import annotations

import os

# BLAS/OpenMP threads: one each unless the caller says otherwise (set before numpy loads).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent
# Run as a script, this file's folder comes first on sys.path, and its name would shadow the
# `synth` package: put the repository there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
sys.path.insert(0, str(ROOT.parent))

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import synth  # noqa: E402
from synth.holdout import split_holdout  # noqa: E402
from tessera.schemas import ColumnSpec, DatasetSchema  # noqa: E402

HOLDOUT = 0.2
SMALL, BIG = "gbsg2", "randhie"
SMOKE_BIG_ROWS = 2_000
SMOKE_EPOCHS = 2
SMOKE_MST_ITERS = 100
TORCH = {"ctgan", "tvae"}
DEFAULT_GENERATOR = inspect.signature(synth.train).parameters["generator"].default
FIDELITY_TARGET, DP_FIDELITY_TARGET, GAP_TARGET = 0.90, 0.85, 0.05


# ---- tables -------------------------------------------------------------------------------


def integer(name: str, lo: float, hi: float) -> ColumnSpec:
    return ColumnSpec(name=name, type="integer", min=lo, max=hi)


def real(name: str, lo: float, hi: float) -> ColumnSpec:
    return ColumnSpec(name=name, type="float", min=lo, max=hi)


def categorical(name: str, levels: list[str]) -> ColumnSpec:
    return ColumnSpec(name=name, type="categorical", levels=levels)


GBSG2_SCHEMA = DatasetSchema(
    columns=[
        categorical("horTh", ["no", "yes"]),
        integer("age", 18, 100),
        categorical("menostat", ["Post", "Pre"]),
        integer("tsize", 0, 200),
        categorical("tgrade", ["I", "II", "III"]),
        integer("pnodes", 0, 60),
        integer("progrec", 0, 3000),
        integer("estrec", 0, 1500),
        integer("time", 0, 3000),
        ColumnSpec(name="cens", type="boolean"),
    ]
)

RANDHIE_SCHEMA = DatasetSchema(
    columns=[
        integer("mdvis", 0, 200),
        real("lncoins", 0, 5),
        integer("idp", 0, 1),
        real("lpi", 0, 8),
        real("fmde", 0, 10),
        real("physlm", 0, 1),
        real("disea", 0, 100),
        integer("hlthg", 0, 1),
        integer("hlthf", 0, 1),
        integer("hlthp", 0, 1),
    ]
)


def load_gbsg2() -> pd.DataFrame:
    from lifelines.datasets import load_gbsg2 as load

    frame = load()
    frame["cens"] = frame["cens"].astype(bool)
    return frame[GBSG2_SCHEMA.names].reset_index(drop=True)


def load_randhie() -> pd.DataFrame:
    import statsmodels.api as sm

    frame = sm.datasets.randhie.load_pandas().data.copy()
    for name in ("mdvis", "idp", "hlthg", "hlthf", "hlthp"):
        frame[name] = frame[name].astype(int)
    return frame[RANDHIE_SCHEMA.names].reset_index(drop=True)


@dataclass(frozen=True)
class Table:
    name: str
    load: Callable[[], pd.DataFrame]
    schema: DatasetSchema
    target: str
    source: str


TABLES = {
    SMALL: Table(SMALL, load_gbsg2, GBSG2_SCHEMA, "cens", "lifelines.datasets.load_gbsg2()"),
    BIG: Table(
        BIG, load_randhie, RANDHIE_SCHEMA, "mdvis", "statsmodels.api.datasets.randhie.load_pandas()"
    ),
}


# ---- generators ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generator:
    key: str  # what --generators names
    label: str  # what the table shows
    generator: str | None  # the synth generator, None for the SDV baseline
    params: dict[str, Any] = field(default_factory=dict)


def generators(args: argparse.Namespace) -> dict[str, Generator]:
    epochs = args.epochs
    mst = {"iters": SMOKE_MST_ITERS} if args.smoke else {}
    return {
        g.key: g
        for g in (
            Generator("cart", "cart (defaults)", "cart"),
            Generator("gaussian_copula", "gaussian_copula (defaults)", "gaussian_copula"),
            Generator("ctgan", f"ctgan ({epochs} epochs)", "ctgan", {"epochs": epochs}),
            Generator("tvae", f"tvae ({epochs} epochs)", "tvae", {"epochs": epochs}),
            Generator("mst_e1", "mst ε=1 (δ=1e-6)", "mst", {"epsilon": 1.0, **mst}),
            Generator("mst_e5", "mst ε=5 (δ=1e-6)", "mst", {"epsilon": 5.0, **mst}),
            Generator("sdv_gaussian_copula", "sdv GaussianCopula (SDV defaults)", None),
        )
    }


def synth_params(g: Generator) -> dict[str, Any]:
    return {k: v for k, v in g.params.items() if v is not None}


# ---- one run ------------------------------------------------------------------------------

Stage = Callable[..., None]  # stage(description, **numbers so far): where a run is


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def split_run(
    frame: pd.DataFrame, name: str, key: str, g: Generator, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """One run's training and holdout rows, and the start of its record."""
    train, holdout = split_holdout(frame, HOLDOUT, seed=seed, target=TABLES[name].target)
    record: dict[str, Any] = {
        "table": name,
        "generator": key,
        "label": g.label,
        "synth_generator": g.generator,
        "params": synth_params(g),
        "seed": seed,
        "train_rows": len(train),
        "holdout_rows": len(holdout),
    }
    return train, holdout, record


def run_synth(
    g: Generator,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    table: Table,
    seed: int,
    device: str,
    stage: Stage = lambda name, **values: None,
) -> dict[str, Any]:
    metadata = synth.TableMetadata.from_schema(table.schema, train)
    seed_everything(seed)
    stage(f"fitting on {len(train):,} rows")
    started = time.perf_counter()
    model = synth.train(
        train, g.generator or "", metadata=metadata, device=device, **synth_params(g)
    )
    fit_s = time.perf_counter() - started
    stage(f"sampling {len(train):,} rows", fit_s=fit_s)
    started = time.perf_counter()
    synthetic = model.sample(len(train), seed=seed)
    sample_s = time.perf_counter() - started
    stage("evaluating", fit_s=fit_s, sample_s=sample_s)
    started = time.perf_counter()
    report = synth.evaluate(
        train, synthetic, holdout, target=table.target, metadata=model.metadata, seed=seed
    )
    evaluate_s = time.perf_counter() - started
    return {
        "fit_s": fit_s,
        "fit_s_internal": model.fit_seconds,
        "sample_s": sample_s,
        "evaluate_s": evaluate_s,
        "device": model.device,
        "epsilon": model.epsilon,
        "delta": model.delta,
        "evaluation": report,
    }


def run_sdv_baseline(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    table: Table,
    seed: int,
    stage: Stage = lambda name, **values: None,
) -> dict[str, Any]:
    """SDV's GaussianCopulaSynthesizer with SDV's defaults, on the same training rows; fit
    seconds and fidelity (SDMetrics' quality report, as `evaluate` computes it)."""
    from sdv.metadata import Metadata
    from sdv.single_table import GaussianCopulaSynthesizer

    from synth.evaluation import fidelity_scores

    metadata = synth.TableMetadata.from_schema(table.schema, train)
    sdtypes = {
        c.name: {
            "sdtype": "numerical"
            if c.is_numeric
            else ("boolean" if c.kind == "boolean" else "categorical")
        }
        for c in metadata.columns
    }
    seed_everything(seed)
    stage(f"fitting on {len(train):,} rows")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        sdv_meta = Metadata.load_from_dict(
            {"tables": {"table": {"columns": sdtypes}}, "METADATA_SPEC_VERSION": "V1"}
        )
        model = GaussianCopulaSynthesizer(sdv_meta)
        model.fit({"table": train.reset_index(drop=True)})
        fit_s = time.perf_counter() - started
        stage(f"sampling {len(train):,} rows", fit_s=fit_s)
        started = time.perf_counter()
        sampled = model.sample(len(train))
        sample_s = time.perf_counter() - started
    if isinstance(sampled, dict):
        sampled = sampled["table"]
    synthetic = metadata.restore(sampled)
    started = time.perf_counter()
    fidelity = fidelity_scores(metadata.restore(train), synthetic, metadata)
    evaluate_s = time.perf_counter() - started
    return {
        "fit_s": fit_s,
        "sample_s": sample_s,
        "evaluate_s": evaluate_s,
        "device": "cpu",
        "evaluation": {"fidelity": fidelity},
    }


def metrics(run: dict[str, Any], task: str) -> dict[str, Any]:
    """The numbers the table shows, flattened from one run."""
    report = run.get("evaluation") or {}
    fidelity = report.get("fidelity") or {}
    utility = report.get("utility") or {}
    privacy = report.get("privacy") or {}
    if "target_rate_real" in utility:
        target_real = utility["target_rate_real"].get("True")
        target_synth = utility["target_rate_synthetic"].get("True")
    else:
        target_real = utility.get("target_mean_real")
        target_synth = utility.get("target_mean_synthetic")
    return {
        "fit_s": run.get("fit_s"),
        "sample_s": run.get("sample_s"),
        "evaluate_s": run.get("evaluate_s"),
        "fidelity": fidelity.get("score"),
        "column_shapes": fidelity.get("column_shapes"),
        "column_pair_trends": fidelity.get("column_pair_trends"),
        "column_pair_trends_all_pairs": fidelity.get("column_pair_trends_all_pairs"),
        "pairs_scored": fidelity.get("pairs_scored"),
        "pairs_total": fidelity.get("pairs_total"),
        "validity": fidelity.get("validity"),
        "tstr": utility.get("tstr"),
        "trtr": utility.get("trtr"),
        "gap": utility.get("gap"),
        "target_real": target_real,
        "target_synthetic": target_synth,
        "exact_copy": privacy.get("exact_match_rate"),
        "exact_copy_holdout": privacy.get("exact_match_rate_holdout"),
        "dcr_synthetic_median": privacy.get("dcr_synthetic_median"),
        "dcr_holdout_median": privacy.get("dcr_holdout_median"),
        "dcr_median_ratio": privacy.get("dcr_median_ratio"),
        "mia_auc": privacy.get("mia_auc"),
        "epsilon": run.get("epsilon"),
    }


def aggregate(values: list[Any]) -> dict[str, float] | None:
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not present:
        return None
    return {
        "mean": float(np.mean(present)),
        "min": min(present),
        "max": max(present),
        "n": len(present),
    }


def execute(
    settings: dict[str, Any],
    name: str,
    frame: pd.DataFrame,
    key: str,
    seed: int,
    stage: Stage = lambda name, **values: None,
) -> dict[str, Any]:
    """One (table, generator, seed): split, train, sample, evaluate; an error is recorded in
    the returned record, never raised."""
    table = TABLES[name]
    g = generators(argparse.Namespace(**settings))[key]
    train, holdout, record = split_run(frame, name, key, g, seed)
    try:
        if g.generator is None:
            result = run_sdv_baseline(train, holdout, table, seed, stage)
        else:
            device = settings["device"] if g.generator in TORCH else "cpu"
            result = run_synth(g, train, holdout, table, seed, device, stage)
        record.update(result)
        record["error"] = None
    except Exception as exc:  # recorded in the row, never hidden
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
        log(record["traceback"])
    record["metrics"] = metrics(record, "classification" if name == SMALL else "regression")
    return record


def _child(
    conn: Any, settings: dict[str, Any], name: str, frame: pd.DataFrame, key: str, seed: int
) -> None:
    """`execute` in a child process (`--time-limit`): stages and the record go to `conn`."""
    warm_imports([key], generators(argparse.Namespace(**settings)))
    if key in TORCH:
        import torch  # noqa: F401 -- so that seed_everything seeds it

    def stage(description: str, **values: Any) -> None:
        conn.send(("stage", description, values))

    conn.send(("record", execute(settings, name, frame, key, seed, stage)))
    conn.close()


def execute_limited(
    settings: dict[str, Any],
    name: str,
    frame: pd.DataFrame,
    key: str,
    seed: int,
    limit_s: float,
) -> dict[str, Any]:
    """`execute` in a spawned child process, stopped after `limit_s` seconds (imports in the
    child are done before the clock starts): a run that takes longer is recorded as timed out,
    with the stage it was in and what it had measured."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, settings, name, frame, key, seed))
    process.start()
    child.close()
    where, values, deadline = "starting", {}, None
    record: dict[str, Any] | None = None
    try:
        while record is None:
            wait = 5.0 if deadline is None else max(0.0, deadline - time.perf_counter())
            if deadline is not None and wait == 0.0:
                break
            if parent.poll(min(wait, 5.0)):
                try:
                    message = parent.recv()
                except EOFError:
                    break
                if message[0] == "record":
                    record = message[1]
                else:
                    where, values = message[1], message[2]
                    if deadline is None:  # the clock starts with the run, after imports
                        deadline = time.perf_counter() + limit_s
            elif not process.is_alive() and not parent.poll():
                break
    finally:
        if process.is_alive():
            process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
    if record is not None:
        return record
    g = generators(argparse.Namespace(**settings))[key]
    measured = ", ".join(f"{k.replace('_s', '')} took {v:.1f} s" for k, v in values.items())
    reason = (
        f"timed out after {limit_s:.0f} s while {where}"
        if deadline is not None and time.perf_counter() >= deadline
        else f"the child process ended (exit code {process.exitcode}) while {where}"
    )
    error = reason + (f" ({measured})" if measured else "")
    _, _, record = split_run(frame, name, key, g, seed)
    record |= {
        "error": error,
        "stage": where,
        "partial_seconds": values,
        **values,
    }
    record["metrics"] = metrics(record, "classification" if name == SMALL else "regression")
    log(f"{name} {key} seed {seed}: {error}")
    return record


# ---- the benchmark ------------------------------------------------------------------------


def warm_imports(keys: list[str], gens: dict[str, Generator]) -> dict[str, float]:
    """Import what the generators and the evaluation import, once, outside every timing."""
    seconds: dict[str, float] = {}

    def timed(name: str, action: Callable[[], Any]) -> None:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action()
        seconds[name] = round(time.perf_counter() - started, 3)

    used = {gens[k].generator for k in keys}

    def sdmetrics() -> None:
        import sdmetrics.reports.single_table  # noqa: F401
        import sklearn.ensemble
        import sklearn.neighbors  # noqa: F401

    timed("synth.generators", lambda: synth.generator_class("cart"))
    timed("sdmetrics+sklearn", sdmetrics)
    if used & {"gaussian_copula", "ctgan", "tvae", None}:
        timed("sdv", lambda: __import__("sdv.single_table"))
    if used & TORCH:
        timed("torch", lambda: __import__("torch"))
    if "mst" in used:

        def mbi() -> None:
            from synth.generators.mst import _configure_jax

            _configure_jax()
            import mbi.estimation  # noqa: F401

        timed("mbi+jax", mbi)
    return seconds


def plan(args: argparse.Namespace, table: str, key: str) -> int:
    """How many seeds this (table, generator) runs."""
    if args.smoke:
        return 1
    if table == BIG:
        return min(args.big_seeds, args.big_torch_seeds) if key in TORCH else args.big_seeds
    return args.seeds


def bench(args: argparse.Namespace, checkpoint: Path | None = None) -> dict[str, Any]:
    """Run every (table, generator, seed); after each (table, generator) the runs so far are
    written to `checkpoint` (`"partial": true`), so a long run that stops loses nothing."""
    gens = generators(args)
    keys = args.generators
    started_all = time.perf_counter()
    code_start = code_version()
    imports = warm_imports(keys, gens)
    log(f"imports: {imports}")
    tables_out: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for name in args.tables:
        table = TABLES[name]
        frame = table.load()
        full_rows = len(frame)
        if args.smoke and name == BIG:
            frame = frame.sample(SMOKE_BIG_ROWS, random_state=0).reset_index(drop=True)
        tables_out[name] = {
            "source": table.source,
            "rows": len(frame),
            "rows_available": full_rows,
            "target": table.target,
            "schema": table.schema.model_dump(),
        }
        for key in keys:
            g = gens[key]
            seeds = list(range(plan(args, name, key)))
            seed_runs = []
            for seed in seeds:
                settings = {"epochs": args.epochs, "smoke": args.smoke, "device": args.device}
                if args.time_limit:
                    record = execute_limited(settings, name, frame, key, seed, args.time_limit)
                else:
                    record = execute(settings, name, frame, key, seed)
                runs.append(record)
                seed_runs.append(record)
                m = record["metrics"]
                log(
                    f"{name} {key} seed {seed}: "
                    + (
                        f"ERROR {record['error']}"
                        if record["error"]
                        else f"fit {m['fit_s']:.2f} s, fidelity {m['fidelity']}, "
                        f"TSTR {m['tstr']} / TRTR {m['trtr']}, DCR ratio {m['dcr_median_ratio']}"
                    )
                )
            ok = [r for r in seed_runs if r["error"] is None]
            errors = sorted({r["error"] for r in seed_runs if r["error"]})
            summary.append(
                {
                    "table": name,
                    "generator": key,
                    "label": g.label,
                    "seeds": seeds,
                    "runs": len(seed_runs),
                    "succeeded": len(ok),
                    "errors": errors,
                    "device": sorted({r["device"] for r in ok}),
                    "train_rows": seed_runs[0]["train_rows"],
                    "holdout_rows": seed_runs[0]["holdout_rows"],
                    "metrics": {
                        metric: aggregate([r["metrics"][metric] for r in ok])
                        for metric in seed_runs[0]["metrics"]
                    },
                }
            )
            if checkpoint is not None:
                partial = {"partial": True, "config": vars(args), "summary": summary, "runs": runs}
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.write_text(json.dumps(partial, indent=2, default=str))
    targets = evaluate_targets(summary)
    return {
        "partial": False,
        "code": {"start": code_start, "end": code_version()},
        "machine": machine(),
        "config": {
            "tables": args.tables,
            "generators": keys,
            "seeds": args.seeds,
            "big_seeds": args.big_seeds,
            "big_torch_seeds": args.big_torch_seeds,
            "time_limit": args.time_limit,
            "epochs": args.epochs,
            "device": args.device,
            "smoke": args.smoke,
            "holdout": HOLDOUT,
            "default_generator": DEFAULT_GENERATOR,
        },
        "import_seconds": imports,
        "tables": tables_out,
        "summary": summary,
        "runs": runs,
        "targets": targets,
        "total_seconds": round(time.perf_counter() - started_all, 1),
    }


def merge(paths: list[Path]) -> dict[str, Any]:
    """Several complete reports as one: tables, summary rows and runs together (a later report's
    (table, generator) replaces an earlier one's), the targets recomputed from them."""
    reports = []
    for path in paths:
        report = json.loads(path.read_text())
        if report.get("partial", True):
            raise SystemExit(f"{path} is a partial report (its run did not finish): not merged")
        reports.append(report)
    tables: dict[str, Any] = {}
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for report in reports:
        tables.update(report["tables"])
        for row in report["summary"]:
            key = (row["table"], row["generator"])
            if key in summary:
                log(f"merge: {key} appears again; the later report's rows are kept")
            summary[key] = row
            runs[key] = [r for r in report["runs"] if (r["table"], r["generator"]) == key]
    table_order = [t for t in TABLES if t in tables]
    keys = list(generators(argparse.Namespace(epochs=0, smoke=False)))
    ordered = sorted(summary, key=lambda k: (table_order.index(k[0]), keys.index(k[1])))
    rows = [summary[k] for k in ordered]
    return {
        "partial": False,
        "code": [r.get("code") for r in reports],
        "machine": reports[0]["machine"],
        "config": {
            "merged_from": [
                {"path": str(p), "config": r["config"], "total_seconds": r["total_seconds"]}
                for p, r in zip(paths, reports, strict=True)
            ],
            "default_generator": DEFAULT_GENERATOR,
        },
        "import_seconds": [r.get("import_seconds") for r in reports],
        "tables": {t: tables[t] for t in table_order},
        "summary": rows,
        "runs": [run for k in ordered for run in runs[k]],
        "targets": evaluate_targets(rows),
        "total_seconds": round(sum(r["total_seconds"] for r in reports), 1),
    }


def code_version() -> dict[str, Any]:
    """Which code was measured: the commit, whether `synth/` differs from it, and a hash of
    every `synth/` source file (others may edit the tree while a long run goes on)."""
    import hashlib
    import subprocess

    repo = ROOT.parent

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=repo, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    digest = hashlib.sha256()
    for path in sorted((repo / "synth").rglob("*.py")):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    status = git("status", "--porcelain", "--", "synth")
    return {
        "git_head": git("rev-parse", "HEAD"),
        "synth_dirty": None if status is None else bool(status),
        "synth_sha256": digest.hexdigest(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def machine() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for package in ("sdv", "sdmetrics", "ctgan", "torch", "mbi", "jax", "scikit-learn", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "threads_env": {
            v: os.environ.get(v)
            for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "versions": versions,
    }
    if "torch" in sys.modules:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


# ---- targets ------------------------------------------------------------------------------


def find(summary: list[dict[str, Any]], table: str, key: str) -> dict[str, Any] | None:
    for row in summary:
        if row["table"] == table and row["generator"] == key and row["succeeded"]:
            return row
    return None


def mean(row: dict[str, Any], metric: str) -> float | None:
    value = row["metrics"].get(metric)
    return None if value is None else value["mean"]


def evaluate_targets(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The three targets, from the seed means (see the module doc of `main`)."""
    out: dict[str, Any] = {}

    # (a) the default generator on the small table
    row = find(summary, SMALL, DEFAULT_GENERATOR)
    if row is None:
        out["a"] = {
            "met": None,
            "line": f"target (a): not evaluated ({DEFAULT_GENERATOR!r} on "
            f"{SMALL} did not run or failed)",
        }
    else:
        fid, ds, dh = (
            mean(row, "fidelity"),
            mean(row, "dcr_synthetic_median"),
            mean(row, "dcr_holdout_median"),
        )
        tstr, trtr = mean(row, "tstr"), mean(row, "trtr")
        gap = None if tstr is None or trtr is None else trtr - tstr
        checks = {
            "fidelity": fid is not None and fid >= FIDELITY_TARGET,
            "dcr": ds is not None and dh is not None and ds >= dh,
            "utility": gap is not None and gap <= GAP_TARGET,
        }
        met = all(checks.values())
        out["a"] = {
            "met": met,
            "generator": DEFAULT_GENERATOR,
            "table": SMALL,
            "fidelity": fid,
            "dcr_synthetic_median": ds,
            "dcr_holdout_median": dh,
            "tstr": tstr,
            "trtr": trtr,
            "gap": gap,
            "checks": checks,
            "line": (
                f"target (a) default generator {DEFAULT_GENERATOR!r} on {SMALL} "
                f"({row['succeeded']} seeds, means): {'MET' if met else 'NOT MET'} — "
                f"fidelity {fid:.3f} ≥ {FIDELITY_TARGET} {yes(checks['fidelity'])}; "
                f"DCR median synthetic {ds:.4f} ≥ holdout {dh:.4f} {yes(checks['dcr'])}; "
                f"TSTR {fmt(tstr)} within {GAP_TARGET} of TRTR {fmt(trtr)} "
                f"(gap {fmt(gap)}) {yes(checks['utility'])}"
            ),
        }

    # (b) MST at ε = 1
    per_table = {}
    for table in TABLES:
        row = find(summary, table, "mst_e1")
        if row is not None:
            per_table[table] = mean(row, "fidelity")
    if not per_table:
        out["b"] = {"met": None, "line": "target (b): not evaluated (mst ε=1 did not run)"}
    else:
        reached = [t for t, f in per_table.items() if f is not None and f >= DP_FIDELITY_TARGET]
        parts = "; ".join(f"{t} {fmt(f)} {yes(t in reached)}" for t, f in per_table.items())
        out["b"] = {
            "met": bool(reached),
            "fidelity": per_table,
            "tables_met": reached,
            "line": (
                f"target (b) DP generator mst at ε=1 reaches fidelity ≥ {DP_FIDELITY_TARGET}: "
                f"{'MET on ' + ', '.join(reached) if reached else 'NOT MET'} — {parts}"
            ),
        }

    # (c) default generator's fit time against SDV's own GaussianCopula
    comparisons = {}
    for table in TABLES:
        ours, theirs = (
            find(summary, table, DEFAULT_GENERATOR),
            find(summary, table, "sdv_gaussian_copula"),
        )
        if ours is not None and theirs is not None:
            a, b = mean(ours, "fit_s"), mean(theirs, "fit_s")
            comparisons[table] = {
                "default_fit_s": a,
                "sdv_fit_s": b,
                "ratio": a / b,
                "no_worse": a <= b,
            }
    if not comparisons:
        out["c"] = {"met": None, "line": "target (c): not evaluated (needs both generators)"}
    else:
        met = all(c["no_worse"] for c in comparisons.values())
        parts = "; ".join(
            f"{t} {c['default_fit_s']:.2f} s vs {c['sdv_fit_s']:.2f} s "
            f"({c['ratio']:.2f}×, no worse: {yes(c['no_worse'])})"
            for t, c in comparisons.items()
        )
        out["c"] = {
            "met": met,
            "comparisons": comparisons,
            "line": (
                f"target (c) default generator {DEFAULT_GENERATOR!r} fit time vs SDV's own "
                f"GaussianCopula (SDV defaults), same training rows: "
                f"{'MET' if met else 'NOT MET'} — {parts}"
            ),
        }
    return out


def yes(ok: bool) -> str:
    return "yes" if ok else "no"


# ---- printing -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cell(row: dict[str, Any], metric: str, digits: int = 3, spread: bool = False) -> str:
    value = row["metrics"].get(metric)
    if value is None:
        return "–"
    text = f"{value['mean']:.{digits}f}"
    if spread and value["n"] > 1:
        text += f" ({value['min']:.{digits}f}–{value['max']:.{digits}f})"
    return text


def pair(row: dict[str, Any], a: str, b: str, digits: int) -> str:
    return f"{cell(row, a, digits)} / {cell(row, b, digits)}"


COLUMNS = [
    "generator",
    "runs",
    "device",
    "fit s",
    "sample s",
    "eval s",
    "fidelity",
    "shapes",
    "pairs",
    "all pairs",
    "TSTR",
    "TRTR",
    "gap",
    "target real / syn",
    "exact copy syn / holdout",
    "DCR med syn / holdout",
    "DCR ratio",
    "MIA AUC",
]


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for name, info in report["tables"].items():
        rows = [r for r in report["summary"] if r["table"] == name]
        if not rows:
            continue
        target = info["target"]
        metric = "ROC AUC" if name == SMALL else "R²"
        rate = f"rate of {target}=True" if name == SMALL else f"mean {target}"
        lines.append(
            f"### {name}: {info['rows']:,} rows ({rows[0]['train_rows']:,} train / "
            f"{rows[0]['holdout_rows']:,} holdout), target `{target}` (TSTR/TRTR: {metric}; "
            f"target real / syn: {rate})"
        )
        scored = next((r["metrics"].get("pairs_scored") for r in rows if r["succeeded"]), None)
        total = next((r["metrics"].get("pairs_total") for r in rows if r["succeeded"]), None)
        if scored and total:
            lines.append(
                f"(pairs: SDMetrics' pair trends over the {scored['max']:.0f} of "
                f"{total['max']:.0f} pairs associated in the real rows, |r| > 0.5 or "
                "Cramér's V > 0.3; all pairs: the same metrics over every pair)"
            )
        lines.append("")
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
        for r in rows:
            runs = f"{r['succeeded']}/{r['runs']}"
            if not r["succeeded"]:
                error = "; ".join(r["errors"]).replace("|", "\\|").replace("\n", " ")[:300]
                lines.append(
                    f"| {r['label']} | {runs} | – | **error: {error}** |"
                    + " – |" * (len(COLUMNS) - 4)
                )
                continue
            label = r["label"]
            if r["errors"]:
                label += " (errors: " + "; ".join(r["errors"]).replace("|", "\\|")[:200] + ")"
            cells = [
                label,
                runs,
                ",".join(r["device"]),
                cell(r, "fit_s", 2, spread=True),
                cell(r, "sample_s", 2),
                cell(r, "evaluate_s", 1),
                cell(r, "fidelity", 3, spread=True),
                cell(r, "column_shapes"),
                cell(r, "column_pair_trends"),
                cell(r, "column_pair_trends_all_pairs"),
                cell(r, "tstr", 3, spread=True),
                cell(r, "trtr"),
                cell(r, "gap"),
                pair(r, "target_real", "target_synthetic", 3),
                pair(r, "exact_copy", "exact_copy_holdout", 4),
                pair(r, "dcr_synthetic_median", "dcr_holdout_median", 4),
                cell(r, "dcr_median_ratio", 2),
                cell(r, "mia_auc"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Means over the seeds (min–max in brackets where more than one). The SDV baseline "
        "reports fit seconds and fidelity only."
    )
    lines.append("")
    for key in ("a", "b", "c"):
        lines.append(report["targets"][key]["line"])
    lines.append("")
    codes = report.get("code")
    codes = codes if isinstance(codes, list) else [codes]
    hashes = {c[end]["synth_sha256"] for c in codes if c for end in ("start", "end")}
    heads = sorted({c[end]["git_head"][:10] for c in codes if c for end in ("start", "end")})
    if len(hashes) > 1:
        lines.append(f"WARNING: synth/ changed during the run(s) (commits {', '.join(heads)})")
    elif heads:
        dirty = any(c["start"]["synth_dirty"] for c in codes if c)
        lines.append(
            f"code: commit {heads[0]}" + (" with uncommitted synth/ changes" if dirty else "")
        )
    lines.append(f"total {report['total_seconds']:.0f} s")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    keys = list(generators(argparse.Namespace(epochs=0, smoke=False)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", help=f"comma-separated (default {SMALL},{BIG}; smoke: {SMALL})")
    parser.add_argument(
        "--generators", default=",".join(keys), help=f"comma-separated, of {', '.join(keys)}"
    )
    parser.add_argument("--seeds", type=int, default=3, help=f"seeds on {SMALL} (default 3)")
    parser.add_argument("--big-seeds", type=int, default=1, help=f"seeds on {BIG} (default 1)")
    parser.add_argument(
        "--big-torch-seeds", type=int, default=1, help=f"at most this many for ctgan/tvae on {BIG}"
    )
    parser.add_argument("--epochs", type=int, help="ctgan/tvae epochs (default 300; smoke: 2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny: {SMALL} only, 1 seed, {SMOKE_EPOCHS} epochs, mst iters {SMOKE_MST_ITERS}, "
        f"{BIG} subsampled to {SMOKE_BIG_ROWS:,} rows",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help="run each (table, generator, seed) in a child process and stop it after this many "
        "seconds, recording it as timed out (default: in this process, no limit)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="run nothing: combine the reports of earlier runs (e.g. one per table) into one, "
        "recompute the targets, print the tables and write --out",
    )
    parser.add_argument("--out", type=Path, help="JSON path (default results/synth.json)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = SMOKE_EPOCHS if args.smoke else 300
    tables = args.tables or (SMALL if args.smoke else f"{SMALL},{BIG}")
    args.tables = [t.strip() for t in tables.split(",") if t.strip()]
    args.generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    unknown = [t for t in args.tables if t not in TABLES] + [
        g for g in args.generators if g not in keys
    ]
    if unknown:
        parser.error(f"unknown table(s) or generator(s): {', '.join(unknown)}")
    if args.time_limit is not None and args.time_limit <= 0:
        parser.error("--time-limit must be positive")
    if min(args.seeds, args.big_seeds, args.big_torch_seeds, args.epochs) < 1:
        parser.error("--seeds, --big-seeds, --big-torch-seeds and --epochs must be positive")
    if TORCH & set(args.generators) and not args.merge:
        try:
            synth.resolve_device(args.device)
        except Exception as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or ROOT / "results" / "synth.json"
    report = merge(args.merge) if args.merge else bench(args, checkpoint=out)
    text = markdown(report)
    print(text, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"\nwritten {out} and {out.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
