"""The sample agency in examples/agency/ is the demo's data, resolved for its example date."""

from __future__ import annotations

from pathlib import Path

from cpmail.demo import EXAMPLE_DATE, demo_files, resolve
from cpmail.workdays import WorkCalendar

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
