"""Shared pieces for the node agent's unit tests: a small declared schema, data, a config."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

COLUMNS_TOML = """\
columns = [
  { name = "age", type = "integer", min = 0, max = 120 },
  { name = "sex", type = "categorical", levels = ["F", "M"] },
  { name = "weight", type = "float", min = 0.5, max = 200 },
  { name = "icu", type = "boolean" },
]"""


class Configs:
    """Writes node.toml files into a test's folder (helpers as a fixture: tests import no
    conftest)."""

    columns = COLUMNS_TOML

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def cohort() -> pd.DataFrame:
        return pd.DataFrame(
            {
                "age": [3, 10, 45, 7, 60, 12],
                "sex": ["F", "M", "F", None, "M", "F"],
                "weight": [14.5, 30.25, 70.0, None, 82.5, 41.0],
                "icu": [True, False, False, True, False, False],
                "name": ["a", "b", "c", "d", "e", "f"],  # not declared: never read
            }
        )

    @staticmethod
    def node_toml(datasets: str, top: str = "", policy: str = "") -> str:
        return (
            'name = "node-a"\n'
            'coordinator_url = "http://127.0.0.1:8000"\n'
            'api_key = "key-123"\n'
            'mpc_ports = "21000-21009"\n'
            f"{top}\n"
            f"[policy]\n{policy}\n\n"
            f"{datasets}\n"
        )

    @staticmethod
    def dataset(
        source: str = "csv",
        where: str = 'path = "cohort.csv"',
        name: str = "cohort",
        columns: str = COLUMNS_TOML,
    ) -> str:
        return f'[[datasets]]\nname = "{name}"\nsource = "{source}"\n{where}\n{columns}\n'

    def write(self, text: str, name: str = "node.toml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def settings(self, text: str):  # type: ignore[no-untyped-def]
        from node_agent.config import NodeSettings

        return NodeSettings.load(self.write(text))


@pytest.fixture
def configs(tmp_path: Path) -> Configs:
    return Configs(tmp_path)


@pytest.fixture(autouse=True)
def _no_tessera_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node settings read TESSERA_* variables: start every test without any."""
    for key in list(os.environ):
        if key.startswith("TESSERA_"):
            monkeypatch.delenv(key)
