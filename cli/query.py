"""`tessera query ...`: a statistician's queries against a coordinator, from the shell.

Submit a query file and watch the nodes work, read a finished query's result as a table (or
its JSON), or dry-run a query to see who would take part and what it would reveal. Each
command logs in with `--coordinator`, `--user` and `--password` (or `TESSERA_COORDINATOR_URL`,
`TESSERA_USER`, `TESSERA_PASSWORD`; without either, the password is prompted for on a
terminal). The password is never printed. Every failure is one line on stderr and exit code 2.

Where the coordinator accepts an identity provider's tokens (OIDC), `--token` (or
`TESSERA_TOKEN`) replaces the username and password: the token is sent as it is and never
renewed here (the provider renews it: get a fresh one from it when it expires).

No token is kept on disk: each command logs in, holds its access and refresh tokens in memory
(the client renews the short-lived access token by itself, so a long `--wait` never meets an
expiry), and logs out when it ends.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import typer

from cli.errors import reports_errors
from cli.simulate import read_json
from cli.tables import render_budget, render_pairs, render_result
from tessera.errors import InvalidRequest, NotFound, ProtocolFailed, TesseraError

app = typer.Typer(
    help="Submit queries to a coordinator, read their results, dry-run them, see the budget.",
    no_args_is_help=True,
)

TERMINAL = ("succeeded", "failed")
ACCEPTED = ("accepted", "running", "done")

CoordinatorOption = typer.Option(
    ...,
    "--coordinator",
    envvar="TESSERA_COORDINATOR_URL",
    help="The coordinator's URL, e.g. https://tessera.example.org.",
)
UserOption = typer.Option(
    None, "--user", envvar="TESSERA_USER", help="Your username (unless you give --token)."
)
PasswordOption = typer.Option(
    None,
    "--password",
    envvar="TESSERA_PASSWORD",
    show_default=False,
    help="Your password (prefer the environment variable; prompted for on a terminal).",
)
TokenOption = typer.Option(
    None,
    "--token",
    envvar="TESSERA_TOKEN",
    show_default=False,
    help="An access token from your identity provider (OIDC) instead of --user/--password "
    "(prefer the environment variable). It is not renewed: get a fresh one from the provider.",
)
StudyOption = typer.Option(..., "--study", "-s", help="The study: its id or its name.")
JsonOption = typer.Option(False, "--json", help="Print the raw JSON instead of a table.")
TimeoutOption = typer.Option(
    600.0, "--timeout", min=0, help="Seconds to wait for the query to finish."
)


# ---- connection -------------------------------------------------------------------------


@contextmanager
def connect(
    coordinator: str, user: str | None, password: str | None, token: str | None = None
) -> Iterator[Any]:
    """A logged-in `TesseraClient`; a coordinator that answers something other than Tessera's
    JSON is reported in one line like any other error. With a `token` (an identity provider's
    access token) the client sends it as it is: no login, no renewal, no logout here."""
    from tessera.client import TesseraClient

    if token:
        client = TesseraClient(coordinator, token=token)
        try:
            yield client
        except ValueError:
            raise ProtocolFailed(
                f"the server at {coordinator} did not answer as a Tessera coordinator"
            ) from None
        finally:
            client.close()
        return
    if not user:
        raise InvalidRequest(
            "no credentials: give --user (or TESSERA_USER) and a password, or an identity "
            "provider's token with --token (or TESSERA_TOKEN)"
        )
    if password is None:
        if not sys.stdin.isatty():
            raise InvalidRequest(
                "no password: set TESSERA_PASSWORD or give --password (or run on a terminal "
                "to be prompted)"
            )
        password = str(typer.prompt(f"Password for {user}", hide_input=True))
    client = TesseraClient(coordinator)
    try:
        try:
            client.login(user, password)
            yield client
        except ValueError:  # a 2xx body that is not JSON: not a Tessera coordinator
            raise ProtocolFailed(
                f"the server at {coordinator} did not answer as a Tessera coordinator"
            ) from None
        finally:
            with suppress(TesseraError):
                client.logout()  # the command's session ends with it
    finally:
        client.close()


def study_id(client: Any, study: str) -> int:
    """A study's id from its id or its name (as the user sees their studies)."""
    if study.isdigit():
        return int(study)
    visible = client.studies()
    for entry in visible:
        if entry["name"] == study:
            return int(entry["id"])
    names = ", ".join(repr(s["name"]) for s in visible) or "none"
    raise NotFound(f"no study named {study!r} (your studies: {names})", {"study": study})


