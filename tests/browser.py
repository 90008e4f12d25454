"""Headless Chromium for tests: load a local page offline, report what rendered, screenshot it.

Tests call :func:`require_chromium` (skips with the reason when no browser is installed) and
:func:`render`. Network access is cut (every host resolves to nothing), so a page that needs
the network shows broken resources.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_SCREENSHOT_HEIGHT = 16000
MARKER_ID = "geoscope-load-check"

# Appended to a copy of the page: after the load event it records, in the DOM that
# --dump-dom prints, how many images there are, which failed to load, and the page height.
PROBE = """<script>
window.addEventListener("load", function () {
  var broken = [];
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (!img.complete || img.naturalWidth === 0) { broken.push(img.getAttribute("src")); }
  }
  var marker = document.createElement("div");
  marker.id = "MARKER_ID";
  marker.setAttribute("data-images", String(document.images.length));
  marker.setAttribute("data-broken", JSON.stringify(broken));
  marker.setAttribute("data-height", String(document.documentElement.scrollHeight));
  document.body.appendChild(marker);
});
</script>""".replace("MARKER_ID", MARKER_ID)


@dataclass
class Rendered:
    """What the browser made of a page."""

    dom: str
    """The document after load, as ``--dump-dom`` prints it."""
    images: int
    broken_images: list[str]
    """``src`` of every image that failed to load (naturalWidth 0)."""
    failed_requests: list[str]
    """Console lines about resources that failed to load."""
    height: int
    screenshot: Path | None


def find_chromium() -> str | None:
    """Path of an installed Chromium or Chrome, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """Path of the browser, or skip the test saying how to get one."""
    found = find_chromium()
    if found is None:
        pytest.skip("needs headless Chromium, which is not installed: enable this test with "
                    "'apt-get install chromium' (as root; CI's .ci/run does it)")
    return found


def _run(
    browser: str, args: list[str], profile: Path, timeout: float
) -> subprocess.CompletedProcess:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def render(page: Path, screenshot: Path | None = None, *, width: int = 1280,
           timeout: float = 90) -> Rendered:
    """Load ``page`` (a local HTML file) headless; optionally save a full-page PNG screenshot."""
    browser = require_chromium()
    page = page.resolve()
    text = page.read_text(encoding="utf-8")
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(text.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="geoscope-chromium-") as profile:
        try:
            done = _run(browser, ["--dump-dom", "--virtual-time-budget=10000",
                                  f"--window-size={width},1000", probe.as_uri()],
                        Path(profile), timeout)
        finally:
            probe.unlink(missing_ok=True)
        match = re.search(rf'<div id="{MARKER_ID}"[^>]*>', done.stdout)
        if match is None:
            raise AssertionError(f"page never finished loading in Chromium: {done.stderr[-2000:]}")
        marker = match.group(0)
        attr = dict(re.findall(r'data-(\w+)="([^"]*)"', marker))
        broken = json.loads(attr["broken"].replace("&quot;", '"'))
        failed = [line for line in done.stderr.splitlines()
                  if "Failed to load resource" in line or "net::ERR_" in line]
        height = int(attr["height"])
        shot = None
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            size = f"{width},{min(max(height, 600), MAX_SCREENSHOT_HEIGHT)}"
            _run(browser, [f"--screenshot={screenshot.resolve()}", f"--window-size={size}",
                           "--hide-scrollbars", "--virtual-time-budget=10000", page.as_uri()],
                 Path(profile), timeout)
            if not screenshot.is_file():
                raise AssertionError(f"Chromium wrote no screenshot to {screenshot}")
            shot = screenshot
    return Rendered(done.stdout, int(attr["images"]), broken, failed, height, shot)


SERVED = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=30000"]
"""Flags for a page of a test server on 127.0.0.1 (every other host is cut off)."""


def drop_script(check: str, report: str, *, before: str = "", seconds: int = 90) -> str:
    """A script for :func:`page_with_photo` that drops the photo on the page once it has loaded, runs ``check`` (which
    sets ``done``) every 50 ms until ``done`` or ``seconds`` have passed, then appends the marker ``read_marker``
    reads, whose attributes ``report`` sets (``marker.setAttribute(...)``); ``before`` runs once, after the drop."""
    return f"""<script>
window.addEventListener("load", async function () {{
  const file = new File([await (await fetch("DATA_URL")).blob()], "photo.jpg", {{type: "image/jpeg"}});
  const files = new DataTransfer();
  files.items.add(file);
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {{dataTransfer: files, bubbles: true}}));
  const started = Date.now();
  {before}
  (function check() {{
    {check}
    if (!done && Date.now() - started < {seconds * 1000}) {{ setTimeout(check, 50); return; }}
    const marker = document.createElement("div");
    marker.id = "MARKER_ID";
    {report}
    document.body.appendChild(marker);
  }})();
}});
</script>"""


def page_with_photo(script: str, photo: Path) -> str:
    """The web page with ``script`` before ``</body>``, its ``DATA_URL`` the photo's bytes and ``MARKER_ID`` the
    marker :func:`read_marker` looks for."""
    import base64

    from geoscope.serve.page import WEB_ASSETS

    url = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode("ascii")
    script = script.replace("DATA_URL", url).replace("MARKER_ID", MARKER_ID)
    return (WEB_ASSETS / "index.html").read_text(encoding="utf-8").replace("</body>", script + "\n</body>")


def read_marker(url: str, profile: Path, *, window: str = "1280,800", timeout: float = 150) -> tuple[dict, str]:
    """Load ``url`` (a page of a server on 127.0.0.1) headless and read the ``data-`` attributes of the marker its
    script appends when done (unescaped), and the document."""
    import html

    done = _run(require_chromium(), ["--dump-dom", f"--window-size={window}", *SERVED, url], profile, timeout)
    marker = re.search(rf'<div id="{MARKER_ID}"[^>]*>', done.stdout)
    if marker is None:
        raise AssertionError(f"the page never finished: {done.stderr[-2000:]}")
    return {k: html.unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', marker.group(0))}, done.stdout
