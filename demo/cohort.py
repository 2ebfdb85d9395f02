"""Deterministic synthetic paediatric cohorts, one per demo hospital.

The records are generated, not real: age in months, sex, diagnosis group, weight and height
that grow with age (WHO-like curves with noise), length of stay, ICU admission and 30-day
readmission that depend on diagnosis, a few missing weights. Each hospital has its own size and
case mix, so pooled results differ from any single site's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tessera.schemas import ColumnSpec, DatasetSchema

DIAGNOSIS_GROUPS = ["cardiac", "infectious", "neurological", "oncology", "respiratory", "other"]
DATASET = "paediatric_cohort"


@dataclass(frozen=True)
class DemoHospital:
    name: str
    rows: int
    seed: int
    case_mix: tuple[float, ...]  # probabilities over DIAGNOSIS_GROUPS


HOSPITALS = (
    DemoHospital("hospital_a", 1200, 11, (0.10, 0.30, 0.12, 0.08, 0.30, 0.10)),
    DemoHospital("hospital_b", 800, 22, (0.25, 0.20, 0.10, 0.15, 0.20, 0.10)),
    DemoHospital("hospital_c", 450, 33, (0.05, 0.25, 0.25, 0.20, 0.15, 0.10)),
)


def schema() -> DatasetSchema:
    """The declared schema every demo hospital registers."""
    return DatasetSchema(
        columns=[
            ColumnSpec(name="age_months", type="integer", min=0, max=215),
            ColumnSpec(name="sex", type="categorical", levels=["F", "M"]),
            ColumnSpec(name="diagnosis_group", type="categorical", levels=DIAGNOSIS_GROUPS),
            ColumnSpec(name="weight_kg", type="float", min=0.5, max=150),
            ColumnSpec(name="height_cm", type="float", min=30, max=210),
            ColumnSpec(name="length_of_stay_days", type="integer", min=0, max=365),
            ColumnSpec(name="icu_admission", type="boolean"),
            ColumnSpec(name="readmitted_30d", type="boolean"),
        ]
    )


def cohort(hospital: DemoHospital) -> pd.DataFrame:
    """The hospital's records, identical on every run."""
    rng = np.random.default_rng(hospital.seed)
    n = hospital.rows
    age = np.minimum(rng.gamma(shape=1.6, scale=45.0, size=n), 215).astype(int)
    sex = rng.choice(["F", "M"], size=n)
    diagnosis = rng.choice(DIAGNOSIS_GROUPS, size=n, p=hospital.case_mix)
    years = age / 12.0
    boys = sex == "M"
    height = np.where(years < 2, 50 + 25 * years, 75 + 6.2 * (years - 1)) + boys * 1.5
    height = np.clip(height * rng.normal(1.0, 0.04, n), 30, 210)
    weight = np.where(years < 2, 3.4 + 5.5 * years, 12 + 2.6 * (years - 2) + 0.2 * years**2 / 4)
    weight = np.clip(weight * rng.lognormal(0.0, 0.12, n) + boys * 0.4, 0.5, 150)
    severity = (
        pd.Series(diagnosis)
        .map(
            {
                "cardiac": 1.6,
                "infectious": 0.6,
                "neurological": 1.1,
                "oncology": 1.9,
                "respiratory": 0.8,
                "other": 0.5,
            }
        )
        .to_numpy()
    )
    stay = rng.poisson(2.0 + 3.0 * severity) + (rng.random(n) < 0.05) * rng.integers(10, 60, n)
    icu = rng.random(n) < 0.04 + 0.08 * severity
    readmitted = rng.random(n) < 0.05 + 0.05 * severity + 0.05 * icu
    frame = pd.DataFrame(
        {
            "age_months": age,
            "sex": sex,
            "diagnosis_group": diagnosis,
            "weight_kg": np.round(weight, 2),
            "height_cm": np.round(height, 1),
            "length_of_stay_days": np.minimum(stay, 365),
            "icu_admission": icu,
            "readmitted_30d": readmitted,
        }
    )
    frame.loc[rng.random(n) < 0.02, "weight_kg"] = np.nan
    return frame


def cohorts() -> dict[str, pd.DataFrame]:
    return {h.name: cohort(h) for h in HOSPITALS}
