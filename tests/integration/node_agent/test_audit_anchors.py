"""Nobody rewrites the audit trail alone: a real coordinator process and three node agents
(in this process, over HTTP; the MPC party is a stand-in, the audit trail is what is tested).

The coordinator operator holds the coordinator's key, so after deleting an event they can
recompute and re-sign the whole chain: the coordinator's own `/audit/verify` passes, but the
heads the nodes recorded no longer match (`tessera audit verify --coordinator ... --node-config
...`). A node operator holds the node's key, so they can rewrite and re-sign the node's log:
the heads the coordinator kept no longer match. A task whose `query.submitted` event is gone is
flagged as submitted by no researcher.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.orm import Session

from api import audit
from api.models import AuditEvent
from api.signing import KEY_FILE, CoordinatorKey
from demo.network import Network, introduce
from node_agent.agent import NodeAgent, running
from node_agent.audit_log import GENESIS, _digest, read_entries
from node_agent.config import NodeSettings
from node_agent.identity import NodeIdentity
from tessera.client import TesseraClient
from tessera.signing import b64, node_audit_message

NODES = ("node-a", "node-b", "node-c")


def stand_in_party(job: Any) -> Any:
    from smpc import PartyOutcome

    return PartyOutcome(result={"count": 42, "n": 42}, min_count_applied=5, seconds=0.01)


@dataclass
class Trails:
    net: Network
    token: str
    configs: dict[str, Path]
    query_ids: list[int]

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.net.root / 'coordinator.db'}"

    def verify(self, node: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "audit",
                "verify",
                "--coordinator",
                self.net.url,
                "--token",
                self.token,
                "--node-config",
                str(self.configs[node]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, json.loads(done.stdout)

    @contextlib.contextmanager
    def coordinator_rows(self) -> Iterator[Session]:
        """A session on the coordinator's database; every audit row restored afterwards."""
        engine = sqlalchemy.create_engine(self.database_url)
        with engine.connect() as conn:
            saved = [
                dict(r._mapping) for r in conn.execute(sqlalchemy.select(AuditEvent.__table__))
            ]
        try:
            with Session(engine) as db:
                yield db
                db.commit()
        finally:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.delete(AuditEvent.__table__))
                conn.execute(sqlalchemy.insert(AuditEvent.__table__), saved)
            engine.dispose()


def write_config(root: Path, name: str, url: str, key: str, port: int, enrolment: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "cohort.csv").write_text("age,sex\n3,F\n10,M\n7,F\n")
    config = folder / "node.toml"
    config.write_text(
        f'name = "{name}"\ncoordinator_url = "{url}"\napi_key = "{key}"\n'
        f'enrolment_token = "{enrolment}"\n'
        f'mpc_ports = "{port}-{port + 9}"\nwork_dir = "state"\npoll_wait_s = 1\n\n'
        '[[datasets]]\nname = "cohort"\nsource = "csv"\npath = "cohort.csv"\n'
        'columns = [\n  { name = "age", type = "integer", min = 0, max = 18 },\n'
        '  { name = "sex", type = "categorical", levels = ["F", "M"] },\n]\n'
    )
    return config


@pytest.fixture(scope="module")
def trails(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trails]:
    root = tmp_path_factory.mktemp("audit-anchors")
    net = Network(root)
    try:
        net.start_coordinator(long_poll_max_s=1, accept_timeout_s=15, query_timeout_s=30)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        configs, orgs = {}, []
        for i, name in enumerate(NODES):
            org = admin.create_organisation(f"Hospital {name}")
            orgs.append(org["id"])
            node = admin.create_node(name, org["id"])
            configs[name] = write_config(
                root, name, net.url, node["api_key"], 23000 + 10 * i, node["enrolment_token"]
            )
        introduce({n: root / n / "state" for n in NODES})  # tessera node init, node trust
        agents = [NodeAgent(NodeSettings.load(configs[n]), run_party=stand_in_party) for n in NODES]
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "s", organisation_ids=orgs, datasets=["cohort"], members=["rita"]
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        query_ids = []
        with contextlib.ExitStack() as stack:
            for agent in agents:
                stack.enter_context(running(agent))
            for _ in range(2):
                submitted = researcher.submit_query(
                    study["id"], {"statistic": "count", "dataset": "cohort"}
                )
                done = researcher.wait_query(submitted["id"], timeout=30)
                assert done["status"] == "succeeded", done
                query_ids.append(submitted["id"])
            time.sleep(2.5)  # a couple more polls: each node records the latest head
        assert admin.token is not None
        yield Trails(net, admin.token, configs, query_ids)
    finally:
        net.stop()


def test_honest_trails_verify_on_both_sides_and_across(trails: Trails) -> None:
    for node in NODES:
        code, report = trails.verify(node)
        assert code == 0, report
        coordinator, mine, cross = report["coordinator"], report["node"], report["cross"]
        assert coordinator["signed"] == coordinator["entries"] > 10
        assert coordinator["key_pinned"], "pinned by the node's trust-on-first-use"
        assert mine["signed"] == mine["entries"] and mine["signatures_checked"]
        assert cross["coordinator_heads_checked"] >= 1 and cross["node_heads_checked"] >= 1
        assert cross["tasks_checked"] == 2 and cross["problems"] == []


