"""Attacks on who computes: a coordinator that substitutes a party's certificate, key or
address, an administrator who enrols a sybil node into a study, and a node that shows another
key than the one it registered. Each honest node refuses before its party process starts, so
before any share or key is sent (`node_agent.peers`); the party-level attacks (a peer claiming
another party id, an impostor at a swapped address) are in tests/integration/smpc/test_tls.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from demo.network import DataSource, Network, NodeSpec, cli_command
from node_agent.identity import NodeIdentity, TrustedPeers
from node_agent.peers import address_problem, check_parties, run_id
from smpc.tls import issue_run_certificate, new_authority
from tessera.client import TesseraClient
from tessera.errors import Conflict, PeerRefused
from tessera.fingerprints import fingerprint
from tessera.schemas import ColumnSpec, DatasetSchema, PartyAddress

QUERY_ID = 41
RUN = run_id(QUERY_ID)


class Honest:
    """Party 1 of three, with its own key, trusting peer-0 and peer-2 (out of band)."""

    def __init__(self, tmp_path: Path) -> None:
        self.identity = NodeIdentity.create(tmp_path, "node-a")
        self.keys = {i: new_authority(f"Tessera node peer-{i}") for i in (0, 2)}
        self.trusted = TrustedPeers(tmp_path)
        for i, (_, cert) in self.keys.items():
            self.trusted.trust(f"peer-{i}", fingerprint(cert))
        self.run_key, self.run_cert = issue_run_certificate(
            self.identity.key_pem, self.identity.certificate_pem, 1, RUN
        )

    def party(self, i: int, key: tuple[str, str] | None = None, **over: Any) -> PartyAddress:
        authority_key, authority = key or self.keys[i]
        _, cert = issue_run_certificate(authority_key, authority, i, RUN)
        fields: dict[str, Any] = {
            "party_id": i,
            "node": f"peer-{i}",
            "host": f"10.0.0.{i + 1}",
            "port": 21000 + i,
            "certificate": cert,
            "identity_certificate": authority,
        }
        return PartyAddress(**(fields | over))

    def me(self, **over: Any) -> PartyAddress:
        fields: dict[str, Any] = {
            "party_id": 1,
            "node": "node-a",
            "host": "10.0.0.2",
            "port": 21001,
            "certificate": self.run_cert,
            "identity_certificate": self.identity.certificate_pem,
        }
        return PartyAddress(**(fields | over))

    def check(self, parties: list[PartyAddress], production: bool = False) -> None:
        check_parties(
            parties,
            party_id=1,
            n_parties=len(parties),
            own_name="node-a",
            own_identity=self.identity.certificate_pem,
            own_certificate=self.run_cert,
            trusted=self.trusted.read(),
            run=RUN,
            production=production,
        )


@pytest.fixture
def honest(tmp_path: Path) -> Honest:
    return Honest(tmp_path)


def test_the_trusted_parties_pass(honest: Honest) -> None:
    honest.check([honest.party(0), honest.me(), honest.party(2)])


def test_a_coordinator_substituting_a_peers_run_certificate_is_refused(honest: Honest) -> None:
    """The coordinator issues party 0 a certificate from its own key, keeping party 0's real
    node certificate in the list: the run certificate is not issued by that node's key."""
    own_key = new_authority("Tessera node peer-0")  # same name, the coordinator's key
    _, forged = issue_run_certificate(*own_key, 0, RUN)
    with pytest.raises(
        PeerRefused, match=r"party 0 .*run certificate is refused: it was not issued"
    ):
        honest.check([honest.party(0, certificate=forged), honest.me(), honest.party(2)])


def test_a_coordinator_substituting_a_peers_key_is_refused(honest: Honest) -> None:
    """The coordinator relays its own key as party 0's node key (and a run certificate that key
    issued, consistent with it): not the key this hospital trusts for peer-0."""
    swapped = new_authority("Tessera node peer-0")
    with pytest.raises(PeerRefused, match="not the one trusted for peer-0"):
        honest.check([honest.party(0, key=swapped), honest.me(), honest.party(2)])


