"""Start-up: `cpmail --help` against `python -c "import typer"`, side by side.

Both are run as processes, in interleaved rounds (a noisy machine slows both
alike within a round), with output discarded. The first rounds are warm-up:
they also write the bytecode, as on any machine where Python may write it.
The figure is the median of the per-round ratios; the target is <= 1.5.

    python bench/startup.py               # 31 rounds
    python bench/startup.py --rounds 61
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CPMAIL, median, timed, user_env

TARGET = 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    env = user_env()
    cases = {
        'python -c "import typer"': [sys.executable, "-c", "import typer"],
        "cpmail --help": [CPMAIL, "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.warmup + args.rounds):
        for name, cmd in cases.items():
            t = timed(cmd, env=env)
            if r >= args.warmup:
                times[name].append(t)
    base = times['python -c "import typer"']
    ratios = [c / b for c, b in zip(times["cpmail --help"], base, strict=True)]
    print(f"{args.rounds} interleaved rounds (after {args.warmup} warm-up), medians:")
    for name, values in times.items():
        print(f"  {name:<28} {1000 * median(values):7.1f} ms")
    ratio = median(ratios)
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"  cpmail --help / import typer {ratio:7.2f} x   (target <= {TARGET} x: {verdict})")
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom cpmail.cli.app import app\n"
            "try:\n    app(['--help'], prog_name='cpmail')\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'rich', "
            "'sqlalchemy', 'jinja2', 'aiosmtplib', 'weasyprint', 'alembic', 'msal', 'httpx'})))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]
    print(f"  libraries `cpmail --help` imports beyond typer: {heavy or 'none of the heavy ones'}")


if __name__ == "__main__":
    main()
