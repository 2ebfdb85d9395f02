"""Holding out real rows for evaluation: the rows a generator never sees in training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tessera.errors import InvalidRequest

MIN_ROWS = 10  # in each part: fewer cannot say anything about privacy or utility


def split_holdout(
    frame: pd.DataFrame, fraction: float, seed: int | None = None, target: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, holdout rows): `fraction` of the rows drawn at random without
    replacement, stratified by `target` when it is a column with few levels (each level keeps
    its share in both parts). Both parts keep the original index."""
    if not 0 < fraction < 1:
        raise InvalidRequest(f"the holdout fraction must be between 0 and 1, not {fraction}")
    n = len(frame)
    n_holdout = round(n * fraction)
    if n_holdout < MIN_ROWS or n - n_holdout < MIN_ROWS:
        raise InvalidRequest(
            f"{n} rows are too few to hold out {fraction:.0%} and keep {MIN_ROWS} rows in each "
            "part",
            {"rows": n, "holdout": fraction},
        )
    rng = np.random.default_rng(seed)
    positions = np.arange(n)
    strata = _strata(frame, target)
    if strata is None:
        chosen = rng.choice(positions, size=n_holdout, replace=False)
    else:
        chosen_parts = []
        for level in pd.unique(strata):
            members = positions[strata == level]
            take = round(len(members) * fraction)
            chosen_parts.append(rng.choice(members, size=take, replace=False))
        chosen = np.concatenate(chosen_parts)
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return frame.iloc[~mask], frame.iloc[mask]


def _strata(frame: pd.DataFrame, target: str | None) -> np.ndarray | None:
    if target is None or target not in frame.columns:
        return None
    column = frame[target]
    if pd.api.types.is_float_dtype(column) and column.nunique() > 20:
        return None  # a continuous target: a plain random split
    if column.nunique(dropna=False) > 20:
        return None
    return column.astype(str).fillna("<missing>").to_numpy()
