"""Provider pace: N messages from one account against a server that allows so many a minute.

A local aiosmtpd server accepts at most ``--per-minute`` messages in any
60 seconds and answers ``452 4.3.2 … STOREDRV.ClientSubmit`` beyond (as
Exchange Online does at 30). cpmail sends ``-n`` queued messages with
``[mail.pace] per_minute`` set to the same figure. Printed: refusals (target
0) and the wall time from the first to the last accepted message against
what the limit allows, (n - 1) × 60 / per_minute (target ≤ 1.05×).

    python bench/pace.py                       # 3,000 messages at 600 a minute (5 min)
    python bench/pace.py -n 600 --per-minute 600
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_faults import DATE, prepare, queue_messages, received


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--per-minute", type=int, default=600)
    args = ap.parse_args()
    for k in list(os.environ):
        if k.startswith("CPMAIL_"):
            del os.environ[k]
    with tempfile.TemporaryDirectory() as tmp, SMTPTestServer() as server:
        home = Path(tmp) / "home"
        os.environ["CPMAIL_HOME"] = str(home)
        prepare(Cli(home), server, **{"mail.pace.per_minute": str(args.per_minute)})
        ids = queue_messages(home, args.n)
        server.rate_limit = (args.per_minute, 60.0)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "cpmail", "check", "--date", DATE],
            env={**os.environ},
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        got = received(server)
        first, last = server._accepted_at[0], server._accepted_at[-1]
        allowed = (args.n - 1) * 60 / args.per_minute
        print(f"messages        {args.n} at {args.per_minute} a minute")
        print(f"exit code       {proc.returncode}")
        print(f"refusals        {server.throttled}")
        print(f"delivered       {len(set(got) & ids)} (twice: {sum(got.values()) - len(got)})")
        print(f"first to last   {last - first:.1f} s (the limit allows {allowed:.1f} s)")
        print(f"ratio           {(last - first) / allowed:.3f}x")
        print(f"process wall    {wall:.1f} s")


if __name__ == "__main__":
    main()