def read_query(path: Path) -> dict[str, Any]:
    query = read_json(path, "query")
    if not isinstance(query, dict):
        raise InvalidRequest(f"query file {path} must hold a JSON object {{...}}")
    return query


# ---- waiting ----------------------------------------------------------------------------


def progress_line(view: dict[str, Any]) -> str:
    """One line on where a query stands: `query 12: running — 3/3 nodes accepted, 1/3 done`."""
    tasks = view.get("tasks") or []
    total = len(tasks)
    accepted = sum(t["status"] in ACCEPTED for t in tasks)
    done = sum(t["status"] == "done" for t in tasks)
    status = view["status"]
    head = f"query {view['id']}: {status}"
    if status == "pending":
        return f"{head} — {accepted}/{total} nodes accepted"
    if status == "running":
        stages = sorted({t["stage"] for t in tasks if t.get("stage") and t["status"] != "done"})
        tail = f" ({', '.join(stages)})" if stages else ""
        return f"{head} — {accepted}/{total} nodes accepted, {done}/{total} done{tail}"
    return head


class Progress:
    """Writes progress lines to a stream: rewritten in place on a terminal, one line per
    change otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last: str | None = None

    def show(self, line: str) -> None:
        if line == self.last:
            return
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()
        self.last = line

    def close(self) -> None:
        """End the line being rewritten (on a terminal); idempotent."""
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.tty = False


def wait_for(client: Any, query_id: int, timeout: float, poll_s: float = 1.0) -> dict[str, Any]:
    """Long-poll the query until it ends, showing progress on stderr; its last view."""
    progress = Progress(sys.stderr)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            view = client.get_query(query_id, wait=max(0.0, min(poll_s, left)))
            progress.show(progress_line(view))
            if view["status"] in TERMINAL:
                return dict(view)
            if left <= 0:
                raise ProtocolFailed(
                    f"query {query_id} has not finished after {timeout:g} s "
                    f"({progress_line(view).split(': ', 1)[1]}); it goes on: "
                    f"`tessera query result {query_id} --wait`"
                )
    except KeyboardInterrupt:
        progress.close()
        print(
            f"stopped waiting; query {query_id} goes on: `tessera query result {query_id} --wait`",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    finally:
        progress.close()


# ---- output -----------------------------------------------------------------------------


def print_result(view: dict[str, Any], as_json: bool) -> None:
    """A finished query's result on stdout, or its failure as the one-line error."""
    if view["status"] == "failed":
        error = view.get("error") or {}
        raise ProtocolFailed(
            f"query {view['id']} failed: {error.get('message') or 'no reason given'}",
            {"code": error.get("code")},
        )
    if view["status"] != "succeeded":
        raise InvalidRequest(
            f"query {view['id']} has not finished ({progress_line(view).split(': ', 1)[1]}); "
            "add --wait to wait for it"
        )
    if as_json:
        typer.echo(json.dumps(view["result"], indent=2))
        return
    nodes = len(view.get("tasks") or [])
    caption = f"query {view['id']}: {view['statistic']} on {view['dataset']}, {nodes} nodes"
    if view.get("min_count_applied") is not None:
        caption += f", min_count {view['min_count_applied']}"
    typer.echo(caption)
    typer.echo("")
    typer.echo(render_result(view["result"], view.get("query")))


