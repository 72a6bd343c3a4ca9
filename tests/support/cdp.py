"""A minimal Chrome DevTools Protocol driver for headless-browser tests (test helper only).

Launches headless chromium on a free port (read from ``DevToolsActivePort``), attaches
to one page over a flattened session of the browser websocket, and offers the few
commands the tests need. ``close()`` ends the browser's whole process group (which
this helper created) and deletes its profile folder.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import websocket  # websocket-client

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


class CDPError(RuntimeError):
    pass


class Browser:
    """Headless chromium with one page. Use as a context manager."""

    def __init__(
        self, executable: str, *, width: int = 1400, height: int = 1000, timeout: float = 15.0
    ) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="featcircuits-cdp-")
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so close() can end every child
        )
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.socket = None
        try:
            port, browser_path = self._read_active_port()
            self.socket = websocket.create_connection(
                f"ws://127.0.0.1:{port}{browser_path}", timeout=timeout, suppress_origin=True
            )
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.close()
            raise

    def _read_active_port(self) -> tuple[int, str]:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CDPError(
                    f"chromium exited with code {self.process.returncode} before it opened a port"
                )
            if marker.exists():
                lines = marker.read_text().split()
                if len(lines) >= 2:
                    return int(lines[0]), lines[1]
            time.sleep(0.05)
        raise CDPError(f"chromium wrote no DevToolsActivePort within {self.timeout} s")

    # --- protocol
    def send(
        self, method: str, params: dict | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)
        raise CDPError(f"no reply to {method} within {self.timeout} s")

    def wait_event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == name:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise CDPError(f"no {name} event within {self.timeout} s")
            reply = json.loads(self.socket.recv())
            if "method" in reply:
                self.events.append(reply)

    # --- page helpers
    def navigate(self, url: str) -> None:
        self.send("Page.enable", session=True)
        self.send("Network.enable", session=True)
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"JavaScript error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        return base64.b64decode(data)

    def mouse(
        self, kind: str, x: float, y: float, *, button: str = "none", clicks: int = 0
    ) -> None:
        self.send(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": button, "clickCount": clicks},
            session=True,
        )

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", clicks=1)
        self.mouse("mouseReleased", x, y, button="left", clicks=1)

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    # --- teardown
    def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.socket.send(json.dumps({"id": 0, "method": "Browser.close"}))
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.socket.close()
            self.socket = None
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(
                self.process.pid, signal.SIGKILL
            )  # chromium's helpers, in the group we created
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
