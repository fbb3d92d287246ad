"""Nothing in data, a --subject or a file name can add a header or a recipient.

Generated text — RFC 2047 encoded-words carrying CR, LF, NUL and header lines,
raw line breaks, quotes, angle brackets, commas, addresses, non-ASCII — goes
into every field that reaches a header: staff names (From and To), client
name, job title, task name, entry subjects, calendar title, billing number,
``--subject`` and an attachment's file name. On the raw bytes of what cpmail
sends, each message has the same header names, MIME parts and recipients as
with plain text, and each field reads back as the text given (subjects and
file names exactly; display names exactly by RFC 2047, and through the
``email`` package's own reader up to its whitespace handling).

Through ``build_message``/``compose`` directly, and through the command line
(``check``, ``send-report``, ``message``, ``staff test``) with the ``file``
transport and with a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from email import message_from_string, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpmail.addresses import clean_header_text
from cpmail.compose import Attachment, Mailbox, build_message, compose, to_bytes
from cpmail.reports import safe_filename
from cpmail.settings import Settings
from cpmail.store import connect, schema
from tests.agency import LATER, D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

# ---------------------------------------------------------------- generated text


def _ew(charset: str, enc: str, payload: str) -> str:
    """An honest encoded-word of ``payload``."""
    data = payload.encode(charset, "replace")
    if enc in "qQ":
        text = "".join(f"={b:02X}" if not chr(b).isalnum() else chr(b) for b in data)
    else:
        text = base64.b64encode(data).decode("ascii")
    return f"=?{charset}?{enc}?{text}?="


PAYLOADS = st.sampled_from(
    [
        "\r\nBcc: evil@attacker.example",
        "\nTo: evil@attacker.example",
        "\rCc: evil@attacker.example",
        "\r\n\r\n<html>body</html>",
        "\x00",
        "\r\nContent-Type: text/html",
        'Eve "E" <evil@attacker.example>, x@e.test',
        "Ünïcödé 日本語",
        "=?utf-8?q?=0D=0ABcc:_evil@attacker.example?=",
    ]
) | st.text(max_size=12)
ENCODED_WORDS = st.builds(
    _ew,
    st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii"]),
    st.sampled_from(["q", "Q", "b", "B"]),
    PAYLOADS,
)
PIECES = st.sampled_from(
    [
        "=?utf-8?q?=0D=0ABcc:_evil@attacker.example?=",
        "Dan =?utf-8?q?=0D=0ABcc:_evil@attacker.example?= White",
        "\r\nBcc: evil@attacker.example",
        "\n",
        "\r",
        "\x00",
        "\t",
        " ",
        "   ",
        '"',
        "'",
        "<",
        ">",
        "<evil@attacker.example>",
        "evil@attacker.example",
        ",",
        ";",
        ":",
        "@",
        "\\",
        "(",
        ")",
        "=?",
        "?=",
        "=?utf-8?q?",
        "_",
        "Bcc:",
        "To: evil@attacker.example",
        "Ünïcödé",
        "日本語のテキスト",
        "\u2028",
        "\x85",
        "\u00a0",
        "x" * 90,
    ]
)
_PARTS = st.lists(st.one_of(ENCODED_WORDS, PIECES, st.text(max_size=10)), min_size=1, max_size=6)
# What people can type into a field: generated nastiness, joined with or without spaces.
NASTY = _PARTS.map(" ".join) | _PARTS.map("".join)
# A staff member's name is never blank (`staff add` and `staff edit` refuse one).
NAME = NASTY.map(lambda s: s if s.strip() else s + "x")


def plain_label(n: int, what: str) -> str:
    return f"Plain {what} {n}"


# ---------------------------------------------------------------- reading raw bytes

HEADER = re.compile(r"[!-9;-~]+\Z")  # a field name: printable ASCII but ':'


@lru_cache(maxsize=64)
def read(raw: bytes) -> EmailMessage:
    """The message as a reader of RFC 6532 (UTF-8 headers) sees it.

    Parsed once for all the checks of one message (the result is only read).
    """
    msg = message_from_string(raw.decode("utf-8"), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def raw_headers(block: str) -> list[tuple[str, str]]:
    """(name, unfolded value) of each field of a header block; fails on anything else."""
    out: list[tuple[str, str]] = []
    for line in block.split("\r\n"):
        if line[:1] in (" ", "\t"):
            assert out, f"a header block starts with a continuation line: {line!r}"
            out[-1] = (out[-1][0], out[-1][1] + line)
            continue
        name, colon, value = line.partition(":")
        assert colon and HEADER.match(name), f"not a header line: {line!r}"
        out.append((name, value[1:] if value.startswith(" ") else value))
    return out


def check_wellformed(raw: bytes) -> None:
    """CRLF only, no NUL, lines within RFC 5322 and RFC 2045 limits, in every part."""
    assert b"\x00" not in raw
    lines = raw.split(b"\r\n")
    assert all(b"\r" not in x and b"\n" not in x for x in lines), "a bare CR or LF"
    assert max(len(x) for x in lines) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(x) for x in head.split(b"\r\n")) <= 78
    msg = read(raw)
    assert not msg.defects, msg.defects
    for part in msg.walk():
        assert not part.defects, part.defects
        cte = str(part.get("Content-Transfer-Encoding", "")).lower()
        if cte in ("base64", "quoted-printable"):
            payload = part.get_payload()
            assert isinstance(payload, str)
            assert max(len(x) for x in payload.splitlines()) <= 76, cte


@dataclass(frozen=True)
class Shape:
    """What must not change whatever the text: header names, parts, recipients."""

    names: tuple[str, ...]
    parts: tuple[tuple[str, ...], ...]
    to: tuple[str, ...]
    rcpt: tuple[str, ...] | None


def shape(raw: bytes, rcpt: tuple[str, ...] | None = None) -> Shape:
    check_wellformed(raw)
    text = raw.decode("utf-8")
    names = tuple(n.lower() for n, _ in raw_headers(text.split("\r\n\r\n", 1)[0]))
    msg = read(raw)
    parts = tuple(tuple(k.lower() for k in p) for p in msg.walk() if p is not msg)
    to = tuple(a.addr_spec for a in msg["To"].addresses)
    assert not {"bcc", "cc"} & set(names)
    return Shape(names, parts, to, rcpt)


def header(raw: bytes, name: str) -> str:
    block = raw.decode("utf-8").split("\r\n\r\n", 1)[0]
    [value] = [v for n, v in raw_headers(block) if n.lower() == name.lower()]
    return value


def exact_phrase(value: str) -> str:
    """The display name of a one-mailbox header value, decoded by RFC 2047's rules."""
    if not value.endswith(">"):
        return ""
    phrase = value[: value.rindex(" <")]
    if phrase.startswith('"'):
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return str(make_header(decode_header(phrase)))


