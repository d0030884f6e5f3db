"""A small Chrome DevTools Protocol client: a headless Chromium (Debian's ``chromium``) driven over
its debugging WebSocket, enough to open the serve page, click, read page state and take screenshots.
No browser is downloaded: the one on the PATH runs, with a fake camera for ``getUserMedia``."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Browser:
    """One headless Chromium with one page; ``call`` sends a CDP command and returns its result."""

    def __init__(self, profile: Path, width: int = 1100, height: int = 900) -> None:
        from websockets.sync.client import connect

        exe = find_browser()
        if exe is None:
            raise RuntimeError(f"no browser on the PATH (looked for {', '.join(BROWSERS)})")
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        t0 = time.perf_counter()
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.perf_counter() - t0 > 30 or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("the browser did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails'].get('exception', out['exceptionDetails'])}")
        return out["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0) -> Any:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"not true within {timeout:g} s: {expression}")

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!window.accelframe")

    def set_files(self, selector: str, *paths: str) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=list(paths))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()
        self.proc.kill()
        self.proc.wait(10)
