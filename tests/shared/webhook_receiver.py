"""A real HTTP webhook receiver for alert tests: a threaded http.server in the test process."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Records every JSON body posted to it; answers 500 to the first ``fail_first`` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[dict[str, Any]] = []  # every post, refused ones included
        self.accepted: list[dict[str, Any]] = []
        self._fail_left = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.posts.append(body)
                    refuse = receiver._fail_left > 0
                    if refuse:
                        receiver._fail_left -= 1
                    else:
                        receiver.accepted.append(body)
                self.send_response(500 if refuse else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def accepted_keys(self) -> Counter[str]:
        with self._lock:
            return Counter(body["metergate"]["alert_key"] for body in self.accepted)

    def posted_keys(self) -> Counter[str]:
        with self._lock:
            return Counter(body["metergate"]["alert_key"] for body in self.posts)
