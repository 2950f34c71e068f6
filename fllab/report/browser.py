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
import fcntl
import select
import shutil
import signal
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
  overflowing: Array.from(document.querySelectorAll('.table-wrap')).filter(box =>
      box.scrollWidth > box.clientWidth + 1 && box.offsetParent !== null)
    .map(box => Array.from(box.querySelectorAll('th')).slice(0, 3).map(h => h.textContent.trim()).join(' | ')),
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
    overflowing: list[str] = field(default_factory=list)
    text: str = field(repr=False, default="")

    @property
    def broken_images(self) -> list[str]:
        """Alt texts of the images that did not decode (``naturalWidth`` 0)."""
        return [i["alt"] or "?" for i in self.images if not i["width"]]

    def has_table(self, header: list[str]) -> bool:
        """Whether some table's header starts with ``header``."""
        return any(t[: len(header)] == header for t in self.tables)

    def problems(self, *, tables: list[list[str]] = (), fits: bool = True) -> list[str]:
        """Everything wrong with the page: errors, broken images, a missing table, a page or a
        visible table wider than the window (tables inside closed ``<details>`` are not seen)."""
        found = [f"console error: {e}" for e in self.errors]
        found += [f"image did not load: {alt}" for alt in self.broken_images]
        found += [f"no table with header {h}; tables: {self.tables}" for h in tables if not self.has_table(h)]
        if fits and self.scroll_width > self.viewport_width:
            found.append(f"page is {self.scroll_width} px wide in a {self.viewport_width} px window")
        if fits:
            found += [f"table overflows its box (scrolls sideways): {h}" for h in self.overflowing]
        return found


class _Process:
    """The spawned browser: its exit code, and a stop that waits, then kills."""

    def __init__(self, pid: int):
        self.pid, self.code = pid, None

    def poll(self) -> int | None:
        if self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def stop(self, grace: float) -> None:
        end = time.monotonic() + grace
        while self.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe: numbered commands, queued events."""

    def __init__(self, proc: _Process, write_fd: int, read_fd: int, deadline: float):
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
               chromium: str | None = None, attempts: int = 2) -> PageCheck:
    """Load ``path`` (an HTML file) in headless Chromium at ``width`` x ``height`` and report what it saw.

    A browser that dies before answering (it happens on a loaded machine) is started again, up to
    ``attempts`` times in all.  Raises FileNotFoundError when no Chromium is installed,
    TimeoutError when the page does not load within ``timeout`` seconds, RuntimeError (with the end
    of Chromium's own log) when it keeps dying."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable (apt-get install chromium)")
    for attempt in range(attempts):
        try:
            return _check_once(exe, Path(path).resolve().as_uri(), width, height, timeout)
        except _BrowserDied:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class _BrowserDied(RuntimeError):
    """Chromium closed its pipe or exited before the page was checked."""


def _check_once(exe: str, url: str, width: int, height: int, timeout: float) -> PageCheck:
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    # Chromium reads commands on fd 3 and writes replies on fd 4.  posix_spawn maps them there
    # without running Python in the child (a preexec hook is unsafe once torch has started threads);
    # the ends are first moved above 9 so that mapping one cannot overwrite the other.
    child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_r, replies_w))
    os.close(commands_r)
    os.close(replies_w)
    with tempfile.TemporaryDirectory(prefix="fllab-chromium-") as profile:
        log = os.open(Path(profile) / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        argv = [exe, *FLAGS, f"--user-data-dir={profile}/data", f"--window-size={width},{height}", "about:blank"]
        pid = os.posix_spawn(exe if os.path.isabs(exe) else shutil.which(exe), argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
            (os.POSIX_SPAWN_DUP2, child_in, 3), (os.POSIX_SPAWN_DUP2, child_out, 4)])
        for fd in (child_in, child_out, devnull):
            os.close(fd)
        proc = _Process(pid)
        pipe = _Pipe(proc, commands_w, replies_r, time.monotonic() + timeout)
        loaded = False
        try:
            target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.send(f"{domain}.enable", session)
            pipe.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            pipe.send("Page.navigate", session, url=url)
            loaded = True
            pipe.wait_for("Page.loadEventFired")
            pipe.drain(0.3)
            probe = pipe.send("Runtime.evaluate", session, expression=_PROBE, returnByValue=True)
            data = json.loads(probe["result"]["value"])
            pipe.drain(0.1)
            try:
                pipe.send("Browser.close")
            except (RuntimeError, OSError):
                pass  # already closing
        except (OSError, RuntimeError) as err:
            if isinstance(err, TimeoutError) or loaded:
                raise
            tail = (Path(profile) / "chromium.log").read_bytes()[-2000:].decode(errors="replace")
            raise _BrowserDied(f"chromium died before loading the page ({err}); its log ends:\n{tail}") from err
        finally:
            os.close(commands_w)
            os.close(replies_r)
            proc.stop(grace=10.0)
            os.close(log)
    return PageCheck(data["title"], _errors(pipe.events), data["images"], data["tables"], data["headings"],
                     int(data["scrollWidth"]), int(data["viewportWidth"]), data["overflowing"], data["text"])
