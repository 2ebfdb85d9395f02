"""`evaluate(real, synthetic, holdout, target=None)`: how faithful, useful and private a
synthetic table is, measured against the real rows it was trained on (`real`) and real rows it
never saw (`holdout`).

The answer is a JSON-ready dict (DESIGN.md, "Synthetic data"):

- `fidelity`: SDMetrics' quality report (`score`, the mean of `column_shapes` and
  `column_pair_trends`; per-column shape scores in `columns`) and its diagnostic `validity`
  (synthetic values inside the real ranges and categories). Scores in [0, 1]. SDMetrics scores
  pair trends only over the pairs associated in the real rows (|r| > 0.5 or Cramér's V > 0.3):
  `pairs_scored` of `pairs_total` says how many, and `column_pair_trends_all_pairs` is the
  same metric over every pair.
- `utility` (with a `target`): train on synthetic, test on the holdout (TSTR) against train on
  real, test on the holdout (TRTR), with one fixed gradient-boosting model; ROC AUC for a
  categorical target (macro one-vs-rest beyond two classes), R² for a numeric one. Also the
  target's rate (or mean) in the real and the synthetic rows: a generator can score well on
  shapes and still shift the outcome.
- `privacy`: the share of synthetic rows that copy a training row exactly, beside the share of
  holdout rows that do (real unseen rows can repeat training rows too: that is the baseline,
  not zero); the distance to the closest training record (DCR) of synthetic rows and of holdout
  rows, median and 5th percentile, their median ratio, and the one-sided Mann-Whitney p-value
  of "synthetic rows lie closer than holdout rows" (`dcr_closer_p_value`: small when they
  do, uniform when they do not); and a membership-inference attack
  that guesses "member" for training rows close to a synthetic row: its ROC AUC over training
  rows against holdout rows and its advantage `2·AUC − 1` (0 when it cannot tell them apart).

Distances are Gower-style: each column contributes at most 1 (numeric columns by
|a − b| / range over the training rows, categories and booleans 0 or 1, a missing value against
a present one 1 plus the scaled distance of the present value from mid-range), divided by the
number of columns, so a DCR lies in [0, 1].

Large tables are evaluated on stated subsamples (`sizes` says which): at most
`fidelity_rows` rows of each table for fidelity, `privacy_rows` synthetic and holdout rows for
the DCR and the attack (against at most `reference_rows` training rows), `utility_rows` rows
to fit each model. A table of 100 000 training rows evaluates in about 16 s on two cores
(`benchmarks/synth_evaluate.py`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from synth.confidence import (
    BOOTSTRAP_ROUNDS,
    LEVEL,
    Z,
    auc_interval,
    bootstrap,
    delong,
    delong_paired,
    median_ratio_interval,
    rounded,
    wilson,
)
from synth.metadata import Column, TableMetadata
from synth.rows import canonical as _canonical
from synth.rows import row_keys
from tessera.errors import InvalidRequest

FIDELITY_ROWS = 20_000
PRIVACY_ROWS = 5_000
REFERENCE_ROWS = 50_000
UTILITY_ROWS = 50_000
CLASSIFICATION_MAX_LEVELS = 10  # an integer target with at most this many values is a class
DCR_BINS = 30


def evaluate(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    holdout: pd.DataFrame,
    target: str | None = None,
    metadata: TableMetadata | None = None,
    *,
    seed: int = 0,
    fidelity_rows: int = FIDELITY_ROWS,
    privacy_rows: int = PRIVACY_ROWS,
    reference_rows: int = REFERENCE_ROWS,
    utility_rows: int = UTILITY_ROWS,
) -> dict[str, Any]:
    """The evaluation dict described in the module doc (every value JSON-serialisable)."""
    metadata = metadata or TableMetadata.from_frame(real)
    names = metadata.names
    for label, frame in (("real", real), ("synthetic", synthetic), ("holdout", holdout)):
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise InvalidRequest(
                f"the {label} table lacks column(s) {', '.join(missing)}", {"columns": missing}
            )
        if len(frame) == 0:
            raise InvalidRequest(f"the {label} table has no rows")
    if target is not None and target not in names:
        raise InvalidRequest(f"target {target!r} is not a column", {"target": target})
    real = _canonical(real[names], metadata)
    synthetic = _canonical(synthetic[names], metadata)
    holdout = _canonical(holdout[names], metadata)
    rng = np.random.default_rng(seed)
    ci_rng = np.random.default_rng([seed, 1])  # bootstrap resamples only
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    fid_real = _subsample(real, fidelity_rows, rng)
    fid_synth = _subsample(synthetic, fidelity_rows, rng)
    fidelity = fidelity_scores(fid_real, fid_synth, metadata)
    seconds["fidelity"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    utility = (
        utility_scores(real, synthetic, holdout, target, metadata, rng, utility_rows, ci_rng=ci_rng)
        if target is not None
        else {"target": None}
    )
    seconds["utility"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    reference = _subsample(real, reference_rows, rng)
    priv_synth = _subsample(synthetic, privacy_rows, rng)
    priv_holdout = _subsample(holdout, privacy_rows, rng)
    privacy = privacy_scores(
        reference,
        priv_synth,
        priv_holdout,
        synthetic,
        metadata,
        rng,
        ci_rng=ci_rng,
        attack_members=privacy_rows,
    )
    seconds["privacy"] = round(time.perf_counter() - started, 3)

    return {
        "fidelity": fidelity,
        "utility": utility,
        "privacy": privacy,
        "sizes": {
            "real": len(real),
            "synthetic": len(synthetic),
            "holdout": len(holdout),
            "fidelity_rows": [len(fid_real), len(fid_synth)],
            "privacy_rows": {
                "synthetic": len(priv_synth),
                "holdout": len(priv_holdout),
                "reference": len(reference),
            },
        },
        "seconds": seconds,
    }


# ---- fidelity -----------------------------------------------------------------------------


def fidelity_scores(
    real: pd.DataFrame, synthetic: pd.DataFrame, metadata: TableMetadata
) -> dict[str, Any]:
    """SDMetrics' quality report (shapes, pair trends) and diagnostic validity."""
    with warnings.catch_warnings():  # SDMetrics 0.32 calls its single-table reports deprecated
        warnings.simplefilter("ignore", FutureWarning)
        from sdmetrics.reports.single_table._properties import ColumnPairTrends
        from sdmetrics.reports.single_table.diagnostic_report import DiagnosticReport
        from sdmetrics.reports.single_table.quality_report import QualityReport

    sdm_meta = {"columns": {c.name: {"sdtype": _sdtype(c)} for c in metadata.columns}}
    real_s, synth_s = _for_sdmetrics(real, metadata), _for_sdmetrics(synthetic, metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = QualityReport()
        quality.generate(real_s, synth_s, sdm_meta, verbose=False)
        # The same pair metrics with no association threshold (the property's own default).
        every_pair = ColumnPairTrends().get_score(real_s, synth_s, sdm_meta)
        diagnostic = DiagnosticReport()
        diagnostic.generate(real_s, synth_s, sdm_meta, verbose=False)
    props = quality.get_properties().set_index("Property")["Score"]
    shapes = quality.get_details("Column Shapes")
    per_column = {str(r["Column"]): _score(r["Score"]) for _, r in shapes.iterrows()}
    pairs = quality.get_details("Column Pair Trends")
    scored = pairs.get("Meets Threshold?", pd.Series(True, index=pairs.index))
    diag = diagnostic.get_properties().set_index("Property")["Score"]
    return {
        "score": _score(quality.get_score()),
        "column_shapes": _score(props.get("Column Shapes")),
        "column_pair_trends": _score(props.get("Column Pair Trends")),
        # SDMetrics scores pair trends only over the pairs associated in the real rows
        # (|Pearson r| > 0.5, Cramér's V > 0.3): how many that was, and every pair's mean.
        "pairs_scored": int(scored.astype("boolean").fillna(False).sum()),
        "pairs_total": len(pairs),
        "pair_thresholds": {
            "correlation": float(quality.real_correlation_threshold),
            "association": float(quality.real_association_threshold),
        },
        "column_pair_trends_all_pairs": _score(every_pair),
        "validity": _score(diag.get("Data Validity")),
        "structure": _score(diag.get("Data Structure")),
        "columns": per_column,
        "missing_rates": {
            c.name: [
                round(float(real[c.name].isna().mean()), 4),
                round(float(synthetic[c.name].isna().mean()), 4),
            ]
            for c in metadata.columns
        },
    }


def _sdtype(column: Column) -> str:
    return "numerical" if column.is_numeric else "categorical"


def _for_sdmetrics(frame: pd.DataFrame, metadata: TableMetadata) -> pd.DataFrame:
    out = {}
    for c in metadata.columns:
        s = frame[c.name]
        if c.is_numeric:
            out[c.name] = s.astype(float)
        else:
            out[c.name] = (
                s.astype(object).where(s.notna(), None).map(lambda v: None if v is None else str(v))
            )
    return pd.DataFrame(out).reset_index(drop=True)


def _score(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else round(value, 4)


# ---- utility ------------------------------------------------------------------------------


def utility_task(column: Column, values: pd.Series) -> str:
    """`classification` for categories, booleans and integers with few values; else
    `regression`."""
    if column.kind in ("categorical", "boolean"):
        return "classification"
    if column.kind == "integer" and values.dropna().nunique() <= CLASSIFICATION_MAX_LEVELS:
        return "classification"
    return "regression"


def utility_scores(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    holdout: pd.DataFrame,
    target: str,
    metadata: TableMetadata,
    rng: np.random.Generator,
    max_rows: int = UTILITY_ROWS,
    ci_rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """TSTR against TRTR for `target`, tested on the holdout rows (see the module doc);
    `ci_rng` draws the bootstrap resamples (its own generator, so that the intervals leave
    the subsamples drawn from `rng` as they were)."""
    column = metadata.column(target)
    task = utility_task(column, real[target])
    features = [c for c in metadata.columns if c.name != target]
    if not features:
        raise InvalidRequest("utility needs at least one column besides the target")
    test = holdout[holdout[target].notna()]
    out: dict[str, Any] = {
        "target": target,
        "task": task,
        "metric": "roc_auc" if task == "classification" else "r2",
        "model": "HistGradientBoosting (max_iter 200, learning_rate 0.1)",
        "test_rows": len(test),
    }
    if len(test) < 2:
        return {
            **out,
            "tstr": None,
            "trtr": None,
            "gap": None,
            "note": "too few test rows",
            "ci": {"trtr": None, "tstr": None, "gap": None, "level": LEVEL, "method": "none"},
        }
    ci_rng = ci_rng if ci_rng is not None else np.random.default_rng(0)
    train_real = _subsample(real[real[target].notna()], max_rows, rng)
    train_synth = _subsample(synthetic[synthetic[target].notna()], max_rows, rng)
    if task == "classification":
        labels = sorted(map(str, pd.concat([train_real[target], test[target]]).unique()))
        y_test = test[target].astype(str).to_numpy()
        p_real = _classifier_proba(train_real, test, target, features, labels)
        p_synth = _classifier_proba(train_synth, test, target, features, labels)
        trtr = _auc(y_test, p_real, labels)
        tstr = _auc(y_test, p_synth, labels)
        ci = _auc_intervals(y_test, p_real, p_synth, labels, ci_rng)
        real_rate = _class_rates(train_real[target], labels)
        synth_rate = _class_rates(train_synth[target], labels)
        out |= {"target_rate_real": real_rate, "target_rate_synthetic": synth_rate}
        # Chance for the metric: a model that ranks at random scores an AUC of 0.5.
        chance = 0.5
    else:
        y = test[target].astype(float).to_numpy()
        pred_real = _regressor_predictions(train_real, test, target, features)
        pred_synth = _regressor_predictions(train_synth, test, target, features)
        trtr, tstr = _r2(y, pred_real), _r2(y, pred_synth)
        ci = _r2_intervals(y, pred_real, pred_synth, ci_rng)
        out |= {
            "target_mean_real": round(float(train_real[target].mean()), 6),
            "target_mean_synthetic": (
                round(float(train_synth[target].mean()), 6) if len(train_synth) else None
            ),
        }
        chance = 0.0  # predicting the mean scores an R² of 0
    gap = None if tstr is None or trtr is None else round(trtr - tstr, 4)
    ci |= {"level": LEVEL}
    return {**out, "tstr": tstr, "trtr": trtr, "gap": gap, "chance": chance, "ci": ci}


def _classifier_proba(
    train: pd.DataFrame, test: pd.DataFrame, target: str, features: list[Column], labels: list[str]
) -> np.ndarray | None:
    """Each test row's probability of each of `labels`; None when the training rows hold one
    class of the target (such a table predicts nothing)."""
    y_train = train[target].astype(str).to_numpy()
    if len(set(y_train)) < 2:
        return None
    from threadpoolctl import threadpool_limits

    model = _model("classification")
    with warnings.catch_warnings(), threadpool_limits(MODEL_THREADS):
        warnings.simplefilter("ignore")
        model.fit(_features(train, features), y_train)
        proba = model.predict_proba(_features(test, features))
    classes = list(model.classes_)
    full = np.zeros((len(test), len(labels)))
    for i, label in enumerate(labels):
        if label in classes:
            full[:, i] = proba[:, classes.index(label)]
    return full


def _auc(y_test: np.ndarray, proba: np.ndarray | None, labels: list[str]) -> float | None:
    """ROC AUC of `proba` on the test rows (macro one-vs-rest beyond two classes); None when
    the test rows hold one class, 0.5 when the model predicts nothing."""
    value = _raw_auc(y_test, proba, labels)
    return None if value is None else round(value, 4)


def _raw_auc(y_test: np.ndarray, proba: np.ndarray | None, labels: list[str]) -> float | None:
    from sklearn.metrics import roc_auc_score

    present = sorted(set(y_test))
    if len(present) < 2:
        return None  # AUC needs both classes among the test rows
    if proba is None:
        return 0.5
    if len(present) == 2 and len(labels) == 2:
        return float(roc_auc_score(y_test, proba[:, 1], labels=labels))
    keep = [labels.index(p) for p in present]
    scores = proba[:, keep]
    scores = scores / np.clip(scores.sum(axis=1, keepdims=True), 1e-12, None)
    return float(roc_auc_score(y_test, scores, labels=present, multi_class="ovr", average="macro"))


def _auc_intervals(
    y_test: np.ndarray,
    p_real: np.ndarray | None,
    p_synth: np.ndarray | None,
    labels: list[str],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """95 % intervals of TRTR, TSTR and their gap over the test rows: DeLong's (paired for the
    gap) for a binary target, the paired bootstrap beyond two classes."""
    present = sorted(set(y_test))
    if len(present) < 2:
        return {"trtr": None, "tstr": None, "gap": None, "method": "none: one class tested"}
    if len(present) == 2 and len(labels) == 2:
        positive = y_test == labels[1]
        constant = np.full(len(y_test), 0.5)
        real = p_real[:, 1] if p_real is not None else constant
        synth = p_synth[:, 1] if p_synth is not None else constant
        a_real, a_synth, se_real, se_synth, se_gap = delong_paired(real, synth, positive)
        gap = a_real - a_synth
        return {
            "trtr": rounded(auc_interval(a_real, se_real)),
            "tstr": rounded(auc_interval(a_synth, se_synth)),
            "gap": rounded((gap - Z * se_gap, gap + Z * se_gap)),
            "method": "DeLong",
        }

    def statistics(rows: np.ndarray) -> tuple[float | None, ...]:
        sub = y_test[rows]
        real = _raw_auc(sub, None if p_real is None else p_real[rows], labels)
        synth = _raw_auc(sub, None if p_synth is None else p_synth[rows], labels)
        gap = None if real is None or synth is None else real - synth
        return real, synth, gap

    trtr_ci, tstr_ci, gap_ci = bootstrap(statistics, len(y_test), rng)
    return {
        "trtr": rounded(trtr_ci),
        "tstr": rounded(tstr_ci),
        "gap": rounded(gap_ci),
        "method": f"bootstrap over the test rows ({BOOTSTRAP_ROUNDS})",
    }


def _regressor_predictions(
    train: pd.DataFrame, test: pd.DataFrame, target: str, features: list[Column]
) -> np.ndarray | None:
    if len(train) < 2:
        return None
    from threadpoolctl import threadpool_limits

    model = _model("regression")
    with warnings.catch_warnings(), threadpool_limits(MODEL_THREADS):
        warnings.simplefilter("ignore")
        model.fit(_features(train, features), train[target].astype(float))
        return np.asarray(model.predict(_features(test, features)), dtype=float)


def _raw_r2(y: np.ndarray, predicted: np.ndarray | None) -> float | None:
    if predicted is None:
        return None
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return None
    return 1.0 - float(((y - predicted) ** 2).sum()) / total


def _r2(y: np.ndarray, predicted: np.ndarray | None) -> float | None:
    from sklearn.metrics import r2_score

    if predicted is None:
        return None
    return round(float(r2_score(y, predicted)), 4)


def _r2_intervals(
    y: np.ndarray,
    pred_real: np.ndarray | None,
    pred_synth: np.ndarray | None,
    rng: np.random.Generator,
) -> dict[str, Any]:
    def statistics(rows: np.ndarray) -> tuple[float | None, ...]:
        sub = y[rows]
        real = _raw_r2(sub, None if pred_real is None else pred_real[rows])
        synth = _raw_r2(sub, None if pred_synth is None else pred_synth[rows])
        return real, synth, None if real is None or synth is None else real - synth

    trtr, tstr, gap = bootstrap(statistics, len(y), rng)
    return {
        "trtr": rounded(trtr),
        "tstr": rounded(tstr),
        "gap": rounded(gap),
        "method": f"bootstrap over the test rows ({BOOTSTRAP_ROUNDS})",
    }


def _features(frame: pd.DataFrame, features: list[Column]) -> pd.DataFrame:
    out: dict[str, Any] = {}
    for c in features:
        s = frame[c.name]
        if c.kind == "categorical":
            assert c.levels is not None
            out[c.name] = pd.Categorical(s.astype(object), categories=list(c.levels))
        elif c.kind == "boolean":
            out[c.name] = s.map({"True": 1.0, "False": 0.0}).astype(float)
        else:
            out[c.name] = s.astype(float)
    return pd.DataFrame(out, index=frame.index)


# One OpenMP thread per model fit: measured on two cores after SDMetrics (and with it torch)
# was imported, two threads made a 50 000-row fit 30 times slower, not faster.
MODEL_THREADS = 1


def _model(kind: str) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = (
        HistGradientBoostingClassifier
        if kind == "classification"
        else (HistGradientBoostingRegressor)
    )
    return cls(max_iter=200, learning_rate=0.1, categorical_features="from_dtype", random_state=0)


def _class_rates(values: pd.Series, labels: list[str]) -> dict[str, float]:
    text = values.astype(str)
    n = max(len(text), 1)
    return {label: round(float((text == label).sum() / n), 4) for label in labels}


# ---- privacy ------------------------------------------------------------------------------


def privacy_scores(
    reference: pd.DataFrame,
    synthetic: pd.DataFrame,
    holdout: pd.DataFrame,
    all_synthetic: pd.DataFrame,
    metadata: TableMetadata,
    rng: np.random.Generator,
    ci_rng: np.random.Generator | None = None,
    attack_members: int = PRIVACY_ROWS,
) -> dict[str, Any]:
    """Exact copies, DCR and the membership-inference attack (see the module doc), each with
    its 95 % interval (`ci`; `synth.confidence`).
    `reference` are the training rows compared against; `all_synthetic` every synthetic row
    (exact copies are counted over all of them, the rest on the subsamples)."""
    train_keys = set(row_keys(reference, metadata))
    exact = float(np.mean([k in train_keys for k in row_keys(all_synthetic, metadata)]))
    exact_holdout = float(np.mean([k in train_keys for k in row_keys(holdout, metadata)]))

    embed = GowerEmbedding(metadata, reference)
    ref, synth_embedded, holdout_embedded = embed(reference), embed(synthetic), embed(holdout)
    to_training = NearestIndex(ref)
    dcr_synth = to_training.distances(synth_embedded)
    dcr_holdout = to_training.distances(holdout_embedded)
    median_s, median_h = float(np.median(dcr_synth)), float(np.median(dcr_holdout))
    closer = _closer_p_value(dcr_synth, dcr_holdout)

    # The attack: members (training rows) against non-members (holdout rows); the closer a
    # row's nearest synthetic record, the likelier "member". Every holdout row takes part,
    # and up to `attack_members` training rows (the AUC does not depend on the balance, and
    # more members narrow its interval).
    n_members = min(len(reference), max(attack_members, len(holdout)))
    members = ref[np.sort(rng.choice(len(reference), size=n_members, replace=False))]
    to_synthetic = NearestIndex(synth_embedded)
    member_distances = to_synthetic.distances(members)
    outsider_distances = to_synthetic.distances(holdout_embedded)
    auc, auc_se = delong(-member_distances, -outsider_distances)
    auc_ci = auc_interval(auc, auc_se)
    ci_rng = ci_rng if ci_rng is not None else np.random.default_rng(0)
    n_synth, n_holdout = len(all_synthetic), len(holdout)
    copies_synth, copies_holdout = round(exact * n_synth), round(exact_holdout * n_holdout)

    top = max(float(np.quantile(np.concatenate([dcr_synth, dcr_holdout]), 0.99)), 1e-9)
    edges = np.linspace(0.0, top, DCR_BINS + 1)
    return {
        "exact_match_rate": round(exact, 6),
        "exact_match_rate_holdout": round(exact_holdout, 6),
        "dcr_synthetic_median": round(median_s, 6),
        "dcr_holdout_median": round(median_h, 6),
        "dcr_synthetic_p5": round(float(np.quantile(dcr_synth, 0.05)), 6),
        "dcr_holdout_p5": round(float(np.quantile(dcr_holdout, 0.05)), 6),
        "dcr_median_ratio": round(median_s / median_h, 4) if median_h > 0 else None,
        "dcr_closer_p_value": round(closer, 6),
        "mia_auc": round(auc, 4),
        "mia_advantage": round(max(0.0, 2 * auc - 1), 4),
        "mia_rows": n_holdout,  # non-members (holdout rows) in the attack
        "mia_members": n_members,
        "ci": {
            "level": LEVEL,
            "exact_match_rate": rounded(wilson(copies_synth, n_synth), 6),
            "exact_match_rate_holdout": rounded(wilson(copies_holdout, n_holdout), 6),
            "dcr_median_ratio": rounded(median_ratio_interval(dcr_synth, dcr_holdout, ci_rng)),
            "mia_auc": rounded(auc_ci),
            "mia_advantage": rounded((max(0.0, 2 * auc_ci[0] - 1), max(0.0, 2 * auc_ci[1] - 1))),
            "methods": {
                "exact_match_rate": "Wilson",
                "dcr_median_ratio": f"bootstrap of both samples ({BOOTSTRAP_ROUNDS})",
                "mia_auc": "DeLong",
            },
        },
        "dcr_histogram": {
            "edges": [round(float(e), 6) for e in edges],
            "synthetic": np.histogram(np.clip(dcr_synth, 0, top), edges)[0].tolist(),
            "holdout": np.histogram(np.clip(dcr_holdout, 0, top), edges)[0].tolist(),
        },
    }


def _closer_p_value(synthetic: np.ndarray, holdout: np.ndarray) -> float:
    """One-sided Mann-Whitney p-value of "synthetic rows lie closer to the training rows than
    holdout rows do": small when they do."""
    from scipy.stats import mannwhitneyu

    if np.all(synthetic == synthetic[0]) and np.all(holdout == synthetic[0]):
        return 1.0  # identical distances: no evidence either way
    return float(mannwhitneyu(synthetic, holdout, alternative="less").pvalue)


class GowerEmbedding:
    """Rows as vectors whose L1 distance, divided by the number of columns, is the Gower-style
    distance of the module doc. Ranges come from the reference (training) rows."""

    def __init__(self, metadata: TableMetadata, reference: pd.DataFrame) -> None:
        self.metadata = metadata
        self.ranges: dict[str, tuple[float, float]] = {}
        for c in metadata.columns:
            if c.is_numeric:
                values = reference[c.name].astype(float)
                lo, hi = float(values.min()), float(values.max())
                if np.isnan(lo):
                    lo, hi = 0.0, 1.0
                self.ranges[c.name] = (lo, (hi - lo) or 1.0)

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        d = len(self.metadata.columns)
        blocks = []
        for c in self.metadata.columns:
            s = frame[c.name]
            if c.is_numeric:
                lo, width = self.ranges[c.name]
                x = ((s.astype(float) - lo) / width).to_numpy()
                missing = np.isnan(x)
                x = np.where(missing, 0.5, np.clip(x, -1.0, 2.0))
                blocks += [x[:, None], missing[:, None].astype(float)]
            else:
                levels = list(c.levels) if c.kind == "categorical" and c.levels else None
                if levels is None:
                    levels = ["False", "True"]
                text = s.map(lambda v: None if v is None or pd.isna(v) else str(v))
                codes = pd.Categorical(text, categories=levels).codes
                onehot = np.zeros((len(frame), len(levels) + 1))
                onehot[np.arange(len(frame)), np.where(codes < 0, len(levels), codes)] = 0.5
                blocks.append(onehot)
        return np.hstack(blocks) / d


class NearestIndex:
    """Reference rows indexed once for the L1 distance of query rows to the nearest of them."""

    def __init__(self, reference: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors

        self._index = NearestNeighbors(n_neighbors=1, metric="manhattan").fit(reference)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        found, _ = self._index.kneighbors(queries)
        return found[:, 0]


def nearest_distances(reference: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query row, the L1 distance to its nearest reference row."""
    return NearestIndex(reference).distances(queries)


def _auc_smaller_is_positive(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive's score < a negative's), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    scores = np.concatenate([-positives, -negatives])
    ranks = rankdata(scores)
    n_pos, n_neg = len(positives), len(negatives)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


# ---- shared -------------------------------------------------------------------------------


def _subsample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]
