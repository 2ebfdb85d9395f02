"""Tessera: pooled statistics across hospitals by secure multi-party computation.

This package is the shared kernel (message schemas, errors, settings helpers) and the home of
the command line and the Python client, which import the outer layers lazily.
"""

__version__ = "0.1.0"
