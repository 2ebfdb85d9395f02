"""Whether this node computes with the parties the coordinator relayed for a run.

The coordinator says who the parties are (node name, address, run certificate, long-term
certificate); the node believes none of it on the coordinator's word. Before its party process
starts (so before any share or key is sent) the run is refused (`PeerRefused`, naming the party
and why) unless:

- the party ids are 0..n-1, and this node's slot holds this node's own key and run certificate;
- every other party's long-term key is the one this hospital trusts for that node name
  (`node_agent.identity.TrustedPeers`, confirmed out of band with `tessera node trust`), and no
  key or name takes two slots (a coordinator cannot give one hospital two votes);
- every party's run certificate was issued by its own node key, for this run and this party
  id (`smpc.tls.check_run_certificate`);
- every address is one the node will dial: a host name or an IP address, a port in 1–65535,
  never an unspecified, multicast or broadcast address, and in production never a loopback or
  link-local one.

The party process checks the same certificates again on every connection (`smpc.peers`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from smpc.tls import check_run_certificate
from tessera.errors import PeerRefused
from tessera.fingerprints import fingerprint

HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def run_id(query_id: int) -> str:
    """The id every party's run certificate carries (the coordinator's query id)."""
    return f"query-{query_id}"


def synthesis_run_id(request_id: int) -> str:
    """The run id of a pooled synthesis's measurement: a namespace of its own, so a run
    certificate issued for query N is never valid for synthesis request N."""
    return f"synthesis-{request_id}"


def address_problem(host: str, port: int, production: bool) -> str | None:
    """Why this node will not dial `host:port`; None if it will."""
    if not 1 <= port <= 65535:
        return f"port {port} is not a TCP port"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not HOSTNAME.match(host):
            return f"{host!r} is neither a host name nor an IP address"
        if production and host.rstrip(".").lower() in {"localhost", "localhost.localdomain"}:
            return f"{host!r} is this host, not a peer (production)"
        return None
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        return f"{host} is not a host address"
    if production and (ip.is_loopback or ip.is_link_local):
        return f"{host} is a loopback or link-local address, not a peer (production)"
    return None


def check_parties(
    parties: list[Any],
    *,
    party_id: int,
    n_parties: int,
    own_name: str,
    own_identity: str,
    own_certificate: str,
    trusted: dict[str, str],
    run: str,
    production: bool,
) -> None:
    """Raise `PeerRefused` unless this node computes with these parties (module docstring)."""
    if [p.party_id for p in parties] != list(range(n_parties)):
        raise PeerRefused("the coordinator's party list does not match the task")
    own_fp = fingerprint(own_identity)
    mine = parties[party_id]
    if mine.certificate != own_certificate or mine.identity_certificate != own_identity:
        raise PeerRefused(
            f"the coordinator relayed another certificate or key for this node (party "
            f"{party_id}); this node runs MPC only under its own key"
        )
    seen_keys: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for p in parties:
        who = f"party {p.party_id} (node {p.node})"
        if not p.identity_certificate or not p.certificate:
            raise PeerRefused(
                f"{who} sent no certificate; this node runs MPC only over TLS bound to each "
                "node's key",
                {"party_id": p.party_id, "node": p.node},
            )
        try:
            fp = fingerprint(p.identity_certificate)
        except ValueError:
            raise PeerRefused(
                f"{who}: its node certificate cannot be read", {"party_id": p.party_id}
            ) from None
        if fp in seen_keys or p.node in seen_names:
            raise PeerRefused(
                f"{who} takes a second slot (with party "
                f"{seen_keys.get(fp, seen_names.get(p.node))}): one node, one party",
                {"party_id": p.party_id, "node": p.node},
            )
        seen_keys[fp], seen_names[p.node] = p.party_id, p.party_id
        if p.party_id != party_id:
            if p.node == own_name or fp == own_fp:
                raise PeerRefused(f"{who} claims this node's name or key", {"party_id": p.party_id})
            expected = trusted.get(p.node)
            if expected != fp:
                known = [name for name, key in trusted.items() if key == fp]
                reason = (
                    f"its key {fp} is trusted here as node {known[0]}, not {p.node}"
                    if known
                    else f"its key {fp} is not one this hospital trusts"
                    if expected is None
                    else f"its key {fp} is not the one trusted for {p.node} ({expected})"
                )
                raise PeerRefused(
                    f"{who} is refused: {reason}. A steward confirms a peer's fingerprint "
                    "with that hospital out of band, then runs `tessera node trust`",
                    {"party_id": p.party_id, "node": p.node, "fingerprint": fp},
                )
        problem = check_run_certificate(p.certificate, p.party_id, p.identity_certificate, run)
        if problem is not None:
            raise PeerRefused(
                f"{who}: its run certificate is refused: {problem}", {"party_id": p.party_id}
            )
        if p.party_id != party_id:
            where = address_problem(p.host, p.port, production)
            if where is not None:
                raise PeerRefused(
                    f"{who}: this node will not dial its address: {where}",
                    {"party_id": p.party_id},
                )
