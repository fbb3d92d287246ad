"""A line cut at any byte: every message arrives once, or the run says it may have arrived.

Between cpmail and a real server stands a proxy (tests/faultproxy.py) that
breaks the connection after exactly k bytes, client to server or server to
client: it closes it, resets it, or goes silent. For k all over a session,
`cpmail check` runs through the proxy, then cpmail runs again straight to the
server (as the next cron run would), and the server's messages are counted by
Message-ID. Each arrives exactly once; twice only when the whole message went
and the answer to it was lost, and then the first run said that it may have
arrived. Nothing is left behind: after the healthy run every message is sent.

Each k costs a run or two of `cpmail check`, so a test takes one point in a few
(``every``) of those it could; CUTS_ALL=1 takes them all.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import messages
from tests.conftest import Cli
from tests.fakeapi import FakeAPI
from tests.faultproxy import Direction, Fault, FaultProxy
from tests.postfix import Postfix, postfix
from tests.smtpserver import SMTPTestServer
from tests.test_faults import DATE, prepare, statuses

__all__ = ["postfix"]  # fixtures

MAY_HAVE = re.compile(r"(\d+) of the deferred may have arrived already")


def points(
    chunks: Iterable[tuple[str, int, int]], direction: str, every: int = 1, since: float = 0
) -> list[int]:
    """Where to break the line in ``direction``: at each boundary between the pieces a
    healthy session carried (a command, an answer, a message's text), a byte before and
    after it, and halfway to the next; with ``every``, one of so many of those, and with
    ``since``, only those after that part of the session (0.5: its second half)."""
    marks: set[int] = set()
    for d, before, size in chunks:
        if d == direction:
            marks |= {before, before + size}
    edges = sorted(marks)
    ks = {m + d for m in edges for d in (-1, 0, 1) if m + d >= 0}
    ks |= {(a + b) // 2 for a, b in itertools.pairwise(edges)}
    if os.environ.get("CUTS_ALL") == "1":
        every = 1
    end = max(edges, default=0)
    return [k for k in sorted(ks) if k >= since * end][::every]


class Sweep:
    """One home with messages queued; runs through the proxy, then straight to the server.

    Each point queues messages of its own (new Message-IDs): what arrived is
    counted once the sweep is over.

    ``port`` is the server's, ``to`` the variable that points cpmail at a port,
    ``received`` counts what the server has ("message-id recipient"), ``forget`` empties it.
    """

    def __init__(
        self,
        cli: Cli,
        home: Path,
        port: int,
        to: Callable[[int], dict[str, str]],
        received: Callable[[], Counter[str]],
        forget: Callable[[], None],
        messages: int = 2,
        recipients: int = 1,
        settle: Callable[[set[str]], None] = lambda ids: None,
    ) -> None:
        self.cli = cli
        self.home = home
        self.port = port
        self.to = to
        self.received = received
        self.forget = forget
        self.messages = messages
        self.recipients = recipients
        self.settle = settle  # waits until what was sent has arrived

    def setup(self) -> set[str]:
        """The home as it was set up, with new messages queued."""
        saved = self.home.parent / "saved"
        if not saved.exists():
            shutil.copytree(self.home, saved)
        shutil.rmtree(self.home)
        shutil.copytree(saved, self.home)
        return queue_to_many(self.home, self.messages, self.recipients)

    def run(self, port: int, *args: str) -> tuple[int, str]:
        r = self.cli(*args, env=self.to(port))
        assert "Traceback" not in r.output and "internal error" not in r.output, r.output
        return r.exit_code, r.output

    def once(self, direction: Direction, k: int, fault: Fault) -> tuple[set[str], int, str]:
        """Break the line after ``k`` bytes, then run again without the proxy."""
        ids = self.setup()
        with FaultProxy(self.port, direction=direction, at=k, fault=fault) as proxy:
            r = self.cli("check", "--date", DATE, "--json", env=self.to(proxy.port))
        code, said = r.exit_code, r.stderr
        assert proxy.fired or proxy.counted[direction] <= k  # (k past the session's end)
        where = f"{fault} after {k} bytes {direction}: exit {code}\n{r.output}"
        assert "Traceback" not in said and "internal error" not in said, where
        doc = json.loads(r.stdout)
        assert doc["exit_code"] == code, where
        first = statuses(self.home)
        assert code in (0, 1, 3), where
        if code == 0:
            assert first == Counter({"sent": self.messages}), where
            assert "may have arrived" not in said, where
        else:
            assert first["sent"] < self.messages, where
        unsure = sum(int(n) for n in MAY_HAVE.findall(" ".join(said.split())))
        # (the JSON document says it as the words do; with exit 3 there is none of either)
        outbox = doc["outbox"] or {"may_have_arrived": 0}
        assert outbox["may_have_arrived"] == unsure, where
        # The next run, straight to the server, once the deferred mail is due: it all goes.
        due(self.home)
        code2, said2 = self.run(self.port, "check", "--date", DATE)
        where += f"\nthen: exit {code2}\n{said2}"
        assert code2 == 0, where
        assert statuses(self.home) == Counter({"sent": self.messages}), where
        return ids, unsure, where

    def count(self, ids: set[str], unsure: int, where: str) -> None:
        """Each of ``ids`` arrived once; twice only as often as the first run said it may."""
        got = self.received()
        assert ids <= set(got), f"lost: {ids - set(got)}; {where}"
        twice = {m.split()[0] for m in ids if got[m] > 1}  # (messages, whoever got them)
        assert all(got[m] <= 2 for m in ids), where
        assert len(twice) <= unsure, f"{len(twice)} twice, {unsure} said; {where}"

    def sweep(self, direction: Direction, fault: Fault, every: int = 1, since: float = 0) -> None:
        """Break the line at each of the ``points`` of a healthy session in turn."""
        ks = points(self.session(), direction, every, since)
        done = [self.once(direction, k, fault) for k in ks]
        self.settle({m for ids, _, _ in done for m in ids})
        for ids, unsure, where in done:
            self.count(ids, unsure, where)

    def session(self) -> list[tuple[str, int, int]]:
        """The pieces of a healthy run through the proxy."""
        self.forget()
        self.setup()
        with FaultProxy(self.port) as proxy:
            code, said = self.run(proxy.port, "check", "--date", DATE)
        assert code == 0, said
        return proxy.chunks


def due(home: Path) -> None:
    """Deferred mail is due now (not after its backoff): the next check sends it."""
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    with engine.begin() as conn:
        conn.execute(
            sa.update(messages)
            .where(messages.c.status == "deferred")
            .values(next_attempt_at=dt.datetime(2000, 1, 1))
        )
    engine.dispose()


def queue_to_many(home: Path, n: int, recipients: int) -> set[str]:
    """Queue ``n`` messages from JD, each to ``recipients`` people; return what the server
    is to receive: "message-id recipient" for each."""
    from cpmail.compose import Draft, Mailbox, build_message
    from cpmail.outbox import new_run_id, queue

    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    run_id = new_run_id()
    wanted: set[str] = set()
    with engine.begin() as conn:
        for i in range(n):
            key = f"cut:{run_id}:{i}"
            to = [f"person{i}.{j}@agency.test" for j in range(recipients)]
            msg = build_message(
                sender=Mailbox("jd@agency.test"),
                to=[Mailbox(a) for a in to],
                subject=f"Message {i}",
                text="x" * 1500,
                event="message",
                key=key,
            )
            draft = Draft.from_message(
                msg, event="message", key=key, account="JD", envelope_from="jd@agency.test"
            )
            assert queue(conn, draft, run_id=run_id) is not None
            wanted |= {f"{msg['Message-ID']} {a}" for a in to}
    engine.dispose()
    return wanted


def each_recipient(server: SMTPTestServer) -> Counter[str]:
    """What the server received: "message-id recipient" for each recipient of each message."""
    return Counter(
        f"{message_from_bytes(m.data, policy=policy.default)['Message-ID']} {r}"
        for m in server.messages
        for r in m.rcpt_tos
    )


# ---------------------------------------------------------------- SMTP


def smtp_sweep(
    cli: Cli, home: Path, server: SMTPTestServer, messages: int = 2, recipients: int = 1
) -> Sweep:
    prepare(cli, server, **{"mail.smtp.timeout": "1", "mail.smtp.connections": "2"})
    return Sweep(
        cli,
        home,
        server.port,
        lambda port: {"CPMAIL_MAIL_SMTP_PORT": str(port)},
        lambda: each_recipient(server),
        server.reset,
        messages,
        recipients,
    )


# (fault, one point in so many): a reset and a dead line (which waits out the timeout)
# are taken at fewer points than a cut.
SMTP_FAULTS = [
    ("cut", True, 5),
    ("cut", False, 6),
    ("rst", True, 12),
    ("silent", True, 12),
]


@pytest.mark.parametrize(
    ("fault", "pipelining", "every"),
    SMTP_FAULTS,
    ids=[f"{f}-{'pipelining' if p else 'one-by-one'}" for f, p, _ in SMTP_FAULTS],
)
@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_cut_at_any_byte_of_an_smtp_session_sends_each_message_once(
    cli: Cli,
    home: Path,
    smtp_server: SMTPTestServer,
    pipelining: bool,
    direction: Direction,
    fault: Fault,
    every: int,
) -> None:
    smtp_server.offer_pipelining = pipelining
    smtp_sweep(cli, home, smtp_server).sweep(direction, fault, every)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_cut_at_any_byte_of_a_session_in_tls_with_a_login_sends_each_message_once(
    cli: Cli, home: Path, smtp_server_factory: Callable[..., SMTPTestServer], direction: Direction
) -> None:
    """STARTTLS and AUTH first: the line is cut inside TLS records as well."""
    server = smtp_server_factory(tls="starttls", users={"jd@agency.test": "s3cret"})
    sweep = smtp_sweep(cli, home, server)
    assert cli("staff", "passcode", "JD", "--stdin", input="s3cret\n").exit_code == 0
    sweep.sweep(direction, "cut", 10)


@pytest.mark.parametrize("fault", ["cut", "silent"])
def test_a_cut_in_the_transaction_for_the_recipients_over_the_limit(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, fault: Fault
) -> None:
    """A server that takes one recipient a transaction: the message goes to the second in
    a transaction of its own on the same connection. Its answer lost there, the second
    may have it: the run must say so, as for any message (it did not)."""
    smtp_server.max_recipients = (1, "452 4.5.3 Error: too many recipients")
    sweep = smtp_sweep(cli, home, smtp_server, messages=1, recipients=2)
    # the answers of the second transaction, which come last
    sweep.sweep("down", fault, 2 if fault == "cut" else 6, since=0.6)


def _relayed(relay: Postfix, ids: set[str]) -> None:
    """Wait until Postfix has relayed every message, and two seconds more for any copy."""
    deadline = time.monotonic() + 30
    while not ids <= set(each_recipient(relay.target)):
        assert time.monotonic() < deadline, relay.log()[-3000:]
        time.sleep(0.1)
    time.sleep(2)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_cut_at_any_byte_of_a_session_with_postfix_sends_each_message_once(
    cli: Cli, home: Path, postfix: Postfix, direction: Direction
) -> None:
    """Postfix answers pipelined commands as it reads them, and queues a message once its
    text is whole: the same holds as with the test server."""
    # (set up as for the server behind Postfix: every run is pointed at a port anyway)
    prepare(cli, postfix.target, **{"mail.smtp.timeout": "1", "mail.smtp.connections": "2"})
    sweep = Sweep(
        cli,
        home,
        postfix.port,
        lambda port: {"CPMAIL_MAIL_SMTP_PORT": str(port)},
        lambda: each_recipient(postfix.target),
        lambda: None,
        settle=lambda ids: _relayed(postfix, ids),
    )
    sweep.sweep(direction, "cut", 8)


# ---------------------------------------------------------------- Gmail and Graph


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as f:
        yield f


def _by_message_id(fake: FakeAPI) -> Counter[str]:
    """As ``each_recipient``: the recipients are those the message's To names."""
    got: Counter[str] = Counter()
    for sent in fake.sent:
        msg = message_from_bytes(sent.mime, policy=policy.default)
        got.update(f"{msg['Message-ID']} {a.addr_spec}" for a in msg["To"].addresses)
    return got


def _forget(fake: FakeAPI) -> None:
    fake.sent.clear()
    fake.requests.clear()


def _api_sweep(cli: Cli, home: Path, fake: FakeAPI, name: str) -> Sweep:
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    r = cli("config", "manager", "--name", "Max Manager", "--email", "max@agency.example")
    assert r.exit_code == 0, r.output
    assert cli("config", "set", f"mail.{name}.timeout", "1").exit_code == 0
    key = f"CPMAIL_MAIL_{name.upper()}_API_BASE"
    # (Gmail's sign-in, when it is renewed, through the proxy too)
    token = "CPMAIL_MAIL_GMAIL_TOKEN_URI"
    return Sweep(
        cli,
        home,
        int(fake.base.rsplit(":", 1)[1]),
        lambda port: {key: f"http://127.0.0.1:{port}", token: f"http://127.0.0.1:{port}/token"},
        lambda: _by_message_id(fake),
        lambda: _forget(fake),
    )


def gmail_sweep(
    cli: Cli, home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch, *, expired: bool = False
) -> Sweep:
    from cpmail.oauth import google
    from cpmail.secrets import SecretStore
    from tests.fakeapi import google_client
    from tests.test_gmail import store_signin

    # The code exchange refuses a plain-http token endpoint unless told this is a test.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    assert cli("init").exit_code == 0
    settings = Settings.load(home)
    settings.set("mail.transport", "gmail")
    settings.set("mail.gmail.client_secrets", google.STORED_CLIENT)
    settings.save()
    SecretStore(home).set(google.GOOGLE_CLIENT_SECRET, json.dumps(google_client(fake.base)))
    store_signin(home, fake, "JD", "jd@agency.example", expired=expired)
    return _api_sweep(cli, home, fake, "gmail")


def graph_sweep(cli: Cli, home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> Sweep:
    from tests.fakeapi import MS_CLIENT_ID
    from tests.test_microsoft import sign_in

    assert cli("init").exit_code == 0
    settings = Settings.load(home)
    settings.set("mail.transport", "microsoft")
    settings.set("mail.microsoft.client_id", MS_CLIENT_ID)
    settings.set("mail.microsoft.authority_base", fake.base)
    settings.save()
    sweep = _api_sweep(cli, home, fake, "microsoft")
    sign_in(home)
    return sweep


API_FAULTS = [("cut", 5), ("rst", 10), ("silent", 10)]


@pytest.mark.parametrize(("fault", "every"), API_FAULTS, ids=[f for f, _ in API_FAULTS])
@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("api", [gmail_sweep, graph_sweep], ids=["gmail", "graph"])
def test_a_cut_at_any_byte_of_an_api_exchange_sends_each_message_once(
    cli: Cli,
    home: Path,
    fake: FakeAPI,
    monkeypatch: pytest.MonkeyPatch,
    api: Callable[..., Sweep],
    direction: Direction,
    fault: Fault,
    every: int,
) -> None:
    api(cli, home, fake, monkeypatch).sweep(direction, fault, every)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_cut_while_a_gmail_sign_in_is_renewed_sends_each_message_once(
    cli: Cli, home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch, direction: Direction
) -> None:
    gmail_sweep(cli, home, fake, monkeypatch, expired=True).sweep(direction, "cut", 6)
