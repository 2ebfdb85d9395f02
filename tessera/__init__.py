"""Tessera: pooled statistics across hospitals by secure multi-party computation.

This package is the shared kernel: message schemas, the REST resources, errors, settings
helpers, privacy arithmetic, logging, the Python client, and the one schema inference and row
check of data columns (`tessera.columns`). It imports nothing above itself; the command line
(`cli`) and the demo (`demo`) are the outermost layer.
"""

__version__ = "0.1.0"
