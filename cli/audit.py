"""`tessera audit verify`: check the audit trails, each alone and against each other.

- `--config FILE`: the coordinator's chain, read from its database (on the coordinator host).
- `--coordinator URL --token T`: the coordinator's chain as its API serves it to an admin,
  checked here (not by the coordinator): every hash, and every signature with the coordinator
  key pinned by `--coordinator-key`, else by the node (`--node-config`), else as published.
- `--node-config FILE`: the node's log, its signatures checked with the node's certificate.

Given both a coordinator and a node, the cross-anchors are checked too: every coordinator head
the node recorded is still in the chain at that position with that hash and a valid signature
(a coordinator operator who rewrote and re-signed the chain is caught); every node head the
coordinator kept is still in the node's log at that position (a node operator who rewrote the
log is caught); and every task the node received matches the `query.submitted` event of its
query (the statement hash and the researcher), so a task no researcher submitted is flagged.
Exit 1 if anything does not verify.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.errors import reports_errors

app = typer.Typer(help="Audit trails.", no_args_is_help=True)


@app.command("verify")
@reports_errors
def verify(
    config: Path | None = typer.Option(None, "--config", help="Coordinator TOML settings file."),
    node_config: Path | None = typer.Option(
        None, "--node-config", help="Verify this node's own audit log (and cross-check it)."
    ),
    coordinator: str | None = typer.Option(
        None,
        "--coordinator",
        envvar="TESSERA_COORDINATOR_URL",
        help="Verify the chain this coordinator serves (with --token, an admin's).",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="TESSERA_TOKEN", help="An admin's access token."
    ),
    coordinator_key: str | None = typer.Option(
        None, "--coordinator-key", help="The coordinator key's fingerprint to check against."
    ),
) -> None:
    """Check hash chains, signatures and cross-anchors; print the report; exit 1 on a fault."""
    from tessera.errors import InvalidRequest

    if coordinator is None and node_config is None:
        from api import audit
        from cli.admin import _db

        with _db(config) as db:
            local = audit.verify(db)
        _finish(local)
        return
    if coordinator is not None and not token:
        raise InvalidRequest("--coordinator needs --token (an admin's access token)")
    node = _node_side(node_config) if node_config is not None else None
    remote = None
    if coordinator is not None:
        pinned = coordinator_key or (node["coordinator_key"] if node is not None else None)
        remote = _coordinator_side(coordinator, str(token), pinned)
    if remote is None:
        assert node is not None
        _finish(node["report"])
        return
    report: dict[str, Any] = {"coordinator": remote["report"]}
    if node is not None:
        report["node"] = node["report"]
        report["cross"] = cross_check(
            remote["events"],
            remote["heads"],
            node["name"],
            node["entries"],
            remote["key_pem"],
            node["certificate"],
        )
    report["ok"] = all(part.get("ok", True) for part in report.values() if isinstance(part, dict))
    _finish(report)


def _finish(report: dict[str, Any]) -> None:
    typer.echo(json.dumps(report, default=str))
    if not report["ok"]:
        raise typer.Exit(1)


def _node_side(config: Path) -> dict[str, Any]:
    from node_agent.audit_log import read_entries
    from node_agent.audit_log import verify as verify_node_log
    from node_agent.config import NodeSettings
    from node_agent.coordinator_key import kept
    from node_agent.identity import CERT_FILE, identity_dir
    from tessera.signing import public_key_fingerprint

    settings = NodeSettings.load(config)
    cert_path = identity_dir(settings.work_dir) / CERT_FILE
    certificate = cert_path.read_text() if cert_path.exists() else None
    report = verify_node_log(settings.audit_path, certificate).to_dict()
    report["signatures_checked"] = certificate is not None
    kept_pem = kept(settings.work_dir)
    pinned = settings.coordinator_key or (
        public_key_fingerprint(kept_pem) if kept_pem is not None else None
    )
    entries = read_entries(settings.audit_path) if report["ok"] else []
    return {
        "name": settings.name,
        "report": report,
        "entries": entries,
        "coordinator_key": pinned,
        "certificate": certificate,
    }


def _coordinator_side(url: str, token: str, pinned: str | None) -> dict[str, Any]:
    import httpx

    from api.audit import verify_events
    from tessera.errors import ConfigInvalid, TesseraError, error_from_dict
    from tessera.signing import public_key_fingerprint

    base = url.rstrip("/") + "/api/v1"
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:

        def get(path: str, **params: Any) -> Any:
            try:
                response = http.get(path, params=params)
            except httpx.HTTPError as exc:
                raise TesseraError(f"cannot reach {url}: {type(exc).__name__}") from None
            if response.status_code >= 400:
                try:
                    raise error_from_dict(response.json())
                except (ValueError, KeyError, TypeError):
                    raise TesseraError(f"{url} answered {response.status_code}") from None
            return response.json()

        def every(path: str) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = get(path, limit=1000, **({"cursor": cursor} if cursor else {}))
                items += page["items"]
                cursor = page.get("next_cursor")
                if not cursor:
                    return items

        key_pem = get("/coordinator/key")["public_key_pem"]
        fingerprint = public_key_fingerprint(key_pem)
        if pinned is not None and fingerprint != pinned:
            raise ConfigInvalid(
                f"the coordinator now signs with {fingerprint}, not the pinned {pinned}"
            )
        events = every("/audit")
        heads = every("/audit/node-heads")
    report = verify_events(events, key_pem, fingerprint)
    report["key_pinned"] = pinned is not None
    return {"report": report, "events": events, "heads": heads, "key_pem": key_pem}


def cross_check(
    events: list[dict[str, Any]],
    node_heads: list[dict[str, Any]],
    node: str,
    entries: list[dict[str, Any]],
    coordinator_pem: str,
    node_certificate: str | None = None,
) -> dict[str, Any]:
    """The cross-anchors between the coordinator's chain (`events`, as `/audit` serves them)
    and one node's log (`entries`, as written): see the module."""
    from tessera.signing import audit_message, node_audit_message, unb64, verify_ed25519
    from tessera.signing import verify_ecdsa as verify_signature

    problems: list[str] = []
    by_id = {e["id"]: e for e in events}
    coordinator_heads = [e for e in entries if e.get("action") == "coordinator.head"]
    for entry in coordinator_heads:
        seq, chain_hash = entry.get("coordinator_seq"), str(entry.get("coordinator_hash"))
        if entry.get("outcome") != "recorded":
            problems.append(
                f"the node recorded a coordinator head at event {seq} that was "
                f"{entry.get('outcome')}"
            )
            continue
        if not verify_ed25519(
            coordinator_pem, audit_message(chain_hash), entry.get("coordinator_sig")
        ):
            problems.append(f"the coordinator head {seq} the node recorded is not signed by it")
        event = by_id.get(seq)
        if event is None:
            problems.append(
                f"coordinator event {seq}, whose hash the node recorded, is gone from the chain"
            )
        elif event["hash"] != chain_hash:
            problems.append(
                f"coordinator event {seq} no longer has the hash the node recorded: the chain "
                "was rewritten from there or before"
            )
    hashes = [e.get("hash") for e in entries]
    mine = [h for h in node_heads if h["node"] == node]
    for head in mine:
        position = head["entries"]
        raw = unb64(head["signature"])
        if node_certificate is not None and (
            raw is None
            or not verify_signature(node_certificate, node_audit_message(head["last_hash"]), raw)
        ):
            problems.append(
                f"the node head at entry {position} the coordinator kept is not signed by the node"
            )
        if position > len(hashes):
            problems.append(
                f"the node's log has {len(hashes)} entries, but it showed the coordinator "
                f"{position}: entries were removed"
            )
        elif hashes[position - 1] != head["last_hash"]:
            problems.append(
                f"entry {position} of the node's log is not the one it showed the coordinator: "
                "the log was rewritten"
            )
    submitted = {e["subject"]: e for e in events if e["action"] == "query.submitted"}
    received = [e for e in entries if e.get("action") == "task.received"]
    legacy = 0
    for entry in received:
        if "statement_hash" not in entry:  # received before tasks were signed
            legacy += 1
            continue
        event = submitted.get(f"query:{entry.get('query')}")
        if event is None:
            problems.append(
                f"task {entry.get('task')} (query {entry.get('query')}) has no query.submitted "
                "event in the coordinator's chain: no researcher's submission is on record"
            )
            continue
        details = event["details"]
        statements = details.get("statements") or {}
        if statements.get(str(entry.get("party_id"))) != entry.get("statement_hash"):
            problems.append(
                f"task {entry.get('task')}: its signed statement is not the one the coordinator "
                f"recorded for query {entry.get('query')}"
            )
        if details.get("researcher") != entry.get("researcher"):
            problems.append(
                f"task {entry.get('task')}: researcher {entry.get('researcher')!r}, but query "
                f"{entry.get('query')} was submitted by {details.get('researcher')!r}"
            )
    return {
        "ok": not problems,
        "coordinator_heads_checked": len(coordinator_heads),
        "node_heads_checked": len(mine),
        "tasks_checked": len(received) - legacy,
        "legacy_tasks": legacy,
        "problems": problems,
    }
