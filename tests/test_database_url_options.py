"""An option of database.url that libpq refuses before it connects is a setting to fix.

It names database.url and the driver's words, exit 2; never "cannot be reached" or
"check that it is reachable and has space" (exit 3), which send one to the server.
"""

from __future__ import annotations

import pytest

from tests.conftest import Cli
from tests.test_pull import LIBPQ_REFUSES

URL = "postgresql+psycopg://reader:Sesame42@127.0.0.1:1/cpmail?"


@pytest.mark.parametrize(("option", "said"), LIBPQ_REFUSES)
@pytest.mark.parametrize("command", [("staff", "list"), ("db", "upgrade")])
def test_an_option_the_driver_refuses_is_a_setting_to_fix(
    initialised: Cli, option: str, said: str, command: tuple[str, ...]
) -> None:
    r = initialised(*command, env={"CPMAIL_DATABASE_URL": URL + option})
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: database.url has an option the database driver")
    assert said in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.endswith("correct it after the '?' of database.url and try again.\n")
    assert "Sesame42" not in r.output
