"""Messages: headers of SPEC §7, and nothing from data can add a header or a recipient."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.addresses import clean_header_text
from cpmail.compose import Attachment, Mailbox, build_message, message_id_for, to_bytes
from cpmail.errors import InputError


def make(subject: str = "Hello", name: str = "Jane Doe", **kw: object) -> bytes:
    msg = build_message(
        sender=Mailbox("jd@agency.test", "Agency"),
        to=[Mailbox("ae@agency.test", name)],
        subject=subject,
        text="Body",
        html="<p>Body</p>",
        event="job-opened",
        key="job-opened:J100",
        thread="job:J100",
        **kw,  # type: ignore[arg-type]
    )
    return to_bytes(msg)


def test_headers_and_parts() -> None:
    raw = make()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["X-Cpmail-Event"] == "job-opened"
    assert msg["Message-ID"] == message_id_for("job-opened:J100", "agency.test")
    assert msg["References"] == msg["In-Reply-To"]
    assert msg["References"].startswith("<thread-")
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert not msg.defects


def test_message_id_is_stable_and_thread_shared() -> None:
    a = message_from_bytes(make(), policy=policy.default)
    b = message_from_bytes(make(subject="Other"), policy=policy.default)
    assert a["Message-ID"] == b["Message-ID"]
    other = build_message(
        sender=Mailbox("jd@agency.test"),
        to=[Mailbox("x@agency.test")],
        subject="s",
        text="t",
        event="task-due-today",
        key="task-due-today:T1:2026-11-24",
        thread="job:J100",
    )
    assert other["References"] == a["References"]
    assert other["Message-ID"] != a["Message-ID"]


def test_attachment_kept_byte_for_byte() -> None:
    data = bytes(range(256)) * 10
    raw = make(attachments=[Attachment("invoice 10234.pdf", data, "application/pdf")])
    msg = message_from_bytes(raw, policy=policy.default)
    atts = list(msg.iter_attachments())
    assert len(atts) == 1
    assert atts[0].get_filename() == "invoice 10234.pdf"
    assert atts[0].get_content_type() == "application/pdf"
    assert atts[0].get_content() == data


@pytest.mark.parametrize("bad", ["a@b.test, c@d.test", "x@y.test\r\nBcc: evil@e.test", "nobody"])
def test_bad_address_is_refused(bad: str) -> None:
    with pytest.raises(InputError):
        build_message(
            sender=Mailbox("jd@agency.test"),
            to=[Mailbox(bad)],
            subject="s",
            text="t",
            event="e",
            key="k",
        )


HEADER_LINE = re.compile(rb"^([A-Za-z0-9-]+):", re.M)


@settings(max_examples=200, deadline=None)
@given(
    subject=st.text(alphabet=st.characters(codec="utf-8"), max_size=120)
    | st.sampled_from(["x\r\nBcc: evil@e.test", "x\nTo: evil@e.test", "a\x00b\r\n\r\nbody"]),
    name=st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.sampled_from(['Eve"\r\nBcc: evil@e.test', "Mallory <evil@e.test>", "x,y@e.test"]),
)
def test_data_cannot_add_headers_or_recipients(subject: str, name: str) -> None:
    raw = make(subject=subject, name=name)
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [m.group(1).lower() for m in HEADER_LINE.finditer(head)]
    assert sorted(set(names)) == sorted(
        {
            b"from",
            b"to",
            b"subject",
            b"date",
            b"message-id",
            b"references",
            b"in-reply-to",
            b"auto-submitted",
            b"x-auto-response-suppress",
            b"x-cpmail-event",
            b"content-type",
            b"mime-version",
        }
    )
    assert names.count(b"to") == 1 and b"bcc" not in names and b"cc" not in names
    msg = message_from_bytes(raw, policy=policy.default)
    assert [a.addr_spec for a in msg["To"].addresses] == ["ae@agency.test"]
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])


# ``compose`` writes the bytes of the common message directly (cpmail check sends
# thousands); it must mean exactly what ``build_message`` means.
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
_NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    subject=_TEXT
    | st.sampled_from(["[C&P] Job J100 opened: Winter catalog", "x\r\nBcc: e@e.test"]),
    name=_NAME | st.sampled_from(["Jane Doe", "O'Brien, Pat", 'Eve "E" Smith', ""]),
    text=_TEXT,
    html=st.none() | _TEXT,
    thread=st.none() | st.sampled_from(["job:J100", "job:J2"]),
    ics=st.booleans(),
)
def test_compose_means_what_build_message_means(
    subject: str, name: str, text: str, html: str | None, thread: str | None, ics: bool
) -> None:
    import datetime as dt

    from cpmail.compose import compose

    args = dict(
        sender=Mailbox("kate@agency.test", "Kate Morgan"),
        to=[Mailbox("ae@agency.test", name)],
        subject=subject,
        text=text,
        html=html,
        event="job-opened",
        key="job-opened:J100",
        thread=thread,
        attachments=[Attachment("x.ics", b"BEGIN:VCALENDAR\r\n", "text/calendar")] if ics else [],
        date=dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC),
    )
    fast = message_from_bytes(compose(**args).raw, policy=policy.default)  # type: ignore[arg-type]
    slow = message_from_bytes(to_bytes(build_message(**args)), policy=policy.default)  # type: ignore[arg-type]
    assert not fast.defects
    assert [(k, str(v)) for k, v in fast.items() if k != "Content-Type"] == [
        (k, str(v)) for k, v in slow.items() if k != "Content-Type"
    ]
    fast_parts = [
        (p.get_content_type(), p.get_filename(), p.get_content())
        for p in fast.walk()
        if not p.is_multipart()
    ]
    slow_parts = [
        (p.get_content_type(), p.get_filename(), p.get_content())
        for p in slow.walk()
        if not p.is_multipart()
    ]
    assert fast_parts == slow_parts


# ---- line lengths (RFC 2045 for bodies, folded headers)

# binascii.b2a_qp writes a line of 77 characters for this text (white space it
# encodes at a line end); the fast composer cuts it again.
QP_77 = (
    "xé\tx\x7f\t\t\x7f日é aa\té\x1b\t日.\x1b\x7f\t= \x7fa \x7f\x1b\x1b\x7f\x1bx\tx\x7f \t日é \té.xx"
    "\x1b日\x7f日\x1b.\tx \x7f日\x1b\x1b\x1b====é日  xéé日 "
)


def _body_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")


@pytest.mark.parametrize("fast", [False, True])
def test_every_body_line_is_at_most_76(fast: bool) -> None:
    from cpmail.compose import compose

    long_line = "Agenda: " + "the winter catalog layout, the print run and the budget " * 30
    args: dict[str, object] = dict(
        sender=Mailbox("jd@agency.test", "Agency"),
        to=[Mailbox("ae@agency.test", "Alice")],
        subject="Reminder",
        text=f"{long_line}\n{QP_77}\n" + "é" * 500,
        html=f"<p>{long_line}</p><p>{QP_77}</p>",
        event="calendar-reminder",
        key="k",
        attachments=[
            Attachment(
                "review.ics", ("DESCRIPTION:" + long_line + "\r\n").encode(), "text/calendar"
            ),
            Attachment("invoice.pdf", bytes(range(256)) * 200, "application/pdf"),
        ]
        if not fast
        else [],
    )
    raw = compose(**args).raw if fast else to_bytes(build_message(**args))  # type: ignore[arg-type]
    assert max(len(x) for x in _body_lines(raw)) <= 76
    msg = message_from_bytes(raw, policy=policy.default)
    plain, rich = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and rich is not None
    text, html = (str(p.get_content()).replace("\r\n", "\n") for p in (plain, rich))
    assert text == f"{long_line}\n{QP_77}\n" + "é" * 500 + "\n"
    assert html.rstrip("\n") == f"<p>{long_line}</p><p>{QP_77}</p>"


def test_a_long_subject_and_name_fold_within_76() -> None:
    subject = "Job J100 opened: " + "Winter catalog with a very long title indeed " * 8
    name = "Maria-Theresia Walburga Amalia Christina von Habsburg-Lothringen " * 2
    raw = make(subject=subject, name=name)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(x) for x in head.split(b"\r\n")) <= 76
    msg = message_from_bytes(raw, policy=policy.default)
    assert str(msg["Subject"]) == subject.strip()
    assert msg["To"].addresses[0].display_name == name.strip()


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x10FFFF, exclude_categories=["Cs"]),
        min_size=1,
        max_size=80,
    ).map(lambda s: s + ".pdf")
)
def test_an_attachment_name_is_never_cut_inside_a_character(name: str) -> None:
    """RFC 2231 segments each decode alone, and the whole name reads back as given."""
    import urllib.parse

    msg = build_message(
        sender=Mailbox("jd@agency.test"),
        to=[Mailbox("pat@agency.test")],
        subject="Report",
        text="Attached.",
        event="report",
        key="report:x",
        attachments=[Attachment(name, b"%PDF-1.4\n", "application/pdf")],
    )
    raw = to_bytes(msg)
    parsed = message_from_bytes(raw, policy=policy.default)
    part = next(p for p in parsed.walk() if p.get_content_disposition() == "attachment")
    assert not part["Content-Disposition"].defects, part["Content-Disposition"].defects
    header = raw.split(b"Content-Disposition:", 1)[1].split(b"\r\n\r\n", 1)[0].decode("ascii")
    for segment in re.findall(r"filename\*\d*\*=(?:utf-8'')?([^;\s]+)", header):
        urllib.parse.unquote(segment, errors="strict")  # each segment is whole UTF-8
    assert part.get_filename() == clean_header_text(name).strip()
