"""Nothing in data, settings or options adds a header or a recipient, through every transport.

Generated text (see tests/test_injection.py) goes at once into every value
that reaches a message: the settings (agency name, subject prefix, the
system manager's name), staff names, a client's name, a job's title, a
task's name, an entry's subject, a billing number, ``--subject`` and
``--message`` of `send-report` and `message`, a report's file name, and
bodies holding MIME boundary look-alikes. Then `check`, `send-report` (to a
staff member and an outside address), `message bug` and `staff test` run
against a real SMTP server (aiosmtpd), the Gmail API and Microsoft Graph
(tests/fakeapi.py, one account signed in per person, one for the whole
agency). For each message, read back from what the server received:

- the header names, each as often as in the same message made of plain text;
- the recipients (SMTP's RCPT TO; for the APIs, which send to the To, Cc and
  Bcc headers, those headers) are exactly the people it was routed to;
- the MIME structure and the attachments' file names are as with plain text.
"""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.compose import Attachment, Mailbox, build_message, to_bytes
from cpmail.secrets import SHARED
from cpmail.settings import Settings
from cpmail.store import connect, schema
from cpmail.transports.api import with_missing_bcc
from tests.agency import D, at, base_agency, insert
from tests.conftest import Cli
from tests.fakeapi import FakeAPI
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp
from tests.test_injection import (
    CLI_SETTINGS,
    NAME,
    NASTY,
    PDF,
    check_wellformed,
    filename_of,
    new_round,
    raw_headers,
    read,
    typed,
)

TRANSPORTS = ["smtp", "gmail", "microsoft"]
# (The APIs see the same bytes as SMTP; each of their examples takes seconds.)
EXAMPLES = {"smtp": 12, "gmail": 4, "microsoft": 4}
# Text a body may hold that looks like MIME: a boundary line, a part's headers, a header block.
BODY_TRICKS = st.sampled_from(
    [
        "--===============1234567890123456789==\r\nContent-Type: text/html\r\n\r\n<b>x</b>",
        "\r\n--===============0000000000000000000==--\r\n",
        "Bcc: evil@attacker.example\r\n\r\nbody",
        "=\r\n=0D=0ABcc: evil@attacker.example",
        ".\r\nMAIL FROM:<evil@attacker.example>\r\n",
        "\n.\n",
        "=?utf-8?q?=0D=0ABcc:_evil@attacker.example?=",
    ]
)
BODY = st.lists(NASTY | BODY_TRICKS, min_size=1, max_size=4).map("\n".join)
OUTSIDE = "ap@client.example"


@dataclass(frozen=True)
class Got:
    """One message as the server received it: the bytes and who it went to."""

    raw: bytes
    recipients: tuple[str, ...]


def api_recipients(raw: bytes) -> tuple[str, ...]:
    """Whom an API sends ``raw`` to: every address in its To, Cc and Bcc headers."""
    msg = read(raw)
    return tuple(sorted(a.addr_spec for name in ("To", "Cc", "Bcc") for a in _addresses(msg, name)))


def _addresses(msg: EmailMessage, name: str) -> list[Any]:
    return [a for h in msg.get_all(name, []) for a in h.addresses]


class Agency:
    """A home whose mail goes out through one transport, with the agency of tests/agency.py."""

    def __init__(
        self,
        cli: Cli,
        home: Path,
        transport: str,
        server: SMTPTestServer,
        fake: FakeAPI,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self.cli, self.home, self.transport, self.server, self.fake = (
            cli,
            home,
            transport,
            server,
            fake,
        )
        setup_smtp(cli, server)  # init, JD as the sender, the system manager
        self("staff", "edit", "JD", "--planned-hours", "0")
        self.engine = connect(Settings.load(home).db_url, where="test")
        base_agency(self.engine)
        s = Settings.load(home)
        s.set("helpdesk.email", "help@agency.test")
        if transport == "gmail":
            s.save()
            from tests.test_gmail import store_signin, use_gmail

            use_gmail(home, fake, monkeypatch)
            store_signin(home, fake, "JD", "jd@agency.test")
            store_signin(home, fake, "AE", "alice@agency.test")  # (`staff test AE` sends as AE)
        elif transport == "microsoft":
            # One account for the whole agency: its name is the agency's.
            from tests.fakeapi import MS_CLIENT_ID
            from tests.test_microsoft import sign_in

            s.set("mail.transport", "microsoft")
            s.set("mail.microsoft.client_id", MS_CLIENT_ID)
            s.set("mail.microsoft.authority_base", fake.base)
            s.set("mail.microsoft.api_base", fake.base)
            s.set("mail.one_account", True)
            s.set("mail.sender", "office@agency.test")
            s.save()
            fake.ms_user = "office@agency.test"
            sign_in(home, SHARED)
        else:
            s.save()

    def __call__(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.exit_code == 0, (args, r.output)
        return r.stdout

    def sent(self) -> list[Got]:
        """What the server received since the last call."""
        if self.transport == "smtp":
            out = [Got(m.data, tuple(sorted(m.rcpt_tos))) for m in self.server.messages]
            self.server.reset()
            return out
        got = [Got(s.mime, api_recipients(s.mime)) for s in self.fake.sent]
        self.fake.sent.clear()
        return got

    def set(self, **values: str) -> None:
        s = Settings.load(self.home)
        for key, value in values.items():
            s.set(key.replace("__", "."), value)
        s.save()

    def update(self, table: str, key: str, **values: Any) -> None:
        t = schema.metadata.tables[table]
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == key).values(**values))


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as f:
        yield f


