"""A small Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no dependencies).

With ``--remote-debugging-pipe`` Chromium reads commands on file descriptor 3 and writes replies and
events on file descriptor 4, each message a JSON object followed by a NUL byte. ``subprocess``'s
``pass_fds`` keeps descriptor numbers (and closes everything else *after* a ``preexec_fn``), so the
two pipe ends are handed to the child as its stdin and stdout and a ``/bin/sh`` trampoline moves them
to 3 and 4 before it ``exec``s the browser (stdin and stdout then become ``/dev/null``).

Every wait has a timeout and the whole session an overall deadline, so a hung browser fails a test
instead of hanging it; the browser's process group is always killed on exit.

    with Chromium("/usr/bin/chromium") as browser:
        page = browser.open(report.as_uri())
        assert page.problems() == []
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

JSON = dict[str, Any]

#: flags for a quiet, offline, reproducible headless browser
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--remote-debugging-pipe",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)

#: moves stdin/stdout to descriptors 3/4 and execs the browser ("$0" is the executable)
_TRAMPOLINE = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null'


class CDPError(RuntimeError):
    """The browser answered with an error, died, or did not answer in time."""


class Chromium:
    """A headless Chromium driven over its DevTools pipe; use as a context manager."""

    def __init__(
        self,
        executable: str,
        *,
        deadline_s: float = 120.0,
        window: tuple[int, int] = (1300, 2000),
        stderr: Path | None = None,
    ) -> None:
        self.executable = executable
        self.deadline = time.monotonic() + deadline_s
        self.window = window
        self.stderr_path = stderr
        #: every event received, in order: (method, params, sessionId or None)
        self.events: list[tuple[str, JSON, str | None]] = []
        self._next_id = 0
        self._replies: dict[int, JSON] = {}
        self._pending: list[bytes] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._write_fd = -1
        self._read_fd = -1

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Chromium:
        try:
            self._launch()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _launch(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="cdp-profile-", ignore_cleanup_errors=True)
        width, height = self.window
        args = [
            "/bin/sh",
            "-c",
            _TRAMPOLINE,
            self.executable,
            *FLAGS,
            f"--window-size={width},{height}",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
        ]
        to_browser_r, self._write_fd = os.pipe()
        self._read_fd, from_browser_w = os.pipe()
        err = open(self.stderr_path, "wb") if self.stderr_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=to_browser_r,
                stdout=from_browser_w,
                stderr=err,
                start_new_session=True,  # its own process group, killed as a whole in close()
            )
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
            if not isinstance(err, int):
                err.close()
        self.call("Browser.getVersion", timeout=30)

    def close(self) -> None:
        """Ask the browser to quit, then kill its process group whatever happened; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None and self._write_fd >= 0:
                try:
                    self._send("Browser.close", {}, None)
                    proc.wait(timeout=5)
                except (CDPError, OSError, subprocess.TimeoutExpired):
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group this session started: renderers too
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for fd in (self._write_fd, self._read_fd):
            if fd >= 0:
                os.close(fd)
        self._write_fd = self._read_fd = -1
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    # ------------------------------------------------------------------ protocol

    def call(
        self, method: str, params: JSON | None = None, *, session: str | None = None, timeout: float = 30.0
    ) -> JSON:
        """Send a command and wait for its reply's ``result``; :class:`CDPError` on an error reply."""
        msg_id = self._send(method, params or {}, session)
        until = self._until(timeout)
        while msg_id not in self._replies:
            self._pump(until, f"the reply to {method}")
        reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        result: JSON = reply.get("result", {})
        return result

    def wait_for(
        self,
        method: str,
        *,
        session: str | None = None,
        where: Callable[[JSON], bool] | None = None,
        start: int = 0,
        timeout: float = 30.0,
    ) -> JSON:
        """The params of the first event ``method`` (of ``session``) from ``self.events[start:]`` on."""
        until = self._until(timeout)
        seen = start
        while True:
            for name, params, sid in self.events[seen:]:
                if name == method and sid == session and (where is None or where(params)):
                    return params
            seen = len(self.events)
            self._pump(until, f"event {method}")

    def open(self, url: str, *, timeout: float = 60.0) -> Page:
        """A new tab with Runtime, Log, Network and Page enabled, navigated to ``url`` and loaded."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Network", "Page"):
            page.call(f"{domain}.enable")
        mark = len(self.events)
        nav = page.call("Page.navigate", {"url": url}, timeout=timeout)
        if nav.get("errorText"):
            raise CDPError(f"navigating to {url}: {nav['errorText']}")
        self.wait_for("Page.loadEventFired", session=session, start=mark, timeout=timeout)
        page.settle()
        return page

    def drain(self) -> None:
        """Read whatever the browser has already sent, without waiting."""
        while self._read_some(0):
            pass

    def _until(self, timeout: float) -> float:
        return min(time.monotonic() + timeout, self.deadline)

    def _send(self, method: str, params: JSON, session: str | None) -> int:
        self._next_id += 1
        msg: JSON = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._write_fd, data) :]
        except BrokenPipeError as e:
            raise CDPError(
                f"the browser is gone (exit status {self._exit_status()}), sending {method}"
            ) from e
        return self._next_id

    def _exit_status(self) -> int | None:
        if self._proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=2)  # it is closing: give it a moment to say how it ended
        return self._proc.returncode

    def _pump(self, until: float, what: str) -> None:
        """Read at least one chunk before ``until``, else :class:`CDPError`."""
        while not self._read_some(until - time.monotonic()):
            if time.monotonic() >= until:
                raise CDPError(f"timed out waiting for {what}")

    def _read_some(self, timeout: float) -> bool:
        """Read one chunk if any arrives within ``timeout`` seconds and file its complete messages."""
        ready, _, _ = select.select([self._read_fd], [], [], max(timeout, 0.0))
        if not ready:
            return False
        chunk = os.read(self._read_fd, 1 << 20)
        if not chunk:
            raise CDPError(f"the browser closed its DevTools pipe (exit status {self._exit_status()})")
        self._pending.append(chunk)
        if b"\0" not in chunk:  # a large message (a screenshot) comes in many chunks: join once
            return True
        *messages, rest = b"".join(self._pending).split(b"\0")
        self._pending = [rest]
        for raw in messages:
            msg = json.loads(raw)
            if "id" in msg:
                self._replies[msg["id"]] = msg
            else:
                self.events.append((msg["method"], msg.get("params", {}), msg.get("sessionId")))
        return True


class Page:
    """One attached tab (a flattened session)."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: JSON | None = None, *, timeout: float = 30.0) -> JSON:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str, *, timeout: float = 30.0) -> Any:
        """The JSON value of ``expression`` (promises awaited); :class:`CDPError` if it throws."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression!r} threw: {_describe_exception(details)}")
        return result["result"].get("value")

    def settle(self) -> None:
        """Wait until the page has painted a frame and run its pending tasks, then read the events."""
        self.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")
        self.browser.drain()

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        shot = self.call("Page.captureScreenshot", {"format": "png"}, timeout=60)
        return base64.b64decode(shot["data"])

    def _events(self) -> list[tuple[str, JSON]]:
        return [(name, params) for name, params, sid in self.browser.events if sid == self.session]

    def requests(self) -> list[str]:
        """The URL of every request the page made (Network.requestWillBeSent), in order."""
        return [p["request"]["url"] for name, p in self._events() if name == "Network.requestWillBeSent"]

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and assertions, error log entries and failed loads."""
        urls: dict[str, str] = {}
        found: list[str] = []
        for name, p in self._events():
            if name == "Network.requestWillBeSent":
                urls[p["requestId"]] = p["request"]["url"]
            elif name == "Runtime.exceptionThrown":
                found.append(f"exception: {_describe_exception(p['exceptionDetails'])}")
            elif name == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                found.append(f"console.{p['type']}: {args}")
            elif name == "Log.entryAdded" and p["entry"]["level"] == "error":
                entry = p["entry"]
                found.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}".rstrip())
            elif name == "Network.loadingFailed":
                url = urls.get(p["requestId"], "?")
                found.append(f"failed load: {url[:200]}: {p.get('errorText', '')}")
        return found


def _describe_exception(details: JSON) -> str:
    exc = details.get("exception", {})
    text = exc.get("description") or details.get("text", "")
    return f"{text} (line {details.get('lineNumber')}, column {details.get('columnNumber')})"
