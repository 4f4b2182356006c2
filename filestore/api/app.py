"""The aiohttp application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from filestore.api import files, health
from filestore.api.context import SERVICES
from filestore.api.middleware import errors_middleware
from filestore.clock import Clock
from filestore.config import Settings
from filestore.services import Services, open_services


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    services: Services | None = None,
) -> web.Application:
    """Build the gateway. Backends open in a cleanup context when the app
    starts (and close when it stops) unless ready ``services`` are given."""
    # client_max_size bounds only request.read()/post(); uploads are streamed
    # and cut at settings.max_file_size by the lifecycle itself.
    app = web.Application(middlewares=[errors_middleware], client_max_size=1 << 20)
    if services is not None:
        app[SERVICES] = services
    else:

        async def resources(app: web.Application) -> AsyncIterator[None]:
            async with open_services(settings, clock) as svc:
                app[SERVICES] = svc
                yield

        app.cleanup_ctx.append(resources)
    app.add_routes(files.routes)
    app.add_routes(health.routes)
    return app
