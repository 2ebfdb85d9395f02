"""The release report: one self-contained HTML file (plots embedded as PNG) and its JSON.

`write_report(path, evaluation, real, synthetic, ...)` writes `path` (HTML) and the same
evaluation, card and gates as JSON beside it (`path` with `.json`). The report is what a data
steward reads before approving a release, and is published with an approved release, so it
shows real data only as aggregates, each held to the node's disclosure floor: a histogram bar
or category share of the real rows that counts fewer than `min_count` rows is not drawn (the
plot says how many were withheld), and correlations are shown only over at least `min_count`
rows. Nothing in it is a row.

Sections, in the order a data protection officer needs them: the verdict (pass / needs
attention / fail, with its reasons in plain words: `synth.verdict`), what the release is
(generator, rows, ε), what the figures mean (a short glossary), the release gates, fidelity,
per-column distributions real vs synthetic, correlation heatmaps side by side, utility (TRTR vs
TSTR with 95 % intervals; a warning in place of the bars when the test rows cannot tell),
privacy (exact copies, DCR, the membership-inference attack, each with its interval and
baseline), and last the technical details (hash, device, parameters, sample sizes).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth.metadata import Column, TableMetadata
from synth.verdict import uncertainties
from synth.verdict import verdict as judge

HISTOGRAM_BINS = 20
MAX_PLOTTED_COLUMNS = 60
REAL, SYNTHETIC, HOLDOUT = "#1f5f8b", "#e07b39", "#5c9e5c"


def write_report(
    path: str | Path,
    evaluation: dict[str, Any],
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    metadata: TableMetadata | None = None,
    title: str = "Synthetic data report",
    card: dict[str, Any] | None = None,
    gates: list[dict[str, Any]] | None = None,
    min_count: int = 0,
    verdict: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the HTML report at `path` and its JSON beside it; returns both paths. Each is
    written under a temporary name and renamed, so neither is ever half-written. `verdict`
    defaults to `synth.verdict.verdict(evaluation, gates)`."""
    path = Path(path)
    metadata = metadata or TableMetadata.from_frame(real)
    verdict = verdict or judge(evaluation, gates)
    body = render(
        evaluation, real, synthetic, metadata, title, card or {}, gates, min_count, verdict
    )
    json_path = path.with_suffix(".json")
    document = {
        "title": title,
        "verdict": verdict,
        "card": card or {},
        "gates": gates,
        "evaluation": evaluation,
    }
    for target, text in ((path, body), (json_path, json.dumps(document, indent=2, default=str))):
        partial = target.with_name(target.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)
    return path, json_path


