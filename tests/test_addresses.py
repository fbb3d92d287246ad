"""Addresses: each odd form refused where it enters, each good one delivered to exactly its mailbox.

International addresses travel in UTF-8 (RFC 6531/6532): the envelope names
the stored address and the header holds it as typed, never an encoded-word
inside an address. A stored address that does not validate (data written
before validation, or by hand) skips only that person at send time.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from email import message_from_string, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.addresses import _PLAIN, _examine, _validate, check_address, valid_address
from cpmail.compose import Mailbox, build_message, compose, to_bytes
from cpmail.errors import InputError
from cpmail.settings import Settings
from cpmail.store import connect
from tests.agency import D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

# Each odd form the address checks must refuse, with a word of the reason.
REFUSED = [
    ("a@b.test,c@d.test", "not a list"),
    ("a@b.test;c@d.test", "not a list"),
    ('"a@b"@x.test', "quoted"),
    ('"jd"@agency.test', "quoted"),
    ("Name <a@b.test>", "without a name"),
    ("<a@b.test>", "without a name"),
    ("a b@x.test", "space"),
    ("a@b.test\r\nBcc: evil@e.test", "line break"),
    ("a@b.test\x00", "line break"),
    ("=?utf-8?q?a=40b?=@agency.test", "encoded word"),
    ("jd@=?utf-8?q?agency?=.test", "encoded word"),
    ("l" * 65 + "@agency.test", "too long"),
    ("a@" + "d" * 300 + ".test", "not a valid"),
    ("a@" + ".".join(["d" * 60] * 5) + ".test", "too long"),
    ("nobody", "no @"),
    ("", "empty"),
    ("a..b@x.test", "not a valid"),
    (".a@x.test", "not a valid"),
    ("a@[192.168.0.1]", "not a valid"),
    ("a@192.168.0.1", "number"),
    ("a(comment)@x.test", "not a valid"),
    ("a@x_y.test", "not a valid"),
    ("a@xn--zz.test", "not a valid"),
]

# Good addresses and the form they are stored in.
ACCEPTED = [
    ("jd@agency.test", "jd@agency.test"),
    ("  jd@agency.test ", "jd@agency.test"),
    ("Jane.Doe+cpmail@Agency.Test", "Jane.Doe+cpmail@agency.test"),
    ("üser@agency.test", "üser@agency.test"),
    ("user@bücher.example", "user@bücher.example"),
    ("user@BÜCHER.example", "user@bücher.example"),
    ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
    ("用户@例子.广告", "用户@例子.广告"),
    ("cpmail@localhost", "cpmail@localhost"),
    ("l" * 64 + "@agency.test", "l" * 64 + "@agency.test"),
]

# Three mailboxes: an international name and the same domain in punycode, each sent as written.
INTERNATIONAL = ["üser@agency.test", "user@bücher.example", "other@xn--bcher-kva.example"]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_an_odd_address_is_refused_naming_the_place(address: str, why: str) -> None:
    with pytest.raises(InputError) as e:
        check_address(address, where="staff.csv line 4, JD, work_email")
    assert str(e.value).startswith("staff.csv line 4, JD, work_email: ")
    assert why in str(e.value)
    assert not valid_address(address)


@pytest.mark.parametrize(("address", "stored"), ACCEPTED)
def test_a_good_address_is_accepted_in_its_normal_form(address: str, stored: str) -> None:
    assert check_address(address) == stored
    assert check_address(stored) == stored
    assert valid_address(address)


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_a_message_to_an_odd_address_is_never_built(address: str, why: str) -> None:
    for make in (build_message, compose):
        with pytest.raises(InputError):
            make(
                sender=Mailbox("jd@agency.test"),
                to=[Mailbox(address, "Someone")],
                subject="s",
                text="t",
                event="e",
                key="k",
            )


def utf8_message(raw: bytes) -> EmailMessage:
    """Read a message the way an RFC 6532 reader does: headers in UTF-8."""
    msg = message_from_string(raw.decode("utf-8"), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_lines(raw: bytes, name: str) -> str:
    """The raw (unfolded) text of header ``name``."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", head)
    [line] = [h for h in unfolded.split("\r\n") if h.lower().startswith(name.lower() + ":")]
    return line.split(":", 1)[1].strip()


