"""`cpmail send-report`: the PDF arrives byte for byte, or nothing is sent at all."""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa

from cpmail.store.schema import messages
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_reports import AGENCY, engine_of, seed, set_agency

pytest_plugins = ["tests.smtpserver"]


@pytest.fixture
def agency(initialised: Cli, home: Path) -> Cli:
    """An agency whose machine acts as JD (who has cash-flow access)."""
    seed(home)
    set_agency(initialised, **{"user.staff": "JD"})
    return initialised


def sent(home: Path) -> list[EmailMessage]:
    """The messages the file transport wrote, oldest first."""
    out = []
    for path in sorted((home / "mail").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def rows(home: Path) -> list[sa.Row[tuple[str, str, str]]]:
    with engine_of(home).connect() as conn:
        q = sa.select(messages.c.event, messages.c.status, messages.c.to_addrs)
        return list(conn.execute(q.order_by(messages.c.id)).all())


def pdf_attachment(msg: EmailMessage) -> tuple[str | None, str, bytes]:
    parts = list(msg.iter_attachments())
    assert len(parts) == 1
    part = parts[0]
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, bytes)
    return part.get_filename(), part.get_content_type(), content


def make_pdf(cli: Cli, path: Path, *args: str) -> bytes:
    r = cli("report", *args, "--out", str(path))
    assert r.exit_code == 0, r.output
    return path.read_bytes()


def test_a_file_is_attached_byte_for_byte_with_its_name(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    pdf = make_pdf(agency, tmp_path / "Northwind March.pdf", "invoice", "B1")
    r = agency(
        "send-report",
        str(tmp_path / "Northwind March.pdf"),
        "--to",
        "ap@northwind.test,KL",
        "--message",
        "Here is March.",
    )
    assert r.exit_code == 0, r.output
    assert "Northwind March.pdf" in r.stdout and "ap@northwind.test" in r.stdout
    [msg] = sent(home)
    assert pdf_attachment(msg) == ("Northwind March.pdf", "application/pdf", pdf)
    assert msg["To"].addresses[0].addr_spec == "ap@northwind.test"
    assert msg["To"].addresses[1].addr_spec == "kl@agency.test"  # staff ID -> work e-mail
    assert msg["From"].addresses[0].addr_spec == "jd@agency.test"
    assert msg["Subject"] == f"Northwind March.pdf from {AGENCY}"
    assert msg["Auto-Submitted"] is None  # a person sends this, not a robot
    assert msg["X-Cpmail-Event"] == "report"
    body = msg.get_body(("plain",))
    assert body is not None and "Here is March." in body.get_content()
    assert [tuple(r) for r in rows(home)] == [
        ("report", "sent", "ap@northwind.test,kl@agency.test")
    ]


def test_invoice_goes_to_the_clients_billing_address_by_default(agency: Cli, home: Path) -> None:
    r = agency("send-report", "--report", "invoice", "--id", "B1", "--as-of", "2026-03-31")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert [a.addr_spec for a in msg["To"].addresses] == ["ap@northwind.test"]
    assert msg["To"].addresses[0].display_name == "Northwind Coffee Co."
    # to a client: no internal prefix; the document and the agency
    assert msg["Subject"] == f"Invoice 10234 from {AGENCY}"
    name, ctype, data = pdf_attachment(msg)
    assert (name, ctype) == ("invoice-10234.pdf", "application/pdf")
    assert data.startswith(b"%PDF-")
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "invoice 10234 for job 1234 Spring campaign 2026" in text
    assert "Jane Doe" in text


def test_purchase_order_goes_to_the_vendor_by_default(agency: Cli, home: Path) -> None:
    r = agency(
        "send-report",
        "--report",
        "purchase-order",
        "--id",
        "PO-501",
        "--subject",
        "PO for the posters",
        "--message-file",
        "-",
        input="Please deliver by Friday.\n",
    )
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert [a.addr_spec for a in msg["To"].addresses] == ["orders@lakeside.test"]
    assert msg["Subject"] == "PO for the posters"
    assert pdf_attachment(msg)[0] == "purchase-order-PO-501.pdf"
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Please deliver by Friday."


def test_estimate_with_a_note_from_a_file(agency: Cli, home: Path, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("Dear Ana,\n\nthe estimate we discussed.\n", encoding="utf-8")
    r = agency("send-report", "--report", "estimate", "--id", "E77", "--message-file", str(note))
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert [a.addr_spec for a in msg["To"].addresses] == ["ap@northwind.test"]
    body = msg.get_body(("plain",))
    assert body is not None and "the estimate we discussed." in body.get_content()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "fake.pdf").write_text("Invoice 10234\nTotal 15,911.25\n")
    (tmp_path / "big.pdf").write_bytes(b"%PDF-1.7\n" + b"0" * (1024 * 1024 + 1))
    (tmp_path / "ok.pdf").write_bytes(b"%PDF-1.7\n%%EOF\n")
    (tmp_path / "folder.pdf").mkdir()
    return {p.stem: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("{missing}", "--to", "a@b.test"), "does not exist"),
        (("{empty}", "--to", "a@b.test"), "is empty"),
        (("{fake}", "--to", "a@b.test"), "is not a PDF"),
        (("{folder}", "--to", "a@b.test"), "is not a file"),
        (("{big}", "--to", "a@b.test"), "max_attachment_mb"),
        (("{ok}", "--to", "ZZ"), "ZZ"),
        (("{ok}", "--to", "someone@"), "someone@"),
        (("{ok}", "--to", "a@b.test,x@y@z"), "x@y@z"),
        (("{ok}",), "no recipient"),
        (("{ok}", "--report", "invoice", "--id", "B1"), "not both"),
        ((), "FILE.pdf or --report"),
        (("{ok}", "--id", "B1", "--to", "a@b.test"), "--id"),
        (("--report", "invoice", "--id", "NOPE"), "no billing with id or number 'NOPE'"),
        (("--report", "invoice", "--id", "B2"), "client C2 (Blue Harbor Bank) has no billing"),
        (("--report", "cash-flow"), "no default recipient"),
        (("--report", "memo", "--to", "a@b.test"), "'memo'"),
        (("{ok}", "--to", "a@b.test", "--message", "x", "--message-file", "{ok}"), "not both"),
        (("{ok}", "--to", "a@b.test", "--message-file", "{missing}"), "does not exist"),
        (("{ok}", "--to", "a@b.test", "--as", "NOBODY"), "NOBODY"),
    ],
)
def test_refusals_exit_2_and_send_nothing(
    agency: Cli,
    home: Path,
    files: dict[str, Path],
    args: tuple[str, ...],
    says: str,
) -> None:
    agency("config", "set", "mail.max_attachment_mb", "1")
    paths = {k: str(v) for k, v in files.items()} | {
        "missing": str(files["ok"].with_name("no.pdf"))
    }
    r = agency("send-report", *(a.format(**paths) for a in args))
    assert r.exit_code == 2, r.output
    assert says in r.stderr
    assert r.stderr.count("\n") == 1  # one sentence on one line
    assert sent(home) == []
    assert rows(home) == []