def render(
    evaluation: dict[str, Any],
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    metadata: TableMetadata,
    title: str,
    card: dict[str, Any],
    gates: list[dict[str, Any]] | None,
    min_count: int,
    verdict: dict[str, Any] | None = None,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    verdict = verdict or judge(evaluation, gates)
    warnings = uncertainties(evaluation, gates)
    parts = [f"<h1>{_e(title)}</h1>", _verdict(verdict)]
    parts.append(_section("Release card", _key_values(_card_rows(card))))
    parts.append(_section("What the figures mean", GLOSSARY))
    if gates is not None:
        parts.append(_section("Release gates", _gates_table(gates)))
    parts.append(_section("Fidelity", _fidelity(evaluation.get("fidelity", {}))))
    parts.append(
        _section(
            "Distributions, real vs synthetic",
            (
                f"<p>Real bars or shares counting fewer than {min_count} rows are withheld "
                "(the node's disclosure floor).</p>"
                if min_count > 0
                else ""
            )
            + _distributions(real, synthetic, metadata, min_count),
        )
    )
    parts.append(_section("Correlations", _correlations(real, synthetic, metadata, min_count)))
    utility = evaluation.get("utility", {})
    parts.append(_section("Utility", _utility(utility, warnings.get("utility"))))
    parts.append(_section("Privacy", _privacy(evaluation.get("privacy", {}), warnings)))
    parts.append(
        _section("Technical details", _technical(card, evaluation.get("sizes", {}), evaluation))
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.25em .6em;text-align:left}th{background:#f3f3f3}.pass{color:#1a7f37}"
        ".fail{color:#b42318;font-weight:bold}img{max-width:100%}.grid{display:flex;"
        "flex-wrap:wrap;gap:8px}.grid img{width:340px}figure{margin:0}"
        "figcaption{font-size:.85em;color:#555}.verdict{padding:.8em 1.2em;border-radius:6px;"
        "margin:1em 0}.verdict h2{margin:.1em 0 .4em}.v-pass{background:#e6f4ea;border:2px solid "
        "#1a7f37}.v-needs-attention{background:#fff4e5;border:2px solid #b54708}.v-fail{"
        "background:#fde8e7;border:2px solid #b42318}.warn{background:#fff4e5;border-left:4px "
        "solid #b54708;padding:.4em .8em}.muted{color:#888}dt{font-weight:bold;margin-top:.4em}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{style}</style></head><body>"
        + "".join(parts)
        + "</body></html>"
    )


# ---- sections -----------------------------------------------------------------------------


VERDICT_WORDS = {
    "pass": "Pass",
    "needs attention": "Needs attention",
    "fail": "Fail",
}
# The card's fields a reader needs first; the rest (hash, device, parameters, ...) are
# technical details, at the end.
SUMMARY_FIELDS = {
    "generator": "generator",
    "rows": "synthetic rows",
    "columns": "columns",
    "target": "outcome column (utility)",
    "epsilon": "differential privacy ε",
    "delta": "differential privacy δ",
    "training_rows": "real rows trained on",
    "holdout_rows": "real rows held out (never seen by the generator)",
}

GLOSSARY = (
    "<dl>"
    "<dt>Fidelity</dt><dd>How closely the synthetic data resemble the real data: each "
    "column's distribution and how pairs of columns vary together, from 0 (nothing alike) to "
    "1 (indistinguishable). Random noise scores about 0.6.</dd>"
    "<dt>TRTR and TSTR (utility)</dt><dd>A model is trained on the real rows (Train Real) or "
    "on the synthetic rows (Train Synthetic), and both are tested on real rows the generator "
    "never saw (Test Real). If TSTR is close to TRTR, the synthetic data serve analyses about "
    "as well as the real data. A model that guesses scores 0.5 (AUC) or 0 (R²).</dd>"
    "<dt>Exact copies</dt><dd>The share of synthetic rows identical to a real training row. "
    "Real rows the generator never saw (the holdout) can also repeat training rows when "
    "columns have few values: that share is the baseline, not zero.</dd>"
    "<dt>DCR (distance to the closest record)</dt><dd>How far each row lies from its most "
    "similar real training row. Synthetic rows should lie no closer than real unseen rows do; "
    "closer means the generator memorised patients.</dd>"
    "<dt>Membership attack</dt><dd>An attacker who holds a real patient's row guesses whether "
    "it was used for training, by how close a synthetic row lies to it. Its advantage is 0 "
    "when it does no better than a coin toss and 1 when it always knows.</dd>"
    "<dt>95 % interval</dt><dd>The range in which the figure would fall with other patients "
    "in the same numbers: a wide interval means the sample is too small to be sure.</dd>"
    "<dt>ε and δ (differential privacy)</dt><dd>A mathematical bound on how much the "
    "synthetic data can depend on any one patient: the smaller ε, the stronger the "
    "protection (1 or less is strong); δ is the small chance the bound does not hold. Only "
    "differentially private generators have them.</dd>"
    "</dl>"
)


def _verdict(verdict: dict[str, Any]) -> str:
    value = str(verdict.get("verdict", ""))
    reasons = "".join(f"<li>{_e(r)}</li>" for r in verdict.get("reasons", []))
    css = "v-" + value.replace(" ", "-")
    return (
        f"<div class='verdict {css}'><h2>Verdict: {_e(VERDICT_WORDS.get(value, value))}</h2>"
        f"<ul>{reasons}</ul></div>"
    )


def _card_rows(card: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, label in SUMMARY_FIELDS.items():
        if key not in card or (card[key] is None and key in ("epsilon", "delta", "target")):
            continue
        value = card[key]
        if key == "columns" and isinstance(value, list):
            value = f"{len(value)}: {', '.join(map(str, value))}"
        rows.append((label, "withheld (differentially private)" if value is None else value))
    return rows


def _technical(card: dict[str, Any], sizes: dict[str, Any], evaluation: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = []
    for key, value in card.items():
        if key in SUMMARY_FIELDS:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} = {v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append((key.replace("_", " "), value))
    labels = {
        "real": "real training rows evaluated",
        "synthetic": "synthetic rows evaluated",
        "holdout": "holdout rows evaluated",
    }
    for key, value in sizes.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = " real / ".join(map(str, value)) + " synthetic"
        rows.append((labels.get(key, key.replace("_", " ")), value))
    seconds = evaluation.get("seconds") or {}
    if seconds:
        rows.append(("evaluation seconds", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())))
    return (
        "<p>For the record: what identifies this release and how it was computed. The same "
        "figures, and every one above, are in the JSON file beside this report.</p>"
        + _key_values(rows)
    )


def _gates_table(gates: list[dict[str, Any]]) -> str:
    if not gates:
        return "<p>No release gate is set.</p>"
    lines = ["<table><tr><th>gate</th><th>outcome</th><th>value</th><th>threshold</th></tr>"]
    for g in gates:
        outcome = (
            "<span class='pass'>passed</span>"
            if g["passed"]
            else ("<span class='fail'>FAILED</span>")
        )
        lines.append(
            f"<tr><td>{_e(g['name'])}</td><td>{outcome} {_e(g.get('message', ''))}</td>"
            f"<td>{_num(g.get('value'))}</td><td>{_num(g.get('threshold'))}</td></tr>"
        )
    return "".join(lines) + "</table>"


def _fidelity(fidelity: dict[str, Any]) -> str:
    rows = [
        ("quality score (SDMetrics)", fidelity.get("score")),
        ("column shapes", fidelity.get("column_shapes")),
        ("column pair trends", pair_trends_text(fidelity)),
        ("diagnostic: validity", fidelity.get("validity")),
        ("diagnostic: structure", fidelity.get("structure")),
    ]
    per_column = fidelity.get("columns", {})
    missing = fidelity.get("missing_rates", {})
    table = ["<table><tr><th>column</th><th>shape score</th><th>missing real / synthetic</th>"]
    for name, score in per_column.items():
        rates = missing.get(name, [None, None])
        table.append(
            f"<tr><td>{_e(name)}</td><td>{_num(score)}</td>"
            f"<td>{_num(rates[0])} / {_num(rates[1])}</td></tr>"
        )
    return _key_values(rows) + "".join(table) + "</table>"


def _distributions(
    real: pd.DataFrame, synthetic: pd.DataFrame, metadata: TableMetadata, min_count: int
) -> str:
    images = []
    for c in metadata.columns[:MAX_PLOTTED_COLUMNS]:
        png, withheld = _distribution_plot(c, real[c.name], synthetic[c.name], min_count)
        caption = _e(c.name) + (
            f" ({withheld} real bar{'s' * (withheld != 1)} withheld)" if withheld else ""
        )
        images.append(f"<figure>{_img(png)}<figcaption>{caption}</figcaption></figure>")
    more = len(metadata.columns) - MAX_PLOTTED_COLUMNS
    note = f"<p>{more} more columns not plotted.</p>" if more > 0 else ""
    return "<div class='grid'>" + "".join(images) + "</div>" + note


def _distribution_plot(
    c: Column, real: pd.Series, synthetic: pd.Series, min_count: int
) -> tuple[bytes, int]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
    withheld = 0
    if c.is_numeric:
        r = pd.to_numeric(real, errors="coerce").dropna().to_numpy(dtype=float)
        s = pd.to_numeric(synthetic, errors="coerce").dropna().to_numpy(dtype=float)
        both = np.concatenate([r, s]) if len(r) + len(s) else np.array([0.0])
        edges = np.histogram_bin_edges(both, bins=HISTOGRAM_BINS)
        real_counts, _ = np.histogram(r, edges)
        synth_counts, _ = np.histogram(s, edges)
        shown = real_counts >= max(min_count, 1)
        withheld = int(((real_counts > 0) & ~shown).sum())
        widths = np.diff(edges)
        real_share = real_counts / max(len(r), 1)
        ax.bar(
            edges[:-1][shown],
            real_share[shown],
            widths[shown],
            align="edge",
            color=REAL,
            alpha=0.55,
            label="real",
        )
        ax.step(
            edges,
            np.append(synth_counts / max(len(s), 1), 0),
            where="post",
            color=SYNTHETIC,
            label="synthetic",
        )
        ax.set_ylabel("share of rows")
    else:
        levels = list(c.levels) if c.levels else ["False", "True"]
        real_text = real.map(lambda v: None if v is None or pd.isna(v) else str(v))
        synth_text = synthetic.map(lambda v: None if v is None or pd.isna(v) else str(v))
        real_counts = np.array([(real_text == lv).sum() for lv in levels])
        synth_counts = np.array([(synth_text == lv).sum() for lv in levels])
        shown = real_counts >= max(min_count, 1)
        withheld = int(((real_counts > 0) & ~shown).sum())
        x = np.arange(len(levels))
        real_share = np.where(shown, real_counts / max(len(real_text), 1), 0)
        ax.bar(x - 0.2, real_share, 0.4, color=REAL, alpha=0.8, label="real")
        synth_share = synth_counts / max(len(synth_text), 1)
        ax.bar(x + 0.2, synth_share, 0.4, color=SYNTHETIC, label="synthetic")
        ax.set_xticks(
            x, [lv[:12] for lv in levels], rotation=30 if len(levels) > 4 else 0, fontsize=7
        )
        ax.set_ylabel("share of rows")
    ax.set_title(c.name, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig), withheld


def _as_number(value: Any) -> float:
    """A boolean as 0/1 (from bool or its text); anything else missing."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    text = str(value).strip().lower()
    return {"true": 1.0, "1": 1.0, "1.0": 1.0, "false": 0.0, "0": 0.0, "0.0": 0.0}.get(text, np.nan)


def _numeric_matrix(frame: pd.DataFrame, columns: list[Column]) -> pd.DataFrame:
    out = {}
    for c in columns:
        s = frame[c.name]
        if c.is_numeric:
            out[c.name] = pd.to_numeric(s, errors="coerce")
        else:
            out[c.name] = s.map(_as_number)
    return pd.DataFrame(out).astype(float)


def _correlations(
    real: pd.DataFrame, synthetic: pd.DataFrame, metadata: TableMetadata, min_count: int
) -> str:
    import matplotlib.pyplot as plt

    columns = [c for c in metadata.columns if c.is_numeric or c.kind == "boolean"]
    if len(columns) < 2:
        return "<p>Fewer than two numeric or boolean columns: no correlation matrix.</p>"
    if len(real) < max(min_count, 3):
        return "<p>Too few real rows to show their correlations.</p>"
    names = [c.name for c in columns]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=90)
    for ax, frame, label in ((axes[0], real, "real"), (axes[1], synthetic, "synthetic")):
        matrix = _numeric_matrix(frame, columns).corr().to_numpy()
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{label} (Pearson)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8)
    return "<p>Pearson correlations of numeric and boolean columns (booleans as 0/1).</p>" + _img(
        _png(fig)
    )


def _utility(utility: dict[str, Any], warning: str | None = None) -> str:
    if not utility or utility.get("target") is None:
        return "<p>No target column was named: utility was not measured.</p>"
    import matplotlib.pyplot as plt

    ci = utility.get("ci") or {}
    rows = [
        ("target", utility["target"]),
        ("task", utility.get("task")),
        ("metric", utility.get("metric")),
        ("model", utility.get("model")),
        ("train real, test real (TRTR)", _with_ci(utility.get("trtr"), ci.get("trtr"))),
        ("train synthetic, test real (TSTR)", _with_ci(utility.get("tstr"), ci.get("tstr"))),
        ("gap (TRTR - TSTR)", _with_ci(utility.get("gap"), ci.get("gap"))),
        ("test rows (holdout)", utility.get("test_rows")),
    ]
    for key in (
        "target_rate_real",
        "target_rate_synthetic",
        "target_mean_real",
        "target_mean_synthetic",
    ):
        if key in utility:
            rows.append((key.replace("_", " "), utility[key]))
    trtr, tstr = utility.get("trtr"), utility.get("tstr")
    if warning:  # the figures are kept for the record, but not presented as a result
        return (
            f"<p class='warn'><b>Not meaningful here.</b> {_e(warning)}</p>"
            f"<div class='muted'>{_key_values(rows)}</div>"
        )
    image = ""
    if trtr is not None and tstr is not None:
        fig, ax = plt.subplots(figsize=(4, 2.6), dpi=90)
        ax.bar(["TRTR (real)", "TSTR (synthetic)"], [trtr, tstr], color=[REAL, SYNTHETIC])
        ax.set_ylabel(str(utility.get("metric")))
        low = min(0.0, float(trtr), float(tstr))
        ax.set_ylim(low, 1.0)
        fig.tight_layout()
        image = _img(_png(fig))
    return _key_values(rows) + image


def _privacy(privacy: dict[str, Any], warnings: dict[str, str] | None = None) -> str:
    import matplotlib.pyplot as plt

    ci = privacy.get("ci") or {}
    rows = [
        (
            "synthetic rows copying a training row",
            _with_ci(privacy.get("exact_match_rate"), ci.get("exact_match_rate")),
        ),
        (
            "holdout rows copying a training row (baseline)",
            _with_ci(privacy.get("exact_match_rate_holdout"), ci.get("exact_match_rate_holdout")),
        ),
        ("DCR median, synthetic", privacy.get("dcr_synthetic_median")),
        ("DCR median, holdout (baseline)", privacy.get("dcr_holdout_median")),
        ("DCR 5th percentile, synthetic", privacy.get("dcr_synthetic_p5")),
        ("DCR 5th percentile, holdout", privacy.get("dcr_holdout_p5")),
        (
            "DCR median ratio synthetic / holdout",
            _with_ci(privacy.get("dcr_median_ratio"), ci.get("dcr_median_ratio")),
        ),
        ("DCR test: p-value of 'synthetic closer'", privacy.get("dcr_closer_p_value")),
        ("membership attack ROC AUC", _with_ci(privacy.get("mia_auc"), ci.get("mia_auc"))),
        (
            "membership attack advantage (2 AUC - 1)",
            _with_ci(privacy.get("mia_advantage"), ci.get("mia_advantage")),
        ),
        (
            "rows in the attack: training / unseen",
            f"{_num(privacy.get('mia_members'))} / {_num(privacy.get('mia_rows'))}",
        ),
    ]
    hist = privacy.get("dcr_histogram")
    image = ""
    if hist:
        edges = np.asarray(hist["edges"], dtype=float)
        fig, ax = plt.subplots(figsize=(5.5, 2.8), dpi=90)
        for key, color in (("synthetic", SYNTHETIC), ("holdout", HOLDOUT)):
            counts = np.asarray(hist[key], dtype=float)
            share = counts / max(counts.sum(), 1)
            ax.step(edges, np.append(share, 0), where="post", color=color, label=key)
        ax.set_xlabel("distance to the closest training record (Gower)")
        ax.set_ylabel("share of rows")
        ax.legend(fontsize=7)
        fig.tight_layout()
        image = _img(_png(fig))
    explain = (
        "<p>Holdout rows are real rows the generator never saw: synthetic rows should be no "
        "closer to the training rows than they are, and copy training rows no more often. "
        "The attack guesses that a real row was in training when a synthetic row lies close "
        "to it; an advantage near 0 means it cannot tell. Intervals are 95 %.</p>"
    )
    notes = "".join(
        f"<p class='warn'>{_e(warnings[key])}</p>"
        for key in ("exact_copies", "dcr", "mia")
        if warnings and key in warnings
    )
    return explain + notes + _key_values(rows) + image


# ---- html helpers -------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _e(value: Any) -> str:
    return html.escape(str(value))


def pair_trends_text(fidelity: dict[str, Any]) -> str:
    """The pair-trend score in words: over how many pairs SDMetrics scored it, and the mean
    over every pair (SDMetrics scores none when no pair is associated in the real rows)."""
    scored, total = fidelity.get("pairs_scored"), fidelity.get("pairs_total")
    every = fidelity.get("column_pair_trends_all_pairs")
    every_text = "" if every is None else f"; every pair: {every:.3f}"
    if fidelity.get("column_pair_trends") is None:
        return f"not scored: none of the {total} pairs is associated in the real rows{every_text}"
    return (
        f"{fidelity['column_pair_trends']:.3f} over the {scored} of {total} pairs associated "
        f"in the real rows{every_text}"
    )


def _with_ci(value: Any, interval: Any) -> str:
    """A figure with its 95 % interval, as text ("0.52 (0.41–0.63)")."""
    if value is None:
        return "–"
    if not interval:
        return _num(value)
    return f"{_num(value)} (95 % interval {_num(interval[0])}–{_num(interval[1])})"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _key_values(rows: list[tuple[str, Any]]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_num(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _section(title: str, content: str) -> str:
    return f"<h2>{_e(title)}</h2>{content}"
