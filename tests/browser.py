"""Load an HTML page in headless Chromium and report what a reader would see: console errors,
images that did not decode, plots that drew nothing, requests that left the page.

    report = check_page(run / "report.html")          # one browser per call, or
    with Browser() as b: report = b.check(path)       # one browser for many pages
    assert not report.problems(), report.problems()

How: the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages ended by a
NUL byte on file descriptors 3 and 4 of the browser), against the system's Chromium binary.
Chosen over the alternatives because it needs nothing but the standard library:

- a websocket client (``websocket-client``) against ``--remote-debugging-port`` needs a
  dependency, a TCP port, and polling ``DevToolsActivePort`` until the browser is up; with a
  pipe the first command is simply answered once the browser is ready, no port is opened, and
  the browser exits by itself when this process dies (its end of the pipe closes);
- Playwright (a ~40 MB wheel with a bundled Node.js driver) is supported only with the
  browser build it pins; driving Debian's Chromium through ``executable_path`` works while the
  two versions happen to agree, and its usual install step downloads browsers.

What is captured, per page (its own tab, closed afterwards): ``Runtime.exceptionThrown``
(uncaught JS errors), ``Runtime.consoleAPICalled`` of type error/assert, ``Log.entryAdded``
at level error (the browser's own messages: failed loads, CSP violations, ...),
``Network.loadingFailed``, and every request that is not a ``data:`` URI or the page itself
(the reports are meant to be self-contained). After the load event and a short settle time,
one ``Runtime.evaluate`` reads the title, the h1-h3 headings, every ``<img>`` (ok when
``complete && naturalWidth > 0``) and every outermost ``<svg>`` (ok when its box on the page
and the box of what it draws are non-empty).

The binary is ``$MEMLENS_CHROMIUM`` if set, else the first of chromium, chromium-browser,
google-chrome(-stable) on PATH; :func:`find_chromium` returns None when there is none (tests
skip). The sandbox is off (``--no-sandbox``): CI runs as root in containers, where Chromium's
sandbox cannot start, and the pages loaded are local files this test suite wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SKIP_REASON = (
    "no Chromium binary (apt-get install chromium, or set MEMLENS_CHROMIUM to a Chrome/Chromium)"
)

_FLAGS = (
    "--headless=new",
    "--remote-debugging-pipe",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--mute-audio",
    "--window-size=1280,1024",
)

# Read in the page after load: plain data only (returnByValue).
_INSPECT = """(async () => {
  await Promise.all(Array.from(document.images, i => i.decode().catch(() => null)));
  const svgs = Array.from(document.querySelectorAll('svg'))
    .filter(s => !(s.parentElement && s.parentElement.closest('svg')));
  return {
    title: document.title,
    headings: Array.from(document.querySelectorAll('h1,h2,h3'), h => h.textContent.trim()),
    images: Array.from(document.images, i => [i.getAttribute('src') || '',
                                             i.complete && i.naturalWidth > 0]),
    svgs: svgs.map(s => {
      const r = s.getBoundingClientRect();
      let b = {width: 0, height: 0};
      try { b = s.getBBox(); } catch (e) {}
      return [s.getAttribute('aria-label') || '',
              r.width > 0 && r.height > 0 && (b.width > 0 || b.height > 0)];
    }),
  };
})()"""


def find_chromium() -> str | None:
    """The Chromium/Chrome executable to use, or None."""
    env = os.environ.get("MEMLENS_CHROMIUM")
    if env:
        return shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What one page showed. ``images``/``svgs``: (src prefix or aria-label, rendered ok)."""

    url: str
    title: str = ""
    headings: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    images: list[tuple[str, bool]] = field(default_factory=list)
    svgs: list[tuple[str, bool]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # URLs other than data: and the page

    @property
    def svg_count(self) -> int:
        return len(self.svgs)

    def problems(self) -> list[str]:
        """Everything a reader would notice as broken; empty for a good page."""
        out = [f"console: {m}" for m in self.console_errors]
        out += [f"image did not render: {src}" for src, ok in self.images if not ok]
        out += [
            f"svg drew nothing: {label or '(no aria-label)'}" for label, ok in self.svgs if not ok
        ]
        out += [f"request outside the page: {u}" for u in self.requests]
        return out


def assert_page_ok(
    report: PageReport, *, title: str | None = None, headings: tuple[str, ...] = (),
    min_images: int = 0, min_svgs: int = 0,
) -> None:  # fmt: skip
    """No problems, the title, each heading as a prefix of some h1-h3, and at least
    ``min_images`` images and ``min_svgs`` plots."""
    assert not report.problems(), "\n".join(report.problems())
    if title is not None:
        assert report.title == title
    for h in headings:
        assert any(x.startswith(h) for x in report.headings), (h, report.headings)
    assert len(report.images) >= min_images, report.images
    assert report.svg_count >= min_svgs, report.svgs


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium driven over the DevTools pipe; each :meth:`check` opens a tab."""

    def __init__(self, executable: str | None = None, *, timeout_s: float = 60.0) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError(SKIP_REASON)
        bash = shutil.which("bash")
        if bash is None:  # POSIX sh cannot redirect descriptors above 9
            raise FileNotFoundError("bash is needed to hand Chromium its DevTools pipe")
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="memlens-chromium-")
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        to_browser_r, self._wfd = os.pipe()
        self._rfd, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _above_9(to_browser_r), _above_9(from_browser_w)
        # fd 3: commands in, fd 4: responses and events out (Chromium's pipe convention)
        script = (f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
                  f"{to_browser_r}<&- {from_browser_w}>&-")  # fmt: skip
        argv = [exe, *_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"]
        try:
            self._proc = subprocess.Popen(
                [bash, "-c", script, "chromium", *argv], stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT,
                pass_fds=(to_browser_r, from_browser_w),
            )  # fmt: skip
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.version = self.call("Browser.getVersion")["product"]

    # -- protocol ------------------------------------------------------------------------------

    def _read(self, deadline: float) -> bool:
        """Read what is available into the buffer; False at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._rfd], [], [], left)[0]:
            return False
        chunk = os.read(self._rfd, 1 << 20)
        if not chunk:
            raise CdpError(f"Chromium closed the DevTools pipe\n{self.log_tail()}")
        self._buf += chunk
        return True

    def _messages(self, deadline: float) -> Any:
        """Yield messages until the deadline."""
        while True:
            while b"\0" not in self._buf:
                if not self._read(deadline):
                    return
            raw, self._buf = self._buf.split(b"\0", 1)
            yield json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Send one command and wait for its result (events seen meanwhile are kept)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._wfd, data) :]
        for m in self._messages(time.monotonic() + self.timeout_s):
            if m.get("id") == self._next_id:
                if "error" in m:
                    raise CdpError(f"{method}: {m['error']}")
                return dict(m.get("result", {}))
            if "method" in m:
                self.events.append(m)
        raise CdpError(f"{method}: no answer in {self.timeout_s:g} s\n{self.log_tail()}")

    def pump(self, seconds: float, until: Any = None) -> bool:
        """Collect events for ``seconds``, or until ``until(event)`` is true (then True)."""
        for m in self._messages(time.monotonic() + seconds):
            if "method" in m:
                self.events.append(m)
                if until is not None and until(m):
                    return True
        return False

    # -- pages ---------------------------------------------------------------------------------

    def check(self, path: str | Path, *, settle_s: float = 0.3) -> PageReport:
        """Load ``path`` (a local file) in a fresh tab and report on it."""
        url = Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                self.call(f"{domain}.enable", session=session)
            first = len(self.events)
            nav = self.call("Page.navigate", {"url": url}, session=session)
            if nav.get("errorText"):
                raise CdpError(f"navigating to {url}: {nav['errorText']}")
            committed = False

            def loaded(m: dict[str, Any]) -> bool:  # the load event of the new document
                nonlocal committed
                if m.get("sessionId") != session:
                    return False
                p = m.get("params", {})
                if m["method"] == "Page.frameNavigated" and "parentId" not in p.get("frame", {}):
                    committed = p["frame"].get("url", "").startswith("file:")
                return committed and m["method"] == "Page.loadEventFired"

            # events that came in while waiting for the navigate call count too
            if not any(loaded(m) for m in self.events[first:]) and not self.pump(
                self.timeout_s, loaded
            ):
                raise CdpError(f"{url}: no load event in {self.timeout_s:g} s")
            self.pump(settle_s)  # late errors (timers, decoding)
            res = self.call(
                "Runtime.evaluate",
                {"expression": _INSPECT, "awaitPromise": True, "returnByValue": True},
                session=session,
            )
            if "exceptionDetails" in res:
                raise CdpError(f"inspecting {url}: {res['exceptionDetails']}")
            self.pump(0.05)
            report = _report(url, res["result"]["value"])
            events = [m for m in self.events[first:] if m.get("sessionId") == session]
            report.console_errors, report.requests = _errors(events, url)
            return report
        finally:
            self.events.clear()
            self.call("Target.closeTarget", {"targetId": target})

    # -- lifetime ------------------------------------------------------------------------------

    def log_tail(self, n: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(CdpError, OSError):
                self.call("Browser.close")
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        self._profile.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()


def _above_9(fd: int) -> int:
    """``fd`` moved to a number above 9 (close-on-exec), so that the redirections to 3 and 4
    cannot overwrite another of the descriptors being moved."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _report(url: str, value: dict[str, Any]) -> PageReport:
    return PageReport(
        url=url,
        title=str(value["title"]),
        headings=[str(h) for h in value["headings"]],
        images=[(str(src)[:60], bool(ok)) for src, ok in value["images"]],
        svgs=[(str(label), bool(ok)) for label, ok in value["svgs"]],
    )


def _errors(events: list[dict[str, Any]], url: str) -> tuple[list[str], list[str]]:
    """(error messages, requests other than data: URIs and the page) from a tab's events."""
    errors: list[str] = []
    requests: list[str] = []
    urls: dict[str, str] = {}  # requestId -> URL
    for m in events:
        p = m.get("params", {})
        method = m["method"]
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            desc = d.get("exception", {}).get("description") or d.get("text", "")
            errors.append(f"uncaught exception: {desc}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            errors.append(f"console.{p['type']}: {args}")
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            e = p["entry"]
            errors.append(f"{e.get('source', 'log')}: {e.get('text', '')}")
        elif method == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            urls[p.get("requestId", "")] = u
            if not u.startswith("data:") and u != url:
                requests.append(u[:200])
        elif method == "Network.loadingFailed":
            why = p.get("blockedReason") or p.get("errorText") or "?"
            errors.append(f"load failed ({why}): {urls.get(p.get('requestId', ''), '?')[:200]}")
    return errors, requests


def check_page(path: str | Path, *, browser: Browser | None = None) -> PageReport:
    """:meth:`Browser.check` in ``browser``, or in a browser started for this page."""
    if browser is not None:
        return browser.check(path)
    with Browser() as b:
        return b.check(path)
