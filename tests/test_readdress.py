"""Mail that waits goes to the address its staff member has when it goes: one corrected
after a "550 no such user" (by `staff edit` or a new import of the staff), or changed
while the mail waited for the send window. Envelope, To header, log and the text kept
all say the new address; the message is otherwise byte for byte as it was queued."""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from pathlib import Path

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import message_bodies, messages
from tests.agency import D
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_alerts import agency, check, new_job
from tests.test_delivery import setup_smtp


def _to(received: bytes) -> str:
    return str(message_from_bytes(received, policy=policy.SMTPUTF8)["To"])


def _carl(cli: Cli) -> dict[str, object]:
    """Carl's row of the log."""
    rows = json.loads(cli("log", "--json", "--event", "job-opened").stdout)
    [row] = [r for r in rows if "carl" in r["to"][0].lower() or "reed" in r["to"][0]]
    return dict(row)


def test_a_retry_after_the_address_was_corrected_goes_to_the_new_one(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str
) -> None:
    setup_smtp(cli, smtp_server, db=backend)
    agency(home)
    new_job(home, "J1")
    smtp_server.fail_rcpt = {"carl@agency.test": "550 5.1.1 no such user"}
    assert check(cli) == 1
    failed = _carl(cli)
    assert failed["status"] == "failed" and failed["to"] == ["carl@agency.test"], failed

    r = cli("staff", "edit", "CR", "--work-email", "Carl.Reed@Agency.test")
    assert r.exit_code == 0, r.output
    smtp_server.fail_rcpt = {}
    before = len(smtp_server.messages)
    r = cli("outbox", "retry", str(failed["id"]))
    assert r.exit_code == 0, r.output

    [got] = smtp_server.messages[before:]
    assert got.rcpt_tos == ("Carl.Reed@agency.test",)
    assert _to(got.data) == "Carl Reed <Carl.Reed@agency.test>", _to(got.data)
    assert "carl@agency.test" not in got.data.decode("utf-8", "replace")
    row = _carl(cli)
    assert row["status"] == "sent" and row["to"] == ["Carl.Reed@agency.test"], row
    assert row["message_id"] == failed["message_id"]  # the same message
    assert json.loads(cli("log", "--json", "--to", "CR").stdout)[-1]["id"] == failed["id"]


