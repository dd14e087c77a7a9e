"""Running the simulator: blocking (`run`, for the CLI) or in a background thread
(`SimulatorThread`, for tests and the demo)."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Final

from aiohttp import web

from .app import make_app
from .config import SimulatorConfig
from .state import STATE_KEY, SimulatorState

SHUTDOWN_TIMEOUT_SECONDS: Final = 0.5
START_TIMEOUT_SECONDS: Final = 10.0


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve the simulator on `host:port` until interrupted (SIGINT/SIGTERM).

    Raises OSError when the address cannot be bound.
    """
    web.run_app(
        make_app(config),
        host=host,
        port=port,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
    )


class SimulatorThread:
    """A simulator on 127.0.0.1 and an OS-assigned port, served by a daemon thread with
    its own event loop.

    Usage: `with SimulatorThread() as sim: ... sim.base_url ...`, or `start()`/`stop()`.
    `start()` returns once the port is listening and raises what prevented it;
    `stop()` closes every connection (hung requests included) and joins the thread.
    An instance runs once. `state` is the live app state; read it only while no request
    is in flight, or use the `/_sim` endpoints.
    """

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.app = make_app(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` (append `/v1` for the OpenAI SDK)."""
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> SimulatorState:
        """The running app's state."""
        return self.app[STATE_KEY]

    def start(self) -> SimulatorThread:
        """Start serving; returns when listening. RuntimeError if already started."""
        if self._thread is not None:
            raise RuntimeError("a SimulatorThread runs only once")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._serve, args=(loop,), name="metergate-simulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("simulator did not start listening in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("simulator failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread; a no-op when not running."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, 0)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:  # handed to start(), which re-raises it
            self._error = exc
        self._ready.set()
        try:
            if self._error is None:
                loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