@pytest.fixture(params=TRANSPORTS)
def agency(
    request: pytest.FixtureRequest,
    cli: Cli,
    home: Path,
    smtp_server: SMTPTestServer,
    fake: FakeAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> Agency:
    return Agency(cli, home, request.param, smtp_server, fake, monkeypatch)


@dataclass
class Texts:
    agency: str
    prefix: str
    manager: str
    sender: str
    staff: str
    client: str
    title: str
    task: str
    subject: str
    number: str
    filename: str
    option: str  # a --subject
    body: str  # a --message, a message's text


PLAIN = Texts(
    "Acme Agency",
    "[C&P]",
    "Max Manager",
    "Jane Doe",
    "Alice Evans",
    "Acme Foods",
    "Winter catalog",
    "Proofread",
    "Call notes",
    "10234",
    "invoice.pdf",
    "Your invoice",
    "Hello",
)


def _round(a: Agency, n: int, t: Texts, folder: Path) -> dict[tuple[str, tuple[str, ...]], Got]:
    """Every kind of message once, with ``t`` everywhere; what went out, by (kind, recipients)."""
    fields = dict(sender=t.sender, staff=t.staff, client=t.client, title=t.title, task=t.task)
    new_round(a, n, ("tasks", "homebase_entries", "billings"), **fields, number=t.number)
    a.set(agency__name=t.agency, mail__subject_prefix=t.prefix, manager__name=t.manager)
    entry = dict(subject=t.subject, body=t.body, entered_by="JD", entered_at=at(D))
    insert(a.engine, "homebase_entries", [dict(id=f"H{n}", notify="AE,PR", **entry)])
    out: dict[tuple[str, tuple[str, ...]], Got] = {}

    def take(kind: str) -> None:
        for got in a.sent():
            check_wellformed(got.raw)
            key = (f"{kind}:{read(got.raw)['X-Cpmail-Event']}", got.recipients)
            assert key not in out, key  # one message per person: nobody gets it twice
            out[key] = got

    a("check", "--date", D.isoformat(), "--only", "job-opened,task-due-today,homebase-entry")
    take("check")
    path = folder / t.filename
    path.write_bytes(PDF)
    a(
        "send-report",
        str(path),
        "--to",
        f"AE,{OUTSIDE}",
        f"--subject={t.option}",
        "--message",
        t.body,
    )
    path.unlink()
    take("send-report")
    a("send-report", "--report", "invoice", "--id", f"B{n}", "--to", "AE")
    take("invoice")
    a("message", "bug", f"--subject={t.option}", "--", t.body + " x")
    take("bug")
    a("staff", "test", "AE")
    take("staff-test")
    return out


def _names(raw: bytes) -> collections.Counter[str]:
    """How often each header name stands in the message's own header block."""
    block = raw.decode("utf-8").split("\r\n\r\n", 1)[0]
    return collections.Counter(n.lower() for n, _ in raw_headers(block))


def _parts(raw: bytes) -> list[tuple[str, str | None]]:
    return [
        (p.get_content_type(), filename_of(p) if p.get_content_disposition() else None)
        for p in read(raw).walk()
    ]


EXPECTED = {
    ("check:job-opened", ("alice@agency.test",)),
    ("check:job-opened", ("carl@agency.test",)),  # (a creative is told of a job opened)
    ("check:job-opened", ("pia@agency.test",)),
    ("check:task-due-today", ("alice@agency.test",)),
    ("check:homebase-entry", ("alice@agency.test",)),
    ("check:homebase-entry", ("pia@agency.test",)),
    ("send-report:report", ("alice@agency.test", OUTSIDE)),
    ("invoice:report", ("alice@agency.test",)),
    ("bug:message", ("help@agency.test",)),
    ("staff-test:test", ("alice@agency.test",)),
}
REPORT = ("send-report:report", ("alice@agency.test", OUTSIDE))


def test_nothing_adds_a_header_or_a_recipient_through_any_transport(
    agency: Agency, tmp_path: Path
) -> None:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    counter = itertools.count(1)
    base = _round(agency, next(counter), PLAIN, folder)
    assert set(base) == EXPECTED, sorted(base)
    ran: list[int] = []

    examples = EXAMPLES[agency.transport]

    @settings(CLI_SETTINGS, max_examples=examples)
    @given(
        names=st.lists(NAME, min_size=3, max_size=3),
        texts=st.lists(NASTY, min_size=8, max_size=8),
        body=BODY,
    )
    def run(names: list[str], texts: list[str], body: str) -> None:
        ran.append(1)
        manager, sender, staff = names
        agency_name, prefix, client, title, task, subject, number, option = texts
        filename = re.sub(r"[/\x00]", "_", option)[:60] + ".pdf"
        t = Texts(
            agency_name,
            prefix,
            manager,
            sender,
            staff,
            client,
            title,
            task,
            subject,
            number,
            filename,
            option,
            body,
        )
        got = _round(agency, next(counter), t, folder)
        assert set(got) == set(base)
        for key, g in got.items():
            b = base[key]
            assert _names(g.raw) == _names(b.raw), key
            assert len(_parts(g.raw)) == len(_parts(b.raw)), key
            assert [c for c, _ in _parts(g.raw)] == [c for c, _ in _parts(b.raw)], key
            msg = read(g.raw)
            to = tuple(sorted(x.addr_spec for x in msg["To"].addresses))
            assert to == key[1], key  # the people it was routed to, and no one else
            assert not msg.get_all("Cc") and not msg.get_all("Bcc"), key
        report = read(got[REPORT].raw)
        [attachment] = report.iter_attachments()
        assert filename_of(attachment) == typed(filename)
        assert attachment.get_content() == PDF

    run()
    assert len(ran) == examples  # every example ran


ADDRESSES = ("ann@agency.test", "bob@agency.test", "üser@bücher.example", "cy@agency.test")


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(NASTY, min_size=3, max_size=3),
    rcpt=st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4, unique=True),
)
def test_an_api_sends_to_exactly_the_envelope(names: list[str], rcpt: list[str]) -> None:
    """Whatever the headers name and the envelope holds, what an API reads from the
    headers is the envelope: a recipient missing is added, one who has it is left out."""
    to = [Mailbox(a, n) for a, n in zip(ADDRESSES, names, strict=False)]
    raw = to_bytes(
        build_message(
            sender=Mailbox("jd@agency.test", names[0]),
            to=to,
            subject=names[1],
            text="Body\r\n\r\nBcc: evil@attacker.example",
            event="report",
            key="report:1",
            attachments=[Attachment("invoice.pdf", PDF, "application/pdf")],
        )
    )
    sent = with_missing_bcc(raw, tuple(rcpt))
    check_wellformed(sent)
    assert api_recipients(sent) == tuple(sorted(rcpt))
    before, after = read(raw), read(sent)
    assert _text(after) == _text(before)
    assert [p.get_content_type() for p in after.walk()] == [
        p.get_content_type() for p in before.walk()
    ]
    names_before, names_after = _names(raw), _names(sent)
    names_before.pop("to"), names_after.pop("to", None), names_after.pop("bcc", None)
    assert names_after == names_before  # only To and Bcc may change
    # Each keeps the name it had (as the email package reads it: up to runs of spaces).
    shown = {a.addr_spec: "".join(a.display_name.split()) for a in before["To"].addresses}
    for a in after["To"].addresses if after["To"] else ():
        assert "".join(a.display_name.split()) == shown[a.addr_spec]
    if set(rcpt) == set(ADDRESSES[:3]):
        assert sent == raw  # the headers name exactly the envelope: byte for byte


