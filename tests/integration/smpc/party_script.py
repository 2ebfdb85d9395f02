"""Test helper: run a test's own MPyC party script as several parties over loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from smpc.simulation import free_ports

ROOT = Path(__file__).resolve().parents[3]


def run_parties(
    script: Path, environment: dict[str, str], parties: int, timeout: float
) -> list[Any]:
    """Start `script` as `parties` MPyC parties (one party runs without addresses) with the
    repository on PYTHONPATH and `environment` added; each party's last stdout line, as JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **environment}
    addresses = []
    if parties > 1:
        addresses = [a for p in free_ports(parties) for a in ("-P", f"127.0.0.1:{p}")]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "-I", str(i), "--no-log", *addresses],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(parties)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs
