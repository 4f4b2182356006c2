"""The aiohttp application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from filestore.api import audit, cluster, files, health, ops, status_page
from filestore.api.context import METRICS, SCHEDULER, SERVICES
from filestore.api.expect import expect_handler
from filestore.api.middleware import errors_middleware
from filestore.api.request_info import stamp_request_id
from filestore.clock import Clock
from filestore.config import Settings
from filestore.metrics import MetricsExposition
from filestore.services import Services, open_services
from scheduler.runner import PurgeScheduler


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    services: Services | None = None,
    scheduler: PurgeScheduler | None = None,
) -> web.Application:
    """Build the gateway. Backends open in a cleanup context when the app
    starts (and close when it stops) unless ready ``services`` are given.
    Without a ``scheduler`` the app gets one that is not started: passes run
    only when an operator asks (``POST /v1/purge/run``)."""
    # client_max_size bounds only request.read()/post(); uploads are streamed
    # and cut at settings.max_file_size by the lifecycle itself.
    app = web.Application(middlewares=[errors_middleware], client_max_size=1 << 20)
    app[METRICS] = MetricsExposition()
    # Every answer names its request id, streamed ones too.
    app.on_response_prepare.append(stamp_request_id)
    status_page.install(app)
    if services is not None:
        app[SERVICES] = services
        app[SCHEDULER] = scheduler or PurgeScheduler(services)
    else:

        async def resources(app: web.Application) -> AsyncIterator[None]:
            async with open_services(settings, clock) as svc:
                app[SERVICES] = svc
                app[SCHEDULER] = PurgeScheduler(svc)
                yield

        app.cleanup_ctx.append(resources)
    # Every route answers Expect itself (see filestore.api.expect).
    app.add_routes(
        web.RouteDef(r.method, r.path, r.handler, {**r.kwargs, "expect_handler": expect_handler})
        for table in (
            files.routes,
            health.routes,
            ops.routes,
            audit.routes,
            cluster.routes,
            status_page.routes,
        )
        for r in table
        if isinstance(r, web.RouteDef)
    )
    return app