def _text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    text: str = body.get_content()
    return text


def test_a_resent_message_reaches_only_those_still_waiting(
    cli: Cli,
    home: Path,
    smtp_server: SMTPTestServer,
    fake: FakeAPI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A report sent over SMTP to two people, taken by the server for one of them, then
    sent again through the Gmail API (which sends to the addresses of the headers): it
    reaches the one still waiting, and only them."""
    a = Agency(cli, home, "smtp", smtp_server, fake, monkeypatch)
    smtp_server.fail_rcpt = {"carl@agency.test": "451 4.2.0 Mailbox busy, try later"}
    path = tmp_path / "invoice.pdf"
    path.write_bytes(PDF)
    r = cli("send-report", str(path), "--to", "AE,CR")
    assert r.exit_code == 1, r.output
    [first] = a.sent()
    assert first.recipients == ("alice@agency.test",)
    a.transport = "gmail"
    _switch_to_gmail(home, fake, monkeypatch)
    with a.engine.begin() as conn:  # its next try is now
        conn.execute(schema.messages.update().values(next_attempt_at=None))
    r = cli("check", "--date", D.isoformat(), "--only", "calendar-reminder")
    assert r.exit_code == 0, r.output
    [again] = a.sent()
    assert again.recipients == ("carl@agency.test",)
    assert read(again.raw)["Message-ID"] == read(first.raw)["Message-ID"]


def _switch_to_gmail(home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_gmail import store_signin, use_gmail

    use_gmail(home, fake, monkeypatch)
    store_signin(home, fake, "JD", "jd@agency.test")