def filename_of(part: Any) -> str | None:
    """An attachment's file name, read exactly.

    (``get_filename()`` of the older API also strips one pair of quotes or
    angle brackets around the name, however it was encoded.)
    """
    name = part["Content-Disposition"].params.get("filename")
    return None if name is None else str(name)


def typed(text: str) -> str:
    """What a header shows for ``text``: line breaks and NULs are spaces, ends trimmed."""
    return clean_header_text(text).strip()


def in_subject(text: str) -> str:
    """How ``text`` shows inside a rendered subject (templates join its words with spaces)."""
    return clean_header_text(" ".join(text.split())).strip()


def same_name(got: str, text: str) -> None:
    """A display name read by the email package: the text given, up to runs of spaces."""
    assert "".join(got.split()) == "".join(typed(text).split())


def check_name(raw: bytes, field: str, text: str) -> None:
    assert exact_phrase(header(raw, field)) == typed(text)
    same_name(read(raw)[field].addresses[0].display_name, text)


# ---------------------------------------------------------------- build_message and compose


@settings(max_examples=200, deadline=None)
@given(
    subject=NASTY,
    to_name=NASTY,
    from_name=NASTY,
    reply_name=NASTY,
    filename=NASTY,
    attach=st.booleans(),
    fast=st.booleans(),
)
def test_fields_show_as_typed_and_add_nothing(
    subject: str,
    to_name: str,
    from_name: str,
    reply_name: str,
    filename: str,
    attach: bool,
    fast: bool,
) -> None:
    def make(subject: str, to_name: str, from_name: str, reply_name: str, filename: str) -> bytes:
        args: dict[str, Any] = dict(
            sender=Mailbox("kate@agency.test", from_name),
            to=[Mailbox("ae@agency.test", to_name), Mailbox("üser@bücher.example", to_name)],
            reply_to=Mailbox("am@agency.test", reply_name),
            subject=subject,
            text="Body",
            html="<p>Body</p>",
            event="job-opened",
            key="job-opened:J100",
            thread="job:J100",
            attachments=[Attachment(filename, b"%PDF-1.4\n" * 50, "application/pdf")]
            if attach
            else [],
            date=dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC),
        )
        return compose(**args).raw if fast else to_bytes(build_message(**args))

    raw = make(subject, to_name, from_name, reply_name, filename)
    base = make("Subject", "Ann", "Kate", "Al", "file.pdf")
    assert shape(raw) == shape(base)
    msg = read(raw)
    assert [a.addr_spec for a in msg["From"].addresses] == ["kate@agency.test"]
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["am@agency.test"]
    assert str(msg["Subject"]) == typed(subject)
    check_name(raw, "From", from_name)
    check_name(raw, "Reply-To", reply_name)
    for a in msg["To"].addresses:
        same_name(a.display_name, to_name)
    if attach:
        [part] = msg.iter_attachments()
        assert filename_of(part) == (typed(filename) or None)


