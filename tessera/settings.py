"""The settings base every process shares: TOML files read with one-line errors.

Each process has its own pydantic-settings class (`api.settings.CoordinatorSettings`,
`node_agent.config.NodeSettings`) with the `TESSERA_` environment prefix; they read their file
through `read_toml`, so a missing, unreadable or malformed file is always a `ConfigInvalid`
naming the file and the problem.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tessera.errors import ConfigInvalid

ENV_PREFIX = "TESSERA_"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigInvalid(f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"cannot read configuration file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"{path} is not valid TOML: {exc}") from None