def test_a_coordinator_substituting_this_nodes_own_slot_is_refused(honest: Honest) -> None:
    other = new_authority("Tessera node node-a")
    _, cert = issue_run_certificate(*other, 1, RUN)
    with pytest.raises(PeerRefused, match="another certificate or key for this node"):
        honest.check([honest.party(0), honest.me(certificate=cert), honest.party(2)])
    with pytest.raises(PeerRefused, match="another certificate or key for this node"):
        honest.check([honest.party(0), honest.me(identity_certificate=other[1]), honest.party(2)])


def test_a_run_certificate_from_another_run_is_refused(honest: Honest) -> None:
    key, authority = honest.keys[0]
    _, old = issue_run_certificate(key, authority, 0, run_id(QUERY_ID - 1))
    with pytest.raises(PeerRefused, match="issued for another protocol run"):
        honest.check([honest.party(0, certificate=old), honest.me(), honest.party(2)])


def test_a_sybil_node_nobody_trusts_is_refused(honest: Honest) -> None:
    sybil = new_authority("Tessera node sybil")
    with pytest.raises(PeerRefused, match=r"party 2 \(node sybil\).*not one this hospital"):
        honest.check([honest.party(0), honest.me(), honest.party(2, key=sybil, node="sybil")])


def test_one_trusted_node_in_two_slots_is_refused(honest: Honest) -> None:
    """A coordinator giving one hospital two parties (so two shares of every input)."""
    twice = honest.party(2, key=honest.keys[0], node="peer-0")
    with pytest.raises(PeerRefused, match="takes a second slot"):
        honest.check([honest.party(0), honest.me(), twice])


def test_a_trusted_key_under_another_name_is_refused(honest: Honest) -> None:
    renamed = honest.party(2, key=honest.keys[0], node="peer-9")
    with pytest.raises(PeerRefused, match="trusted here as node peer-0, not peer-9"):
        honest.check([honest.party(0, key=honest.keys[2], node="peer-2"), honest.me(), renamed])


def test_addresses_a_node_will_not_dial(honest: Honest) -> None:
    assert address_problem("10.1.2.3", 21000, production=True) is None
    assert address_problem("mpc.hospital-b.example", 21000, production=True) is None
    assert address_problem("127.0.0.1", 21000, production=False) is None
    for host in ("0.0.0.0", "224.0.0.1", "255.255.255.255", "::"):
        assert address_problem(host, 21000, production=False) is not None, host
    for host in ("127.0.0.1", "::1", "169.254.169.254", "localhost"):
        assert address_problem(host, 21000, production=True) is not None, host
    assert address_problem("bad host;rm", 21000, production=False) is not None
    with pytest.raises(PeerRefused, match="will not dial its address"):
        honest.check(
            [honest.party(0, host="169.254.169.254"), honest.me(), honest.party(2)],
            production=True,
        )


# ---- through a real network ----------------------------------------------------------------

DATASET = "visits"
SCHEMA = DatasetSchema(columns=[ColumnSpec(name="age", type="integer", min=0, max=18)])
HONEST = ("node-a", "node-b", "node-c")


