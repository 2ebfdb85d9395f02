"""A small synchronous Python client of the coordinator's REST API (researchers, admins).

Errors come back as the `tessera.errors` exception the coordinator named.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from tessera.errors import ProtocolFailed, error_from_dict


class TesseraClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 40.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=f"{self.base_url}/api/v1", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:  # JSON
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ProtocolFailed(
                f"cannot reach the coordinator at {self.base_url}: {exc}"
            ) from None
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
        body = self._call("POST", "/auth/token", data={"username": username, "password": password})
        self.token = body["access_token"]

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/users/me")

    def create_user(
        self,
        username: str,
        password: str,
        role: str = "researcher",
        organisation_id: int | None = None,
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/users",
            json={
                "username": username,
                "password": password,
                "role": role,
                "organisation_id": organisation_id,
            },
        )

    def create_organisation(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/organisations", json={"name": name})

    def create_node(self, name: str, organisation_id: int) -> dict[str, Any]:
        """Enrol a node; the answer (the node) carries its `api_key`, shown this once."""
        return self._call(
            "POST",
            "/nodes",
            json={
                "name": name,
                "organisation_id": organisation_id,
            },
        )

    def create_study(
        self,
        name: str,
        description: str = "",
        organisation_ids: Sequence[int] = (),
        datasets: Sequence[str] = (),
        members: Sequence[int | str] = (),
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/studies",
            json={
                "name": name,
                "description": description,
                "organisation_ids": list(organisation_ids),
                "datasets": list(datasets),
                "members": list(members),
            },
        )

    def rotate_node_key(self, node_id: int) -> dict[str, Any]:
        """A new API key for the node (in the answer's `api_key`); the old one stops working."""
        return self._call("POST", f"/nodes/{node_id}/rotate-key")

    def studies(self) -> list[dict[str, Any]]:
        """Every study (admin), or those this user is a member of."""
        return self._call("GET", "/studies")

    def add_study_member(self, study_id: int, user: int | str) -> dict[str, Any]:
        """Add a member by user id or username; returns the study."""
        body = {"user_id": user} if isinstance(user, int) else {"username": user}
        return self._call("POST", f"/studies/{study_id}/members", json=body)

    def study_datasets(self, study_id: int) -> list[dict[str, Any]]:
        """Per dataset of the study: the nodes that registered it, their schemas, whether the
        schemas agree."""
        return self._call("GET", f"/studies/{study_id}/datasets")

    def study_budget(self, study_id: int) -> dict[str, Any]:
        """The study's differential-privacy budget per dataset: each node's epsilon and delta
        limit, spent and remaining (as the node last reported, with `reported_at`), and what
        the network has left (the least of its nodes)."""
        return self._call("GET", f"/studies/{study_id}/budget")

    def audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", "/audit", params={"limit": limit, "offset": offset})

    def audit_verify(self) -> dict[str, Any]:
        """`{"ok", "entries", "first_bad_id"}`: the coordinator walks its audit hash chain."""
        return self._call("GET", "/audit/verify")

    # ---- queries --------------------------------------------------------------------------

    def submit_query(self, study_id: int, query: dict[str, Any]) -> dict[str, Any]:
        """Submit a query (docs/queries.md); returns its view, status `pending`."""
        return self._call("POST", f"/studies/{study_id}/queries", json=query)

    def dry_run_query(self, study_id: int, query: dict[str, Any]) -> dict[str, Any]:
        """Check a query as submission would, without submitting it: the nodes that would take
        part, `min_count_applied`, what it `reveals`, its `epsilon` and `delta`. An invalid
        query raises the error its submission would."""
        return self._call("POST", f"/studies/{study_id}/queries/dry-run", json=query)

    def study_queries(self, study_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/studies/{study_id}/queries")

    def get_query(self, query_id: int, wait: float | None = None) -> dict[str, Any]:
        """The query's view; with `wait`, long-poll up to that many seconds for its end."""
        params = {"wait": wait} if wait else {}
        return self._call("GET", f"/queries/{query_id}", params=params)

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

    def request_synthesis(self, study_id: int, spec: dict[str, Any]) -> dict[str, Any]:
        """Ask the study's nodes to synthesise a dataset (a `SynthesisSpec`: dataset,
        generator, rows, params, epsilon, holdout, target, seed); returns the request with one
        job per node that takes part, and the nodes `skipped` by their published policy."""
        return self._call("POST", f"/studies/{study_id}/synthesis", json=spec)

    def study_synthesis(self, study_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/studies/{study_id}/synthesis")

    def get_synthesis(self, request_id: int, wait: float | None = None) -> dict[str, Any]:
        """A synthesis request; with `wait`, long-poll until every job is at rest (ended, or
        awaiting its stewards)."""
        params = {"wait": wait} if wait else {}
        return self._call("GET", f"/synthesis/{request_id}", params=params)

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

    def releases(self, study_id: int) -> list[dict[str, Any]]:
        """The study's published releases, each with its card."""
        return self._call("GET", f"/studies/{study_id}/releases")

    def release(self, release_id: int) -> dict[str, Any]:
        return self._call("GET", f"/releases/{release_id}")

    def release_data(self, release_id: int, fmt: str = "csv") -> bytes:
        """A release's synthetic data as CSV or Parquet bytes (checked against the hash the
        coordinator states)."""
        response = self._request("GET", f"/releases/{release_id}/data", params={"format": fmt})
        return _checked(response)

    def release_report(self, release_id: int) -> bytes:
        """A release's evaluation report (HTML bytes)."""
        return _checked(self._request("GET", f"/releases/{release_id}/report"))


def _checked(response: httpx.Response) -> bytes:
    import hashlib

    stated = response.headers.get("X-SHA256")
    if stated and hashlib.sha256(response.content).hexdigest() != stated:
        raise ProtocolFailed("the download does not match the hash the coordinator states")
    return response.content
