"""Test helper: run an inline MPyC script as one party (no network) and read what it reports.

The scripts run the real protocol code in one party process with a piece of MPyC or of
Tessera recorded (what is opened, whether a search ran); each prints one JSON line last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def report(script: str, *args: str) -> Any:
    """Run `script` with `args` (and MPyC's `--no-log`), the repository on PYTHONPATH; the JSON
    of its last stdout line."""
    run = subprocess.run(
        [sys.executable, "-c", script, *args, "--no-log"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])
