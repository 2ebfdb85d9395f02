"""The node's TOML configuration: good files load, bad ones say file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.config import NodeSettings
from tessera.errors import ConfigInvalid


def load_error(path: Path) -> str:
    with pytest.raises(ConfigInvalid) as caught:
        NodeSettings.load(path)
    return caught.value.message


def test_a_full_file_loads_with_paths_relative_to_the_file(configs, tmp_path) -> None:
    text = configs.node_toml(
        configs.dataset(where='path = "data/cohort.csv"')
        + configs.dataset("sql", 'url = "sqlite:///labs.db"\ntable = "results"', name="labs"),
        top='work_dir = "state"\nlog_format = "json"\npoll_wait_s = 5',
        policy='min_count = 10\nallowed_statistics = ["count", "mean"]',
    )
    settings = configs.settings(text)

    assert settings.name == "node-a"
    assert settings.key == "key-123"
    assert settings.port_range == (21000, 21009)
    assert settings.work_dir == tmp_path / "state"
    assert settings.audit_path == tmp_path / "state" / "audit.jsonl"
    assert settings.poll_wait_s == 5 and settings.log_format == "json"
    assert settings.policy.min_count == 10
    assert settings.policy.summary().allowed_statistics == ["count", "mean"]
    cohort, labs = settings.datasets
    assert cohort.path == tmp_path / "data" / "cohort.csv"
    assert labs.url is not None
    assert labs.url.get_secret_value() == f"sqlite:///{tmp_path / 'labs.db'}"
    assert [c.name for c in cohort.schema_.columns] == ["age", "sex", "weight", "icu"]
    assert settings.dataset("labs") is labs and settings.dataset("nope") is None


def test_defaults(configs, tmp_path) -> None:
    settings = configs.settings(configs.node_toml(configs.dataset()))
    assert settings.mpc_host == "127.0.0.1"
    assert settings.poll_wait_s == 25
    assert settings.log_format == "text"
    assert settings.policy.min_count == 5
    assert settings.policy.allowed_statistics is None
    assert settings.work_dir == tmp_path


def test_absolute_paths_and_urls_are_kept(configs, tmp_path) -> None:
    other = tmp_path / "elsewhere"
    text = configs.node_toml(
        configs.dataset(where=f'path = "{other / "c.csv"}"')
        + configs.dataset("sql", f'url = "sqlite:///{other / "l.db"}"\ntable = "t"', name="labs")
        + configs.dataset("sql", 'url = "postgresql://u:pw@db/x"\ntable = "t"', name="pg"),
    )
    cohort, labs, pg = configs.settings(text).datasets
    assert cohort.path == other / "c.csv"
    assert labs.url.get_secret_value() == f"sqlite:///{other / 'l.db'}"
    assert pg.url.get_secret_value() == "postgresql://u:pw@db/x"
    assert "pw" not in pg.describe() and "table 't'" in pg.describe()


def test_environment_overrides_the_file(configs, monkeypatch) -> None:
    monkeypatch.setenv("TESSERA_API_KEY", "from-env")
    monkeypatch.setenv("TESSERA_COORDINATOR_URL", "https://coordinator.example.org")
    monkeypatch.setenv("TESSERA_POLICY__MIN_COUNT", "11")
    monkeypatch.setenv("TESSERA_DATABASE_URL", "sqlite://")  # the coordinator's: ignored here
    settings = configs.settings(configs.node_toml(configs.dataset()))
    assert settings.key == "from-env"
    assert settings.coordinator_url == "https://coordinator.example.org"
    assert settings.policy.min_count == 11


def test_api_key_from_a_file(configs, tmp_path) -> None:
    (tmp_path / "node.key").write_text("secret-from-file\n")
    text = configs.node_toml(configs.dataset())
    text = text.replace('api_key = "key-123"', 'api_key_file = "node.key"')
    assert configs.settings(text).key == "secret-from-file"


def test_the_api_key_is_never_shown(configs) -> None:
    settings = configs.settings(configs.node_toml(configs.dataset()))
    assert "key-123" not in repr(settings)
    assert "key-123" not in str(settings.model_dump())


BAD = [
    ('api_key = "key-123"\n', "", ": no API key: set api_key, api_key_file or TESSERA_API_KEY"),
    ('name = "node-a"\n', "", ": name: required key is missing"),
    ('"21000-21009"', '"80-90"', ": mpc_ports: '80-90' must be a range like 21000-21099"),
    ('"21000-21009"', '"lots"', ": mpc_ports: 'lots' is not a port range like"),
    ("[policy]\n", "[policy]\nmin_count = -1\n", ": policy.min_count: Input should be greater"),
    ("[policy]\n", '[policy]\nallowed_statistics = ["meen"]\n', "unknown statistic(s) 'meen'"),
    ("[policy]\n", "[policy]\nfloor = 3\n", ": policy.floor: unknown key"),
    ('source = "csv"', 'source = "xlsx"', ": datasets['cohort'].source: Input should be"),
    ('path = "cohort.csv"\n', "", ": datasets['cohort']: a csv source needs 'path'"),
    ('type = "boolean"', 'type = "bool"', "datasets['cohort'].columns['icu'].type: Input should"),
    ('levels = ["F", "M"]', 'levels = ["F", "F"]', "categorical column 'sex' has repeated levels"),
    ('"http://127.0.0.1:8000"', '"ftp://x"', ": coordinator_url: String should match"),
    ('api_key = "key-123"', 'api_key = "key-123"\nspeed = 3', ": speed: unknown key"),
    (
        'api_key = "key-123"',
        'api_key = "key-123"\nenvironment = "production"',
        "coordinator_url must be https:// in production",
    ),
    ("[policy]\n", "[policy]\nmin_count = 2.5\n", ": policy.min_count: Input should be a valid"),
    ("[policy]\n", "[policy]\ndp_epsilon_budget = -1\n", ": policy.dp_epsilon_budget: Input"),
    ("[policy]\n", "[policy]\ndp_delta_budget = 1e-6\n", "dp_delta_budget needs dp_epsilon_budget"),
    (
        "[policy]\n",
        "[policy]\ndp_budgets = { genomes = { epsilon = 1 } }\n",
        ": policy.dp_budgets names dataset(s) not declared here: genomes",
    ),
    (
        "[policy]\n",
        "[policy]\ndp_budgets = { cohort = { epsilon = 1, delta = 1 } }\n",
        ": policy.dp_budgets.cohort.delta: Input should be less than 1",
    ),
    (
        "[policy]\n",
        "[policy]\ndp_budgets = { cohort = { delta = 1e-6 } }\n",
        ": policy.dp_budgets.cohort: delta needs epsilon (the budget of each study",
    ),
    ("[policy]\n", "[policy]\ndp_delta_total = 1\n", ": policy.dp_delta_total: Input should be"),
    ("[policy]\n", "[policy]\ndp_epsilon_total = -2\n", ": policy.dp_epsilon_total: Input"),
    (
        "[policy]\n",
        "[policy]\ndp_budgets = { cohort = { epsilon_totl = 1 } }\n",
        ": policy.dp_budgets.cohort.epsilon_totl: unknown key",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), BAD)
def test_bad_files_name_the_file_the_key_and_the_problem(configs, old, new, expected) -> None:
    text = configs.node_toml(configs.dataset())
    assert old in text
    path = configs.write(text.replace(old, new, 1))
    message = load_error(path)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_repeated_dataset_names(configs) -> None:
    text = configs.node_toml(configs.dataset() + configs.dataset(where='path = "b.csv"'))
    assert "dataset name(s) used twice: cohort" in load_error(configs.write(text))


def test_a_missing_or_broken_file(configs, tmp_path) -> None:
    absent = tmp_path / "absent.toml"
    assert load_error(absent) == f"configuration file not found: {absent}"
    broken = configs.write("name = \n")
    assert load_error(broken).startswith(f"{broken} is not valid TOML")


def test_an_override_from_the_environment_is_named(configs, monkeypatch) -> None:
    monkeypatch.setenv("TESSERA_POLICY__MIN_COUNT", "-3")
    message = load_error(configs.write(configs.node_toml(configs.dataset())))
    assert "policy.min_count (from TESSERA_POLICY__MIN_COUNT): Input should be" in message


def test_the_cli_prints_one_line_and_exits_2(configs, tessera_cli) -> None:
    text = configs.node_toml(configs.dataset()).replace('source = "csv"', 'source = "xls"')
    path = configs.write(text)
    for command in ("run", "check", "audit-verify"):
        done = tessera_cli("node", command, "--config", str(path))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {path}: datasets['cohort'].source: Input should be")
