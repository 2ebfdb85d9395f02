"""The release report: one self-contained HTML file with its plots, its JSON beside it, and
real aggregates held to the disclosure floor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

import synth
from demo.cohort import HOSPITALS, cohort, schema
from synth.gates import ReleaseGates
from synth.holdout import split_holdout
from synth.metadata import TableMetadata
from synth.report import write_report


def test_the_report_is_self_contained_and_holds_every_section(tmp_path: Path) -> None:
    frame = cohort(HOSPITALS[1])
    metadata = TableMetadata.from_schema(schema(), frame)
    train, holdout = split_holdout(frame, 0.2, seed=2, target="icu_admission")
    model = synth.train(train, metadata=metadata)
    synthetic = model.sample(len(train), seed=2)
    evaluation = synth.evaluate(
        train, synthetic, holdout, target="icu_admission", metadata=model.metadata
    )
    gates = [g.model_dump() for g in ReleaseGates().apply(evaluation, None)]
    card = {"generator": "cart", "rows": len(synthetic)}
    html_path, json_path = write_report(
        tmp_path / "report.html",
        evaluation,
        train,
        synthetic,
        metadata=model.metadata,
        title="Synthetic cohort",
        card=card,
        gates=gates,
        min_count=5,
    )
    text = html_path.read_text()
    for heading in (
        "Release card",
        "Release gates",
        "Fidelity",
        "Distributions, real vs synthetic",
        "Correlations",
        "Utility",
        "Privacy",
    ):
        assert f"<h2>{heading}</h2>" in text
    images = re.findall(r"src='data:image/png;base64,", text)
    assert len(images) == len(metadata.columns) + 3  # columns, heatmaps, utility, DCR
    assert "http" not in text.replace("https://", "")  # nothing fetched from anywhere
    document = json.loads(json_path.read_text())
    assert document["evaluation"]["fidelity"]["score"] == evaluation["fidelity"]["score"]
    assert document["card"] == card and document["gates"] == gates
    assert not list(tmp_path.glob("*.partial"))


def test_real_aggregates_below_the_floor_are_withheld(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"x": [1.0] * 50 + [100.0] * 2, "c": ["a"] * 49 + ["b"] * 3},
    )
    metadata = TableMetadata.from_frame(frame)
    report = synth.evaluate(frame, frame, frame, metadata=metadata)
    path, _ = write_report(
        tmp_path / "r.html", report, frame, frame, metadata=metadata, min_count=5
    )
    text = path.read_text()
    assert "<figcaption>x (1 real bar withheld)</figcaption>" in text
    assert "<figcaption>c (1 real bar withheld)</figcaption>" in text
    assert "fewer than 5 rows are withheld" in text
    path, _ = write_report(tmp_path / "r.html", report, frame, frame, metadata=metadata)
    assert "withheld" not in path.read_text()
