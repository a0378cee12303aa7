"""The API's server: uvicorn in the daemon's own loop (no thread, no process).

uvicorn's own signal handling is switched off (the daemon owns SIGTERM and SIGHUP), as is
its lifespan (the daemon starts and stops everything) and its logging set-up (the
daemon's applies).  The socket is bound here first, so a port in use stops the start
with a clear error and port 0 gives the port chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator

import uvicorn

from .app import build_app
from .context import ApiContext

log = logging.getLogger("amic.api")

STOP_SECONDS = 3.0  # requests in flight get this long at a stop


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon's handlers stay: uvicorn would replace them with its own


class ApiServer:
    """Serves the API of the daemon behind ``ctx`` on ``host``:``port`` (``[api] listen``);
    :meth:`start`, then :meth:`close`."""

    def __init__(self, ctx: ApiContext, host: str, port: int) -> None:
        settings = ctx.settings().api
        assert settings is not None
        self.settings = settings
        self.app = build_app(ctx)
        kwargs: dict[str, object] = {}
        if settings.cert_file is not None and settings.key_file is not None:
            kwargs.update(ssl_certfile=str(settings.cert_file),
                          ssl_keyfile=str(settings.key_file))
            if settings.client_ca_file is not None:
                kwargs.update(ssl_ca_certs=str(settings.client_ca_file),
                              ssl_cert_reqs=ssl.CERT_REQUIRED)
        self.host = host
        self.config = uvicorn.Config(self.app, lifespan="off", log_config=None,
                                     server_header=False, access_log=True,
                                     timeout_graceful_shutdown=int(STOP_SECONDS),
                                     **kwargs)  # type: ignore[arg-type]
        self.port = port
        self.server = _Server(self.config)
        self.task: asyncio.Task[None] | None = None
        self.sock: socket.socket | None = None

    @property
    def tls(self) -> bool:
        return self.settings.cert_file is not None

    async def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.create_server((self.host, self.port), family=family,
                                         reuse_port=False)
        self.port = self.sock.getsockname()[1]
        self.config.load()  # TLS files read now: a bad one stops the start
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="api")
        while not self.server.started and not self.task.done():
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # raises what stopped it
            raise OSError(f"api on {self.settings.listen}: the server did not start")
        log.info("api listening on %s://%s:%d%s", "https" if self.tls else "http",
                 self.host, self.port,
                 " (client certificates required)" if self.settings.client_ca_file else "")

    async def close(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), STOP_SECONDS + 1.0)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        except Exception as e:
            log.warning("api server ended with %r", e)
        if self.sock is not None:
            self.sock.close()
        self.task = None
