"""Open a report in headless Chromium, offline: screenshots, console errors, network requests.

Drives Debian's ``chromium`` (never a downloaded browser) over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4),
so it needs no websocket client and no test framework. The browser runs with the flags that keep
it off the network (no background networking, component updates, sync or QUIC; every host name
resolves to nothing) in a fresh profile directory; every request the page makes is recorded, so
a test can assert there were none beyond the page's own ``file:`` and ``data:`` URLs.

Regenerate the screenshots in ``docs/`` after ``make demo`` with::

    python -m sparsesim.experiments.browser demo/report.html -o docs/
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsesim.atomic import atomic_path
from sparsesim.errors import InputError

VIEWPORT = (1280, 800)
OFFLINE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
TIMEOUT_S = 120.0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    """What happened while the page was open."""
    console_errors: list[str] = field(default_factory=list)     # console.error, uncaught exceptions, log errors
    requests: list[str] = field(default_factory=list)           # every URL the page asked for
    screenshots: dict[str, bytes] = field(default_factory=dict)

    @property
    def network_requests(self) -> list[str]:
        """Requests that would leave the machine (anything but the page's own file, data, blob URLs)."""
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class _DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe."""

    def __init__(self, binary: str, profile: str):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds() -> None:
            # Chromium reads commands on fd 3 and writes replies and events on fd 4. Move both ends
            # above 10 first so that placing one cannot overwrite the other; dup2 makes 3 and 4
            # inheritable, every other descriptor of ours is close-on-exec (PEP 446).
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w)]
            for target, fd in zip((3, 4), high):
                os.dup2(fd, target)

        self.proc = subprocess.Popen(
            [binary, *OFFLINE_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT_S) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            # wait for data with the deadline: a read alone would block for as long as chromium stays quiet
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)


def visit(page: str | os.PathLike, element_selectors: dict[str, str] | None = None,
          viewport: tuple[int, int] = VIEWPORT) -> PageVisit:
    """Open ``page`` offline at ``viewport``; screenshot the first screen (``"first-screen"``) and each
    element of ``element_selectors`` (name -> CSS selector of the first match), once every plotly
    figure has drawn."""
    binary = chromium()
    if binary is None:
        raise InputError("chromium not found (Debian: apt-get install -y chromium)")
    page = Path(page).resolve()
    if not page.is_file():
        raise InputError(f"{page}: no such page")
    result = PageVisit()
    with tempfile.TemporaryDirectory(prefix="sparsesim-chromium-") as profile:
        tools = _DevTools(binary, profile)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable", session=session)
            width, height = viewport
            tools.send("Emulation.setDeviceMetricsOverride",
                       {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            tools.events.clear()
            tools.send("Page.navigate", {"url": page.as_uri()}, session=session)
            tools.wait_for("Page.loadEventFired")
            _wait_for_plots(tools, session)
            result.screenshots["first-screen"] = _capture(tools, session, None)
            for name, selector in (element_selectors or {}).items():
                result.screenshots[name] = _capture(tools, session, selector)
        finally:
            tools.close()
    for event in tools.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            words = (str(a.get("value", a.get("description", ""))) for a in params["args"])
            result.console_errors.append(" ".join(words))
        elif method == "Runtime.exceptionThrown":
            result.console_errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.console_errors.append(params["entry"].get("text", ""))
    return result


def _evaluate(tools: _DevTools, session: str, expression: str) -> Any:
    reply = tools.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
    return reply["result"].get("value")


def _wait_for_plots(tools: _DevTools, session: str, timeout: float = TIMEOUT_S) -> None:
    """Until every plotly div has its SVG (plotly draws after the load event)."""
    drawn = ("(() => { const d = document.querySelectorAll('.plotly-graph-div');"
             " return [...d].every(x => x.querySelector('.main-svg')); })()")
    deadline = time.monotonic() + timeout
    while not _evaluate(tools, session, drawn):
        if time.monotonic() > deadline:
            raise TimeoutError("the page's figures did not draw")
        time.sleep(0.1)


def _capture(tools: _DevTools, session: str, selector: str | None) -> bytes:
    params: dict[str, Any] = {"format": "png"}
    if selector is not None:
        box = _evaluate(tools, session, f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; const r = e.getBoundingClientRect();
            return {{x: r.left + window.scrollX, y: r.top + window.scrollY,
                     width: r.width, height: r.height}}; }})()""")
        if box is None:
            raise InputError(f"no element matches {selector!r}")
        params.update(clip={**box, "scale": 1}, captureBeyondViewport=True)
    return base64.b64decode(tools.send("Page.captureScreenshot", params, session=session)["data"])


# The docs' screenshots: the verdict (first screen) and the first device section's time chart.
DOC_SHOTS = {"report-device": "h2[id^='device-'] ~ div .plotly-graph-div"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsesim.experiments.browser",
                                     description="Screenshots of a report for the docs, taken offline in headless "
                                                 "Chromium (fails on console errors or network requests).")
    parser.add_argument("page", help="the report, e.g. demo/report.html")
    parser.add_argument("-o", "--out", default="docs", help="directory for report-first-screen.png and "
                                                            "report-device.png (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        seen = visit(args.page, DOC_SHOTS)
        problems = seen.console_errors + [f"network request: {u}" for u in seen.network_requests]
        if problems:
            raise InputError(f"{args.page}: " + "; ".join(problems))
    except InputError as e:
        print(f"sparsesim: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in seen.screenshots.items():
        path = out / f"report-{name}.png" if not name.startswith("report-") else out / f"{name}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
