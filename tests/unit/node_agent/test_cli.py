"""`tessera node check` and `--help`: local checks, one-line errors, nothing sent (the command
run in this process; the subprocess form runs in tests/e2e and the node network tests)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest


def test_check_reports_every_dataset_without_a_coordinator(configs, tessera_cli) -> None:
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)
    configs.cohort().to_parquet(configs.root / "labs.parquet", index=False)
    text = configs.node_toml(
        configs.dataset() + configs.dataset("parquet", 'path = "labs.parquet"', name="labs"),
        policy="min_count = 9",
    )
    # Port 9 (discard) on loopback: nothing answers there, and check must not need it.
    text = text.replace("http://127.0.0.1:8000", "http://127.0.0.1:9")
    done = tessera_cli("node", "check", "--config", str(configs.write(text)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cohort: 6 rows, 4 columns, 2 missing values; schema ok (csv file")
    assert lines[1].startswith("labs: 6 rows, 4 columns, 2 missing values; schema ok (parquet")
    assert lines[2] == "policy: min_count 9, statistics: all"
    assert lines[3] == "privacy budget: none (queries with dp are refused)"


def test_check_names_the_broken_column_in_one_line(configs, tessera_cli) -> None:
    frame = configs.cohort()
    frame.loc[4, "sex"] = "unknown"
    frame.to_csv(configs.root / "cohort.csv", index=False)
    done = tessera_cli(
        "node", "check", "--config", str(configs.write(configs.node_toml(configs.dataset())))
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: dataset 'cohort', column 'sex': 1 row (first: data row 5) not among the "
        "declared levels ['F', 'M']\n"
    )
    assert "unknown" not in done.stderr


def spent_view(
    rho: float,
    epsilon_limit: float,
    delta_limit: float | None,
    epsilon: float = 0.0,
    delta: float = 0.0,
) -> dict[str, Any]:
    """What `tessera node budget` shows of a limit by both accountants: basic composition's
    sums `epsilon` and `delta`, zCDP's `rho` (the limit converts at delta_limit, 0: 1e-6); what
    is left, the larger of epsilon_limit - epsilon and sqrt(2 (rho_limit - rho))."""
    from tessera.privacy import rho_budget

    limit = float(rho_budget(epsilon_limit, delta_limit or 1e-6))
    basic = epsilon_limit - epsilon
    zcdp = math.sqrt(2 * (limit - rho))
    return {
        "rho_spent": rho,
        "rho_limit": limit,
        "rho_remaining": pytest.approx(limit - rho),
        "epsilon_spent": epsilon,
        "delta_spent": delta,
        "epsilon_limit": epsilon_limit,
        "delta_limit": delta_limit,
        "basic_epsilon_remaining": pytest.approx(basic),
        "zcdp_epsilon_remaining": pytest.approx(zcdp),
        "epsilon_remaining": pytest.approx(max(basic, zcdp)),
    }


def test_budget_prints_the_ledger_with_limits_and_what_is_left(configs, tessera_cli) -> None:
    from node_agent.budget import PrivacyLedger
    from tessera.schemas import DPBudget

    text = configs.node_toml(
        configs.dataset() + configs.dataset(where='path = "labs.csv"', name="labs"),
        top='work_dir = "state"',
        policy="dp_epsilon_budget = 1.0\ndp_delta_budget = 1e-6\n"
        "[policy.dp_budgets.labs]\nepsilon = 2",
    )
    path = configs.write(text)
    empty = tessera_cli("node", "budget", "--config", str(path))
    assert empty.returncode == 0, empty.stderr
    ledger = configs.root / "state" / "budget.sqlite3"
    assert json.loads(empty.stdout)["entries"] == []
    assert not ledger.exists(), "reading the ledger does not create it"

    PrivacyLedger(ledger).charge_query(4, "cohort", 0.1, 1e-7, DPBudget(epsilon=1.0, delta=1e-6))
    PrivacyLedger(ledger).charge_query(4, "labs", 0.2, 0.0, DPBudget(epsilon=2.0))
    done = tessera_cli("node", "budget", "--config", str(path))
    shown = json.loads(done.stdout)
    cohort = spent_view(0.005, 1.0, 1e-6, epsilon=0.1, delta=1e-7)
    labs = spent_view(0.02, 2.0, 0.0, epsilon=0.2)
    assert shown["entries"] == [
        {"study_id": 4, "dataset": "cohort", "charges": 1, **cohort},
        {"study_id": 4, "dataset": "labs", "charges": 1, **labs},
    ]
    assert shown["dataset_totals"] == [
        {"dataset": "cohort", "charges": 1, **cohort},
        {"dataset": "labs", "charges": 1, **labs},
    ], "the total is on by default: each dataset's per-study budget"
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)
    configs.cohort().to_csv(configs.root / "labs.csv", index=False)
    checked = tessera_cli("node", "check", "--config", str(path))
    assert checked.stdout.splitlines()[-2:] == [
        "privacy budget: epsilon 1, delta 0.000001 per study and dataset; "
        "labs: epsilon 2, delta 0 per study",
        "privacy budget over all studies: each dataset's per-study budget "
        "(basic composition or zCDP)",
    ]


def test_budget_prints_each_dataset_total_over_all_studies(configs, tessera_cli) -> None:
    from node_agent.budget import PrivacyLedger
    from tessera.schemas import DPBudget, DPTotal

    text = configs.node_toml(
        configs.dataset() + configs.dataset(where='path = "labs.csv"', name="labs"),
        top='work_dir = "state"',
        policy="dp_epsilon_budget = 1.0\ndp_epsilon_total = 3\n"
        "[policy.dp_budgets.labs]\nepsilon = 2\ndelta_total = 1e-6",
    )
    path = configs.write(text)
    ledger = PrivacyLedger(configs.root / "state" / "budget.sqlite3")
    for study in (4, 5):
        ledger.charge_query(study, "cohort", 0.1, 0.0, DPBudget(epsilon=1.0), DPTotal(epsilon=3))
    done = tessera_cli("node", "budget", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dataset_totals"] == [
        {"dataset": "cohort", "charges": 2, **spent_view(0.01, 3.0, 0.0, epsilon=0.2)},
        {"dataset": "labs", "charges": 0, **spent_view(0.0, 3.0, 1e-6)},
    ]
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)
    configs.cohort().to_csv(configs.root / "labs.csv", index=False)
    checked = tessera_cli("node", "check", "--config", str(path))
    assert checked.stdout.splitlines()[-2:] == [
        "privacy budget: epsilon 1, delta 0 per study and dataset; labs: epsilon 2, delta 0 "
        "per study",
        "privacy budget over all studies: epsilon 3 per dataset; labs: epsilon 3, delta 0.000001 "
        "(basic composition or zCDP; elsewhere each dataset's per-study budget)",
    ]


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["budget"], ["audit-verify"]])
def test_help(command, tessera_cli) -> None:
    done = tessera_cli("node", *command, "--help")
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout or "Commands" in done.stdout


def test_init_fingerprint_trust_peers_and_distrust(configs, tessera_cli) -> None:
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)
    config = str(configs.write(configs.node_toml(configs.dataset())))
    done = tessera_cli("node", "init", "--config", config)
    assert done.returncode == 0, done.stderr
    key = configs.root / "identity" / "node_key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in done.stdout
    plain = tessera_cli("node", "fingerprint", "--config", config, "--plain").stdout.strip()
    assert plain.startswith("sha256:") and len(plain) == 71
    assert plain.removeprefix("sha256:")[:4] in done.stdout  # printed in groups of four
    again = tessera_cli("node", "init", "--config", config)
    assert again.returncode == 2 and "already has an identity" in again.stderr
    assert tessera_cli("node", "peers", "--config", config).stdout.startswith("no trusted peers")

    peer = "SHA256:" + ":".join(["ab12"] * 16)  # as read aloud, in any case and grouping
    done = tessera_cli(
        "node", "trust", "--config", config, "--node", "node-b", "--fingerprint", peer
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(tessera_cli("node", "peers", "--config", config, "--json").stdout)
    assert listed == {"node-b": "sha256:" + "ab12" * 16}
    bad = tessera_cli(
        "node", "trust", "--config", config, "--node", "node-c", "--fingerprint", "ab"
    )
    assert bad.returncode == 2 and "is not a node fingerprint" in bad.stderr
    self_trust = tessera_cli(
        "node", "trust", "--config", config, "--node", "node-a", "--fingerprint", plain
    )
    assert self_trust.returncode == 2 and "is this node" in self_trust.stderr
    assert tessera_cli("node", "distrust", "--config", config, "--node", "node-b").returncode == 0
    assert json.loads(tessera_cli("node", "peers", "--config", config, "--json").stdout) == {}


def test_an_agent_without_an_identity_does_not_start(configs, tessera_cli) -> None:
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)
    config = str(configs.write(configs.node_toml(configs.dataset())))
    done = tessera_cli("node", "run", "--config", config)
    assert done.returncode == 2
    assert "has no identity" in done.stderr and "tessera node init" in done.stderr
