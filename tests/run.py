"""The whole test suite, as the README and CI run it: ``python -m tests.run [pytest options]``.

Two pytest runs go at once:

- the tests marked ``serial`` (they measure time, or race real processes
  against each other), one after the other in a process of their own, at the
  usual priority;
- all the others on three pytest-xdist workers at a lower priority (nice 10),
  so that they use what the serial tests leave of the machine without
  slowing them down.

The serial run's output is printed after the other's; the exit status is
the other run's if it failed, else the serial run's (a run that the options
left without a test counts as passed, unless both were). Options given here
go to both runs (``-x``, ``-v``, ``-k EXPR``, a file or a test...).
"""

from __future__ import annotations

import os
import subprocess
import sys

PYTEST = [sys.executable, "-m", "pytest", "-q"]
SERIAL = [*PYTEST, "-m", "serial"]
OTHERS = [*PYTEST, "-n", "3", "--dist", "loadgroup", "-m", "not serial"]
NO_TESTS = 5  # pytest's exit status when the options selected no test


def _lower_priority() -> None:
    os.nice(10)


def main(options: list[str]) -> int:
    serial = subprocess.Popen([*SERIAL, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        others = subprocess.run([*OTHERS, *options], preexec_fn=_lower_priority, check=False)
        out, _ = serial.communicate()
    except BaseException:
        serial.kill()
        serial.wait()
        raise
    print("\n---- tests marked serial (run alone, at the same time as the others) ----", flush=True)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    codes = [others.returncode, serial.returncode]
    if codes != [NO_TESTS, NO_TESTS]:  # options that select tests of one kind only
        codes = [0 if c == NO_TESTS else c for c in codes]
    return codes[0] or codes[1]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
