"""Opening a report page in headless Chromium (for tests and the README screenshot); installs nothing.

Chromium's own command-line modes are enough, so no driver package is needed: a copy of the page with a
probe script (console errors, uncaught errors, failed images, each figure's rendered size) is loaded with
``--dump-dom`` under a virtual-time budget, and the probe's JSON is read back from the dumped DOM; console
messages Chromium logs to stderr are read too. ``--screenshot`` takes the picture.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)

_PROBE_HEAD = """<script>(function(){window.__errors=[];
var ce=console.error;console.error=function(){
 window.__errors.push('console.error: '+Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};
window.addEventListener('error',function(e){
 window.__errors.push('error: '+(e.message||(e.target&&e.target.outerHTML||'').slice(0,120)));},true);
})();</script>"""
_PROBE_TAIL = """<script>window.addEventListener('load',function(){
var figs=[].map.call(document.querySelectorAll('figure'),function(f){
 var s=f.querySelector('svg'),r=s?s.getBoundingClientRect():{width:0,height:0},im=f.querySelector('image');
 var st=s?getComputedStyle(s):null;
 return {id:f.id,width:r.width,height:r.height,visible:!!st&&st.display!=='none'&&st.visibility!=='hidden',
         png:!!im&&(im.getAttribute('href')||'').indexOf('data:image/png;base64,')===0,
         cells:f.querySelectorAll('rect.cell').length};});
var pending=figs.length,loaded={};
function done(){var p=document.createElement('pre');p.id='__probe';
 p.textContent=JSON.stringify({errors:window.__errors,figures:figs,decoded:loaded,title:document.title});document.body.appendChild(p);}
if(!pending){done();return;}
[].forEach.call(document.querySelectorAll('figure'),function(f){var im=f.querySelector('image');var img=new Image();
 img.onload=function(){loaded[f.id]=img.naturalWidth;if(--pending===0)done();};
 img.onerror=function(){loaded[f.id]=0;if(--pending===0)done();};img.src=im?im.getAttribute('href'):'';});
});</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium binary (``/usr/bin/chromium`` or on PATH), or None."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="jaxmech-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def check_page(page: str | Path, *, chromium: str | None = None, timeout: float = 90) -> dict:
    """Loads a page with a probe and reports what the browser saw.

    Args:
        page: The report.html.
        chromium: Browser binary (default: `find_chromium`).
        timeout: Seconds before giving up.

    Returns:
        ``{"errors": [...], "console": [stderr console lines], "figures": [{id, width, height, visible,
        png, cells}], "decoded": {id: natural width of the embedded PNG}, "title": ...}``.

    Raises:
        FileNotFoundError: If there is no browser or no page.
        RuntimeError: If the probe result is missing from the dumped DOM.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary (apt-get install chromium)")
    page = Path(page)
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such page")
    text = page.read_text(encoding="utf-8")
    probed = text.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_TAIL + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="jaxmech-probe-") as tmp:
        copy = Path(tmp) / "probe.html"
        copy.write_text(probed, encoding="utf-8")
        res = _run(
            chromium,
            ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom", copy.as_uri()],
            timeout,
        )
    m = re.search(r'<pre id="__probe">(.*?)</pre>', res.stdout, re.S)
    if not m:
        raise RuntimeError(
            f"{page}: the browser gave no probe result (exit {res.returncode}; stderr tail: {res.stderr[-400:]!r})"
        )
    import html as _html

    out = json.loads(_html.unescape(m.group(1)))
    out["console"] = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    return out


def screenshot(
    page: str | Path,
    out: str | Path,
    *,
    width: int = 1280,
    height: int = 1600,
    chromium: str | None = None,
    timeout: float = 90,
) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of the page.

    Raises:
        FileNotFoundError: If there is no browser.
        RuntimeError: If no screenshot was written.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary (apt-get install chromium)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    res = _run(
        chromium,
        [
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            f"--screenshot={out}",
            Path(page).resolve().as_uri(),
        ],
        timeout,
    )
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-400:]}")
    return out
