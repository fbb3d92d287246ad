"""The sample agency in examples/agency/ is the demo's data, resolved for its example date."""

from __future__ import annotations

from pathlib import Path

from cpmail.demo import EXAMPLE_DATE, demo_files, resolve
from cpmail.workdays import WorkCalendar
from tests.conftest import Cli

EXAMPLES = Path(__file__).parent.parent / "examples" / "agency"


def test_examples_match_the_demo() -> None:
    calendar = WorkCalendar("US")
    files = demo_files()
    assert len(files) == 26
    for src in files:
        # as on the example date itself ({A} is then the next workday, {N})
        want = resolve(src.read_text(encoding="utf-8"), EXAMPLE_DATE, calendar, EXAMPLE_DATE)
        got = (EXAMPLES / src.name).read_text(encoding="utf-8")
        assert got == want, f"examples/agency/{src.name} is stale: regenerate it from the demo"
        assert "{" not in got


def test_the_sample_agency_imports_as_one_folder(initialised: Cli) -> None:
    """As examples/README.md says: `cpmail data import examples/agency`, nothing else."""
    r = initialised("data", "import", str(EXAMPLES))
    assert r.exit_code == 0, r.output
    r = initialised("check", "--date", "2026-11-24", "--dry-run")
    assert r.exit_code == 0 and "Would send" in r.output, r.output
