"""`tessera demo`: three hospitals answer a statistician's queries by real MPC, end to end.

The demo starts a coordinator (SQLite in a temporary directory) and three node agents as
separate processes, each with its own bundled cohort (CSV at hospital A, Parquet at B, an SQL
table at C). It then acts as a statistician through the REST API and prints every pooled result
beside the plaintext answer on the pooled demo data. The plaintext side exists only because the
demo data is synthetic and all on this machine: in a real network nobody can compute it.

The hospitals give each study a differential-privacy budget on the cohort; the queries with
`dp` are compared with the exact, noiseless answer and judged against the noise scale their
result reports, and the study's remaining budget at each hospital is printed at the end.

Then the statistician requests a synthetic copy of the cohort: each hospital trains the default
generator on its own rows, evaluates it against rows it held out, applies its release gates,
and holds the candidate for its data steward. In the demo a demo steward, whose key pair
`tessera steward keygen` made in the demo's temporary folder (outside every node's work_dir)
and whose public key every hospital's policy lists, signs an approval of every candidate that
passed its gates at once, with `tessera steward approve --key`, and says so: in a real network
a person reads the report first, with their own passphrase-protected key. The release cards
are printed, each naming who signed it, and each release's data is downloaded and checked
against the hash on its card.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from demo.cohort import DATASET, HOSPITALS, cohorts, schema
from demo.network import DataSource, Network, NodeSpec
from synth.report import pair_trends_text

NODE_MIN_COUNT = 5
# the statistics the exact mode perturbs by cell key (their plaintext twin: reference_parties)
PERTURBED = {"count", "sum", "mean", "variance", "min", "max", "histogram", "crosstab", "quantile"}
# the models and the t-test, whose sums carry a cell-key pseudo-row: their twin computes the
# perturbed statistic exactly, and the MPC rounds every opened ratio to 25 significant bits (a
# correlation's r² to a multiple of 2**-32, as its twin does too)
MODELS = {"linear_regression", "logistic_regression", "correlation", "ttest"}
# with χ² (of the perturbed cells, with per-site floors)
TWINNED = MODELS | {"chi2"}
MODEL_REL_TOL = 1e-5  # 2**-24 per ratio; a p-value far in the tail moves a little more
REL_TOL = 1e-6
# each hospital: per study on the cohort, and all studies together; a charge fits when basic
# composition (sums of epsilon) or zCDP (rho, at delta 1e-6) is within them (node_agent.budget)
DP_EPSILON_BUDGET = 3.0
DP_EPSILON_TOTAL = 5.0
# the pooled synthesis (MST) is (epsilon, delta)-DP with delta 1e-6: the limits admit a delta
DP_DELTA_BUDGET = 1e-5
DP_DELTA_TOTAL = 1e-5
NOISE_TAIL = 10  # a dp value is "within noise" when |error| <= 10 noise scales (P ~ e^-10)
DEMO_STEWARD = "demo-steward"
SYNTHESIS = {
    "dataset": DATASET,
    "generator": "cart",
    "rows": 500,
    "target": "icu_admission",
    "seed": 7,
}
SYNTHESIS_POLICY = {  # and `stewards`: the demo steward's public key (`steward_key`)
    "generators": ["cart", "gaussian_copula", "mst"],
    "approvals_required": 1,
    "max_rows": 10_000,
    "pooled": True,
}
POOLED_SYNTHESIS = {  # one cohort of all three hospitals' patients: MST measured by MPC
    "dataset": DATASET,
    "generator": "mst",
    "rows": 2000,
    "epsilon": 1.0,
    "target": "icu_admission",
    "seed": 7,
    "scope": "pooled",
}

QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("Patients in the pooled cohort", {"statistic": "count"}),
    (
        "Mean weight (kg) of children aged 2 years or more",
        {"statistic": "mean", "column": "weight_kg", "where": [["age_months", ">=", 24]]},
    ),
    (
        "Length of stay (days) of girls: mean, variance, std",
        {"statistic": "variance", "column": "length_of_stay_days", "where": [["sex", "==", "F"]]},
    ),
    (
        "Youngest age (months) in ICU",
        {"statistic": "min", "column": "age_months", "where": [["icu_admission", "==", True]]},
    ),
    ("Longest stay (days)", {"statistic": "max", "column": "length_of_stay_days"}),
    (
        "Age (months) histogram, cells under 40 suppressed",
        {
            "statistic": "histogram",
            "column": "age_months",
            "bins": [0, 1, 12, 24, 60, 120, 180, 216],
            "min_count": 40,
        },
    ),
    (
        "ICU admissions by diagnosis group and sex, groups under 15 suppressed",
        {
            "statistic": "count",
            "where": [["icu_admission", "==", True]],
            "group_by": ["diagnosis_group", "sex"],
            "min_count": 15,
        },
    ),
    (
        "Mean length of stay by diagnosis group",
        {"statistic": "mean", "column": "length_of_stay_days", "group_by": ["diagnosis_group"]},
    ),
    (
        "Weight (kg): median and quartiles",
        {"statistic": "quantile", "column": "weight_kg", "q": [0.25, 0.5, 0.75]},
    ),
    (
        "Correlation of age, weight, height and length of stay",
        {
            "statistic": "correlation",
            "columns": ["age_months", "weight_kg", "height_cm", "length_of_stay_days"],
        },
    ),
    (
        "Length of stay on age, ICU admission and diagnosis group (OLS)",
        {
            "statistic": "linear_regression",
            "outcome": "length_of_stay_days",
            "predictors": ["age_months", "icu_admission", "diagnosis_group"],
        },
    ),
    (
        "ICU admission on age, weight and diagnosis group (logistic)",
        {
            "statistic": "logistic_regression",
            "outcome": "icu_admission",
            "predictors": ["age_months", "weight_kg", "diagnosis_group"],
        },
    ),
    (
        "Length of stay, girls vs boys (Welch's t-test)",
        {"statistic": "ttest", "column": "length_of_stay_days", "group": "sex"},
    ),
    (
        "Sex vs ICU admission (chi-square)",
        {"statistic": "chi2", "rows": "sex", "columns": "icu_admission"},
    ),
    (
        "Mean weight (kg), differentially private (epsilon 1)",
        {"statistic": "mean", "column": "weight_kg", "dp": {"epsilon": 1.0}},
    ),
    (
        "Age (months) histogram, differentially private (epsilon 0.5)",
        {
            "statistic": "histogram",
            "column": "age_months",
            "bins": [0, 12, 24, 60, 120, 216],
            "dp": {"epsilon": 0.5},
        },
    ),
]


@dataclass
class Comparison:
    key: str
    secure: Any
    plain: Any
    scale: float | None = None  # a dp value's noise scale: judged against it, not matched
    moved: bool = False  # moved by the exact mode's perturbation: checked by its twin instead

    @property
    def match(self) -> bool:
        a, b = self.secure, self.plain
        if self.moved:
            return True  # the plaintext twin checks it exactly (run_queries)
        if isinstance(a, int | float) and isinstance(b, int | float):
            if self.scale is not None:
                return abs(a - b) <= NOISE_TAIL * self.scale
            return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)
        return bool(a == b)

    @property
    def verdict(self) -> str:
        if self.moved:
            if isinstance(self.secure, int | float) and isinstance(self.plain, int | float):
                return f"moved by {self.secure - self.plain:+.3g}"
            return "" if self.secure == self.plain else "suppressed per site"
        if self.scale is None or not isinstance(self.secure, int | float):
            return "match" if self.match else "MISMATCH"
        error = f"|error| = {abs(self.secure - self.plain):.3g}, scale {self.scale:.3g}"
        return f"within noise ({error})" if self.match else f"BEYOND {NOISE_TAIL} SCALES ({error})"


def flatten(result: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("groups[sex=F].mean", value) pairs for a readable, comparable table."""
    if isinstance(result, dict):
        for key, value in result.items():
            if key == "groups":
                for entry in value:
                    label = ",".join(f"{k}={v}" for k, v in entry["group"].items())
                    rest = {k: v for k, v in entry.items() if k != "group"}
                    yield from flatten(rest, f"{prefix}[{label}].")
            else:
                yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(result, list) and result and not isinstance(result[0], dict):
        name = prefix.rstrip(".")
        if name.endswith(("edges", "levels", "columns")):
            yield name, result
        else:
            for i, value in enumerate(result):
                yield from flatten(value, f"{name}[{i}].")
    else:
        yield prefix.rstrip("."), result


