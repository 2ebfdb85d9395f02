"""What a party checks of its peers before it sends them anything (inside the party process).

1. **Pinned connections** (`pin`). MPyC's `--ssl` mode checks that a peer's certificate chains
   to the CA file and, when dialling, that the server is named `MPyC party j`; the party that
   *accepts* a connection takes the peer's party id from the first two bytes the peer sends,
   unchecked. `pin` replaces MPyC's connection protocol with one that checks the peer's
   certificate against the party id it is for (dialled: the id this party dialled; accepted:
   the id the peer claims) with `smpc.tls.check_run_certificate`: issued by *that* party's node
   key, for *this* run. A dialled peer is checked before this party sends its id and PRSS keys;
   an accepting party checks before it stores the peer's keys or registers the connection. A
   refused peer is disconnected and the run fails at once, naming the party id and why.
2. **No pickles** (`pin`). MPyC's `transfer` (used by its `shutdown`) pickles what it sends and
   unpickles what it receives; a peer could make an unpickling party run code. It is replaced
   by one that sends JSON.
3. **Agreement** (`agree`). Right after the connections are made, every party sends every
   other the SHA-256 of what it was asked to compute: the run id, the query, the schema's
   columns, and each party's node fingerprint by party id. A party that finds any digest
   different from its own stops before any share is sent, naming the parties that differ.
   What is sent is a hash of what every party already holds (or should): it discloses nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from smpc.tls import PartyTLS, check_run_certificate
from tessera.fingerprints import fingerprint


class RefusedPeer(BaseException):
    """A peer's certificate is not the one for the party id it connects as (a BaseException:
    MPyC retries a failed connection on any `Exception` until the run's deadline)."""


_refusals: list[str] = []  # this party process's refusals of peers (it runs one protocol)


def refused() -> str | None:
    """The first peer this party refused, if any (a dial loop stops on it)."""
    return _refusals[0] if _refusals else None


def digest(job: Any) -> str:
    """The SHA-256 of what this party was asked to compute (see the module docstring)."""
    tls: PartyTLS | None = job.tls
    body = {
        "run": tls.run_id if tls is not None else None,
        "query": job.query,
        "columns": (
            [c.model_dump(mode="json") for c in job.dataset_schema.columns]
            if getattr(job, "dataset_schema", None) is not None
            else None
        ),
        "parties": len(job.parties),
        "nodes": [fingerprint(a) for a in tls.authorities] if tls is not None else None,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def pin(mpc: Any, tls: PartyTLS) -> None:
    """Install the pinned connection protocol and the JSON transfer in this party's runtime
    (before `mpc.start()`)."""
    import mpyc.asyncoro as asyncoro

    base = asyncoro.MessageExchanger

    class PinnedExchanger(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            if self.peer_pid is not None and not self._accepts(self.peer_pid):
                return  # dialled a peer that is not who it must be: send it nothing
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if self.peer_pid is None:
                buffered = bytes(self.bytes) + bytes(data)
                if len(buffered) >= 2:
                    claimed = int.from_bytes(buffered[:2], "little")
                    if not self._accepts(claimed):
                        return
            super().data_received(data)

        def _accepts(self, party_id: int) -> bool:
            problem = _refusal(self.transport, party_id, tls)
            if problem is None:
                return True
            self.transport.abort()
            _refusals.append(problem)
            own = self.runtime.parties[self.runtime.pid].protocol
            if own is not None and hasattr(own, "done") and not own.done():
                own.set_exception(RefusedPeer(problem))
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer_pid is None or self.runtime.parties[self.peer_pid].protocol is not self:
                return  # a refused connection: nothing was registered
            super().connection_lost(exc)

    asyncoro.MessageExchanger = PinnedExchanger

    async def transfer(obj: Any, senders: Any = None, receivers: Any = None) -> Any:
        return await _json_transfer(mpc, obj, senders, receivers)

    mpc.transfer = transfer


def _refusal(transport: Any, party_id: int, tls: PartyTLS) -> str | None:
    if not 0 <= party_id < len(tls.authorities):
        return f"a peer claimed party id {party_id}, which is not in this run"
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None:
        return f"the peer connecting as party {party_id} showed no certificate"
    problem = check_run_certificate(der, party_id, tls.authorities[party_id], tls.run_id)
    if problem is None:
        return None
    return f"refused the peer connecting as party {party_id}: its certificate {problem}"


async def _json_transfer(mpc: Any, obj: Any, senders: Any, receivers: Any) -> Any:
    """`mpc.transfer` for JSON values, all parties to all (what MPyC's `shutdown` and `agree`
    need), without pickle."""
    if senders is not None or receivers is not None:
        raise NotImplementedError("Tessera's transfer sends from every party to every party")
    data = json.dumps(obj).encode()
    mpc._program_counter[0] += 1  # a label of its own, the same at every party
    outs: list[Any] = []
    for peer in mpc.parties:
        if peer.pid != mpc.pid:
            mpc._send_message(peer.pid, data)
    for peer in mpc.parties:
        outs.append(data if peer.pid == mpc.pid else mpc._receive_message(peer.pid))
    received = await mpc.gather(outs)
    return [json.loads(bytes(item)) for item in received]


async def agree(mpc: Any, job: Any) -> None:
    """Stop unless every party holds the same run, query, schema and parties (`digest`)."""
    mine = digest(job)
    digests = await mpc.transfer(mine)
    differ = [i for i, d in enumerate(digests) if d != mine]
    if differ:
        from tessera.errors import ProtocolFailed

        raise ProtocolFailed(
            f"party {job.party_id}: part{'y' if len(differ) == 1 else 'ies'} "
            f"{', '.join(map(str, differ))} hold{'s' if len(differ) == 1 else ''} a different "
            "query, schema, run or party list; nothing was computed",
            {"party_id": job.party_id, "differing_parties": differ},
        )
