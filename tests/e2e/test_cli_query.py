"""`tessera query` as a statistician runs it: a real coordinator and three real node agents
(the demo's hospitals), the CLI as a subprocess; results equal their plaintext twin: the
`exact` mode's cell-key perturbation recomputed from every node's rows and row-key secret
(`smpc.statistics.reference_parties`), within the documented perturbation of the exact answer."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from demo.cohort import DATASET, cohorts, schema
from demo.network import Network, free_port
from demo.scenario import NODE_MIN_COUNT, node_views, wait_for_datasets, write_sources
from tessera.client import TesseraClient

STUDY = "growth-cli"
USER = "stella"
PASSWORD = "stella-secret-password"
ACCEPT_TIMEOUT_S = 8

MEAN = {"statistic": "mean", "dataset": DATASET, "column": "weight_kg"}
BY_GROUP = {
    "statistic": "mean",
    "dataset": DATASET,
    "column": "length_of_stay_days",
    "group_by": ["sex"],
    "where": [["age_months", ">=", 24]],
}


@dataclass
class Shell:
    """Runs `tessera ...` as a statistician would, with the connection in the environment."""

    root: Path
    net: Network

    def env(self, **extra: str) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        return {
            **clean,
            "TESSERA_COORDINATOR_URL": self.net.url,
            "TESSERA_USER": USER,
            "TESSERA_PASSWORD": PASSWORD,
            **extra,
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=self.env(**env),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
        )
        assert PASSWORD not in done.stdout + done.stderr, "the password is never printed"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def query_file(self, name: str, body: Any) -> str:
        path = self.root / name
        path.write_text(json.dumps(body))
        return str(path)


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shell]:
    root = tmp_path_factory.mktemp("cli-query")
    specs = write_sources(root)
    net = Network(root)
    try:
        net.start_coordinator(accept_timeout_s=ACCEPT_TIMEOUT_S, query_timeout_s=120)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        org_ids = []
        for spec in specs:
            org = admin.create_organisation(spec.organisation)
            org_ids.append(org["id"])
            node = admin.create_node(spec.name, org["id"])
            net.start_node(spec, node["api_key"], node["enrolment_token"])
        admin.create_user(USER, PASSWORD, role="researcher")
        study = admin.create_study(
            STUDY, organisation_ids=org_ids, datasets=[DATASET], members=[USER]
        )
        wait_for_datasets(admin, study["id"], len(specs), net)
        admin.close()
        yield Shell(root, net)
    finally:
        net.stop()


def oracle(query: dict[str, Any]) -> dict[str, Any]:
    """The exact, unperturbed answer on the pooled rows."""
    from smpc import reference

    pooled = pd.concat(cohorts().values(), ignore_index=True)
    return reference(query, pooled, schema(), min_count=NODE_MIN_COUNT)


def twin(shell: Shell, query: dict[str, Any]) -> dict[str, Any]:
    """What the network must answer: the perturbed result recomputed in plaintext from each
    node's rows as it reads them and its row-key secret (every node's floor is
    NODE_MIN_COUNT)."""
    from smpc.statistics import reference_parties

    frames, secrets = node_views(shell.net)
    return reference_parties(
        query,
        frames,
        schema(),
        min_count_floors=[NODE_MIN_COUNT] * len(frames),
        key_secrets=secrets,
    )


def within_perturbation(result: dict[str, Any], query: dict[str, Any]) -> bool:
    """A mean's result within the documented perturbation of the pooled rows (docs/disclosure.md):
    n within 3 of the cell's count; the sum moved by at most magnitude (0.25) times the cell's
    largest value and rounded down to a multiple of 2**-16 (the values here are positive)."""
    pooled = pd.concat(cohorts().values(), ignore_index=True)
    for column, op, value in query.get("where", []):
        assert op == ">="
        pooled = pooled[pooled[column] >= value]
    by = query.get("group_by", [])
    cells = [g for _, g in pooled.groupby(by[0])] if by else [pooled]
    results = result["groups"] if by else [result]
    if len(cells) != len(results):
        return False
    for got, cell in zip(results, cells, strict=True):
        x = cell[query["column"]].dropna()  # missing values are not in the cell
        low = (x.sum() - 0.25 * x.max() - 2**-16) / (len(x) + 3)
        high = (x.sum() + 0.25 * x.max()) / (len(x) - 3)
        if abs(got["n"] - len(x)) > 3 or not low <= got["mean"] <= high:
            return False
    return True


def table_value(stdout: str, key: str) -> str:
    rows = [line.split() for line in stdout.splitlines()]
    return next(row[-1] for row in rows if row and row[0] == key)


def query_id(stderr: str) -> int:
    """The id from the progress lines `query 12: ...`."""
    line = next(line for line in stderr.splitlines() if line.startswith("query "))
    return int(line.split()[1].rstrip(":"))


def test_submit_waits_and_prints_a_table(shell: Shell) -> None:
    done = shell.run("query", "submit", shell.query_file("mean.json", MEAN), "--study", STUDY)
    assert done.returncode == 0, done.stderr
    expected = twin(shell, MEAN)
    assert within_perturbation(expected, MEAN), (expected, oracle(MEAN))
    assert int(table_value(done.stdout, "n")) == expected["n"]
    assert math.isclose(float(table_value(done.stdout, "mean")), expected["mean"], rel_tol=1e-5)
    first = done.stdout.splitlines()[0]
    qid = query_id(done.stderr)
    assert first == f"query {qid}: mean on {DATASET}, 3 nodes, min_count {NODE_MIN_COUNT}"
    progress = done.stderr.splitlines()
    assert progress[-1] == f"query {qid}: succeeded", done.stderr
    assert all(line.startswith(f"query {qid}: ") for line in progress), "one line per change"
    assert len(progress) == len(set(progress)), "a line only when something changed"

    again = shell.run("query", "result", str(qid), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == expected
    table = shell.run("query", "result", str(qid))
    assert table.returncode == 0 and table.stdout == done.stdout


def test_group_by_json_and_table(shell: Shell) -> None:
    path = shell.query_file("by-sex.json", BY_GROUP)
    done = shell.run("query", "submit", path, "--study", STUDY, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == twin(shell, BY_GROUP)
    assert within_perturbation(result, BY_GROUP), (result, oracle(BY_GROUP))

    table = shell.run("query", "result", str(query_id(done.stderr)))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["sex", "n", "mean"])
    rows = [line.split() for line in lines[header + 2 :]]
    assert [r[0] for r in rows] == ["F", "M"]
    for row, group in zip(rows, result["groups"], strict=True):
        assert int(row[1]) == group["n"]
        assert math.isclose(float(row[2]), group["mean"], rel_tol=1e-5)


def test_no_wait_prints_the_id_and_result_waits(shell: Shell) -> None:
    path = shell.query_file("count.json", {"statistic": "count", "dataset": DATASET})
    done = shell.run("query", "submit", path, "--study", STUDY, "--no-wait")
    assert done.returncode == 0, done.stderr
    qid = int(done.stdout.strip())
    waited = shell.run("query", "result", str(qid), "--wait", "--json")
    assert waited.returncode == 0, waited.stderr
    count = json.loads(waited.stdout)
    assert count == twin(shell, {"statistic": "count", "dataset": DATASET})
    exact = oracle({"statistic": "count", "dataset": DATASET})
    assert abs(count["count"] - exact["count"]) <= 3


def test_dry_run(shell: Shell) -> None:
    path = shell.query_file("dry.json", {**MEAN, "min_count": 2})
    done = shell.run("query", "dry-run", path, "--study", STUDY)
    assert done.returncode == 0, done.stderr
    assert "query              mean on paediatric_cohort: valid" in done.stdout
    assert "parties            3: hospital_a (HOSPITAL A)" in done.stdout
    assert f"min_count applied  {NODE_MIN_COUNT}" in done.stdout
    as_json = json.loads(shell.run("query", "dry-run", path, "--study", STUDY, "--json").stdout)
    assert as_json["valid"] is True and as_json["parties"] == 3
    assert as_json["reveals"] and as_json["epsilon"] == 0


def test_bad_input_is_one_line_and_exit_2(shell: Shell) -> None:
    bad_json = shell.root / "bad.json"
    bad_json.write_text('{"statistic": ')
    unknown_column = shell.query_file("bmi.json", {**MEAN, "column": "bmi"})
    mean = shell.query_file("ok.json", MEAN)
    unused = f"http://127.0.0.1:{free_port()}"
    cases = [
        (("submit", "missing.json", "--study", STUDY), {}, "query file not found: missing.json"),
        (("submit", str(bad_json), "--study", STUDY), {}, "is not valid JSON"),
        (("submit", unknown_column, "--study", STUDY), {}, "unknown column 'bmi'"),
        (("dry-run", unknown_column, "--study", STUDY), {}, "unknown column 'bmi'"),
        (("submit", mean, "--study", "elsewhere"), {}, "no study named 'elsewhere'"),
        (("submit", mean, "--study", "999"), {}, "no study 999"),
        (("result", "99999"), {}, "no query 99999"),
        (
            ("submit", mean, "--study", STUDY),
            {"TESSERA_COORDINATOR_URL": unused},
            f"cannot reach the coordinator at {unused}",
        ),
        (("submit", shell.query_file("list.json", [1]), "--study", STUDY), {}, "JSON object"),
        (("result", "1"), {"TESSERA_PASSWORD": "wrong-password"}, "wrong username or password"),
        (("result", "1"), {"TESSERA_PASSWORD": ""}, "no password: set TESSERA_PASSWORD"),
    ]
    for args, env, message in cases:
        done = shell.run("query", *args, **env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert message in lines[0], (args, lines[0])
        assert done.stdout == ""


def test_a_failed_query_is_one_line_and_exit_2(shell: Shell) -> None:
    shell.net.nodes["hospital_c"].stop()
    path = shell.query_file("count2.json", {"statistic": "count", "dataset": DATASET})
    began = time.monotonic()
    done = shell.run("query", "submit", path, "--study", STUDY)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    # the accept deadline names it, or (when it stopped less than the coordinator's grace
    # period before the submission) its departure does, sooner
    assert last.startswith("error: query ")
    assert re.search(r" failed: node hospital_c (did not accept|went away)", last), last
    assert time.monotonic() - began < ACCEPT_TIMEOUT_S + 30
    assert "query" in done.stderr and done.stdout == ""
    again = shell.run("query", "result", str(query_id(done.stderr)))
    assert again.returncode == 2 and again.stderr.strip() == last