def compare(secure: dict[str, Any], plain: dict[str, Any]) -> list[Comparison]:
    a, b = dict(flatten(secure)), dict(flatten(plain))
    return [
        Comparison(k, a.get(k), b.get(k), noise_scale(k, b, secure.get("dp")))
        for k in dict.fromkeys([*a, *b])
    ]


def noise_scale(key: str, plain: dict[str, Any], dp: dict[str, Any] | None) -> float | None:
    """The noise scale of one flattened value of a dp result, from the scales the result
    reports (`dp.noise_scale`); None for a value without noise (no dp, or the `dp` entry)."""
    if dp is None or key.startswith("dp.") or key.endswith(("edges", "levels")):
        return None
    scales = dp["noise_scale"]
    prefix, _, name = key.rpartition(".")
    at = f"{prefix}." if prefix else ""
    if name == "mean":  # noisy sum over noisy count: to first order
        n, mean = plain.get(f"{at}n"), plain.get(key)
        if not n or mean is None:
            return None
        return float((scales["sum"] + abs(mean) * scales["count"]) / n)
    if name == "sum":
        return float(scales["sum"])
    if name == "n":  # the count, or the sum of every released cell's count
        cells = sum(1 for k in plain if k.startswith(f"{at}counts["))
        return float(scales["count"] * max(cells, 1))
    if name == "count" or name.startswith("counts["):
        return float(scales["count"])
    return None


