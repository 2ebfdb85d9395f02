"""Synthetic data: generators trained locally at a node, their evaluation, release reports.

A library: no web, database or HTTP imports. Torch, SDV and mbi are imported only by the
generators that need them, when they train.

    from synth import train, evaluate, load
    model = train(frame)  # generator="cart", the default
    synthetic = model.sample(1000, seed=7)
    report = evaluate(real=train_frame, synthetic=synthetic, holdout=holdout_frame, target="y")
"""

from typing import TYPE_CHECKING, Any

from synth.base import (
    GENERATORS,
    Synthesizer,
    TrainingProgress,
    check_request,
    dp_generators,
    generator_class,
    generator_names,
    load,
    resolve_device,
    train,
)
from synth.metadata import Column, TableMetadata

if TYPE_CHECKING:
    from synth.evaluation import evaluate


def __getattr__(name: str) -> Any:
    """`evaluate` imports scikit-learn and SDMetrics: only when first used."""
    if name == "evaluate":
        from synth.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'synth' has no attribute {name!r}")


__all__ = [
    "GENERATORS",
    "Column",
    "Synthesizer",
    "TableMetadata",
    "TrainingProgress",
    "check_request",
    "dp_generators",
    "evaluate",
    "generator_class",
    "generator_names",
    "load",
    "resolve_device",
    "train",
]