def test_a_message_larger_than_the_transport_takes_is_refused(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    # 27 MB passes max_attachment_mb = 40, but base64 makes the message
    # larger than the 35 MB the file transport takes.
    big = tmp_path / "scan.pdf"
    big.write_bytes(b"%PDF-1.7\n" + b"\x00" * (27 * 1024 * 1024))
    agency("config", "set", "mail.max_attachment_mb", "40")
    r = agency("send-report", str(big), "--to", "a@b.test")
    assert r.exit_code == 2, r.output
    assert "scan.pdf" in r.stderr and "at most" in r.stderr
    assert sent(home) == [] and rows(home) == []


def test_mail_switched_off_sends_nothing(agency: Cli, home: Path, tmp_path: Path) -> None:
    make_pdf(agency, tmp_path / "i.pdf", "invoice", "B1")
    agency("config", "set", "mail.enabled", "false")
    r = agency("send-report", str(tmp_path / "i.pdf"), "--to", "a@b.test")
    assert r.exit_code == 2
    assert "config enable" in r.stderr
    assert sent(home) == [] and rows(home) == []


# ---------------------------------------------------------------- cash flow


def test_cash_flow_goes_to_staff_with_access(agency: Cli, home: Path) -> None:
    r = agency("send-report", "--report", "cash-flow", "--as-of", "2026-03-31", "--to", "MR")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert [a.addr_spec for a in msg["To"].addresses] == ["mr@agency.test"]
    # A long subject is folded onto the next header line; the parser keeps that space.
    assert msg["Subject"].strip() == f"[C&P] Cash flow report as of 2026-03-31 from {AGENCY}"
    assert pdf_attachment(msg)[0] == "cash-flow-2026-03-31.pdf"


def test_cash_flow_to_someone_without_access_is_refused(agency: Cli, home: Path) -> None:
    r = agency("send-report", "--report", "cash-flow", "--to", "MR,KL")
    assert r.exit_code == 2
    assert "KL (Kim Lee)" in r.stderr and "cash-flow access" in r.stderr
    assert "MR" not in r.stderr
    assert sent(home) == [] and rows(home) == []


def test_cash_flow_from_someone_without_access_is_refused(agency: Cli, home: Path) -> None:
    r = agency("send-report", "--report", "cash-flow", "--to", "MR", "--as", "KL")
    assert r.exit_code == 2
    assert "sender KL (Kim Lee)" in r.stderr
    assert sent(home) == [] and rows(home) == []


def test_cash_flow_never_goes_to_an_outside_address(agency: Cli, home: Path) -> None:
    r = agency("send-report", "--report", "cash-flow", "--to", "cfo@elsewhere.test")
    assert r.exit_code == 2
    assert "cfo@elsewhere.test" in r.stderr
    # A staff member's work address counts as that staff member.
    r = agency("send-report", "--report", "cash-flow", "--to", "kl@agency.test")
    assert r.exit_code == 2 and "KL (Kim Lee)" in r.stderr
    assert sent(home) == [] and rows(home) == []


def test_a_cash_flow_pdf_sent_as_a_file_keeps_the_rule(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    make_pdf(agency, tmp_path / "numbers.pdf", "cash-flow")
    r = agency("send-report", str(tmp_path / "numbers.pdf"), "--to", "cfo@elsewhere.test")
    assert r.exit_code == 2
    assert "cash-flow" in r.stderr
    r = agency("send-report", str(tmp_path / "numbers.pdf"), "--to", "KL")
    assert r.exit_code == 2 and "KL (Kim Lee)" in r.stderr
    assert sent(home) == []
    r = agency("send-report", str(tmp_path / "numbers.pdf"), "--to", "MR")
    assert r.exit_code == 0, r.output
    assert len(sent(home)) == 1


def test_cash_flow_in_one_account_mode_needs_to_know_who_asks(agency: Cli, home: Path) -> None:
    agency("config", "set", "mail.one_account", "true")
    agency("config", "set", "mail.sender", "office@agency.test")
    agency("config", "set", "user.staff", "")
    r = agency("send-report", "--report", "cash-flow", "--to", "MR")
    assert r.exit_code == 2 and "--as STAFF" in r.stderr
    r = agency("send-report", "--report", "cash-flow", "--to", "MR", "--as", "KL")
    assert r.exit_code == 2 and "KL (Kim Lee)" in r.stderr
    assert sent(home) == []
    r = agency("send-report", "--report", "cash-flow", "--to", "MR", "--as", "JD")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert msg["From"].addresses[0].addr_spec == "office@agency.test"


# ---------------------------------------------------------------- through SMTP


def use_smtp(cli: Cli, server: SMTPTestServer) -> None:
    for key, value in {**server.settings(), "mail.transport": "smtp"}.items():
        r = cli("config", "set", key, str(value))
        assert r.exit_code == 0, r.output


def test_through_a_real_smtp_server(
    agency: Cli, home: Path, tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    use_smtp(agency, smtp_server)
    pdf = make_pdf(agency, tmp_path / "PO 501.pdf", "purchase-order", "PO-501")
    r = agency("send-report", str(tmp_path / "PO 501.pdf"), "--to", "orders@lakeside.test,KL")
    assert r.exit_code == 0, r.output
    [got] = smtp_server.messages
    assert got.mail_from == "jd@agency.test"
    assert got.rcpt_tos == ("orders@lakeside.test", "kl@agency.test")
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert pdf_attachment(msg) == ("PO 501.pdf", "application/pdf", pdf)
    assert [tuple(r)[:2] for r in rows(home)] == [("report", "sent")]


def test_exit_1_when_the_server_refuses_and_3_when_it_cannot_be_reached(
    agency: Cli,
    home: Path,
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    closed_port: int,
) -> None:
    server = smtp_server_factory()
    server.fail_data = "554 5.7.1 attachments of this kind are not accepted"
    use_smtp(agency, server)
    make_pdf(agency, tmp_path / "i.pdf", "invoice", "B1")
    r = agency("send-report", str(tmp_path / "i.pdf"), "--to", "ap@northwind.test")
    assert r.exit_code == 1
    assert "not accepted" in r.stderr
    assert [tuple(r)[:2] for r in rows(home)] == [("report", "failed")]

    agency("config", "set", "mail.smtp.port", str(closed_port))
    r = agency("send-report", str(tmp_path / "i.pdf"), "--to", "ap@northwind.test")
    assert r.exit_code == 3, r.output
    assert [tuple(r)[:2] for r in rows(home)][-1] == ("report", "deferred")


# ---------------------------------------------------------------- outside mail


def test_a_client_invoice_by_its_number_through_smtp(
    agency: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """ "Billing 10234" in a notification is what a person types: the number works as the id."""
    use_smtp(agency, smtp_server)
    r = agency("send-report", "--report", "invoice", "--id", "10234", "--as-of", "2026-03-31")
    assert r.exit_code == 0, r.output
    [got] = smtp_server.messages
    assert got.rcpt_tos == ("ap@northwind.test",)
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == f"Invoice 10234 from {AGENCY}"
    assert "[C&P]" not in got.data.decode("ascii", "replace")
    name, _, data = pdf_attachment(msg)
    assert name == "invoice-10234.pdf" and data.startswith(b"%PDF-")


def test_outside_and_inside_subjects(agency: Cli, home: Path, tmp_path: Path) -> None:
    make_pdf(agency, tmp_path / "po.pdf", "purchase-order", "PO-501")
    # to a vendor
    assert agency("send-report", "--report", "purchase-order", "--id", "PO-501").exit_code == 0
    # to a staff member only: the agency's own mail keeps its prefix
    assert agency("send-report", "--report", "invoice", "--id", "B1", "--to", "KL").exit_code == 0
    # a client and a staff member: it goes outside
    r = agency("send-report", str(tmp_path / "po.pdf"), "--to", "KL,orders@lakeside.test")
    assert r.exit_code == 0, r.output
    subjects = [m["Subject"] for m in sent(home)]
    assert subjects == [
        f"Purchase order PO-501 from {AGENCY}",
        f"[C&P] Invoice 10234 from {AGENCY}",
        f"po.pdf from {AGENCY}",
    ]


def test_without_an_agency_name_the_subject_names_the_sender(agency: Cli, home: Path) -> None:
    assert agency("config", "set", "agency.name", "").exit_code == 0
    r = agency("send-report", "--report", "invoice", "--id", "10234")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert msg["Subject"] == "Invoice 10234 from Jane Doe"


def test_report_invoice_takes_the_number_too(agency: Cli, tmp_path: Path) -> None:
    by_number = make_pdf(agency, tmp_path / "n.pdf", "invoice", "10234", "--as-of", "2026-03-31")
    by_id = make_pdf(agency, tmp_path / "i.pdf", "invoice", "B1", "--as-of", "2026-03-31")
    assert len(by_number) > 1000
    from pypdf import PdfReader

    assert PdfReader(tmp_path / "n.pdf").pages[0].extract_text() == (
        PdfReader(tmp_path / "i.pdf").pages[0].extract_text()
    )
    assert by_id.startswith(b"%PDF-")


def test_sizes_in_a_refusal_tell_file_and_limit_apart(agency: Cli, tmp_path: Path) -> None:
    agency("config", "set", "mail.max_attachment_mb", "1")
    just_over = tmp_path / "just-over.pdf"
    just_over.write_bytes(b"%PDF-1.7\n" + b"0" * (1_000_050 - 9))
    r = agency("send-report", str(just_over), "--to", "a@b.test")
    assert r.exit_code == 2
    assert "is 1,000,050 bytes, more than the 1,000,000 bytes" in r.stderr
    well_over = tmp_path / "well-over.pdf"
    well_over.write_bytes(b"%PDF-1.7\n" + b"0" * 2_500_000)
    r = agency("send-report", str(well_over), "--to", "a@b.test")
    assert "is 2.50 MB, more than the 1.00 MB" in r.stderr
    assert ".;" not in r.stderr and "0.0 MB" not in r.stderr


def test_bytes_that_are_not_utf8_are_refused_or_shown_as_such(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    """Text that is not UTF-8 is one sentence and exit 2; a file's odd name is sent readable."""
    made = tmp_path / "made.pdf"
    pdf = make_pdf(agency, made, "invoice", "B1")
    odd = os.fsdecode(bytes(tmp_path) + b"/March\xff.pdf")  # a name any Unix file may have
    Path(odd).write_bytes(pdf)
    refusals: list[tuple[tuple[str, ...], str | None]] = [
        (("send-report", str(made), "--to", "KL", "--subject", "caf\udce9"), None),
        (("send-report", str(made), "--to", "KL", "--message", "\udcff"), None),
        (("send-report", str(made), "--to", "KL", "--message-file", "-"), "x\udcff"),
        (("message", "helpdesk", "caf\udce9"), None),
        (("message", "helpdesk", "--stdin"), "x\udcff"),
    ]
    for args, stdin in refusals:
        raw = None if stdin is None else stdin.encode("utf-8", "surrogateescape")
        r = agency(*args, input=raw)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("cpmail: ") and r.stderr.count("\n") == 1, r.stderr
        assert "not UTF-8" in r.stderr, r.stderr
    assert sent(home) == []
    r = agency("send-report", odd, "--to", "KL")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert pdf_attachment(msg) == ("March\ufffd.pdf", "application/pdf", pdf)


def test_a_reply_reaches_the_jobs_account_executive_else_the_manager(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    """SPEC §7: Reply-To is the job's AE for anything about a job, otherwise the system manager."""
    with engine_of(home).begin() as c:
        c.execute(
            sa.text("INSERT INTO client_team (client_id, staff_id, role) VALUES ('C1', 'KL', 'AE')")
        )
    assert (
        agency("config", "manager", "--name", "Max Ruiz", "--email", "mr@agency.test").exit_code
        == 0
    )
    r = agency("send-report", "--report", "invoice", "--id", "B1", "--as-of", "2026-03-31")
    assert r.exit_code == 0, r.output
    pdf = make_pdf(agency, tmp_path / "loose.pdf", "invoice", "B1")
    assert pdf and agency("send-report", str(tmp_path / "loose.pdf"), "--to", "KL").exit_code == 0
    about_a_job, loose_file = sent(home)
    assert [a.addr_spec for a in about_a_job["Reply-To"].addresses] == ["kl@agency.test"]
    assert [a.addr_spec for a in loose_file["Reply-To"].addresses] == ["mr@agency.test"]
    # the sender is the manager: a reply to oneself helps nobody
    assert (
        agency("send-report", str(tmp_path / "loose.pdf"), "--to", "KL", "--as", "MR").exit_code
        == 0
    )
    assert sent(home)[-1]["Reply-To"] is None


def test_one_mailbox_written_two_ways_is_one_recipient_and_known_as_staff(
    agency: Cli, home: Path
) -> None:
    """A staff address typed in another form (full-width letters, punycode) is that staff
    member's (the cash-flow rule holds) and gets one copy."""
    r = agency(
        "send-report",
        "--report",
        "cash-flow",
        "--as-of",
        "2026-03-31",
        "--to",
        "MR,mr@ａgency.test,MR@agency.test",
    )
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert [a.addr_spec for a in msg["To"].addresses] == ["mr@agency.test"]
    r = agency(
        "send-report",
        "--report",
        "invoice",
        "--id",
        "B1",
        "--as-of",
        "2026-03-31",
        "--to",
        "kate@bücher.example,kate@xn--bcher-kva.example",
    )
    assert r.exit_code == 0, r.output
    [_, msg] = sent(home)
    assert len(msg["To"].addresses) == 1, msg["To"]


def test_a_line_break_in_a_file_name_does_not_make_a_line_of_output(
    agency: Cli, tmp_path: Path
) -> None:
    """What the command says is one line: a name cannot add a line that looks like cpmail's."""
    name = "March\nSent forged.pdf to boss@agency.test.pdf"
    make_pdf(agency, tmp_path / name, "invoice", "B1")
    r = agency("send-report", str(tmp_path / name), "--to", "ap@northwind.test")
    assert r.exit_code == 0, r.output
    [line] = [x for x in r.stdout.splitlines() if x.strip()]
    assert line.startswith("Sent March Sent forged.pdf to boss@agency.test.pdf to ap@"), line


def test_a_subject_of_spaces_only_is_none_and_the_default_is_used(agency: Cli, home: Path) -> None:
    """`--subject "   "` sent a message with an empty Subject; `message` likewise."""
    r = agency("send-report", "--report", "invoice", "--id", "10234", "--subject", "   ")
    assert r.exit_code == 0, r.output
    r = agency("config", "manager", "--name", "Max", "--email", "max@agency.test")
    assert r.exit_code == 0, r.output
    r = agency("message", "manager", "Hello", "--subject", " \t ")
    assert r.exit_code == 0, r.output
    subjects = [str(m["Subject"]) for m in sent(home)]
    assert subjects[0] == f"Invoice 10234 from {AGENCY}", subjects  # (to the client)
    assert subjects[1].startswith("[C&P] Message from "), subjects