def test_mail_queued_for_the_send_window_goes_to_the_address_imported_since(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    """The staff file imported again with a new address while the mail waited: it goes
    there. Someone no longer in the file, or without an address now, keeps the one the
    message has; mail to an outside address is not touched."""
    setup_smtp(cli, smtp_server)
    agency(home)
    new_job(home, "J1")
    assert cli("config", "set", "mail.send_window", "00:00-00:01").exit_code == 0
    assert check(cli) == 0 and smtp_server.messages == []
    staff_csv = tmp_path / "staff.csv"
    staff_csv.write_text("id,name,work_email\nAE,Alice Evans,alice.evans@agency.test\n")
    r = cli("data", "import", str(staff_csv), "--table", "staff")
    assert r.exit_code == 0, r.output
    engine = connect(Settings.load(home).db_url, where="test")
    try:
        with engine.begin() as conn:  # Pia has no address now
            conn.execute(sa.text("UPDATE staff SET work_email = NULL WHERE id = 'PR'"))
            texts = {
                r.message_id: bytes(r.raw)
                for r in conn.execute(
                    sa.select(messages.c.message_id, message_bodies.c.raw).where(
                        message_bodies.c.message_id == messages.c.id
                    )
                )
            }
    finally:
        engine.dispose()
    assert cli("config", "set", "mail.send_window", "").exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output

    got = {m.rcpt_tos: m for m in smtp_server.messages}
    assert set(got) == {
        ("alice.evans@agency.test",),
        ("carl@agency.test",),
        ("pia@agency.test",),
    }, set(got)
    alice = got[("alice.evans@agency.test",)]
    assert _to(alice.data) == "Alice Evans <alice.evans@agency.test>"
    mid = str(message_from_bytes(alice.data, policy=policy.SMTPUTF8)["Message-ID"])
    queued = texts[mid]
    # byte for byte as queued, but for the address in To
    assert alice.data.replace(b"\r\n", b"\n") == queued.replace(
        b"<alice@agency.test>", b"<alice.evans@agency.test>"
    ).replace(b"\r\n", b"\n")
    for who in ("carl@agency.test", "pia@agency.test"):  # as they were queued
        m = got[(who,)]
        text = m.data.replace(b"\r\n", b"\n")
        original = texts[str(message_from_bytes(m.data, policy=policy.SMTPUTF8)["Message-ID"])]
        assert text == original.replace(b"\r\n", b"\n")


def test_only_the_address_itself_is_rewritten_never_a_display_name_or_another_header() -> None:
    from cpmail.compose import readdressed

    changes = {"carl@agency.test": "carl.reed@agency.test"}
    cases = {
        b'To: "Carl carl@agency.test Reed" <carl@agency.test>': (
            b'To: "Carl carl@agency.test Reed" <carl.reed@agency.test>'
        ),
        b'To: "a \\" carl@agency.test, b" <carl@agency.test>': (
            b'To: "a \\" carl@agency.test, b" <carl.reed@agency.test>'
        ),
        b"To: carl@agency.test": b"To: carl.reed@agency.test",
        b"To: a@agency.test, carl@agency.test": b"To: a@agency.test, carl.reed@agency.test",
        b"To: Carl Reed\r\n <carl@agency.test>": b"To: Carl Reed\r\n <carl.reed@agency.test>",
        b"Cc: <carl@agency.test>": b"Cc: <carl.reed@agency.test>",
        b"To: xcarl@agency.test": b"To: xcarl@agency.test",
        b"To: carl@agency.test.uk": b"To: carl@agency.test.uk",
        b"To: =?utf-8?q?Carl_carl@agency.test?= <carl@agency.test>": (
            b"To: =?utf-8?q?Carl_carl@agency.test?= <carl.reed@agency.test>"
        ),
    }
    rest = b"\r\nSubject: carl@agency.test\r\nReply-To: <carl@agency.test>\r\n\r\n"
    rest += b"Hi carl@agency.test\r\n"
    for head, want in cases.items():
        assert readdressed(head + rest, changes) == want + rest, head
    # an address kept as typed is found in the normal form the header has it in
    moved = readdressed(b"To: <carl@agency.test>" + rest, {"carl@Agency.TEST": "c@agency.test"})
    assert moved == b"To: <c@agency.test>" + rest


def test_mail_waiting_for_someone_no_longer_active_is_not_sent_to_them(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str
) -> None:
    """A staff member made inactive while mail waited for the send window gets none of
    it, as routing would leave them out now: their own message is dropped, saying why;
    one they shared goes to the others only."""
    setup_smtp(cli, smtp_server, db=backend)
    agency(home)
    new_job(home, "J1")
    assert cli("config", "set", "mail.send_window", "00:00-00:01").exit_code == 0
    assert check(cli) == 0 and smtp_server.messages == []
    engine = connect(Settings.load(home).db_url, where="test")
    try:
        with engine.begin() as conn:  # Alice's message is Carl's too
            conn.execute(
                sa.text(
                    "UPDATE messages SET to_addrs = 'alice@agency.test,carl@agency.test', "
                    "pending_rcpts = 'alice@agency.test,carl@agency.test', "
                    """staff_ids = '["AE", "CR"]' WHERE to_addrs = 'alice@agency.test'"""
                )
            )
    finally:
        engine.dispose()
    r = cli("staff", "edit", "CR", "--inactive")
    assert r.exit_code == 0, r.output
    assert cli("config", "set", "mail.send_window", "").exit_code == 0

    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")

    assert r.exit_code == 0, r.output
    assert sorted(m.rcpt_tos for m in smtp_server.messages) == [
        ("alice@agency.test",),
        ("pia@agency.test",),
    ]
    rows = json.loads(cli("log", "--json", "--event", "job-opened").stdout)
    carl = [row for row in rows if row["to"] == ["carl@agency.test"]]
    assert [row["status"] for row in carl] == ["dropped"], rows
    assert "not sent: CR is no longer active" in (carl[0]["last_error"] or ""), carl
    assert "1 dropped (no one it was for gets it now)" in r.output, r.output
    shared = [row for row in rows if "alice@agency.test" in row["to"]]
    assert [row["status"] for row in shared] == ["sent"], shared


def test_mail_waiting_for_someone_who_muted_its_event_is_not_sent_to_them(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Muted while the mail waited: as routing would skip them now."""
    setup_smtp(cli, smtp_server)
    agency(home)
    new_job(home, "J1")
    assert cli("config", "set", "mail.send_window", "00:00-00:01").exit_code == 0
    assert check(cli) == 0 and smtp_server.messages == []
    r = cli("staff", "mute", "CR", "job-opened")
    assert r.exit_code == 0, r.output
    assert cli("config", "set", "mail.send_window", "").exit_code == 0

    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")

    assert r.exit_code == 0, r.output
    assert "carl@agency.test" not in {a for m in smtp_server.messages for a in m.rcpt_tos}
    assert len(smtp_server.messages) == 2
    rows = json.loads(cli("log", "--json", "--event", "job-opened").stdout)
    [carl] = [row for row in rows if row["to"] == ["carl@agency.test"]]
    assert carl["status"] == "dropped", carl
    assert "not sent: CR muted job-opened" in (carl["last_error"] or ""), carl
    assert "1 dropped (no one it was for gets it now)" in r.output, r.output


_PIECES = [*'Carl Reéd,;:"\\<>()@.', "carl@agency.test", ",carl@agency.test,", "<carl@agency.test>"]
_NAME = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)
_WHO = st.sampled_from(["carl@agency.test", "ann@agency.test", "carla@agency.test"])


@settings(max_examples=150, deadline=None)
@given(people=st.lists(st.tuples(_NAME, _WHO), min_size=1, max_size=4))
def test_a_header_of_any_names_has_only_its_addresses_moved(
    people: list[tuple[str, str]],
) -> None:
    """To and Cc as cpmail writes them, of generated display names (quotes, commas, angle
    brackets, the old address itself, accents, folding): after re-addressing, each
    mailbox of the old address has the new one and the same name, every other mailbox
    and every other byte is as it was."""
    from email.message import EmailMessage
    from email.policy import SMTP

    from cpmail.compose import Mailbox, address_header, readdressed

    msg = EmailMessage(policy=SMTP)
    msg["From"] = "ops@agency.test"
    for field in ("To", "Cc"):
        msg[field] = address_header(field, [Mailbox(a, name) for name, a in people])
    msg["Subject"] = "carl@agency.test"
    msg.set_content("Hi carl@agency.test\n")
    raw = msg.as_bytes()

    moved = readdressed(raw, {"carl@agency.test": "carl.reed@agency.test"})

    def mailboxes(text: bytes) -> list[tuple[str, str]]:
        parsed = message_from_bytes(text, policy=policy.SMTPUTF8)
        return [(a.display_name, a.addr_spec) for f in ("To", "Cc") for a in parsed[f].addresses]

    new = "carl.reed@agency.test"
    assert mailboxes(moved) == [
        (name, new if a == "carl@agency.test" else a) for name, a in mailboxes(raw)
    ]
    head, body = moved.split(b"\r\n\r\n", 1)
    assert body == raw.split(b"\r\n\r\n", 1)[1]
    kept = [f for f in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if f[:3] in (b"Fro", b"Sub")]
    assert all(f in head.split(b"\r\n") for f in kept)
