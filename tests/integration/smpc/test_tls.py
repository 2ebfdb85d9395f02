"""MPC channels are mutually authenticated TLS, each run's certificates issued by the parties'
node keys and checked against the party id each connection is for (`smpc.tls`, `smpc.peers`)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pandas as pd
import pytest

from smpc import PartyJob, local_summary, prepare
from smpc.runner import start_parties, wait_party
from smpc.simulation import free_ports
from smpc.statistics import reference_parties
from smpc.tls import (
    PartyTLS,
    certificate_name,
    check_run_certificate,
    install,
    issue_run_certificate,
    local_parties,
    new_authority,
)
from tessera.errors import ProtocolFailed
from tessera.schemas import ColumnSpec, DatasetSchema

SCHEMA = DatasetSchema(columns=[ColumnSpec(name="x", type="float")])
QUERY = {"statistic": "sum", "dataset": "d", "column": "x"}
RUN = "query-7"

FRAMES = [
    pd.DataFrame({"x": [1.0, 2.0]}),
    pd.DataFrame({"x": [3.0]}),
    pd.DataFrame({"x": [4.0]}),
]


def jobs_with(material: list[PartyTLS], query: dict[str, object] = QUERY) -> list[PartyJob]:
    prepared = prepare(query, SCHEMA)
    ports = free_ports(3)
    return [
        PartyJob(
            query=prepared.to_json(),
            schema=SCHEMA,
            summary=local_summary(prepared, frame, SCHEMA),
            party_id=i,
            parties=[("127.0.0.1", p) for p in ports],
            timeout_s=6,
            tls=material[i],
        )
        for i, frame in enumerate(FRAMES)
    ]


def run(jobs: list[PartyJob]) -> list[object]:
    procs = start_parties(jobs)
    outcomes: list[object] = []
    for proc, job in zip(procs, jobs, strict=True):
        try:
            outcomes.append(wait_party(proc, job).result)
        except ProtocolFailed as exc:
            outcomes.append(exc)
    return outcomes


def test_parties_with_certificates_from_their_node_keys_compute() -> None:
    outcomes = run(jobs_with(local_parties(3, RUN)))
    # the exact mode's cell-key perturbation: n = 4 ± 3 and Σ = 10 ± 0.25 · 4, the same at
    # every party and the plaintext oracle's
    expected = reference_parties(QUERY, FRAMES, SCHEMA)
    assert outcomes == [expected] * 3
    assert abs(expected["n"] - 4) <= 3 and abs(expected["sum"] - 10.0) <= 1 + 2**-16


def test_run_certificates_name_their_party_and_run_and_need_their_issuer() -> None:
    key, authority = new_authority("Tessera node a")
    _, other = new_authority("Tessera node b")
    _, cert = issue_run_certificate(key, authority, 1, RUN)
    assert certificate_name(cert) == "MPyC party 1"
    assert check_run_certificate(cert, 1, authority, RUN) is None
    assert "named 'MPyC party 0'" in str(check_run_certificate(cert, 0, authority, RUN))
    assert "another protocol run" in str(check_run_certificate(cert, 1, authority, "query-8"))
    assert "node key" in str(check_run_certificate(cert, 1, other, RUN))


def test_material_whose_certificate_another_key_issued_is_refused(tmp_path: Path) -> None:
    material = local_parties(3, RUN)[1]
    key, impostor = new_authority("Tessera node x")
    _, forged = issue_run_certificate(key, impostor, 0, RUN)  # "MPyC party 0", wrong issuer
    bad = material.model_copy(update={"certificates": [forged, *material.certificates[1:]]})
    with pytest.raises(ValueError, match="party 0 is refused: it was not issued"):
        install(bad, 1, tmp_path)


def _codes(outcomes: list[object]) -> list[str]:
    return [o.code if isinstance(o, ProtocolFailed) else "ok" for o in outcomes]


def _impostor_connects(port: int, tls: PartyTLS, own_id: int, claimed: int, tmp: Path) -> bytes:
    """Dial a party's MPC port over TLS with party `own_id`'s genuine key and certificate,
    claim to be party `claimed` (MPyC's first two bytes), and return every byte the party
    sends back before it closes the connection."""
    cert, key = tmp / "impostor.crt", tmp / "impostor.key"
    cert.write_text(tls.certificates[own_id])
    key.write_text(tls.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata="".join(tls.authorities))
    deadline = time.monotonic() + 5
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the party never listened"
            time.sleep(0.01)
    received = b""
    with context.wrap_socket(raw, server_hostname="MPyC party 1") as conn:
        conn.sendall(claimed.to_bytes(2, "little") + b"\x00" * 64)
        try:
            while chunk := conn.recv(4096):
                received += chunk
        except (ssl.SSLError, ConnectionError, TimeoutError):
            pass
    return received


def test_a_peer_claiming_another_party_id_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    """Party 2's holder has a genuine run certificate for party 2, and dials party 1 claiming
    to be party 0 (the id an accepting MPyC party reads from the first two bytes). Party 1
    checks the certificate against the claimed id, refuses at once, and sends nothing."""
    material = local_parties(3, RUN)
    jobs = jobs_with(material)
    port = jobs[1].parties[1][1]
    started = time.monotonic()
    (proc,) = start_parties([jobs[1]])
    received = _impostor_connects(port, material[2], 2, 0, tmp_path)
    with pytest.raises(ProtocolFailed) as refused:
        wait_party(proc, jobs[1])
    assert refused.value.code == "peer_refused"
    assert "connecting as party 0" in refused.value.message
    assert received == b""
    assert time.monotonic() - started < jobs[1].timeout_s  # not by its deadline


def test_an_address_swapped_to_an_impostor_is_refused_before_anything_is_sent() -> None:
    """Parties 0 and 1 are told party 2 is at an address where an impostor listens, with its
    own key's certificate named "MPyC party 2". Party 1 dials it first and refuses it at once;
    party 0 refuses it too, or (when party 1 has already stopped, before party 0 reached it)
    times out: nobody computes with the impostor."""
    material = local_parties(3, RUN)
    impostor = local_parties(3, RUN)  # other node keys, same names and run
    jobs = jobs_with(material)
    fake = jobs[2].model_copy(update={"tls": impostor[2]})
    outcomes = run([jobs[0], jobs[1], fake])
    codes = _codes(outcomes)
    assert codes[1] == "peer_refused", outcomes
    assert codes[0] in {"peer_refused", "timeout"}, outcomes
    assert all(isinstance(o, ProtocolFailed) for o in outcomes)


def test_parties_asked_different_queries_stop_before_computing() -> None:
    material = local_parties(3, RUN)
    jobs = jobs_with(material)
    other = jobs_with(material, {"statistic": "mean", "dataset": "d", "column": "x"})[2]
    other = other.model_copy(update={"parties": jobs[2].parties})
    outcomes = run([jobs[0], jobs[1], other])
    assert all(isinstance(o, ProtocolFailed) for o in outcomes), outcomes
    assert "a different query, schema, run or party list" in outcomes[0].message  # type: ignore[union-attr]
    assert "part" in outcomes[0].message and "2" in outcomes[0].message  # type: ignore[union-attr]
