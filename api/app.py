"""`create_app(settings)`: the coordinator's FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api import audit, errors, openapi
from api.db import Database
from api.deps import known_parameters
from api.middleware import (
    FORM_OVERHEAD,
    NODE_REPORTS,
    UPLOAD,
    BodyLimit,
    LastResort,
    SecurityHeaders,
    bearer_token,
)
from api.migrate import upgrade
from api.notify import Broadcast, Notifier
from api.oidc import OidcVerifier
from api.routes import accounts, nodes, operations, studies, synthesis
from api.scheduler import sweep_forever
from api.security import KEY_PREFIX, set_hash_concurrency
from api.services import network
from api.services.accounts import ensure_admin
from api.settings import CoordinatorSettings
from api.signing import CoordinatorKey
from api.tokens import LocalTokens, signing_key
from tessera.errors import TesseraError

log = logging.getLogger("tessera.coordinator")


class Coordinator(FastAPI):
    """FastAPI whose every answer, a last-resort 500 included, carries the security headers."""

    production: bool = False

    def build_middleware_stack(self) -> Any:
        return SecurityHeaders(super().build_middleware_stack(), self.production)


async def node_authenticated(scope: Any) -> bool:
    """Whether a request carries a valid node API key (a body beyond the general limit needs
    one): checked against the database before the body is read."""
    token = bearer_token(scope)
    if token is None or not token.startswith(KEY_PREFIX):
        return False
    database: Database = scope["app"].state.db

    def check() -> bool:
        try:
            with database.session() as db:
                network.authenticate_node(db, token)
        except TesseraError:
            return False
        return True

    return await run_in_threadpool(check)


def create_app(settings: CoordinatorSettings | None = None) -> FastAPI:
    settings = settings or CoordinatorSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tokens = LocalTokens(signing_key(settings), settings.token_ttl_s)
        provider = OidcVerifier(settings) if settings.oidc_issuer is not None else None
        app.state.tokens, app.state.oidc = tokens, provider
        app.state.verifiers = [tokens] if provider is None else [tokens, provider]
        set_hash_concurrency(settings.password_hash_concurrency)
        signer = CoordinatorKey.for_settings(settings.signing_key_file, settings.database_url)
        database = Database(
            settings.database_url,
            signer=signer,
            busy_timeout_s=settings.sqlite_busy_timeout_s,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        upgrade(database.engine)
        with database.session() as db:
            audit.seal_legacy(db)
        if settings.bootstrap_admin_username and settings.bootstrap_admin_password:
            try:
                with database.session() as db:
                    ensure_admin(
                        db,
                        settings.bootstrap_admin_username,
                        settings.bootstrap_admin_password.get_secret_value(),
                    )
            except IntegrityError:
                pass  # another replica created the administrator at the same moment
        notifier = Notifier()
        notifier.bind(asyncio.get_running_loop())
        if database.engine.dialect.name == "postgresql":  # other replicas' news, at once
            notifier.broadcast = Broadcast(settings.database_url, notifier).start()
        app.state.db, app.state.notifier = database, notifier
        sweeper = asyncio.create_task(
            sweep_forever(database, notifier, settings.sweep_interval_s, settings.idempotency_ttl_s)
        )
        log.info(
            "coordinator ready (database: %s; signing key %s)",
            database.engine.url.render_as_string(),
            signer.fingerprint,
        )
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if notifier.broadcast is not None:
                await asyncio.to_thread(notifier.broadcast.stop)
            database.dispose()
            if provider is not None:
                provider.close()

    app = Coordinator(
        title="Tessera coordinator",
        version="0.1.0",
        description="Schedules secure multi-party statistics across hospitals; publishes only "
        "pooled, disclosure-checked results and synthetic datasets their stewards approved.",
        lifespan=lifespan,
        generate_unique_id_function=openapi.operation_id,
        dependencies=[Depends(known_parameters)],
        docs_url=None,
        redoc_url=None,
    )
    app.production = settings.environment == "production"
    app.state.settings = settings
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        large=[
            (UPLOAD, 2 * settings.release_max_bytes + FORM_OVERHEAD),
            (NODE_REPORTS, max(settings.node_report_max_bytes, settings.max_body_bytes)),
        ],
        authenticated=node_authenticated,
    )
    app.add_middleware(LastResort)  # outermost: around the body limit's own database check
    errors.install(app)
    openapi.install(app)
    for module in (operations, accounts, nodes, studies, synthesis):
        app.include_router(module.router, prefix="/api/v1")
    return app
