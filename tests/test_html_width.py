"""Every HTML e-mail reads without sideways scrolling on a phone (375 px) and at 600 px.

The HTML parts come from what `cpmail demo` writes (every event, then again as
digests), plus the messages the demo does not send (failure summary, the
scheduled cash flow), rendered by cpmail's own renderer. Each is laid out by a
real headless Chromium in frames 375 and 600 px wide; a page whose scroll width
is larger than its frame fails.
"""

from __future__ import annotations

import datetime as dt
import html as htmllib
import json
import os
import re
import shutil
import subprocess
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from cpmail.render import Renderer, template_names
from tests.conftest import Cli

WIDTHS = (375, 600)
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`apt-get install -y chromium`); .ci/run installs it",
)


def _html_parts(folder: Path) -> dict[str, str]:
    """Event (and a number) -> the HTML part, for every .eml in ``folder``."""
    out: dict[str, str] = {}
    for f in sorted(folder.glob("*.eml")):
        m = message_from_bytes(f.read_bytes(), policy=policy.default)
        assert isinstance(m, EmailMessage)
        part = m.get_body(preferencelist=("html",))
        if part is None:
            continue
        event = str(m["X-Cpmail-Event"])
        n = sum(1 for k in out if k.split("#")[0] == event)
        out[f"{event}#{n}"] = str(part.get_content())
    return out


def _demo(cli: Cli, home: Path, *settings: tuple[str, str]) -> dict[str, str]:
    assert cli("init").exit_code == 0
    for key, value in settings:
        assert cli("config", "set", key, value).exit_code == 0
    r = cli("demo", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    return _html_parts(home / "mail")


def _rendered(home: Path) -> dict[str, str]:
    """The messages the demo does not send, rendered as `check` renders them."""
    r = Renderer(
        home,
        {
            "agency": {"name": "Northwind Creative", "address": ""},
            "run_date": dt.date(2026, 11, 24),
            "prefix": "[C&P]",
        },
    )
    me = {"name": "Kate Morgan", "staff_id": "KM", "address": "kate.morgan@northwind.example"}
    long_subject = "Billing 10234 created for Acme Foods International Holdings: 12,500.00"
    failures = [
        {
            "subject": f"[C&P] {long_subject}",
            "to": "a.very.long.address.of.somebody@clients-of-northwind.example",
            "error": "550 5.1.1 <a.very.long.address.of.somebody@clients-of-northwind.example>: "
            "Recipient address rejected: User unknown in virtual mailbox table",
        }
    ]
    out = {}
    out["failure-summary#0"] = r.render(
        "failure-summary",
        {
            "event": "failure-summary",
            "count": 1,
            "host": "a-rather-long-host-name.northwind.example",
            "failures": failures,
            "recipient": me,
        },
    )[2]
    report = {
        "label": "Cash flow report as of 2026-11-24",
        "as_of": dt.date(2026, 11, 24),
        "filename": "cash-flow-2026-11-24.pdf",
        "cash": "1,234,567.89",
        "receivable": "98,765.43",
        "payable": "12,345.67",
        "net": "1,320,987.65",
    }
    out["cash-flow#0"] = r.message("cash-flow", [{"report": report, "staff": {}}], me)[2]
    return out


def _measure(pages: dict[str, str], tmp: Path) -> dict[str, dict[int, int]]:
    """Lay out every page in frames of each width; return its scroll width in each."""
    frames = []
    for i, (name, page) in enumerate(pages.items()):
        for w in WIDTHS:
            frames.append(
                f'<iframe id="f{i}-{w}" data-name="{htmllib.escape(name)}" data-width="{w}" '
                f'width="{w}" height="900" style="border:0;display:block" '
                f'srcdoc="{htmllib.escape(page)}"></iframe>'
            )
    script = """
<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("iframe").forEach(function (f) {
    var d = f.contentDocument;
    out.push([f.dataset.name, +f.dataset.width,
              Math.max(d.documentElement.scrollWidth, d.body ? d.body.scrollWidth : 0)]);
  });
  var pre = document.createElement("pre");
  pre.id = "result";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
    doc = tmp / "widths.html"
    doc.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body style='margin:0'>"
        + "".join(frames)
        + script
        + "</body></html>",
        encoding="utf-8",
    )
    profile = tmp / "chromium-profile"
    assert CHROMIUM is not None
    env = {**os.environ, "HOME": str(tmp)}
    done = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1200,900",
            "--virtual-time-budget=10000",
            "--dump-dom",
            doc.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    m = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, flags=re.S)
    assert m is not None, f"chromium printed no result: {done.stderr[-2000:]}"
    result: dict[str, dict[int, int]] = {}
    for name, width, scroll in json.loads(htmllib.unescape(m.group(1))):
        result.setdefault(name, {})[width] = scroll
    return result


def test_every_html_message_fits_375_and_600_px(cli: Cli, home: Path, tmp_path: Path) -> None:
    pages = _demo(cli, home)
    pages.update({f"digest-on:{k}": v for k, v in _digest_pages(tmp_path).items()})
    pages.update(_rendered(home))
    events = {k.split("#")[0].removeprefix("digest-on:") for k in pages}
    built_in = {
        Path(n).stem
        for n in template_names()
        if n.startswith("email/") and n.endswith(".html") and not Path(n).stem.startswith(("_",))
    }
    assert built_in - {"base"} <= events, f"not looked at: {built_in - {'base'} - events}"
    widths = _measure(pages, tmp_path)
    assert set(widths) == set(pages)
    too_wide = {name: {w: s for w, s in ws.items() if s > w} for name, ws in widths.items()}
    too_wide = {k: v for k, v in too_wide.items() if v}
    assert not too_wide, f"scroll width larger than the frame: {too_wide}"


def _digest_pages(tmp: Path) -> dict[str, str]:
    home = tmp / "digest-home"
    return _demo(Cli(home), home, ("mail.digest", "true"))


def test_a_too_wide_page_is_caught(tmp_path: Path) -> None:
    """The measurement itself: a 500 px table overflows 375 px and fits 600 px."""
    page = (
        "<!DOCTYPE html><html><head><meta name='viewport' content='width=device-width'></head>"
        "<body style='margin:0'><table width='500'><tr><td>x</td></tr></table></body></html>"
    )
    widths = _measure({"wide": page}, tmp_path)
    assert widths["wide"][375] >= 500 and widths["wide"][600] <= 600