def test_the_reported_reproduction_adds_no_bcc() -> None:
    name = "Dan =?utf-8?q?=0D=0ABcc:_evil@attacker.example?= White"
    for fast in (False, True):
        args: dict[str, Any] = dict(
            sender=Mailbox("dan@agency.test", name),
            to=[Mailbox("dan@agency.test", name)],
            subject=name,
            text="t",
            event="message",
            key="k",
        )
        raw = compose(**args).raw if fast else to_bytes(build_message(**args))
        assert b"\nBcc" not in raw and b"evil@attacker.example" not in raw
        msg = read(raw)
        assert str(msg["Subject"]) == name
        assert exact_phrase(header(raw, "To")) == name
        assert msg["To"].addresses[0].display_name == name


# ---------------------------------------------------------------- through the command line

TRANSPORTS = ["file", "smtp"]
Sent = list[tuple[bytes, tuple[str, ...] | None]]


class Office:
    """A home set up as JD, sending through the file transport or aiosmtpd."""

    def __init__(self, cli: Cli, home: Path, transport: str, server: SMTPTestServer) -> None:
        self.cli, self.home, self.transport, self.server = cli, home, transport, server
        if transport == "smtp":
            setup_smtp(cli, server)
        else:
            assert cli("init").exit_code == 0
            r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
            assert r.exit_code == 0, r.output
            assert cli("config", "set", "user.staff", "JD").exit_code == 0
            r = cli("config", "manager", "--name", "Max Manager", "--email", "max@agency.test")
            assert r.exit_code == 0, r.output
        assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
        self.engine = connect(Settings.load(home).db_url, where="test")
        self.seen: set[Path] = set()

    def __call__(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.exit_code == 0, r.output
        return r.stdout

    def sent(self) -> Sent:
        """The messages sent since the last call, with their envelope recipients over SMTP."""
        if self.transport == "smtp":
            out: Sent = [(m.data, m.rcpt_tos) for m in self.server.messages]
            self.server.reset()
            return out
        files = sorted(set((self.home / "mail").glob("*.eml")) - self.seen)
        self.seen.update(files)
        return [(p.read_bytes(), None) for p in files]

    def update(self, table: str, key: str, **values: Any) -> None:
        t = schema.metadata.tables[table]
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == key).values(**values))


