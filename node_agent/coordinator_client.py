"""The node's HTTP client of the coordinator: outbound requests only, retried with backoff.

Connection errors and 5xx answers are retried with exponential backoff and jitter (capped at
10 s), so a node rides out a coordinator restart. 4xx answers are the coordinator's word and
come back as `tessera.errors` exceptions. The API key is sent, never logged.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import httpx

from tessera.errors import TesseraError, error_from_dict
from tessera.schemas import (
    DatasetSchema,
    NodeHello,
    TaskAccept,
    TaskFailure,
    TaskOut,
    TaskProgress,
    TaskRefusal,
    TaskResult,
    TaskStart,
)

log = logging.getLogger("tessera.node")
MAX_BACKOFF_S = 10.0


class CoordinatorClient:
    def __init__(self, base_url: str, api_key: str, stop: threading.Event | None = None) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(10.0, read=70.0),
        )
        self._stop = stop or threading.Event()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> Any:
        delay = 0.2
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
                if response.status_code < 500:
                    break
                problem = f"coordinator answered {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
            if not retry or self._stop.is_set():
                raise TesseraError(f"coordinator unreachable: {problem}")
            log.warning("%s %s: %s; retrying in %.1f s", method, path, problem, delay)
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                raise TesseraError("node agent stopping")
            delay = min(delay * 2, MAX_BACKOFF_S)
        if response.status_code >= 400:
            raise error_from_dict(response.json())
        return response.json()

    def hello(self, message: NodeHello) -> dict[str, Any]:
        return self._call("POST", "/nodes/me/hello", json=message.model_dump(mode="json"))  # type: ignore[no-any-return]

    def register_dataset(self, name: str, schema: DatasetSchema) -> None:
        self._call(
            "PUT",
            f"/nodes/me/datasets/{name}",
            json=schema.model_dump(mode="json", exclude_none=True),
        )

    def tasks(self, wait: float) -> list[TaskOut]:
        body = self._call("GET", "/nodes/me/tasks", params={"wait": wait})
        return [TaskOut.model_validate(t) for t in body]

    def accept(self, task_id: int, body: TaskAccept) -> None:
        self._call("POST", f"/tasks/{task_id}/accept", json=body.model_dump())

    def start(self, task_id: int, wait: float) -> TaskStart:
        body = self._call("GET", f"/tasks/{task_id}/start", params={"wait": wait})
        return TaskStart.model_validate(body)

    def reject(self, task_id: int, reason: str) -> None:
        self._call("POST", f"/tasks/{task_id}/reject", json=TaskRefusal(reason=reason).model_dump())

    def progress(self, task_id: int, stage: str, message: str = "") -> None:
        body = TaskProgress(stage=stage, message=message).model_dump()
        self._call("POST", f"/tasks/{task_id}/progress", retry=False, json=body)

    def result(self, task_id: int, body: TaskResult) -> None:
        self._call("POST", f"/tasks/{task_id}/result", json=body.model_dump(mode="json"))

    def fail(self, task_id: int, code: str, message: str) -> None:
        body = TaskFailure(code=code[:64], message=message[:2000]).model_dump()
        self._call("POST", f"/tasks/{task_id}/fail", json=body)
