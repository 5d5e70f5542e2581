"""A live uvicorn server on 127.0.0.1 in a thread, and a tiny urllib client, for the server
tests (tests/test_server*.py). Not a test module."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import uvicorn

from warmload.config import ServerConfig
from warmload.server.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`with LiveServer(config) as live:` starts uvicorn and waits until /health says ok (or,
    with wait_ready=False, until it answers at all)."""

    def __init__(self, config: ServerConfig, api_key: str | None = None) -> None:
        self.app = create_app(config)
        self.state = self.app.state.warmload
        self.port = config.port
        self.url = f"http://127.0.0.1:{config.port}"
        self.api_key = api_key
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=config.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait_ready = True

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                status = self.get("/health")[1]["status"]
                if status == "ok" or not self.wait_ready:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 120,
    ) -> tuple[int, bytes, Any]:  # headers: case-insensitive Message
        base = {"Content-Type": "application/json"}
        if self.api_key:
            base["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers={**base, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers

    def get(self, path: str) -> tuple[int, dict]:
        status, body, _ = self.request("GET", path)
        return status, json.loads(body)

    def post(self, path: str, data: object) -> tuple[int, dict]:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        status, body, _ = self.request("POST", path, raw)
        return status, json.loads(body)

    def open_stream(self, path: str, data: dict) -> socket.socket:
        """Send a request by hand and return the socket (to read a little, then drop it)."""
        body = json.dumps(data).encode()
        auth = f"\r\nAuthorization: Bearer {self.api_key}" if self.api_key else ""
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json{auth}".encode()
            + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return s


def read_until(sock: socket.socket, marker: bytes, seconds: float = 60) -> bytes:
    received, deadline = b"", time.monotonic() + seconds
    sock.settimeout(seconds)
    while marker not in received and time.monotonic() < deadline:
        part = sock.recv(4096)
        if not part:
            break
        received += part
    return received


def record_completions(monkeypatch) -> list:
    """Every finished generation's (prompt ids, Completion), as the server made it."""
    from warmload.server.generation import Generation

    seen = []
    finish = Generation._finish

    def recording(self, choice, completion):
        seen.append((list(choice.prompt_ids), completion))
        finish(self, choice, completion)

    monkeypatch.setattr(Generation, "_finish", recording)
    return seen
