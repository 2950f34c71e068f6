"""Open a report in headless Chromium and say what a reader would see (used by the test suite).

Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so nothing beyond the standard
library and Debian's ``chromium`` is needed.  :func:`check_page` loads a file, collects every
uncaught exception, ``console.error`` and browser log error (a broken image or a refused resource
logs one), then reads back each image's ``naturalWidth``, each table's header and the page's
width at the window size given (1280 px by default: the narrowest laptop a report must fit).

The flags are the ones this project's machines need for a browser with no network and no screen:
headless, no sandbox (tests may run as root), no GPU, no background or component updates, and a
fresh profile per call.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: executables tried, in order, by :func:`find_chromium`
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe")

#: what the page reports about itself once loaded (evaluated in the page)
_PROBE = """JSON.stringify({
  title: document.title,
  images: Array.from(document.images).map(i => ({alt: i.alt, width: i.naturalWidth, complete: i.complete})),
  tables: Array.from(document.querySelectorAll('table')).map(t =>
    Array.from(t.querySelectorAll('thead th, tr:first-child th')).map(h => h.textContent.trim())),
  headings: Array.from(document.querySelectorAll('h1, h2, h3')).map(h => h.textContent.trim()),
  scrollWidth: document.documentElement.scrollWidth,
  viewportWidth: window.innerWidth,
  text: document.body ? document.body.innerText : ''
})"""


def find_chromium() -> str | None:
    """Path of a Chromium executable (``$FLLAB_CHROMIUM`` first), or None when there is none."""
    override = os.environ.get("FLLAB_CHROMIUM")
    if override:
        return override if shutil.which(override) else None
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class PageCheck:
    """What Chromium saw on a page."""

    title: str
    errors: list[str]
    images: list[dict[str, Any]]
    tables: list[list[str]]
    headings: list[str]
    scroll_width: int
    viewport_width: int
    text: str = field(repr=False, default="")

    @property
    def broken_images(self) -> list[str]:
        """Alt texts of the images that did not decode (``naturalWidth`` 0)."""
        return [i["alt"] or "?" for i in self.images if not i["width"]]

    def has_table(self, header: list[str]) -> bool:
        """Whether some table's header starts with ``header``."""
        return any(t[: len(header)] == header for t in self.tables)

    def problems(self, *, tables: list[list[str]] = (), fits: bool = True) -> list[str]:
        """Everything wrong with the page: errors, broken images, a missing table, overflow."""
        found = [f"console error: {e}" for e in self.errors]
        found += [f"image did not load: {alt}" for alt in self.broken_images]
        found += [f"no table with header {h}; tables: {self.tables}" for h in tables if not self.has_table(h)]
        if fits and self.scroll_width > self.viewport_width:
            found.append(f"page is {self.scroll_width} px wide in a {self.viewport_width} px window")
        return found


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe: numbered commands, queued events."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int, deadline: float):
        self.proc, self.write_fd, self.read_fd, self.deadline = proc, write_fd, read_fd, deadline
        self.buffer, self.events, self.next_id = b"", [], 0

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the debugging pipe (exit code {self.proc.poll()})")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message())

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive in the next ``seconds`` (late errors, image decodes)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                break
            self.buffer += chunk
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                self.events.append(json.loads(raw))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params") or {}
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            found.append((details.get("exception") or {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
    return found


def check_page(path: str | Path, *, width: int = 1280, height: int = 900, timeout: float = 60.0,
               chromium: str | None = None) -> PageCheck:
    """Load ``path`` (an HTML file) in headless Chromium at ``width`` x ``height`` and report what it saw.

    Raises FileNotFoundError when no Chromium is installed, TimeoutError when the page does not
    load within ``timeout`` seconds."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable (apt-get install chromium)")
    url = Path(path).resolve().as_uri()
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()

    def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
        a, b = os.dup(commands_r), os.dup(replies_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    with tempfile.TemporaryDirectory(prefix="fllab-chromium-") as profile:
        proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=child_fds)
        os.close(commands_r)
        os.close(replies_w)
        pipe = _Pipe(proc, commands_w, replies_r, time.monotonic() + timeout)
        try:
            target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.send(f"{domain}.enable", session)
            pipe.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            pipe.send("Page.navigate", session, url=url)
            pipe.wait_for("Page.loadEventFired")
            pipe.drain(0.3)
            probe = pipe.send("Runtime.evaluate", session, expression=_PROBE, returnByValue=True)
            data = json.loads(probe["result"]["value"])
            pipe.drain(0.1)
            try:
                pipe.send("Browser.close")
            except (RuntimeError, OSError):
                pass  # already closing
        finally:
            os.close(commands_w)
            os.close(replies_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return PageCheck(data["title"], _errors(pipe.events), data["images"], data["tables"], data["headings"],
                     int(data["scrollWidth"]), int(data["viewportWidth"]), data["text"])