@pytest.mark.parametrize("address", INTERNATIONAL)
def test_an_international_address_is_written_in_utf8(address: str) -> None:
    for make in ("build", "compose"):
        args = dict(
            sender=Mailbox(address, "Ünïcode Sender"),
            to=[Mailbox(address, "Jürgen Müller")],
            reply_to=Mailbox(address),
            subject="Grüße",
            text="t",
            html="<p>t</p>",
            event="job-opened",
            key="k",
        )
        built = to_bytes(build_message(**args))  # type: ignore[arg-type]
        raw = built if make == "build" else compose(**args).raw  # type: ignore[arg-type]
        assert header_lines(raw, "To").endswith(f"<{address}>")
        assert header_lines(raw, "From").endswith(f"<{address}>")
        assert header_lines(raw, "Reply-To") == address
        msg = utf8_message(raw)
        for name in ("From", "To", "Reply-To"):
            [a] = msg[name].addresses
            assert a.addr_spec == address
        assert msg["To"].addresses[0].display_name == "Jürgen Müller"
        assert not msg.defects


# ---- through the command line


def _odd_staff_address(cli: Cli, option: str, address: str) -> None:
    r = cli("staff", "edit", "ZZ", option, address)
    assert r.exit_code == 2, r.output
    assert option in r.stderr
    listed = json.loads(cli("staff", "list", "--json").stdout)
    assert [s["work_email"] for s in listed if s["id"] == "ZZ"] == ["zed@agency.test"]


@pytest.mark.parametrize(("address", "why"), REFUSED[:12])
def test_staff_add_refuses_an_odd_address(initialised: Cli, address: str, why: str) -> None:
    r = initialised("staff", "add", "ZZ", "--name", "Zed", "--work-email", address)
    assert r.exit_code == 2, r.output
    assert "--work-email" in r.stderr and why in r.stderr
    assert json.loads(initialised("staff", "list", "--json").stdout) == []


def test_staff_edit_refuses_odd_addresses(initialised: Cli) -> None:
    r = initialised("staff", "add", "ZZ", "--name", "Zed", "--work-email", "zed@agency.test")
    assert r.exit_code == 0, r.output
    _odd_staff_address(initialised, "--work-email", "a@b.test,c@d.test")
    _odd_staff_address(initialised, "--username", "Zed <zed@agency.test>")
    _odd_staff_address(initialised, "--work-email", "=?utf-8?q?a=40b?=@agency.test")


@pytest.mark.parametrize("address", INTERNATIONAL)
def test_staff_test_reaches_exactly_the_stored_mailbox(
    cli: Cli, smtp_server: SMTPTestServer, address: str
) -> None:
    setup_smtp(cli, smtp_server)
    r = cli("staff", "add", "UE", "--name", "Ünal Ölçer", "--work-email", address)
    assert r.exit_code == 0, r.output
    assert address in r.stdout
    r = cli("staff", "test", "UE")
    assert r.exit_code == 0, r.output
    [got] = smtp_server.messages
    assert got.rcpt_tos == (address,)
    assert ("SMTPUTF8" in got.mail_options) == (not address.isascii())
    # The name may be an encoded-word; the address is written exactly as stored.
    assert header_lines(got.data, "To").endswith(f"?= <{address}>")
    msg = utf8_message(got.data)
    [to] = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ünal Ölçer", address)


