"""Synthetic data: generators trained locally at a node, evaluation, release reports.

Not built yet: see the open issue on synthetic data. A library (no web or database imports).
"""
