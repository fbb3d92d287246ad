"""Score every kind of message cpmail sends with SpamAssassin; the target is at most 0.5 each.

    python bench/spam_scores.py [--per-kind N] [--keep DIR]

Builds the demo agency (every event), again with the digest on, then sends a
test message, a report to a client, the messages to the manager and help
desk, and a run where one recipient is refused (for the failure summary,
through a local aiosmtpd server). Each message, as composed, goes through
Debian's ``spamassassin -t -L`` (local tests only, no network); the table
shows the highest score per kind and the rules that scored.

Needs ``spamassassin`` (``apt-get install -y spamassassin``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from email import message_from_bytes, policy
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CPMAIL, need, user_env
from cpmail.settings import EVENTS

DATE = dt.date(2026, 11, 24)
EXPECTED = (
    *EVENTS,
    "digest",
    "failure-summary",
    "cash-flow",
    "test",
    "report",
    "message",
)
TARGET = 0.5


def cpmail(home: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run(
        [CPMAIL, "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=user_env(),
    )
    if r.returncode not in ok:
        raise SystemExit(f"cpmail {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def kind_of(raw: bytes) -> str:
    m = message_from_bytes(raw, policy=policy.default)
    return str(m["X-Cpmail-Event"] or "?")


def eml_files(home: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((home / "mail").glob("*.eml"))]


def collect(work: Path) -> dict[str, list[bytes]]:
    """Messages of every kind, as cpmail composed them."""
    kinds: dict[str, list[bytes]] = defaultdict(list)
    demo = work / "demo"
    cpmail(demo, "init")
    cpmail(demo, "config", "set", "events.budget-alert.thresholds", "80,100")
    cpmail(demo, "demo", "--date", DATE.isoformat())
    cpmail(demo, "config", "test", "--to", "kate.morgan@northwind.example")
    cpmail(demo, "send-report", "--report", "invoice", "--id", "10234")
    cpmail(demo, "message", "manager", "The printer on floor 2 is out of toner.")
    cpmail(demo, "message", "helpdesk", "How do I change who hears of new jobs?")
    cpmail(demo, "message", "bug", "The digest subject counts wrong.")
    cpmail(demo, "message", "wish", "A weekly summary for account executives.")
    # the scheduled cash-flow report, on the demo date's weekday
    cpmail(demo, "config", "set", "reports.cash-flow.days", DATE.strftime("%a").lower())
    cpmail(demo, "config", "set", "reports.cash-flow.to", "KM,MO")
    cpmail(demo, "check", "--date", DATE.isoformat())
    for raw in eml_files(demo):
        kinds[kind_of(raw)].append(raw)

    digest = work / "digest"
    cpmail(digest, "init")
    cpmail(digest, "config", "set", "mail.digest", "true")
    cpmail(digest, "demo", "--date", DATE.isoformat())
    for raw in eml_files(digest):
        if kind_of(raw) == "digest":
            kinds["digest"].append(raw)

    kinds["failure-summary"] = failure_summary(demo)
    return kinds


def failure_summary(home: Path) -> list[bytes]:
    """A run in which one recipient is refused for good: the manager's summary."""
    from tests.smtpserver import SMTPTestServer

    with SMTPTestServer() as server:
        server.fail_rcpt = {"dan.white@northwind.example": "550 5.1.1 no such user"}
        for key, value in {**server.settings(), "mail.transport": "smtp"}.items():
            cpmail(home, "config", "set", key, str(value))
        cpmail(home, "check", "--date", (DATE + dt.timedelta(days=1)).isoformat(), ok=(0, 1))
        return [m.data for m in server.messages if kind_of(m.data) == "failure-summary"]


def score(raw: bytes, spamassassin: str) -> tuple[float, list[str]]:
    r = subprocess.run(
        [spamassassin, "-t", "-L"], input=raw, capture_output=True, timeout=300, check=False
    )
    out = r.stdout.decode("utf-8", "replace")
    m = re.search(
        r"^X-Spam-Status: \w+, score=(-?[\d.]+).*?tests=(.*?)\s+autolearn", out, flags=re.M | re.S
    )
    if m is None:
        raise SystemExit(f"spamassassin gave no X-Spam-Status: {r.stderr.decode()[-500:]}")
    rules = [t for t in re.sub(r"\s+", "", m.group(2)).split(",") if t and t != "none"]
    return float(m.group(1)), rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=4, help="messages scored per kind")
    ap.add_argument("--keep", type=Path, help="copy the scored .eml files here")
    args = ap.parse_args()
    sa = need("spamassassin")
    work = Path(tempfile.mkdtemp(prefix="cpmail-spam-"))
    try:
        kinds = collect(work)
        print(f"SpamAssassin {spam_version(sa)}, local tests only; target ≤ {TARGET}")
        print(f"{'kind':<20} {'scored':>6} {'max':>6}  rules")
        worst = 0.0
        for kind in sorted({*EXPECTED, *kinds}):
            msgs = kinds[kind][: args.per_kind]
            if not msgs:
                print(f"{kind:<20} {0:>6} {'-':>6}  (none made by this build)")
                continue
            results = [score(raw, sa) for raw in msgs]
            top = max(s for s, _ in results) + 0.0  # no "-0.0"
            worst = max(worst, top)
            rules = sorted({r for _, rs in results for r in rs})
            print(f"{kind:<20} {len(msgs):>6} {top:>6.1f}  {', '.join(rules) or '-'}")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for i, raw in enumerate(msgs):
                    (args.keep / f"{kind}-{i}.eml").write_bytes(raw)
        print(f"highest: {worst:.1f} ({'within' if worst <= TARGET else 'above'} the target)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def spam_version(sa: str) -> str:
    r = subprocess.run([sa, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version ([\d.]+)", r.stdout)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
