"""One MPC party as its own process: ``python -m smpc.party`` with a `PartyJob` on stdin.

MPyC parses `sys.argv` when `mpyc.runtime` is imported; the run's runtime is built from the
job's own command line (party id, addresses, no logging) by `mpyc.runtime.setup`. The party
listens only on its own address (MPyC by itself would bind every interface). The outcome is
written to stdout as one line ``TESSERA-OUTCOME {json}``; failures as ``TESSERA-ERROR {json}``
and exit 1.

With TLS (every run between nodes), the party first checks every party's run certificate
against that party's node key (`smpc.tls.install`), checks each connection's peer against the
party id it connects as (`smpc.peers.pin`), and, once connected, that every party holds the
same run, query, schema and parties (`smpc.peers.agree`): a refusal (code `peer_refused`, or
`protocol_failed` naming the differing parties) comes before any share is sent.

The process imports its libraries *before* reading the job, so a launcher can start it ahead
of time and keep it waiting on stdin: the protocol then starts in milliseconds, not 0.4 s.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from smpc import liveness

OUTCOME = "TESSERA-OUTCOME "
ERROR = "TESSERA-ERROR "


def _mpyc_argv(job: Any) -> list[str]:
    argv = ["tessera-party", "-I", str(job.party_id), "--no-log"]
    if job.tls is not None:
        argv.append("--ssl")
    for host, port in job.parties:
        argv += ["-P", f"{host}:{port}"]
    return argv


CONNECT_RETRY_S = 0.005  # MPyC itself waits 0.1 s before it tries a peer again
CONNECT_PATIENCE_S = 2.0


async def _connect_soon(connect: Any, *args: Any, **kwargs: Any) -> Any:
    """Dial a peer (`_connect_retrying`); stop the run, naming the peer, when its certificate
    fails verification or when a peer that dialled us was refused (`smpc.peers`)."""
    import ssl

    from smpc.peers import RefusedPeer, refused

    if refused() is not None:  # a peer that connected to us was refused: stop dialling
        raise RefusedPeer(refused())
    try:
        return await _connect_retrying(connect, *args, **kwargs)
    except ssl.SSLCertVerificationError as exc:
        # The peer at that address is not who the run says (MPyC would retry until the
        # deadline): stop now, naming it.
        name = kwargs.get("server_hostname") or "a peer"
        raise RefusedPeer(
            f"refused {name} at {args[1] if len(args) > 1 else '?'}:"
            f"{args[2] if len(args) > 2 else '?'}: its certificate {exc.verify_message}"
        ) from None


async def _connect_retrying(connect: Any, *args: Any, **kwargs: Any) -> Any:
    """`loop.create_connection` that tries again every 5 ms for up to 2 s while the peer is not
    listening yet. Parties start within milliseconds of each other, and MPyC's own retry after
    a refused connection sleeps 0.1 s, which every party then waits for: up to a tenth of a
    second on every protocol run, half of a count's latency. A peer still not listening after
    2 s falls back to MPyC's own retries (until the run's deadline)."""
    deadline = time.monotonic() + CONNECT_PATIENCE_S
    from smpc.peers import RefusedPeer, refused

    while True:
        try:
            return await connect(*args, **kwargs)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(CONNECT_RETRY_S)
            if refused() is not None:
                raise RefusedPeer(refused()) from None


Body = Callable[[Any, Any], Awaitable[dict[str, Any]]]


def _run_authorities_only() -> None:
    """MPyC builds each TLS context with `ssl.create_default_context`, which loads the
    system's whole CA bundle into every client context before MPyC adds the run's own CA file:
    15 ms of CPU for each peer a party dials (45 ms a run at 3 parties, on this machine), and
    trust in authorities no Tessera run uses. In this party process, a context starts empty:
    only the run's CA file (and, after the handshake, the pinning of `smpc.peers`) decides who
    a peer is."""
    import ssl

    def empty_context(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, **_: Any) -> ssl.SSLContext:
        if purpose == ssl.Purpose.SERVER_AUTH:  # we dial: verify the server
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
        else:  # we listen: MPyC sets CERT_REQUIRED for the clients
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        return context

    ssl.create_default_context = empty_context


async def _statistic(mpc: Any, job: Any) -> dict[str, Any]:
    """A query's protocol: the disclosure prelude, the statistic, its finished result."""
    from smpc.disclosure import prelude
    from smpc.statistics import compile_query

    statistic = compile_query(job.query, job.dataset_schema)
    await prelude(mpc, statistic, job)
    opened = await statistic.compute(mpc, job)
    return {"result": statistic.finish(opened), "min_count_applied": opened.threshold}


async def _run(mpc: Any, job: Any, body: Body = _statistic) -> dict[str, Any]:
    from smpc.peers import agree, pin
    from tessera.errors import DisclosureRefused

    host = job.parties[job.party_id][0]
    loop = mpc._loop
    loop.create_server = functools.partial(loop.create_server, host=host)
    loop.create_connection = functools.partial(_connect_soon, loop.create_connection)
    if job.tls is not None:
        pin(mpc, job.tls)
        _run_authorities_only()
    peers = liveness.watch(mpc)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(mpc.start(), liveness.START_TIMEOUT_S)
    except TimeoutError:
        raise liveness.PeerLost(
            liveness.missing(mpc),
            f"before the protocol: no connection within {liveness.START_TIMEOUT_S:.0f} s",
        ) from None
    try:
        if job.tls is not None:
            await liveness.guarded(peers, agree(mpc, job))
        outcome = await liveness.guarded(peers, body(mpc, job))
    except DisclosureRefused:
        peers.closing = True
        await mpc.shutdown()  # a pooled outcome every party reached: end together, then refuse
        raise
    except BaseException:
        peers.closing = True
        for peer in mpc.parties:
            if peer.pid != mpc.pid and peer.protocol is not None:
                peer.protocol.close_connection()
        raise
    peers.closing = True
    await mpc.shutdown()
    return {**outcome, "seconds": time.perf_counter() - started}


