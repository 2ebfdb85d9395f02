"""A small synchronous Python client of the coordinator's REST API (researchers, admins).

It speaks the contract of `tessera.rest`: request bodies are built with its models (an invalid
one is an `InvalidRequest` before anything is sent), every answer is checked against its model
(an answer that does not fit is a `ProtocolFailed`), and lists are walked page by page. Methods
return the answers' JSON (dicts and lists). Errors come back as the `tessera.errors` exception
the coordinator named, with the HTTP status it came with in `http_status`.

After `login` the client renews its short-lived access token by itself with the refresh
token: shortly before the access token expires, and once more if a call is answered 401 (the
call is then sent again). A session lasts until its refresh tokens' end (`refresh_expires_in`
at login, 12 h by default) or `logout`. Tokens live in this object's memory only.

A token obtained elsewhere, such as an identity provider's (OIDC) access token where the
coordinator accepts them, is given as `TesseraClient(url, token=...)` (the CLI's `--token`
or `TESSERA_TOKEN`): it is sent as it is and never renewed here; the provider renews it, so
make a new client (or set `client.token`) with the next one. `logout` does not apply to it:
the provider ends its sessions.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from tessera import rest
from tessera.errors import InvalidRequest, ProtocolFailed, Unauthorized, error_from_dict
from tessera.schemas import SynthesisSpec

IDEMPOTENCY_HEADER = "Idempotency-Key"
RENEW_MARGIN = 0.2  # renew when this share of the access token's lifetime is left
NO_RENEWAL = frozenset({"/auth/token", "/auth/refresh"})


class TesseraClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 40.0,
        refresh_token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.refresh_token = refresh_token
        self._renew_at: float | None = None  # monotonic time to renew the access token
        self._renewal = threading.Lock()
        self._http = httpx.Client(base_url=f"{self.base_url}/api/v1", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, answer: Any = None, **kwargs: Any) -> Any:
        """The JSON answer of a call, checked against `answer` (a model or a type)."""
        response = self._request(method, path, **kwargs)
        body = response.json() if response.content else None
        if answer is not None:
            try:
                _adapter(answer).validate_python(body)
            except ValidationError as exc:
                name = getattr(answer, "__name__", str(answer))
                raise ProtocolFailed(
                    f"the coordinator's answer to {method} {path} is not a {name}: "
                    f"{exc.errors()[0]['msg']}"
                ) from None
        return body

    def _pages(
        self, path: str, page: type[rest.Page[Any]], **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list, page after page."""
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            body = self._call("GET", path, page, params=query)
            yield from body["items"]
            if not body.get("next_cursor"):
                return
            query["cursor"] = body["next_cursor"]

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        renewable = path not in NO_RENEWAL and self.refresh_token is not None
        if renewable and self._renew_at is not None and time.monotonic() >= self._renew_at:
            self._renew(self.token)
        sent_with = self.token
        response = self._send(method, path, kwargs)
        if response.status_code == 401 and renewable:
            self._renew(sent_with)
            response = self._send(method, path, kwargs)
        return self._checked_status(response)

    def _send(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(kwargs.get("headers") or {})
        rest_of = {k: v for k, v in kwargs.items() if k != "headers"}
        try:
            return self._http.request(method, path, headers=headers, **rest_of)
        except httpx.HTTPError as exc:
            raise ProtocolFailed(
                f"cannot reach the coordinator at {self.base_url}: {exc}"
            ) from None

    def _checked_status(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"code": "error", "message": response.text[:200]}}
            error = error_from_dict(body)
            error.http_status = response.status_code
            raise error
        return response

    # ---- auth and administration --------------------------------------------------------

    def login(self, username: str, password: str) -> None:
        body = self._call(
            "POST", "/auth/token", rest.Token, data={"username": username, "password": password}
        )
        self._keep(body)

    def _keep(self, body: dict[str, Any]) -> None:
        self.token, self.refresh_token = body["access_token"], body["refresh_token"]
        self._renew_at = time.monotonic() + body["expires_in"] * (1 - RENEW_MARGIN)

    def _renew(self, stale: str | None) -> None:
        """A new access token from the refresh token (once, however many threads ask for it
        with the same stale token)."""
        with self._renewal:
            if self.token != stale or self.refresh_token is None:
                return  # another thread renewed it meanwhile, or the client logged out
            try:
                body = self._call(
                    "POST", "/auth/refresh", rest.Token, json={"refresh_token": self.refresh_token}
                )
            except Unauthorized:
                self.token = self.refresh_token = self._renew_at = None
                raise
            self._keep(body)

    def refresh(self) -> None:
        """Renew the access token now (the client also does by itself when it is due)."""
        self._renew(self.token)

    def logout(self) -> None:
        """End the session at the coordinator: its access and refresh tokens stop working."""
        if self.token is None:
            return
        try:
            self._call("POST", "/auth/logout", rest.LoggedOut)
        finally:
            self.token = self.refresh_token = self._renew_at = None

    def change_password(self, old_password: str, new_password: str) -> dict[str, Any]:
        """Change your password; your other sessions end (`sessions_revoked`)."""
        body = _body(rest.PasswordChange, old_password=old_password, new_password=new_password)
        return self._call("POST", "/users/me/password", rest.PasswordChanged, json=body)

    def disable_user(self, user_id: int) -> dict[str, Any]:
        """Disable a user (admin): their tokens stop working, they cannot log in."""
        return self._call("POST", f"/users/{user_id}/disable", rest.UserOut)

    def enable_user(self, user_id: int) -> dict[str, Any]:
        """Enable a disabled user again (admin)."""
        return self._call("POST", f"/users/{user_id}/enable", rest.UserOut)

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/users/me", rest.UserOut)

    def create_user(
        self,
        username: str,
        password: str,
        role: str = "researcher",
        organisation_id: int | None = None,
    ) -> dict[str, Any]:
        body = _body(
            rest.NewUser,
            username=username,
            password=password,
            role=role,
            organisation_id=organisation_id,
        )
        return self._call("POST", "/users", rest.UserOut, json=body)

    def users(self, role: str | None = None) -> list[dict[str, Any]]:
        """Every user (admin), of one role if given."""
        return list(self._pages("/users", rest.UserPage, role=role))

    def create_organisation(self, name: str) -> dict[str, Any]:
        body = _body(rest.NewOrganisation, name=name)
        return self._call("POST", "/organisations", rest.OrganisationOut, json=body)

    def organisations(self) -> list[dict[str, Any]]:
        return list(self._pages("/organisations", rest.OrganisationPage))

    def create_node(self, name: str, organisation_id: int) -> dict[str, Any]:
        """Enrol a node; the answer (the node) carries its `api_key`, shown this once."""
        body = _body(rest.NewNode, name=name, organisation_id=organisation_id)
        return self._call("POST", "/nodes", rest.NodeWithKey, json=body)

    def nodes(self, organisation_id: int | None = None) -> list[dict[str, Any]]:
        """Every enrolled node (admin), of one organisation if given."""
        return list(self._pages("/nodes", rest.NodePage, organisation_id=organisation_id))

    def create_study(
        self,
        name: str,
        description: str = "",
        organisation_ids: Sequence[int] = (),
        datasets: Sequence[str] = (),
        members: Sequence[int | str] = (),
    ) -> dict[str, Any]:
        body = _body(
            rest.NewStudy,
            name=name,
            description=description,
            organisation_ids=list(organisation_ids),
            datasets=list(datasets),
            members=list(members),
        )
        return self._call("POST", "/studies", rest.StudyOut, json=body)

    def reset_node_identity(self, node_id: int) -> dict[str, Any]:
        """Forget a node's registered long-term key; the answer's `enrolment_token` lets the
        node's next start register the one it shows."""
        return self._call("POST", f"/nodes/{node_id}/reset-identity", rest.NodeWithEnrolment)

    def rotate_node_key(self, node_id: int) -> dict[str, Any]:
        """A new API key for the node (in the answer's `api_key`); the old one stops working."""
        return self._call("POST", f"/nodes/{node_id}/rotate-key", rest.NodeWithKey)

    def studies(self) -> list[dict[str, Any]]:
        """Every study (admin), or those this user is a member of."""
        return list(self._pages("/studies", rest.StudyPage))

    def add_study_member(self, study_id: int, user: int | str) -> dict[str, Any]:
        """Add a member by user id or username; returns the study."""
        body = _body(
            rest.MemberRef, **({"user_id": user} if isinstance(user, int) else {"username": user})
        )
        return self._call("POST", f"/studies/{study_id}/members", rest.StudyOut, json=body)

    def study_datasets(self, study_id: int) -> list[dict[str, Any]]:
        """Per dataset of the study: the nodes that registered it, their schemas, whether the
        schemas agree."""
        return self._call("GET", f"/studies/{study_id}/datasets", list[rest.StudyDataset])

    def study_budget(self, study_id: int) -> dict[str, Any]:
        """The study's differential-privacy budget per dataset: each node's epsilon and delta
        limit, spent and remaining (as the node last reported, with `reported_at`), and what
        the network has left (the least of its nodes)."""
        return self._call("GET", f"/studies/{study_id}/budget", rest.StudyBudget)

    def audit(self, action: str | None = None) -> list[dict[str, Any]]:
        """The whole audit log (admin), oldest first; only one action's events if given."""
        return list(self._pages("/audit", rest.AuditPage, action=action, limit=1000))

    def audit_page(
        self, limit: int = 100, cursor: str | None = None, action: str | None = None
    ) -> dict[str, Any]:
        """One page of the audit log: `items` and the `next_cursor` (null on the last page)."""
        params = {k: v for k, v in (("limit", limit), ("cursor", cursor), ("action", action)) if v}
        return self._call("GET", "/audit", rest.AuditPage, params=params)

    def audit_verify(self) -> dict[str, Any]:
        """`{"ok", "entries", "first_bad_id", "problem", "signed", "legacy_unsigned", ...}`: the
        coordinator walks its audit hash chain and checks each event's signature."""
        return self._call("GET", "/audit/verify", rest.AuditVerification)

    # ---- queries --------------------------------------------------------------------------

    def submit_query(
        self, study_id: int, query: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Submit a query (docs/queries.md); returns its view, status `pending`. With an
        `idempotency_key`, a retry (same key, same query) returns the first answer and creates
        nothing twice."""
        return self._call(
            "POST",
            f"/studies/{study_id}/queries",
            rest.QueryOut,
            json=query,
            headers=_idempotency(idempotency_key),
        )

    def dry_run_query(self, study_id: int, query: dict[str, Any]) -> dict[str, Any]:
        """Check a query as submission would, without submitting it: the nodes that would take
        part, `min_count_applied`, what it `reveals`, its `epsilon` and `delta`. An invalid
        query raises the error its submission would."""
        return self._call("POST", f"/studies/{study_id}/queries/dry-run", rest.DryRun, json=query)

    def study_queries(
        self, study_id: int, status: str | None = None, statistic: str | None = None
    ) -> list[dict[str, Any]]:
        """The study's queries, oldest first (of one status and statistic, if given)."""
        return list(
            self._pages(
                f"/studies/{study_id}/queries", rest.QueryPage, status=status, statistic=statistic
            )
        )

    def get_query(self, query_id: int, wait: float | None = None) -> dict[str, Any]:
        """The query's view; with `wait`, long-poll up to that many seconds for its end."""
        params = {"wait": wait} if wait else {}
        return self._call("GET", f"/queries/{query_id}", rest.QueryOut, params=params)

    def wait_query(self, query_id: int, timeout: float = 120.0) -> dict[str, Any]:
        """Long-poll until the query succeeded or failed; after `timeout` seconds, its view as
        it is (check `status`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            view = self.get_query(query_id, wait=max(0.0, min(25.0, left)))
            if view["status"] in ("succeeded", "failed") or left <= 0:
                return view

    # ---- synthetic data -------------------------------------------------------------------

    def request_synthesis(
        self, study_id: int, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Ask the study's nodes to synthesise a dataset (a `SynthesisSpec`: dataset,
        generator, rows, params, epsilon, holdout, target, seed, scope `local` or `pooled`);
        returns the request with one job per node that takes part, and the nodes `skipped` by
        their published policy. With
        an `idempotency_key`, a retry returns the first answer and requests nothing twice."""
        body = _body(SynthesisSpec, **spec)
        return self._call(
            "POST",
            f"/studies/{study_id}/synthesis",
            rest.SynthesisRequestOut,
            json=body,
            headers=_idempotency(idempotency_key),
        )

    def study_synthesis(self, study_id: int, status: str | None = None) -> list[dict[str, Any]]:
        """The study's synthesis requests (`running` or `done` ones only, if given)."""
        path = f"/studies/{study_id}/synthesis"
        return list(self._pages(path, rest.SynthesisRequestPage, status=status))

    def get_synthesis(self, request_id: int, wait: float | None = None) -> dict[str, Any]:
        """A synthesis request; with `wait`, long-poll until every job is at rest (ended, or
        awaiting its stewards)."""
        params = {"wait": wait} if wait else {}
        return self._call(
            "GET", f"/synthesis/{request_id}", rest.SynthesisRequestOut, params=params
        )

    def wait_synthesis(
        self, request_id: int, timeout: float = 600.0, until: str = "at_rest"
    ) -> dict[str, Any]:
        """Long-poll until the request is `at_rest` (every job ended or awaiting review) or,
        with `until="done"`, every job ended; after `timeout` seconds, the view as it is."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            view = self.get_synthesis(request_id, wait=max(0.0, min(25.0, left)))
            finished = view["status"] == "done" if until == "done" else view["at_rest"]
            if finished or left <= 0:
                return view
            if until == "done" and view["at_rest"]:
                time.sleep(min(1.0, max(0.0, left)))  # stewards decide at the nodes

    def releases(
        self, study_id: int, dataset: str | None = None, node: str | None = None
    ) -> list[dict[str, Any]]:
        """The study's published releases, each with its card (of one dataset and node, if
        given)."""
        path = f"/studies/{study_id}/releases"
        return list(self._pages(path, rest.ReleasePage, dataset=dataset, node=node))

    def release(self, release_id: int) -> dict[str, Any]:
        return self._call("GET", f"/releases/{release_id}", rest.ReleaseOut)

    def release_data(self, release_id: int, fmt: str = "csv") -> bytes:
        """A release's synthetic data as CSV or Parquet bytes (checked against the hash the
        coordinator states)."""
        response = self._request("GET", f"/releases/{release_id}/data", params={"format": fmt})
        return _checked(response)

    def release_report(self, release_id: int, node: str | None = None) -> bytes:
        """A release's evaluation report (HTML bytes); a pooled release's `node`'s (default:
        the first node's)."""
        params = {"node": node} if node is not None else None
        return _checked(self._request("GET", f"/releases/{release_id}/report", params=params))


@functools.cache
def _adapter(answer: Any) -> TypeAdapter[Any]:
    """The validator of an answer's type, built once per type."""
    return TypeAdapter(answer)


def _body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """A request body checked against its model before anything is sent."""
    try:
        return model.model_validate(fields).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise InvalidRequest(problems) from None


def _idempotency(key: str | None) -> dict[str, str]:
    return {IDEMPOTENCY_HEADER: key} if key else {}


def _checked(response: httpx.Response) -> bytes:
    import hashlib

    stated = response.headers.get("X-SHA256")
    if stated and hashlib.sha256(response.content).hexdigest() != stated:
        raise ProtocolFailed("the download does not match the hash the coordinator states")
    return response.content
