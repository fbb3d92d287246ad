"""A real Postfix for tests: its smtpd on 127.0.0.1, relaying what it takes to a test server.

Postfix offers PIPELINING (RFC 2920), checks senders and recipients as a
production relay does, and queues what it accepts; here it hands every message
on to an aiosmtpd ``SMTPTestServer`` (``relayhost``), so a test sees exactly
what arrived and how often. Debian's ``postfix`` package provides it; without
it the tests skip with the reason, unless ``CPMAIL_REQUIRE_POSTFIX=1`` (set by
``.ci/run``, which installs the package).

What it refuses, so that every answer of a pipelined transaction can be met:

- MAIL FROM ``blocked@agency.test``: ``450 4.7.1`` (sender refused for now);
- RCPT TO ``refused@agency.test``: ``554 5.7.1``; ``later@agency.test``: ``450 4.7.1``;
- a message whose subject starts with ``Refuse me``: ``550 5.7.1`` at the end of DATA;
- a client that pipelines where RFC 2920 does not allow it: cut off
  (``smtpd_forbid_unauth_pipelining``), or its DATA refused (``reject_unauth_pipelining``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.smtpserver import SMTPTestServer

REQUIRED = os.environ.get("CPMAIL_REQUIRE_POSTFIX") == "1"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

_MAIN = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{target}
smtp_tls_security_level = none
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = yes
smtpd_delay_reject = no
# As strict about pipelining as Postfix 3.9 and later are by default, and more: a
# client that writes out of turn is cut off, or has its DATA refused.
smtpd_forbid_unauth_pipelining = yes
smtpd_data_restrictions = reject_unauth_pipelining
smtpd_sender_restrictions = check_sender_access inline:{{ blocked@agency.test=DEFER }}
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ refused@agency.test=REJECT, later@agency.test=DEFER }},
    permit_mynetworks, reject
header_checks = regexp:{root}/etc/header_checks
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""

# No chroot: the instance lives in a temporary folder.
_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
smtp       unix  - - n - - smtp
relay      unix  - - n - - smtp
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


@dataclass
class Postfix:
    port: int
    target: SMTPTestServer  # where Postfix relays what it accepted
    root: Path

    host = "127.0.0.1"

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Wait until the target has ``count`` messages (Postfix relays in the background)."""
        deadline = time.monotonic() + timeout
        while len(self.target.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.target.messages)} of {count} messages came through Postfix; "
                    f"its log:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason + " (CPMAIL_REQUIRE_POSTFIX=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postfix() -> Iterator[Postfix]:
    """A Postfix instance for the whole test session (start-up takes a second or two)."""
    if not Path(POSTFIX).exists():
        _unavailable("Postfix is not installed (Debian's postfix package)")
    if os.geteuid() != 0:
        _unavailable("Postfix's master runs as root")
    root = Path(tempfile.mkdtemp(prefix="cpmail-postfix-"))
    root.chmod(0o755)  # the postfix user must reach its queue below it
    for folder in ("etc", "spool", "data"):
        (root / folder).mkdir()
    shutil.chown(root / "data", "postfix")
    target = SMTPTestServer().start()
    port = _free_port()
    (root / "etc" / "main.cf").write_text(_MAIN.format(root=root, target=target.port))
    (root / "etc" / "master.cf").write_text(_MASTER.format(port=port))
    checks = "/^Subject: Refuse me/ REJECT this looks like spam\n"
    (root / "etc" / "header_checks").write_text(checks)
    postfix = Postfix(port, target, root)
    command = [POSTFIX, "-c", str(root / "etc")]
    started = subprocess.run([*command, "start"], capture_output=True, text=True, check=False)
    try:
        if started.returncode != 0:
            # Postfix says why in its log (or syslog), not on a pipe.
            pytest.fail(f"Postfix did not start: {started.stderr.strip()}\n{postfix.log()}")
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as s:
                    if s.recv(512).startswith(b"220"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Postfix did not answer on 127.0.0.1:{port}\n{postfix.log()}")
            time.sleep(0.1)
        yield postfix
    finally:
        subprocess.run([*command, "stop"], capture_output=True, check=False)
        target.stop()
        shutil.rmtree(root, ignore_errors=True)
