"""`pricematch serve --engine ray`: the service's FastAPI app deployed on Ray Serve.

Each replica of `PricematchService` builds the app with `create_app` (its lifespan loads
the encoders, thresholds and catalogue once per replica) and serves it behind Serve's HTTP
proxy. `/match` encodings are batched by `ServeBatcher` (Serve's `serve.batch`) instead of
the in-process `MicroBatcher`; everything else is the plain app.

Catalogue writes: every replica holds its own `LiveCatalogue`, loaded from the same
`data_dir`. With one replica, writes work as with uvicorn (persisted before answered).
With several, the catalogue is read-only: `POST /listings` and `DELETE /listings/...`
answer 409 (a write to one replica would not reach the others); change it with one replica
and redeploy.

This module imports Ray; only `--engine ray` imports it (`pip install -e ".[scale]"`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Generic, TypeVar, cast

import anyio.to_thread
import numpy as np
import ray
from ray import serve
from ray.serve.deployment import Application, Deployment
from starlette.types import ASGIApp, Receive, Scope, Send

from index.errors import PricematchError
from index.scale.ray_engine import init_ray
from service.config import Settings
from service.errors import send_error
from service.main import create_app

T = TypeVar("T")
log = logging.getLogger("pricematch.service")

#: Serve application name (one app; its route prefix is "/").
APP_NAME = "pricematch"
#: The longest `/match` batching wait on Ray Serve (`PRICEMATCH_BATCH_WAIT_MS`): a request
#: never waits more than this for others to share its encoder call.
MAX_WAIT_MS = 10.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ServeBatcher(Generic[T]):
    """`service.batching.Batcher` on Ray Serve's `serve.batch` (inside a replica only).

    Concurrent `submit` calls of the replica are gathered by `serve.batch` (at most
    `max_batch`, waiting at most `wait_ms` for more) and `fn` runs once per batch in a
    worker thread, one batch at a time, as with `MicroBatcher`.

    Args:
        fn: the batch function (an encoder's `encode`).
        max_batch: most items per call (`max_batch_size`).
        wait_ms: how long to wait for more items (`batch_wait_timeout_s`, in ms).
        observe: called with (batch size, seconds) after each call (metrics).
    """

    kind = "serve.batch"

    def __init__(
        self,
        fn: Callable[[Sequence[T]], np.ndarray],
        max_batch: int = 64,
        wait_ms: float = 3.0,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.fn = fn
        self.observe = observe

        async def _pricematch_batch(items: list[T]) -> list[np.ndarray]:
            t = time.perf_counter()
            out = await anyio.to_thread.run_sync(self.fn, items)
            if self.observe is not None:
                self.observe(len(items), time.perf_counter() - t)
            return list(out)

        # One queue per batcher (a method decorated on the class would share one queue).
        self._batched = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_ms / 1000)(
            _pricematch_batch
        )

    async def start(self) -> None:
        """Nothing to start: Serve runs the batch loop on first use."""

    async def stop(self) -> None:
        """Nothing to stop: the batch loop ends with the replica."""

    async def submit(self, item: T) -> np.ndarray:
        """The result row of `item`; raises what `fn` raised for its batch."""
        row: np.ndarray = await self._batched(item)
        return row


class ReadOnlyCatalogue:
    """ASGI middleware: answers 409 to catalogue writes (several replicas, one copy each).

    Args:
        app: the service app.
        replicas: how many replicas serve it (named in the message).
    """

    def __init__(self, app: ASGIApp, replicas: int) -> None:
        self.app = app
        self.detail = (
            f"the catalogue is read-only with {replicas} Ray Serve replicas "
            "(each holds its own copy); update it with PRICEMATCH_RAY_REPLICAS=1"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope["method"] in WRITE_METHODS
            and (path == "/listings" or path.startswith("/listings/"))
        ):
            await send_error(send, 409, self.detail, "ReadOnlyCatalogueError")
            return
        await self.app(scope, receive, send)


def build_app(settings: Settings) -> ASGIApp:
    """The app one replica serves: `create_app` with `ServeBatcher`, read-only if several."""
    app = create_app(settings, batcher=ServeBatcher)
    if settings.ray_replicas > 1:
        app.add_middleware(ReadOnlyCatalogue, replicas=settings.ray_replicas)
    return app


@serve.deployment(name="PricematchService")
@serve.ingress()
class PricematchService:
    """One replica: the service app built in the replica (`__serve_build_asgi_app__`).

    Args:
        settings: the service settings (from the driver; the replica does not read the
            environment).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return build_app(self.settings)


def deployment(settings: Settings) -> Deployment:
    """`PricematchService` with the replicas and resources of `settings`.

    `max_ongoing_requests` is twice `max_batch`, so a replica can fill a batch while the
    previous one is encoded (Serve's default of 5 would cap batches at 5).

    Raises:
        PricematchError: `batch_wait_ms` over `MAX_WAIT_MS`.
    """
    if settings.batch_wait_ms > MAX_WAIT_MS:
        raise PricematchError(
            f"PRICEMATCH_BATCH_WAIT_MS is {settings.batch_wait_ms:g}: on Ray Serve /match "
            f"waits at most {MAX_WAIT_MS:g} ms for a batch"
        )
    actor: dict[str, Any] = {"num_cpus": settings.ray_num_cpus}
    if settings.ray_num_gpus > 0:
        actor["num_gpus"] = settings.ray_num_gpus
    return cast(Deployment, PricematchService).options(
        num_replicas=settings.ray_replicas,
        ray_actor_options=actor,
        max_ongoing_requests=2 * settings.max_batch,
    )


def application(settings: Settings) -> Application:
    """The Serve application to `serve.run`."""
    return deployment(settings).bind(settings)


def run(
    settings: Settings, host: str = "127.0.0.1", port: int = 8000, blocking: bool = True
) -> None:
    """Deploy the service on Ray Serve, its HTTP proxy on `host:port`.

    Joins the cluster at `settings.ray_address`, or starts a local Ray (every CPU, no
    dashboard). With `blocking`, serves until SIGINT or SIGTERM, then removes the app
    (from a cluster) or shuts Serve and the local Ray down; without, returns once the app
    is running.
    """
    app = application(settings)  # checks the settings before Ray starts
    init_ray(settings.ray_address, num_cpus=os.cpu_count() or 2)
    serve.start(http_options={"host": host, "port": port})
    log.info(
        "Ray Serve: deploying %d replica(s) on http://%s:%d", settings.ray_replicas, host, port
    )
    if not blocking:
        serve.run(app, name=APP_NAME, route_prefix="/")
        return
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        log.info("Ray Serve: stopping")
    finally:
        if settings.ray_address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
