"""Run the studio's uvicorn server in a background thread (the benchmark and browser tests).

The same `bind` and app as `loraprep studio`; `ServerThread.stop()` shuts it down cleanly.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from loraprep.studio.cli import LOOPBACK, bind


class ServerThread:
    def __init__(self, app: Any, host: str = LOOPBACK):
        import uvicorn

        self.sock = bind(host, 0)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the studio server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