def dry_run_pairs(answer: dict[str, Any]) -> list[tuple[str, Any]]:
    taking = [n for n in answer["nodes"] if n["takes_part"]]
    left_out = [n for n in answer["nodes"] if not n["takes_part"]]
    pairs: list[tuple[str, Any]] = [
        ("query", f"{answer['statistic']} on {answer['dataset']}: valid"),
        (
            "parties",
            f"{len(taking)}: " + ", ".join(f"{n['name']} ({n['organisation']})" for n in taking),
        ),
    ]
    for n in left_out:
        pairs.append(("left out", f"{n['name']} ({n['organisation']}): {n['reason']}"))
    pairs += [
        ("min_count applied", answer["min_count_applied"]),
        ("reveals", answer["reveals"] or "(not stated)"),
        ("intermediates", answer["intermediates"] or "none"),
        ("epsilon", answer["epsilon"]),
        ("delta", answer["delta"]),
    ]
    cost, limits = answer.get("cost"), answer.get("limits")
    if cost and limits:
        pairs += [
            (
                "cost",
                f"{cost['cells']:,} cells (at most {limits['max_cells']:,}), "
                f"{cost['comparisons']:,} secure comparisons (at most "
                f"{limits['max_comparisons']:,})",
            ),
            (
                "your queries",
                f"{limits['concurrent_queries']} pending or running (at most "
                f"{limits['max_concurrent_queries_per_researcher']}), "
                f"{limits['queries_last_minute']} submitted in the last minute (at most "
                f"{limits['max_queries_per_minute']})",
            ),
        ]
    return pairs


# ---- commands ---------------------------------------------------------------------------


@app.command("submit")
@reports_errors
def submit(
    query_file: Path = typer.Argument(..., help="The query, a JSON file (see docs/queries.md)."),
    study: str = StudyOption,
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait for the result (default), or print the id and go."
    ),
    as_json: bool = JsonOption,
    timeout: float = TimeoutOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Submit a query; wait for the nodes (progress on stderr) and print the result.

    With --no-wait, print the query's id (or its JSON view with --json) and return at once.
    """
    query = read_query(query_file)
    with connect(coordinator, user, password, token) as client:
        view = client.submit_query(study_id(client, study), query)
        if not wait:
            typer.echo(json.dumps(view, indent=2) if as_json else str(view["id"]))
            print(
                f"query {view['id']} submitted; `tessera query result {view['id']} --wait` "
                "prints its result",
                file=sys.stderr,
            )
            return
        print_result(wait_for(client, view["id"], timeout), as_json)


@app.command("result")
@reports_errors
def result(
    query_id: int = typer.Argument(..., help="The query's id."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the query to finish."),
    as_json: bool = JsonOption,
    timeout: float = TimeoutOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Print a finished query's result as a table (or --json); --wait for one still running."""
    with connect(coordinator, user, password, token) as client:
        view = wait_for(client, query_id, timeout) if wait else client.get_query(query_id)
        print_result(view, as_json)


@app.command("dry-run")
@reports_errors
def dry_run(
    query_file: Path = typer.Argument(..., help="The query, a JSON file (see docs/queries.md)."),
    study: str = StudyOption,
    as_json: bool = JsonOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Check a query as submission would, without running it.

    Prints the nodes that would take part, the min_count they would apply, what the query would
    reveal and the epsilon it would spend. Nothing is created.
    """
    query = read_query(query_file)
    with connect(coordinator, user, password, token) as client:
        answer = client.dry_run_query(study_id(client, study), query)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        typer.echo(render_pairs(dry_run_pairs(answer)))


@app.command("budget")
@reports_errors
def budget(
    study: str = StudyOption,
    as_json: bool = JsonOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Print the study's differential-privacy budget: per dataset and node, what was spent, the
    limit and what is left (as each node last reported), and what the study can still spend."""
    with connect(coordinator, user, password, token) as client:
        answer = client.study_budget(study_id(client, study))
    typer.echo(json.dumps(answer, indent=2) if as_json else render_budget(answer))