def test_an_international_sender_asks_for_smtputf8(cli: Cli, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    r = cli("staff", "add", "UE", "--name", "Ünal", "--work-email", "ünal@bücher.example")
    assert r.exit_code == 0, r.output
    r = cli("message", "manager", "Hello from Ünal", "--as", "UE")
    assert r.exit_code == 0, r.output
    [got] = smtp_server.messages
    assert got.mail_from == "ünal@bücher.example"
    assert "SMTPUTF8" in got.mail_options
    assert got.rcpt_tos == ("max@agency.test",)
    assert utf8_message(got.data)["From"].addresses[0].addr_spec == "ünal@bücher.example"


@pytest.mark.parametrize(
    ("stored", "normal"),
    [
        ("JD@Agency.TEST", "JD@agency.test"),
        (" jd@agency.test ", "jd@agency.test"),  # (spaces around it, written by hand)
        ("u\u0308nal@agency.test", "\u00fcnal@agency.test"),  # (decomposed, as a Mac types it)
    ],
)
@pytest.mark.parametrize("one_account", [False, True])
def test_the_envelope_sender_is_the_address_the_from_header_shows(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, stored: str, normal: str, one_account: bool
) -> None:
    """However the sending address is written where it is kept (a staff row, written by
    hand or by the agency's system; the one-account setting), MAIL FROM is its normal form,
    the one From shows: a space kept around it made every message fail for good."""
    from cpmail.store.schema import staff

    setup_smtp(cli, smtp_server)
    if one_account:
        s = Settings.load(home)
        s.set("mail.one_account", True)
        s.set("mail.sender", stored.strip())  # (a setting is kept without its spaces)
        s.save()
    else:
        with _engine(home).begin() as conn:
            conn.execute(staff.update().where(staff.c.id == "JD").values(username=stored))
    for command in (("message", "manager", "Hello"), ("staff", "test", "JD")):
        r = cli(*command)
        assert r.exit_code == 0, r.output
    assert len(smtp_server.messages) == 2
    for got in smtp_server.messages:
        [sender] = utf8_message(got.data)["From"].addresses
        assert got.mail_from == sender.addr_spec == normal


def _engine(home: Path):  # type: ignore[no-untyped-def]
    return connect(Settings.load(home).db_url, where="test")


def test_check_sends_to_international_staff_in_utf8(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = _engine(home)
    base_agency(engine)
    insert(
        engine,
        "staff",
        [
            dict(id=f"I{i}", name=f"Intl {i}", work_email=a, planned_hours=Decimal(0))
            for i, a in enumerate(INTERNATIONAL)
        ],
    )
    insert(
        engine,
        "client_team",
        [dict(client_id="C1", staff_id=f"I{i}", role="ae") for i in range(len(INTERNATIONAL))],
    )
    insert(engine, "jobs", [dict(id="J200", client_id="C1", title="Spring", opened_at=at(D))])
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    by_rcpt = {m.rcpt_tos: m for m in smtp_server.messages}
    for address in INTERNATIONAL:
        got = by_rcpt[(address,)]
        assert ("SMTPUTF8" in got.mail_options) == (not address.isascii())
        assert header_lines(got.data, "To").endswith(f"<{address}>")
        assert utf8_message(got.data)["To"].addresses[0].addr_spec == address


BAD_STORED = {
    "B1": "a@b.test,c@d.test",
    "B2": '"a@b"@x.test',
    "B3": "Name <a@b.test>",
    "B4": "a b@x.test",
    "B5": "=?utf-8?q?a=40b?=@agency.test",
    "B6": "l" * 300 + "@agency.test",
}


def test_a_bad_stored_address_skips_only_that_person(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = _engine(home)
    base_agency(engine)
    # Written straight into the table, as data from before validation would be.
    insert(
        engine,
        "staff",
        [
            dict(id=sid, name=f"Bad {sid}", work_email=a, planned_hours=Decimal(0))
            for sid, a in BAD_STORED.items()
        ],
    )
    insert(
        engine, "client_team", [dict(client_id="C1", staff_id=sid, role="ae") for sid in BAD_STORED]
    )
    insert(engine, "jobs", [dict(id="J200", client_id="C1", title="Spring", opened_at=at(D))])
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    assert r.exit_code == 0, r.output
    # The job opened on D reaches the good team members, one message each.
    rcpts = sorted(rc for m in smtp_server.messages for rc in m.rcpt_tos)
    assert rcpts == ["alice@agency.test", "carl@agency.test", "pia@agency.test"]
    for m in smtp_server.messages:
        assert b"a@b" not in m.data and b"=?utf-8?q?a=40b" not in m.data
    summary = json.loads(r.stdout)
    text = json.dumps(summary)
    for sid in BAD_STORED:
        assert f"bad address ({sid})" in text
    # The table names them too.
    smtp_server.reset()
    insert(engine, "jobs", [dict(id="J300", client_id="C1", title="Autumn", opened_at=at(D))])
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    assert "bad address (B1)" in r.stdout and "bad address (B6)" in r.stdout
    assert len(smtp_server.messages) == 3


def test_a_server_without_smtputf8_fails_only_the_international_mail(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    # aiosmtpd offers SMTPUTF8 unless told not to; each new connection reads this.
    smtp_server._controller.SMTP_kwargs["enable_SMTPUTF8"] = False
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = _engine(home)
    base_agency(engine)
    insert(
        engine,
        "staff",
        [dict(id="UE", name="Ünal", work_email="üser@agency.test", planned_hours=Decimal(0))],
    )
    insert(engine, "client_team", [dict(client_id="C1", staff_id="UE", role="ae")])
    insert(engine, "jobs", [dict(id="J200", client_id="C1", title="Spring", opened_at=at(D))])
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 1, r.output
    rcpts = sorted(rc for m in smtp_server.messages for rc in m.rcpt_tos)
    # Everyone else got both jobs; the manager hears of the failure.
    assert rcpts == ["alice@agency.test", "carl@agency.test", "max@agency.test", "pia@agency.test"]
    [failed] = json.loads(cli("outbox", "--json").stdout)
    assert (failed["status"], failed["to"]) == ("failed", ["üser@agency.test"])
    assert "no SMTPUTF8" in failed["last_error"]


_LOCAL_CHARS = "abcXYZ019._+-"
_LABEL_CHARS = "abcXYZ019-"
_TLDS = [
    "com",
    "TEST",
    "test",
    "local",
    "lan",
    "arpa",
    "invalid",
    "onion",
    "localhost",
    "x",
    "example",
    "xn--p1ai",
    "c0m",
    "museum",
    "a" * 63,
    "a" * 64,
]
_EDGE = [1, 2, 61, 62, 63, 64, 65]  # lengths at the limits of a local part and a label


@st.composite
def _near_plain(draw: st.DrawFn) -> str:
    """Addresses at and around the edges of what `_PLAIN` takes."""
    local = draw(
        st.text(_LOCAL_CHARS, min_size=1, max_size=12)
        | st.builds(lambda n, c: c * n, st.sampled_from(_EDGE), st.sampled_from("aZ9"))
    )
    label = (
        st.text(_LABEL_CHARS, min_size=1, max_size=8)
        | st.builds(lambda n: "b" * n, st.sampled_from(_EDGE))
        | st.sampled_from(["xn--bcher-kva", "a--b", "-a", "a-", "a_b"])
    )
    labels = draw(
        st.lists(label, min_size=0, max_size=5)
        # domains of 250 to 256 characters: around the limit of 253
        | st.builds(lambda n: ["b" * 63] * 3 + ["b" * n], st.integers(55, 61))
    )
    tld = draw(st.sampled_from(_TLDS) | st.text(_LABEL_CHARS, min_size=1, max_size=4))
    return f"{local}@{'.'.join([*labels, tld])}"


def test_the_quick_path_for_plain_addresses_agrees_with_email_validator() -> None:
    """Where `_PLAIN` matches, `_examine` answers without email-validator: the same answer."""
    compared: list[str] = []

    @settings(max_examples=1500, deadline=None, database=None)
    @given(_near_plain() | st.text("ab.-_+@Z9", min_size=3, max_size=20))
    def agree(address: str) -> None:
        if _PLAIN.match(address):
            assert _examine.__wrapped__(address) == _validate(address), address
            compared.append(address)

    agree()
    assert len(compared) > 50, len(compared)
    accepted = [a for a in compared if valid_address(a)]
    assert accepted and len(accepted) < len(compared)  # both answers were compared
    assert check_address("Jane.Doe+x@Agency.TEST") == "Jane.Doe+x@agency.test"