def show(value: Any) -> str:
    if value is None:
        return "suppressed"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def steward_key(root: Path) -> str:
    """Make the demo steward's key pair in `root`/stewards with `tessera steward keygen`
    (unencrypted: the demo signs unattended); its public key."""
    import subprocess

    from demo.network import cli_command

    made = subprocess.run(
        cli_command(
            "steward",
            "keygen",
            "--out",
            str(root / "stewards"),
            "--name",
            DEMO_STEWARD,
            "--no-passphrase",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if made.returncode != 0:
        raise RuntimeError(f"tessera steward keygen failed: {made.stderr.strip()}")
    return made.stdout.splitlines()[0]


def write_sources(root: Path) -> list[NodeSpec]:
    """Each demo hospital's data in a different kind of source; every hospital's policy lists
    the demo steward's public key."""
    import sqlalchemy

    synthesis = SYNTHESIS_POLICY | {"stewards": {DEMO_STEWARD: steward_key(root)}}
    frames = cohorts()
    declared = schema()
    specs = []
    for hospital, kind in zip(HOSPITALS, ["csv", "parquet", "sql"], strict=True):
        frame = frames[hospital.name]
        if kind == "csv":
            path = root / f"{hospital.name}.csv"
            frame.to_csv(path, index=False)
            source = DataSource(DATASET, "csv", declared, path=str(path))
        elif kind == "parquet":
            path = root / f"{hospital.name}.parquet"
            frame.to_parquet(path, index=False)
            source = DataSource(DATASET, "parquet", declared, path=str(path))
        else:
            url = f"sqlite:///{root / (hospital.name + '.db')}"
            engine = sqlalchemy.create_engine(url)
            with engine.begin() as conn:
                frame.to_sql("admissions", conn, index=False)
            engine.dispose()
            source = DataSource(DATASET, "sql", declared, url=url, table="admissions")
        org = hospital.name.replace("hospital_", "Hospital ").upper()
        specs.append(
            NodeSpec(
                hospital.name,
                org,
                [source],
                min_count=NODE_MIN_COUNT,
                dp_epsilon_budget=DP_EPSILON_BUDGET,
                dp_delta_budget=DP_DELTA_BUDGET,
                dp_epsilon_total=DP_EPSILON_TOTAL,
                dp_delta_total=DP_DELTA_TOTAL,
                synthesis=synthesis,
            )
        )
    return specs


def build_network(root: Path, say: Callable[[str], None]) -> tuple[Network, Any, int]:
    """Start everything and set up a study; returns the network, a researcher client, study."""
    from tessera.client import TesseraClient

    specs = write_sources(root)
    net = Network(root)
    try:
        net.start_coordinator()
        say(f"coordinator   {net.url}  (SQLite in {root})")
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        org_ids = []
        for spec in specs:
            org = admin.create_organisation(spec.organisation)
            org_ids.append(org["id"])
            node = admin.create_node(spec.name, org["id"])
            net.start_node(spec, node["api_key"], node["enrolment_token"])
            rows = len(cohorts()[spec.name])
            fp = net.fingerprint(spec.name).removeprefix("sha256:")
            say(
                f"node agent    {spec.name:<11} {rows:>5} rows  ({spec.datasets[0].source}), "
                f"key sha256:{fp[:16]}..."
            )
        say(
            "trust         each hospital made its own key (tessera node init) and trusts the "
            "others' fingerprints (tessera node trust); nodes compute with no one else"
        )
        password = "demo-" + net.admin_password
        admin.create_user("statistician", password, role="researcher")
        study = admin.create_study(
            "rare-disease-pilot",
            description="Demo study across three paediatric hospitals",
            organisation_ids=org_ids,
            datasets=[DATASET],
            members=["statistician"],
        )
        wait_for_datasets(admin, study["id"], len(specs), net)
        researcher = TesseraClient(net.url)
        researcher.login("statistician", password)
        return net, researcher, study["id"]
    except BaseException:
        net.stop()
        raise


def wait_for_datasets(client: Any, study_id: int, count: int, net: Network) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in net.nodes.values():
            if not proc.alive():
                raise RuntimeError(f"node {proc.name} exited:\n{proc.tail()}")
        listing = client.study_datasets(study_id)
        entries = listing if isinstance(listing, list) else listing.get("datasets", [])
        for entry in entries:
            if entry.get("name") == DATASET and len(entry.get("nodes", [])) >= count:
                return
        time.sleep(0.2)
    raise RuntimeError("the node agents did not register their datasets within 60 s")


def run_demo(keep: bool = False, say: Callable[[str], None] = print) -> bool:
    """Run the demo; True if every pooled result matches the plaintext answer (a dp result:
    lies within `NOISE_TAIL` noise scales of the exact, noiseless one)."""
    pooled = pd.concat(cohorts().values(), ignore_index=True)
    declared = schema()
    root = Path(tempfile.mkdtemp(prefix="tessera-demo-"))
    started = time.perf_counter()
    try:
        net, client, study_id = build_network(root, say)
        try:
            ready = time.perf_counter() - started
            say(f"study         #{study_id}, statistician logged in; ready in {ready:.1f} s\n")
            all_match = run_queries(client, study_id, pooled, declared, say, net)
            show_budget(client, study_id, say)
            released = run_synthesis(client, study_id, net, say)
            pooled_release = run_pooled_synthesis(client, study_id, net, say)
        finally:
            net.stop()
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    outcome = (
        f"all pooled results match (dp results within {NOISE_TAIL} noise scales)"
        if all_match
        else "MISMATCHES found"
    )
    synthetic = (
        f"{len(HOSPITALS)} synthetic releases published"
        if released
        else "NOT every hospital released synthetic data"
    ) + ("; a pooled synthetic cohort published" if pooled_release else "; NO pooled cohort")
    say(
        f"{outcome}; {synthetic}; total {time.perf_counter() - started:.1f} s; every process "
        "stopped"
    )
    if keep:
        say(f"logs and data kept in {root}")
    return all_match and released and pooled_release


def node_views(net: Network) -> tuple[list[pd.DataFrame], list[str]]:
    """Each hospital's cohort as its node reads it, and its row-key secret (the demo made every
    node's work directory, so it can; in a real network nobody can)."""
    from node_agent.config import NodeSettings
    from node_agent.datasets import DatasetCache

    frames, secrets = [], []
    cache = DatasetCache()
    for name in sorted(net.nodes):
        settings = NodeSettings.load(net.root / name / "node.toml")
        dataset = settings.dataset(DATASET)
        assert dataset is not None
        frames.append(cache.get(dataset))
        secrets.append((settings.work_dir / "row_keys.secret").read_text().strip())
    return frames, secrets


def run_queries(
    client: Any,
    study_id: int,
    pooled: pd.DataFrame,
    declared: Any,
    say: Callable[[str], None],
    net: Network,
) -> bool:
    """Each query through the network, checked twice: against its plaintext twin (the `exact`
    mode's cell-key perturbation recomputed from every node's rows and secret: it must match
    exactly) and, in the table, against the exact plaintext answer (what the perturbation or
    the dp noise moved)."""
    from smpc import reference
    from smpc.statistics import reference_parties

    frames, secrets = node_views(net)
    floors = [NODE_MIN_COUNT] * len(frames)
    all_match = True
    for title, body in QUERIES:
        query = {"dataset": DATASET, **body}
        t0 = time.perf_counter()
        submitted = client.submit_query(study_id, query)
        done = client.wait_query(submitted["id"], timeout=60)
        seconds = time.perf_counter() - t0
        say(f"== {title}  ({seconds:.2f} s, query #{done['id']}, {done['status']})")
        if done["status"] != "succeeded":
            say(f"   failed: {done.get('error')}")
            all_match = False
            continue
        applied = done.get("min_count_applied") or NODE_MIN_COUNT
        plain = reference(query, pooled, declared, min_count=applied)
        if "dp" in body or body["statistic"] not in PERTURBED | TWINNED:
            rows = compare(done["result"], plain)  # dp: within noise
            twin_ok = True
        elif body["statistic"] in TWINNED:
            twin = reference_parties(
                query, frames, declared, min_count_floors=floors, key_secrets=secrets
            )
            twin_ok = all(
                r.secure == r.plain
                or (
                    isinstance(r.secure, int | float)
                    and isinstance(r.plain, int | float)
                    and math.isclose(r.secure, r.plain, rel_tol=MODEL_REL_TOL, abs_tol=1e-9)
                )
                for r in compare(done["result"], twin)
            )
            rows = [
                Comparison(r.key, r.secure, r.plain, moved=True)
                for r in compare(done["result"], plain)
            ]
        else:
            twin = reference_parties(
                query, frames, declared, min_count_floors=floors, key_secrets=secrets
            )
            twin_ok = done["result"] == twin
            rows = [
                Comparison(r.key, r.secure, r.plain, moved=True)
                for r in compare(done["result"], plain)
            ]
        width = max(len(r.key) for r in rows)
        exact = "exact, no noise" if "dp" in body else "exact, unmoved"
        say(f"   {'result':<{width}}  {'pooled by MPC':>16}  {exact:>16}")
        for r in rows:
            say(f"   {r.key:<{width}}  {show(r.secure):>16}  {show(r.plain):>16}  {r.verdict}")
            all_match &= r.match
        if "dp" not in body and body["statistic"] in PERTURBED | TWINNED:
            verdict = "matches" if twin_ok else "DOES NOT MATCH"
            say(f"   the published perturbation, recomputed in plaintext: {verdict}")
            all_match &= twin_ok
        say("")
    return all_match


def show_budget(
    client: Any, study_id: int, say: Callable[[str], None], timeout: float = 15.0
) -> None:
    """Print what the study has left of each hospital's privacy budget, once every hospital's
    ledger report (sent after each charge) has arrived."""
    charged = sum(1 for _, body in QUERIES if "dp" in body)
    deadline = time.monotonic() + timeout
    while True:
        [entry] = client.study_budget(study_id)["datasets"]
        if all(n["charges"] >= charged for n in entry["nodes"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    say(f"== Privacy budget of study #{study_id} on {entry['dataset']}")
    say("   each hospital keeps two accountants over the same charges and admits a query while")
    say("   either is within its limit: basic composition (the sums of epsilon and delta) or")
    say("   zCDP (the sum of rho = epsilon^2 / 2; its limit is the rho that converts to the")
    say("   epsilon limit at the delta limit, or at delta 1e-6 for a limit of delta 0); left is")
    say("   the largest epsilon one more query may have, the better of the two (each in brackets)")
    say(
        f"   {'hospital':<11}  {'epsilon spent / limit':>21}  {'delta spent / limit':>19}  "
        f"{'rho spent / limit':>19}  {'left (basic, zCDP)':<18}  over all studies"
    )
    for n in entry["nodes"]:
        say("   " + budget_row(n))
    say(f"   the study can still spend epsilon {show(entry['epsilon_remaining'])} on it\n")


def budget_row(node: dict[str, Any]) -> str:
    """One hospital's row of `show_budget`: what each accountant spent of the study's
    allocation, what is left of it (the better of the two, then each), and of the total over
    all studies."""

    def of(spent: Any, limit: Any) -> str:
        return f"{show(spent)} / {show(limit) if limit is not None else 'no dp'}"

    left = (
        f"{show(node['epsilon_remaining'])} ({show(node['basic_epsilon_remaining'])}, "
        f"{show(node['zcdp_epsilon_remaining'])})"
    )
    total = node["dataset_total"]
    over = (
        f"epsilon {show(total['epsilon_spent'])} of {show(total['epsilon_limit'])} spent, "
        f"{show(total['epsilon_remaining'])} left"
        if total and total["epsilon_limit"] is not None
        else "no cap"
    )
    return (
        f"{node['node']:<11}  {of(node['epsilon_spent'], node['epsilon_limit']):>21}  "
        f"{of(node['delta_spent'], node['delta_limit']):>19}  "
        f"{of(node['rho_spent'], node['rho_limit']):>19}  {left:<18}  {over}"
    )


def run_synthesis(client: Any, study_id: int, net: Network, say: Callable[[str], None]) -> bool:
    """Request a synthetic cohort, let the demo steward approve each candidate that passed
    its gates, print every release card; True if every hospital published a release whose
    data matches its card's hash."""
    import hashlib

    t0 = time.perf_counter()
    made = client.request_synthesis(study_id, SYNTHESIS)
    say(
        f"== Synthetic cohort: {SYNTHESIS['generator']}, {SYNTHESIS['rows']} rows per hospital, "
        f"utility on {SYNTHESIS['target']} (request #{made['id']})"
    )
    view = client.wait_synthesis(made["id"], timeout=300)
    say(f"   trained, sampled and evaluated at each hospital in {time.perf_counter() - t0:.1f} s")
    ok = approve_every_candidate(view, net, say)
    view = client.wait_synthesis(made["id"], timeout=120, until="done")
    releases = {r["id"]: r for r in client.releases(study_id)}
    say("")
    for job in view["jobs"]:
        release = releases.get(job.get("release_id"))
        if release is None:
            say(f"   {job['node']}: no release ({job['status']})")
            ok = False
            continue
        data = client.release_data(release["id"], "csv")
        matches = hashlib.sha256(data).hexdigest() == release["csv_sha256"]
        ok &= matches and release["rows"] == SYNTHESIS["rows"]
        for line in release_card_lines(release):
            say(line)
        say(
            f"   downloaded as CSV: {len(data)} bytes, sha256 {'matches' if matches else 'DIFFERS'}"
        )
        say("")
    return ok


def run_pooled_synthesis(
    client: Any, study_id: int, net: Network, say: Callable[[str], None]
) -> bool:
    """Request one synthetic cohort of every hospital's patients (MST measured by MPC), let
    the demo steward approve it at each hospital, print its card; True if it was published
    and its data matches its hash."""
    import hashlib

    spec = POOLED_SYNTHESIS
    t0 = time.perf_counter()
    made = client.request_synthesis(study_id, spec)
    say(
        f"== Pooled synthetic cohort: {spec['generator']} at epsilon {spec['epsilon']:g}, its "
        f"noisy marginals measured by MPC over all {len(HOSPITALS)} hospitals, {spec['rows']} "
        f"rows (request #{made['id']})"
    )
    view = client.wait_synthesis(made["id"], timeout=300)
    say(
        f"   measured, fitted once, and evaluated at each hospital against its own held-out "
        f"rows in {time.perf_counter() - t0:.1f} s"
    )
    ok = approve_every_candidate(view, net, say)
    view = client.wait_synthesis(made["id"], timeout=120, until="done")
    ids = {job.get("release_id") for job in view["jobs"]} - {None}
    releases = [r for r in client.releases(study_id) if r["id"] in ids]
    say("")
    if len(releases) != 1:
        states = ", ".join(f"{j['node']}: {j['status']}" for j in view["jobs"])
        say(f"   no pooled release ({states})")
        return False
    release = releases[0]
    data = client.release_data(release["id"], "csv")
    matches = hashlib.sha256(data).hexdigest() == release["csv_sha256"]
    for line in pooled_card_lines(release):
        say(line)
    say(f"   downloaded as CSV: {len(data)} bytes, sha256 {'matches' if matches else 'DIFFERS'}")
    say("")
    return ok and matches and release["rows"] == spec["rows"]


def approve_every_candidate(view: dict[str, Any], net: Network, say: Callable[[str], None]) -> bool:
    """The demo steward approves every job's candidate that passed its gates, at its node."""
    import subprocess

    from demo.network import cli_command

    ok = True
    for job in view["jobs"]:
        if job["status"] != "awaiting_review":
            say(f"   {job['node']}: {job['status']}: {(job.get('error') or {}).get('message')}")
            ok = False
            continue
        config = net.root / job["node"] / "node.toml"
        approve = cli_command(
            "steward",
            "approve",
            str(job["id"]),
            "--config",
            str(config),
            "--key",
            str(net.root / "stewards" / f"{DEMO_STEWARD}.key"),
            "--reason",
            "auto-approved by the demo",
        )
        done = subprocess.run(approve, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            say(f"   {job['node']}: the demo steward could not approve: {done.stderr.strip()}")
            ok = False
            continue
        say(
            f"   {job['node']}: gates passed; auto-approved by the demo steward "
            f"'{DEMO_STEWARD}', signed with their key (demo only: a hospital's data steward "
            "reads the report first)"
        )
    return ok


def pooled_card_lines(release: dict[str, Any]) -> list[str]:
    """A pooled release card as the demo prints it: the shared part, then every hospital's
    own evaluation, verdict and signed approvals."""
    card = release["card"]
    lines = [
        f"-- Release #{release['id']}, pooled over {', '.join(card.get('parties') or [])}: "
        f"{release['dataset']}, {release['rows']} synthetic rows",
        f"   generator        {card['generator']} ({card['generator_license']}), its marginals "
        f"measured by MPC; fit {card['fit_seconds']:.1f} s on the opened noisy marginals only",
        f"   epsilon          {card['epsilon']:g} (delta {card['delta']:g}), charged at every "
        "hospital; no hospital's row count is on the card",
    ]
    overall = card.get("verdict")
    if overall:  # every hospital's, the worst winning; each reason names its hospital
        lines[1:1] = [f"   verdict          {overall['verdict'].upper()}"] + [
            f"                    - {reason}" for reason in overall.get("reasons", [])
        ]
    for node in card.get("nodes", []):
        metrics = node["metrics"]
        fidelity, privacy = metrics["fidelity"], metrics["privacy"]
        verdict = node.get("verdict") or {}
        signers = ", ".join(a["steward"] for a in node.get("approvals", []))
        lines.append(
            f"   {node['node']:<16} "
            + (f"verdict {verdict['verdict'].upper()}; " if verdict else "")
            + f"fidelity {fidelity['score']:.3f} vs its own rows; exact copies "
            f"{privacy['exact_match_rate']:.2%} (its unseen rows: "
            f"{privacy['exact_match_rate_holdout']:.2%}); gates "
            + ("passed" if all(g["passed"] for g in node["gates"]) else "FAILED")
            + f"; approved by {signers or 'nobody'}"
        )
    lines.append(f"   sha256           {release['sha256']} (Parquet)")
    return lines


def release_card_lines(release: dict[str, Any]) -> list[str]:
    """A release card as the demo prints it."""
    card = release["card"]
    metrics = card["metrics"]
    fidelity, utility, privacy = metrics["fidelity"], metrics["utility"], metrics["privacy"]
    prints = {s["steward"]: s["fingerprint"] for s in release.get("signed_by", [])}
    approvals = ", ".join(
        f"{a['steward']} ({a.get('reason') or 'approved'}; key {prints.get(a['steward'], '?')})"
        for a in card["approvals"]
    )
    verdict = card.get("verdict") or {}
    lines = [
        f"-- Release #{release['id']} from {release['node']}: {release['dataset']}, "
        f"{release['rows']} synthetic rows",
        *(
            [f"   verdict          {verdict['verdict'].upper()}"]
            + [f"                    - {reason}" for reason in verdict.get("reasons", [])]
            if verdict
            else []
        ),
        f"   generator        {card['generator']} ({card['generator_license']}), "
        f"{card['device']}, fit {card['fit_seconds']:.1f} s on {card['training_rows']} rows, "
        f"{card['holdout_rows']} held out",
        "   epsilon          "
        + (
            f"{card['epsilon']:g} (delta {card['delta']:g})"
            if card["epsilon"] is not None
            else "none (not differentially private)"
        ),
        f"   fidelity         {fidelity['score']:.3f} (shapes {fidelity['column_shapes']:.3f}; "
        f"pair trends {pair_trends_text(fidelity)})",
    ]
    if utility.get("target"):
        lines.append(
            f"   utility          {utility['metric']} on {utility['target']}: TSTR "
            f"{utility['tstr']:.3f} vs TRTR {utility['trtr']:.3f}"
        )
    lines += [
        f"   exact copies     {privacy['exact_match_rate']:.2%} of rows (real unseen rows: "
        f"{privacy['exact_match_rate_holdout']:.2%})",
        f"   DCR median       {privacy['dcr_synthetic_median']:.4f} (real unseen rows: "
        f"{privacy['dcr_holdout_median']:.4f}); membership attack advantage "
        f"{privacy['mia_advantage']:.3f}",
        "   gates            "
        + ", ".join(f"{g['name']} {'passed' if g['passed'] else 'FAILED'}" for g in card["gates"]),
        f"   signed by        {approvals}",
        f"   sha256           {release['sha256']} (Parquet)",
    ]
    return lines