def _preload() -> None:
    """Import everything a run needs before the job arrives (a warm process waits here).

    `mpyc.runtime` builds a runtime from `sys.argv` when it is imported: here it is imported
    with a neutral command line (one party, no logging), and `_runtime` builds the run's own
    runtime from the job's command line (`mpyc.runtime.setup`, which also points MPyC's other
    modules at it). What a forked party still imported or built itself before this (MPyC's
    runtime and the modules it imports, `numpy.random`, which numpy imports lazily and every
    child re-seeds, the query parser) cost each party about 40 ms of CPU a run."""
    import configparser  # noqa: F401
    import encodings.idna  # noqa: F401
    import ssl  # noqa: F401
    import statistics  # noqa: F401

    import cryptography.exceptions
    import cryptography.hazmat.backends.openssl.backend
    import cryptography.hazmat.primitives.asymmetric.ec
    import cryptography.hazmat.primitives.serialization
    import cryptography.x509  # noqa: F401
    import gmpy2  # noqa: F401
    import mpyc.asyncoro
    import mpyc.finfields
    import mpyc.mpctools
    import mpyc.random
    import mpyc.secgroups
    import mpyc.seclists
    import mpyc.secpols
    import mpyc.sectypes
    import mpyc.statistics
    import mpyc.thresha
    import numpy.random  # noqa: F401

    import smpc.job
    import smpc.peers
    import smpc.protocol
    import smpc.ranges
    import smpc.runner
    import smpc.soon
    import smpc.statistics
    import smpc.tls
    from smpc.mpyc_speedups import install

    install()
    smpc.statistics._query_adapter()  # pydantic builds it once
    if "mpyc.runtime" not in sys.modules:
        argv, sys.argv = sys.argv, ["tessera-party", "--no-log"]
        try:
            import mpyc.runtime  # a one-party runtime, replaced by `_runtime`
        finally:
            sys.argv = argv
        # That runtime made an event loop: never share it (its epoll instance) with the
        # processes forked from here. Each run's runtime makes its own.
        loop = mpyc.runtime.mpc._loop
        asyncio.set_event_loop(None)
        loop.close()


def _runtime(job: Any) -> Any:
    """The run's MPyC runtime, from the job's command line (`_mpyc_argv`)."""
    import mpyc.runtime

    sys.argv = _mpyc_argv(job)
    mpc = mpyc.runtime.setup()
    mpyc.runtime.mpc = mpc
    return mpc


def _timed_out(job: Any, _: BaseException) -> int:
    message = (
        f"party {job.party_id} timed out after {job.timeout_s:.0f} s waiting for the other "
        "parties (one did not connect or stopped answering)"
    )
    print(ERROR + json.dumps({"code": "timeout", "message": message}), flush=True)
    return 1


def main(job_model: Any = None, body: Body = _statistic) -> int:
    """Read a job (a `PartyJob` unless another model is given) on stdin, run `body` as this
    party once the parties are connected and agreed, print the outcome."""
    from smpc.job import PartyJob
    from smpc.peers import RefusedPeer

    _preload()
    try:
        job = (job_model or PartyJob).model_validate_json(sys.stdin.read())
    except Exception as exc:
        print(ERROR + json.dumps({"code": "invalid_request", "message": str(exc)}), flush=True)
        return 1
    workspace = tempfile.TemporaryDirectory(prefix="tessera-party-")
    try:
        if job.tls is not None:
            from smpc.tls import install

            try:
                install(job.tls, job.party_id, Path(workspace.name))
            except ValueError as exc:  # refused before any connection is made
                raise RefusedPeer(str(exc)) from None
            os.chdir(workspace.name)  # MPyC reads .config/ relative to the working directory
        mpc = _runtime(job)
        outcome = mpc.run(asyncio.wait_for(_run(mpc, job, body), timeout=job.timeout_s))
    except (TimeoutError, asyncio.CancelledError) as exc:
        return _timed_out(job, exc)
    except RefusedPeer as exc:
        message = f"party {job.party_id}: {exc}"
        print(ERROR + json.dumps({"code": "peer_refused", "message": message}), flush=True)
        return 1
    except liveness.PeerLost as exc:
        error = {"code": "peer_lost", "message": f"party {job.party_id}: {exc}"}
        print(ERROR + json.dumps({**error, "parties": exc.party_ids, "when": exc.when}), flush=True)
        return 1
    except RuntimeError as exc:
        if "Event loop stopped before Future completed" not in str(exc):
            raise
        return _timed_out(job, exc)
    except Exception as exc:
        from tessera.errors import DisclosureRefused, TesseraError

        code = exc.code if isinstance(exc, TesseraError) else "protocol_failed"
        traceback.print_exc(file=sys.stderr)
        if isinstance(exc, DisclosureRefused):  # pooled, the same at every party: no party named
            message = exc.message
        else:
            message = f"party {job.party_id}: {type(exc).__name__}: {exc}"
        print(ERROR + json.dumps({"code": code, "message": message}), flush=True)
        return 1
    finally:
        workspace.cleanup()
    print(OUTCOME + json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