class World(SimpleNamespace):
    net: Network
    admin: TesseraClient
    researcher: TesseraClient
    study: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Three honest hospitals that trust each other, and a sybil node the administrator
    enrolled into the same study: it trusts everyone, nobody trusts it."""
    net = Network(tmp_path_factory.mktemp("sybil"))
    try:
        net.start_coordinator(accept_timeout_s=20, query_timeout_s=40, sweep_interval_s=0.5)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        rng = np.random.default_rng(3)
        orgs = []
        for name in (*HONEST, "sybil"):
            path = net.root / f"{name}.csv"
            pd.DataFrame({"age": rng.integers(0, 19, 40)}).to_csv(path, index=False)
            spec = NodeSpec(
                name,
                f"Hospital {name}",
                [DataSource(DATASET, "csv", SCHEMA, path=str(path))],
                min_count=3,
            )
            org = admin.create_organisation(spec.organisation)
            orgs.append(org["id"])
            node = admin.create_node(name, org["id"])
            net.start_node(
                spec, node["api_key"], node["enrolment_token"], introduce=name != "sybil"
            )
        for name in HONEST:  # the sybil's operator trusts every honest node
            TrustedPeers(net.root / "sybil").trust(name, net.fingerprint(name))
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "sybil", organisation_ids=orgs, datasets=[DATASET], members=["rita"]
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        deadline = time.monotonic() + 30
        while sum(len(d["nodes"]) for d in researcher.study_datasets(study["id"])) < 4:
            assert time.monotonic() < deadline, "the four nodes did not register the dataset"
            time.sleep(0.1)
        yield World(net=net, admin=admin, researcher=researcher, study=study["id"])
    finally:
        net.stop()


def _submit(world: World) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:  # until every node has registered the dataset
        try:
            submitted = world.researcher.submit_query(
                world.study, {"statistic": "count", "dataset": DATASET}
            )
            break
        except Conflict as exc:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            del exc
    return world.researcher.wait_query(submitted["id"], timeout=60)


@pytest.mark.slow
def test_a_sybil_enrolled_by_the_administrator_is_refused_and_no_honest_node_computes(
    world: World,
) -> None:
    """Each honest node checks the party list when the start signal reaches it: the first to
    check refuses and the query fails, so a node polling later finds the query over (and
    abandons its task) instead of refusing it itself; no honest node starts its party. (That
    every honest node refuses the same list is `test_a_sybil_node_nobody_trusts_is_refused`.)"""
    outcome = _submit(world)
    assert outcome["status"] == "failed", outcome
    assert "peer_refused" in str(outcome.get("error")), outcome
    refused = 0
    for name in HONEST:
        # a node still long-polling for the go learns that the query is over on its next poll
        deadline = time.monotonic() + 15
        while True:
            entries = [
                json.loads(line)
                for line in (world.net.root / name / "audit.jsonl").read_text().splitlines()
            ]
            mine = [e for e in entries if e.get("query") == outcome["id"]]
            actions = {e["action"] for e in mine}
            if actions & {"task.failed", "task.abandoned"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "result.opened" not in actions, name
        failed = [e for e in mine if e["action"] == "task.failed"]
        if failed:
            assert failed[0]["code"] == "peer_refused", failed
            assert "node sybil" in failed[0]["reason"], failed
            assert "not one this hospital trusts" in failed[0]["reason"], failed
            refused += 1
        else:
            assert "task.abandoned" in actions, (name, actions)
    assert refused >= 1

    # once every honest hospital has confirmed the fourth node's key out of band, it computes
    fp = world.net.fingerprint("sybil")
    for name in HONEST:
        config = world.net.root / name / "node.toml"
        argv = cli_command("node", "trust", "--config", str(config), "--node", "sybil")
        done = subprocess.run(
            [*argv, "--fingerprint", fp], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "now computes with sybil" in done.stdout
    outcome = _submit(world)
    assert outcome["status"] == "succeeded", outcome
    assert outcome["result"]["n"] == pytest.approx(160, abs=4)


@pytest.mark.slow
def test_a_node_showing_another_key_than_it_registered_is_refused(world: World) -> None:
    """The API key alone cannot swap a node's identity: its next hello is a 409 until an
    administrator resets the identity."""
    node = next(n for n in world.admin.nodes() if n["name"] == "node-b")
    assert node["identity_fingerprint"] == world.net.fingerprint("node-b")
    config = (world.net.root / "node-b" / "node.toml").read_text()
    key = next(line.split('"')[1] for line in config.splitlines() if line.startswith("api_key"))
    other = new_authority("Tessera node node-b")[1]

    answer = httpx.post(
        f"{world.net.url}/api/v1/nodes/me/hello",
        headers={"Authorization": f"Bearer {key}"},
        json={"agent_version": "x", "identity_certificate": other},
    )
    assert answer.status_code == 409, answer.text
    assert "reset-identity" in answer.json()["error"]["message"]
    reset = world.admin.reset_node_identity(node["id"])
    assert reset["identity_fingerprint"] is None and reset["enrolment_token"].startswith("te_")
    # the API key alone cannot register a key either: only with the new one-time token
    no_token = httpx.post(
        f"{world.net.url}/api/v1/nodes/me/hello",
        headers={"Authorization": f"Bearer {key}"},
        json={"agent_version": "x", "identity_certificate": other},
    )
    assert no_token.status_code == 403, no_token.text
    assert "no enrolment token" in no_token.json()["error"]["message"]
    registered = httpx.post(
        f"{world.net.url}/api/v1/nodes/me/hello",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "agent_version": "x",
            "identity_certificate": other,
            "enrolment_token": reset["enrolment_token"],
        },
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["identity_fingerprint"] == fingerprint(other)
