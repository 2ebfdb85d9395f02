"""How long `synth.evaluate` takes as tables grow, part by part.

randhie (statsmodels, 20 190 rows) is resampled with replacement to 1.25 × N rows, split 80/20
(stratified by nothing: the target `mdvis` is a count), `cart` is trained on the N training rows
and samples N rows, and `evaluate(train, synthetic, holdout, target="mdvis")` is timed. Large
tables are evaluated on the stated subsamples (`sizes` in the answer), so the time should level
off: the table shows where.

Run: `.venv/bin/python benchmarks/synth_evaluate.py [--rows 1000,10000,100000] [--out PATH]`.
Prints a Markdown table; writes the raw numbers to benchmarks/results/synth_evaluate.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# As in benchmarks/synth.py: this folder must not shadow the `synth` package.
ROOT = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
sys.path.insert(0, str(ROOT.parent))

# First: benchmarks.synth sets one BLAS/OpenMP thread each before numpy loads.
from benchmarks.synth import RANDHIE_SCHEMA, load_randhie  # noqa: E402, I001

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import synth  # noqa: E402
from synth.holdout import split_holdout  # noqa: E402

HOLDOUT = 0.2


def measure(rows: int, seed: int = 0) -> dict[str, Any]:
    frame = load_randhie().sample(round(rows / (1 - HOLDOUT)), replace=True, random_state=seed)
    train, holdout = split_holdout(frame.reset_index(drop=True), HOLDOUT, seed=seed)
    metadata = synth.TableMetadata.from_schema(RANDHIE_SCHEMA, train)
    model = synth.train(train, "cart", metadata=metadata)
    synthetic = model.sample(len(train), seed=seed)
    started = time.perf_counter()
    report = synth.evaluate(train, synthetic, holdout, target="mdvis", metadata=metadata, seed=seed)
    total = time.perf_counter() - started
    return {
        "rows": len(train),
        "holdout_rows": len(holdout),
        "seconds": total,
        "parts": report["seconds"],
        "sizes": report["sizes"],
        "fidelity": report["fidelity"]["score"],
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| training rows | holdout rows | evaluate s | fidelity s | utility s | privacy s "
        "| fidelity rows (real, synthetic) | privacy rows (synthetic, holdout, reference) |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        parts, sizes = r["parts"], r["sizes"]
        privacy = sizes["privacy_rows"]
        lines.append(
            f"| {r['rows']:,} | {r['holdout_rows']:,} | {r['seconds']:.1f} "
            f"| {parts['fidelity']:.1f} | {parts['utility']:.1f} | {parts['privacy']:.1f} "
            f"| {sizes['fidelity_rows'][0]:,}, {sizes['fidelity_rows'][1]:,} "
            f"| {privacy['synthetic']:,}, {privacy['holdout']:,}, {privacy['reference']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000,10000,100000", help="comma-separated sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "synth_evaluate.json")
    args = parser.parse_args(argv)
    try:
        sizes = [int(v) for v in args.rows.split(",") if v.strip()]
    except ValueError:
        parser.error("--rows takes comma-separated whole numbers")
    if not sizes or min(sizes) < 100:
        parser.error("--rows: at least 100 rows each")
    measure(200)  # once untimed: SDMetrics, scikit-learn and their first calls load here
    results = []
    for rows in sizes:
        results.append(measure(rows))
        print(f"{rows:,} rows: {results[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    table = markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results}, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
