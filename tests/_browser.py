"""Open a page in Debian's headless Chromium and report what rendered: a small DevTools-protocol driver
over `--remote-debugging-pipe` (JSON messages separated by NUL on fds 3/4), so no chromedriver, Selenium
or Playwright browser download is needed."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
# Every <img> is loaded and decoded (naturalWidth > 0); the count and any that are not, by alt text.
IMAGES_JS = """(() => { const imgs = [...document.images];
  return JSON.stringify({count: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 60))}); })()"""


class Browser:
    def __init__(self, timeout_seconds: float = 60.0):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        def pipes_on_3_and_4():  # the protocol's fixed descriptors; via high copies so neither overwrites the other
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=pipes_on_3_and_4)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.timeout, self._buffer, self._next_id, self.events = timeout_seconds, b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, session: str) -> dict:
        for index, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(index)
        while True:
            event = self._read()
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


def render(page: Path) -> dict:
    """Load `page` and return {count, broken: [images that did not render], failed: [failed requests],
    errors: [console errors and exceptions]}."""
    browser = Browser()
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", session)
        value = browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                             session=session)["result"]["value"]
        result = json.loads(value)
        events = [e for e in browser.events if e.get("sessionId") == session]
        result["failed"] = [e["params"].get("errorText") for e in events if e.get("method") == "Network.loadingFailed"]
        result["errors"] = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"
                            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        return result
    finally:
        browser.close()