def resign_chain(db: Session, key: CoordinatorKey) -> None:
    """What the coordinator's operator can do with the key: recompute and re-sign it all."""
    prev = audit.GENESIS
    for event in db.scalars(sqlalchemy.select(AuditEvent).order_by(AuditEvent.id)):
        digest = audit._digest(
            prev, event.at, event.actor, event.action, event.subject, event.details
        )
        event.prev_hash, event.hash, event.signature = prev, digest, key.sign_audit(digest)
        prev = digest
    db.flush()


def test_a_rewritten_and_re_signed_coordinator_chain_is_caught_by_the_nodes(
    trails: Trails,
) -> None:
    key = CoordinatorKey.load(trails.net.root / KEY_FILE)
    with trails.coordinator_rows() as db:
        login = db.scalars(
            sqlalchemy.select(AuditEvent).where(AuditEvent.action == "login").limit(1)
        ).one()
        db.delete(login)
        db.flush()
        resign_chain(db, key)
        db.commit()
        admin = TesseraClient(trails.net.url, token=trails.token)
        assert admin.audit_verify()["ok"] is True, "the coordinator's own check passes"

        code, report = trails.verify("node-a")

    assert code == 1 and report["ok"] is False
    assert report["coordinator"]["ok"] is True, "every signature is the coordinator key's"
    problems = report["cross"]["problems"]
    assert any("no longer has the hash the node recorded" in p for p in problems), problems


def test_a_task_without_its_submission_on_record_is_flagged(trails: Trails) -> None:
    key = CoordinatorKey.load(trails.net.root / KEY_FILE)
    query_id = trails.query_ids[0]
    with trails.coordinator_rows() as db:
        db.execute(
            sqlalchemy.delete(AuditEvent).where(
                AuditEvent.action == "query.submitted", AuditEvent.subject == f"query:{query_id}"
            )
        )
        resign_chain(db, key)
        db.commit()

        code, report = trails.verify("node-b")

    assert code == 1
    problems = report["cross"]["problems"]
    assert any(f"(query {query_id}) has no query.submitted event" in p for p in problems), problems


def test_a_rewritten_and_re_signed_node_log_is_caught_by_the_coordinators_record(
    trails: Trails,
) -> None:
    settings = NodeSettings.load(trails.configs["node-c"])
    identity = NodeIdentity.load(settings.work_dir, settings.name)
    path = settings.audit_path
    kept = path.with_suffix(".kept")
    shutil.copy(path, kept)
    try:
        entries = read_entries(path)
        refused = [e for e in entries if e["action"] != "task.received"]  # drop what it ran
        prev = GENESIS
        for entry in refused:
            body = {k: v for k, v in entry.items() if k not in ("prev_hash", "hash", "sig")}
            digest = _digest(prev, body)
            entry |= {
                "prev_hash": prev,
                "hash": digest,
                "sig": b64(identity.sign(node_audit_message(digest))),
            }
            prev = digest
        path.write_text("".join(json.dumps(e) + "\n" for e in refused))

        code, report = trails.verify("node-c")

        assert code == 1
        assert report["node"]["ok"] is True, "every signature is the node key's"
        problems = report["cross"]["problems"]
        assert any("the log was rewritten" in p or "entries were removed" in p for p in problems), (
            problems
        )
    finally:
        shutil.move(kept, path)
    assert trails.verify("node-c")[0] == 0


def test_the_poll_carries_the_signed_chain_head_and_refuses_a_malformed_node_head(
    trails: Trails,
) -> None:
    import httpx

    from tessera.signing import audit_message, parse_head, verify_ed25519

    key = NodeSettings.load(trails.configs["node-a"]).key
    published = httpx.get(f"{trails.net.url}/api/v1/coordinator/key").json()
    assert published["fingerprint"] == CoordinatorKey.load(trails.net.root / KEY_FILE).fingerprint
    poll = f"{trails.net.url}/api/v1/nodes/me/tasks"
    headers = {"Authorization": f"Bearer {key}"}
    answer = httpx.get(poll, headers=headers, params={"wait": 0})
    assert answer.status_code == 200 and answer.json() == []
    head = parse_head(answer.headers["Tessera-Audit-Head"])
    assert head is not None
    assert verify_ed25519(published["public_key_pem"], audit_message(head[1]), head[2])
    bad = httpx.get(
        poll, headers={**headers, "Tessera-Audit-Head": "many:entries"}, params={"wait": 0}
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["header"] == "Tessera-Audit-Head"
    # a head signed by another key than the node's registered one is not kept
    from smpc.tls import new_authority
    from tessera.signing import b64, node_audit_message

    other = NodeIdentity("node-a", *new_authority("Tessera node node-a"))
    forged = f"99:{'ab' * 32}:{b64(other.sign(node_audit_message('ab' * 32)))}"
    refused = httpx.get(poll, headers={**headers, "Tessera-Audit-Head": forged}, params={"wait": 0})
    assert refused.status_code == 422
    assert "not signed by this node's registered key" in refused.json()["error"]["message"]
