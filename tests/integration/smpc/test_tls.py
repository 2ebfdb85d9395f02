"""MPC channels are mutually authenticated TLS with fresh per-run certificates."""

from __future__ import annotations

import pandas as pd
import pytest

from smpc import PartyJob, local_summary, prepare
from smpc.runner import start_parties, wait_party
from smpc.simulation import free_ports
from smpc.statistics import reference_parties
from smpc.tls import PartyTLS, certificate_name, install, new_identity
from tessera.errors import ProtocolFailed
from tessera.schemas import ColumnSpec, DatasetSchema

SCHEMA = DatasetSchema(columns=[ColumnSpec(name="x", type="float")])
QUERY = {"statistic": "sum", "dataset": "d", "column": "x"}


FRAMES = [
    pd.DataFrame({"x": [1.0, 2.0]}),
    pd.DataFrame({"x": [3.0]}),
    pd.DataFrame({"x": [4.0]}),
]


def jobs_with(certificates_for: list[list[str]], keys: list[str]) -> list[PartyJob]:
    query = prepare(QUERY, SCHEMA)
    frames = FRAMES
    ports = free_ports(3)
    return [
        PartyJob(
            query=query.to_json(),
            schema=SCHEMA,
            summary=local_summary(query, frame, SCHEMA),
            party_id=i,
            parties=[("127.0.0.1", p) for p in ports],
            timeout_s=4,
            tls=PartyTLS(key_pem=keys[i], certificates=certificates_for[i]),
        )
        for i, frame in enumerate(frames)
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


def test_parties_with_each_others_certificates_compute() -> None:
    identities = [new_identity(i) for i in range(3)]
    certs = [c for _, c in identities]
    outcomes = run(jobs_with([certs] * 3, [k for k, _ in identities]))
    # the exact mode's cell-key perturbation: n = 4 ± 3 and Σ = 10 ± 0.25 · 4, the same at
    # every party and the plaintext oracle's
    expected = reference_parties(QUERY, FRAMES, SCHEMA)
    assert outcomes == [expected] * 3
    assert abs(expected["n"] - 4) <= 3 and abs(expected["sum"] - 10.0) <= 1 + 2**-16


def test_an_impostor_with_a_valid_looking_certificate_is_refused() -> None:
    identities = [new_identity(i) for i in range(3)]
    impostor_key, impostor_cert = new_identity(0)  # also named "MPyC party 0"
    certs = [c for _, c in identities]
    keys = [impostor_key, identities[1][0], identities[2][0]]
    mine = [impostor_cert, certs[1], certs[2]]
    outcomes = run(jobs_with([mine, certs, certs], keys))
    assert all(isinstance(o, ProtocolFailed) for o in outcomes), outcomes


def test_certificates_must_carry_their_party_name(tmp_path: object) -> None:
    key, cert = new_identity(1)
    assert certificate_name(cert) == "MPyC party 1"
    with pytest.raises(ValueError, match="party 0 is not named"):
        install(PartyTLS(key_pem=key, certificates=[cert, cert]), 1, tmp_path)  # type: ignore[arg-type]