@pytest.fixture(params=TRANSPORTS)
def office(
    request: pytest.FixtureRequest, cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> Office:
    return Office(cli, home, request.param, smtp_server)


CLI_EXAMPLES = 25
CLI_SETTINGS = settings(
    max_examples=CLI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CHECK_EVENTS = (
    "job-opened,task-due-today,homebase-entry,diary-entry,billing-created,calendar-reminder"
)


@dataclass
class Fields:
    sender: str
    staff: str
    client: str
    title: str
    task: str
    subject: str
    number: str
    calendar: str
    vendor: str


class Sending(Protocol):
    """A test agency that sends (an ``Office`` here, the transport tests' ``Agency``)."""

    engine: sa.Engine

    def sent(self) -> Any: ...

    def update(self, table: str, key: str, **values: Any) -> None: ...


def new_round(
    o: Sending,
    n: int,
    tables: tuple[str, ...],
    *,
    sender: str,
    staff: str,
    client: str,
    title: str,
    task: str,
    number: str,
) -> None:
    """The rows of earlier rounds deleted from ``tables`` and the jobs, so that a round
    that failed leaves nothing for the next one to send; what was sent taken; then the
    names, and a job, a task due on D and a billing numbered ``number``, for round ``n``."""
    with o.engine.begin() as conn:
        for table in tables:
            conn.execute(schema.metadata.tables[table].delete())
        conn.execute(schema.jobs.delete().where(schema.jobs.c.id != "J100"))
    o.sent()
    o.update("staff", "JD", name=sender)
    o.update("staff", "AE", name=staff)
    o.update("clients", "C1", name=client)
    insert(o.engine, "jobs", [dict(id=f"J{n}", client_id="C1", title=title, opened_at=at(D))])
    insert(
        o.engine,
        "tasks",
        [dict(id=f"T{n}", job_id="J100", name=task, assignee_id="AE", due_date=D)],
    )
    insert(
        o.engine,
        "billings",
        [
            dict(
                id=f"B{n}",
                job_id="J100",
                client_id="C1",
                number=number,
                amount=Decimal("1200.00"),
                created_at=at(D),
                due_date=D + dt.timedelta(days=30),
            )
        ],
    )


def _check_round(o: Office, n: int, f: Fields) -> dict[tuple[str, tuple[str, ...]], bytes]:
    """New rows carrying ``f`` for every event, one `cpmail check`; the messages by (event, to).

    The rows of earlier rounds are deleted first, so that a round that failed
    leaves nothing for the next one to send.
    """
    tables = ("tasks", "homebase_entries", "diary_entries", "billings", "calendar_entries")
    fields = dict(sender=f.sender, staff=f.staff, client=f.client, title=f.title, task=f.task)
    new_round(o, n, tables, **fields, number=f.number)
    entry = dict(subject=f.subject, body="b", entered_by="JD", entered_at=at(D), notify="AE")
    insert(o.engine, "homebase_entries", [dict(id=f"H{n}", **entry)])
    insert(o.engine, "diary_entries", [dict(id=f"Y{n}", kind="client", party_id="C1", **entry)])
    o.update("vendors", "V1", name=f.vendor)
    vendor_entry = {**entry, "notify": "PR"}
    insert(
        o.engine, "diary_entries", [dict(id=f"Z{n}", kind="vendor", party_id="V1", **vendor_entry)]
    )
    insert(
        o.engine,
        "calendar_entries",
        [
            dict(
                id=f"K{n}",
                title=f.calendar,
                starts_at=at(LATER, 10),
                ends_at=at(D + dt.timedelta(days=1), 11),
                remind_at=at(D, 8),
                attendees="AE",
            )
        ],
    )
    o("check", "--date", D.isoformat(), "--only", CHECK_EVENTS)
    out: dict[tuple[str, tuple[str, ...]], bytes] = {}
    for raw, rcpt in o.sent():
        msg = read(raw)
        to = tuple(a.addr_spec for a in msg["To"].addresses)
        if rcpt is not None:
            assert rcpt == to  # the envelope names exactly the mailboxes of To
        out[(str(msg["X-Cpmail-Event"]), to)] = raw
    return out


# The data text each event's subject shows (a vendor's diary goes to PR, a client's to AE).
SUBJECT_FIELDS: dict[str, Callable[[Fields, tuple[str, ...]], list[str]]] = {
    "job-opened": lambda f, to: [f.title, f.client],
    "task-due-today": lambda f, to: [f.task],
    "homebase-entry": lambda f, to: [f.subject],
    "diary-entry": lambda f, to: [
        f.vendor if to == ("pia@agency.test",) else f.client,
        f.subject,
    ],
    "billing-created": lambda f, to: [f.number, f.client],
    "calendar-reminder": lambda f, to: [f.calendar],
}


def test_check_data_shows_as_typed_and_adds_nothing(office: Office) -> None:
    base_agency(office.engine)
    insert(office.engine, "vendors", [dict(id="V1", name="Print Co", email="print@vendor.test")])
    counter = itertools.count(1)
    plain = Fields(*(plain_label(0, w) for w in Fields.__dataclass_fields__))
    baseline = _check_round(office, next(counter), plain)
    assert {e for e, _ in baseline} == set(SUBJECT_FIELDS)
    assert ("diary-entry", ("pia@agency.test",)) in baseline  # the vendor's
    shapes = {k: shape(v) for k, v in baseline.items()}

    ran: list[int] = []

    @CLI_SETTINGS
    @given(texts=st.lists(NASTY, min_size=9, max_size=9))
    def run(texts: list[str]) -> None:
        ran.append(1)
        f = Fields(*texts)
        got = _check_round(office, next(counter), f)
        assert got.keys() == baseline.keys()
        for (event, to), raw in got.items():
            assert shape(raw) == shapes[(event, to)]
            subject = str(read(raw)["Subject"])
            for text in SUBJECT_FIELDS[event](f, to):
                assert in_subject(text) in subject
            check_name(raw, "From", f.sender)
            if to == ("alice@agency.test",):
                check_name(raw, "To", f.staff)

    run()
    assert len(ran) == CLI_EXAMPLES  # every example ran


def test_message_subject_and_sender_show_as_typed(office: Office) -> None:
    office("message", "manager", "Plain words")
    [(base_raw, base_rcpt)] = office.sent()
    base = shape(base_raw, base_rcpt)

    ran: list[int] = []

    @CLI_SETTINGS
    @given(name=NAME, subject=NASTY, body=NASTY)
    def run(name: str, subject: str, body: str) -> None:
        ran.append(1)
        office("staff", "edit", "JD", f"--name={name}")
        office("message", "manager", f"--subject={subject}", "--", body + " x")
        [(raw, rcpt)] = office.sent()
        assert shape(raw, rcpt) == base
        msg = read(raw)
        if typed(subject):
            assert str(msg["Subject"]) == typed(f"[C&P] {subject}")
        else:  # a --subject that shows as nothing gives way to the default
            assert str(msg["Subject"]).startswith("[C&P] Message from ")
        check_name(raw, "From", name)

    run()
    assert len(ran) == CLI_EXAMPLES  # every example ran


def test_staff_test_shows_the_name_as_typed(office: Office) -> None:
    office("staff", "test", "JD")
    [(base_raw, base_rcpt)] = office.sent()
    base = shape(base_raw, base_rcpt)

    ran: list[int] = []

    @CLI_SETTINGS
    @given(name=NAME)
    def run(name: str) -> None:
        ran.append(1)
        office("staff", "edit", "JD", f"--name={name}")
        office("staff", "test", "JD")
        [(raw, rcpt)] = office.sent()
        assert shape(raw, rcpt) == base
        check_name(raw, "From", name)
        check_name(raw, "To", name)

    run()
    assert len(ran) == CLI_EXAMPLES  # every example ran


def _file_name(text: str) -> str:
    """``text`` made a name a file can have: no '/', no NUL, at most 200 bytes."""
    name = text.replace("/", "_").replace("\x00", " ")
    while len(name.encode("utf-8")) > 196:
        name = name[:-1]
    return name + ".pdf" if name not in ("", ".", "..") else "x.pdf"


# A file cpmail takes for a PDF (it checks the first bytes), with every byte value in it.
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def test_send_report_file_name_and_subject_show_as_typed(office: Office, tmp_path: Path) -> None:
    data = PDF
    folder = tmp_path / "pdfs"
    folder.mkdir()
    base_agency(office.engine)
    first = folder / "invoice.pdf"
    first.write_bytes(data)
    office("send-report", str(first), "--to", "AE", "--subject=Your invoice")
    [(base_raw, base_rcpt)] = office.sent()
    base = shape(base_raw, base_rcpt)

    ran: list[int] = []

    @CLI_SETTINGS
    @given(name=NASTY, subject=NASTY, recipient=NASTY)
    def run(name: str, subject: str, recipient: str) -> None:
        ran.append(1)
        path = folder / _file_name(name)
        path.write_bytes(data)
        office.update("staff", "AE", name=recipient)
        office("send-report", str(path), "--to", "AE", f"--subject={subject}")
        path.unlink()
        [(raw, rcpt)] = office.sent()
        assert shape(raw, rcpt) == base
        msg = read(raw)
        if typed(subject):
            assert str(msg["Subject"]) == typed(subject)
        check_name(raw, "To", recipient)
        [part] = msg.iter_attachments()
        assert filename_of(part) == typed(path.name)
        assert part.get_content() == data

    run()
    assert len(ran) == CLI_EXAMPLES  # every example ran


def test_send_report_invoice_number_shows_as_typed(office: Office) -> None:
    """A rendered invoice: the billing number reaches the subject and the file name."""
    base_agency(office.engine)
    counter = itertools.count(1)

    def send(number: str) -> tuple[bytes, tuple[str, ...] | None]:
        n = next(counter)
        insert(
            office.engine,
            "billings",
            [
                dict(
                    id=f"B{n}",
                    job_id="J100",
                    client_id="C1",
                    number=number,
                    amount=Decimal("10.00"),
                    created_at=at(D),
                    due_date=D,
                )
            ],
        )
        office("send-report", "--report", "invoice", "--id", f"B{n}", "--to", "AE")
        [sent] = office.sent()
        return sent

    base = shape(*send("10234"))

    ran: list[int] = []

    @settings(CLI_SETTINGS, max_examples=5)
    # (A billing number much longer makes a file name longer than file systems take.)
    @given(number=NASTY.filter(lambda n: len(safe_filename(n)) < 120))
    def run(number: str) -> None:
        ran.append(1)
        raw, rcpt = send(number)
        assert shape(raw, rcpt) == base
        msg = read(raw)
        [part] = msg.iter_attachments()
        assert re.fullmatch(r"invoice-[A-Za-z0-9._-]+\.pdf", filename_of(part) or "")
        # (How the report's label spaces the number is not this test's business.)
        squeezed = "".join(str(msg["Subject"]).split())
        assert "".join(clean_header_text(f"Invoice {number}").split()) in squeezed

    run()
    assert len(ran) == 5


def test_bodies_and_attachments_keep_lines_within_76(office: Office) -> None:
    """A calendar reminder (.ics) and a rendered PDF: base64 and QP lines at most 76."""
    base_agency(office.engine)
    long_notes = "Agenda: " + "discuss the winter catalog layout and the print run " * 20
    insert(
        office.engine,
        "calendar_entries",
        [
            dict(
                id="K1",
                title="Winter catalog review with the whole team " * 3,
                starts_at=at(LATER, 10),
                ends_at=at(D + dt.timedelta(days=1), 11),
                remind_at=at(D, 8),
                location="Room 2",
                notes=long_notes,
                attendees="AE,CR",
            )
        ],
    )
    insert(
        office.engine,
        "billings",
        [
            dict(
                id="B1",
                job_id="J100",
                client_id="C1",
                number="10234",
                amount=Decimal("4500.00"),
                created_at=at(D),
                due_date=D,
            )
        ],
    )
    office("check", "--date", D.isoformat(), "--only", "calendar-reminder")
    reminders = office.sent()
    assert len(reminders) == 2
    office("send-report", "--report", "invoice", "--id", "B1", "--to", "AE")
    invoices = office.sent()
    assert len(invoices) == 1
    for raw, _ in reminders + invoices:
        check_wellformed(raw)  # every base64 and quoted-printable line within 76
        body = raw.split(b"\r\n\r\n", 1)[1]
        assert max(len(x) for x in body.split(b"\r\n")) <= 76
        kinds = {p.get_content_type() for p in read(raw).walk()}
        assert kinds & {"text/calendar", "application/pdf"}
        attachment = next(p for p in read(raw).walk() if p.get_content_disposition())
        assert str(attachment["Content-Transfer-Encoding"]) == "base64"


_HOSTILE_TEXT = st.lists(
    st.sampled_from(
        [
            *'ab ;:,"\\',
            "\r",
            "\n",
            "\r\n",
            "\x00",
            "\x0b",
            "\x0c",
            "\x1c",
            "\x7f",
            "\x85",
            "\u2028",
            "\u2029",
            "é",
            "BEGIN:VEVENT",
            "ATTENDEE:mailto:x@evil.test",
        ]
    ),
    max_size=12,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(title=_HOSTILE_TEXT, location=_HOSTILE_TEXT, notes=_HOSTILE_TEXT, name=_HOSTILE_TEXT)
def test_an_invitation_holds_no_control_character_and_adds_nothing(
    title: str, location: str, notes: str, name: str
) -> None:
    """RFC 5545 allows no control character in a TEXT value; data adds no property."""
    import icalendar

    from cpmail.ics import event_ics

    raw = event_ics(
        uid_seed="calendar:CE1",
        title=title or "x",
        starts_at=dt.datetime(2026, 12, 1, 10),
        ends_at=None,
        location=location or None,
        notes=notes or None,
        tz=dt.UTC,
        organizer=("ops@agency.test", name),
        attendees=[("kl@agency.test", name)],
    ).decode("utf-8")
    body = raw.replace("\r\n ", "").replace("\r\n", "\n")  # unfolded, one property a line
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", body.replace("\n", "")), body
    names = [line.split(":", 1)[0].split(";", 1)[0] for line in body.splitlines() if line]
    assert names.count("ATTENDEE") == 1 and names.count("BEGIN") == 2, names
    event = icalendar.Calendar.from_ical(raw).walk("VEVENT")[0]
    assert [
        str(a)
        for a in (
            [event["attendee"]] if not isinstance(event["attendee"], list) else event["attendee"]
        )
    ] == ["mailto:kl@agency.test"]


@pytest.mark.parametrize(
    "local",
    ["rita#patel", "a&b=c", "x{y}|z", "caret^tick`", "o'brien+tag", "per%cent", "q?uery", "sl/ash"],
)
def test_an_invitations_mailto_uri_is_the_whole_address(local: str) -> None:
    """Characters an address may hold but a mailto: URI may not hold raw are escaped
    (RFC 6068): a client reading the URI strictly finds the whole address, not a part."""
    import urllib.parse

    import icalendar

    from cpmail.addresses import check_address
    from cpmail.ics import event_ics

    address = f"{local}@agency.test"
    check_address(address)  # one cpmail takes as a work e-mail
    raw = event_ics(
        uid_seed="calendar:CE1",
        title="Shoot",
        starts_at=dt.datetime(2026, 12, 1, 10),
        ends_at=None,
        location=None,
        notes=None,
        tz=dt.UTC,
        organizer=("ops@agency.test", "Ops"),
        attendees=[(address, "Rita")],
    )
    uri = str(icalendar.Calendar.from_ical(raw).walk("VEVENT")[0]["attendee"])
    parts = urllib.parse.urlsplit(uri)
    assert (parts.scheme, parts.query, parts.fragment) == ("mailto", "", ""), uri
    assert not set(parts.path) & set("#&=^`{|}?/ "), uri
    assert urllib.parse.unquote(parts.path) == address, uri
