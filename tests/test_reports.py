"""`cpmail report`: real PDFs from weasyprint, read back with pypdf."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import re
import struct
import subprocess
import sys
import zlib
from decimal import Decimal
from pathlib import Path

import pypdf
import pytest
import sqlalchemy as sa

from cpmail.reports import kind_of_pdf
from cpmail.reports.cashflow import BUCKETS, bucket_of, load_cash_flow
from cpmail.reports.money import money, quantity
from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store import schema as t
from tests.conftest import Cli

AS_OF = dt.date(2026, 3, 31)
AGENCY = "Hartley & Pine Advertising"


def engine_of(home: Path) -> sa.Engine:
    return connect(Settings.load(home).db_url, where=str(home))


def seed(home: Path) -> None:
    """A small agency: two clients, a vendor, an invoice, an estimate, a PO, open bills."""
    D = Decimal
    with engine_of(home).begin() as c:
        c.execute(
            t.staff.insert(),
            [
                dict(id="JD", name="Jane Doe", work_email="jd@agency.test", access="cash-flow"),
                dict(id="KL", name="Kim Lee", work_email="kl@agency.test", access=""),
                dict(id="MR", name="Max Ruiz", work_email="mr@agency.test", access="x,cash-flow"),
            ],
        )
        c.execute(
            t.clients.insert(),
            [
                dict(id="C1", name="Northwind Coffee Co.", billing_email="ap@northwind.test"),
                dict(id="C2", name="Blue Harbor Bank", billing_email=None),
            ],
        )
        c.execute(
            t.vendors.insert(),
            [dict(id="V1", name="Lakeside Printing", email="orders@lakeside.test")],
        )
        c.execute(
            t.jobs.insert(),
            [
                dict(id="1234", client_id="C1", title="Spring campaign 2026"),
                dict(id="1240", client_id="C2", title="Branch opening posters"),
            ],
        )
        c.execute(
            t.billings.insert(),
            [
                dict(
                    id="B1",
                    job_id="1234",
                    client_id="C1",
                    number="10234",
                    amount=D("15911.25"),
                    created_at=dt.datetime(2026, 3, 1, 10),
                    due_date=dt.date(2026, 3, 31),
                ),
                dict(
                    id="B2",
                    job_id="1240",
                    client_id="C2",
                    number="10240",
                    amount=D("800"),
                    created_at=dt.datetime(2026, 3, 2, 10),
                    due_date=None,
                ),
            ],
        )
        c.execute(
            t.billing_lines.insert(),
            [
                dict(
                    billing_id="B1",
                    line=1,
                    description="Creative direction",
                    quantity=D("24"),
                    rate=D("175"),
                    amount=D("4200"),
                ),
                dict(
                    billing_id="B1",
                    line=2,
                    description="Copywriting",
                    quantity=D("18.5"),
                    rate=D("125"),
                    amount=D("2312.50"),
                ),
                dict(
                    billing_id="B1",
                    line=3,
                    description="Photography (day rate)",
                    quantity=D("2"),
                    rate=D("3250"),
                    amount=D("6500"),
                ),
                dict(
                    billing_id="B1",
                    line=4,
                    description="Print production",
                    quantity=None,
                    rate=None,
                    amount=D("2150"),
                ),
                dict(
                    billing_id="B1",
                    line=5,
                    description="Credit for unused stock images",
                    quantity=D("1"),
                    rate=D("-250"),
                    amount=D("-250"),
                ),
            ],
        )
        c.execute(
            t.payments.insert(),
            [
                dict(
                    id="P1",
                    client_id="C1",
                    billing_id="B1",
                    amount=D("5000"),
                    received_at=dt.datetime(2026, 3, 20, 9),
                ),
                dict(
                    id="P2",
                    client_id="C1",
                    billing_id="B1",
                    amount=D("1000"),
                    received_at=dt.datetime(2026, 4, 3, 9),
                ),
            ],
        )
        c.execute(
            t.estimates.insert(),
            [dict(id="E77", job_id="1234", created_at=dt.datetime(2026, 2, 10))],
        )
        c.execute(
            t.estimate_lines.insert(),
            [
                dict(
                    estimate_id="E77",
                    line=i,
                    description=f"Estimate item {i}",
                    quantity=D(i),
                    rate=D("95"),
                    amount=D(i) * 95,
                )
                for i in range(1, 61)
            ],
        )
        c.execute(
            t.purchase_orders.insert(),
            [
                dict(
                    id="PO-501",
                    job_id="1234",
                    vendor_id="V1",
                    created_at=dt.datetime(2026, 3, 2),
                    due_date=dt.date(2026, 3, 16),
                )
            ],
        )
        c.execute(
            t.po_lines.insert(),
            [
                dict(
                    po_id="PO-501",
                    line=1,
                    description="Posters A2, 170 g silk",
                    quantity=D("500"),
                    rate=D("1.85"),
                    amount=D("925"),
                ),
                dict(
                    po_id="PO-501",
                    line=2,
                    description="Delivery to 12 branches",
                    quantity=D("12"),
                    rate=D("35"),
                    amount=None,
                ),
            ],
        )


def pdf_text(data: bytes) -> str:
    """The text of every page, with runs of white space (where lines wrap) as one space."""
    reader = pypdf.PdfReader(io.BytesIO(data))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def set_agency(cli: Cli, **extra: str) -> None:
    for key, value in {
        "agency.name": AGENCY,
        "agency.address": "410 Market Street\nPortland, OR 97204",
        **extra,
    }.items():
        r = cli("config", "set", key, value)
        assert r.exit_code == 0, r.output


@pytest.fixture
def agency(initialised: Cli, home: Path) -> Cli:
    set_agency(initialised)
    seed(home)
    return initialised


def render(cli: Cli, tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "out.pdf"
    r = cli("report", *args, "--out", str(out))
    assert r.exit_code == 0, r.output
    return out.read_bytes()


# ---------------------------------------------------------------- money


def test_money_has_separators_two_decimals_and_parentheses_for_negatives() -> None:
    assert money(Decimal("1234567.5")) == "1,234,567.50"
    assert money(Decimal("-1234.5")) == "(1,234.50)"
    assert money(Decimal("0.005")) == "0.01"
    assert money(Decimal("0")) == "0.00"
    assert money(None) == ""
    assert quantity(Decimal("2.00")) == "2"
    assert quantity(Decimal("18.50")) == "18.5"
    assert quantity(Decimal("1500")) == "1,500"


# ---------------------------------------------------------------- documents


def test_invoice_names_client_job_lines_and_totals(agency: Cli, tmp_path: Path) -> None:
    data = render(agency, tmp_path, "invoice", "B1", "--as-of", "2026-03-31")
    text = pdf_text(data)
    for expected in (
        AGENCY,
        "410 Market Street",
        "10234",
        "Northwind Coffee Co.",
        "ap@northwind.test",
        "Spring campaign 2026",
        "Creative direction",
        "4,200.00",
        "18.5",
        "3,250.00",
        "(250.00)",  # a credit line
        "14,912.50",  # the lines
        "998.75",  # what the billing's amount adds to them
        "15,911.25",  # invoice total
        "(5,000.00)",  # paid by the as-of date
        "10,911.25",  # balance due
        "Mar 31, 2026",
    ):
        assert expected in text, expected
    reader = pypdf.PdfReader(io.BytesIO(data))
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (612, 792)  # letter
    assert kind_of_pdf(data) == "invoice"


def test_invoice_counts_payments_up_to_the_as_of_date(agency: Cli, tmp_path: Path) -> None:
    early = pdf_text(render(agency, tmp_path, "invoice", "B1", "--as-of", "2026-03-19"))
    assert "Payments received" not in early
    assert "15,911.25" in early.split("Balance due")[1]
    late = pdf_text(render(agency, tmp_path, "invoice", "B1", "--as-of", "2026-04-03"))
    assert "(6,000.00)" in late
    assert "9,911.25" in late


def test_invoice_without_lines_or_due_date(agency: Cli, tmp_path: Path) -> None:
    text = pdf_text(render(agency, tmp_path, "invoice", "B2"))
    assert "Blue Harbor Bank" in text
    assert "Branch opening posters" in text  # the one line is the job
    assert "800.00" in text
    assert "Due date" not in text


def test_long_estimate_repeats_the_table_header_on_every_page(agency: Cli, tmp_path: Path) -> None:
    data = render(agency, tmp_path, "estimate", "E77")
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert len(reader.pages) >= 2
    for i, page in enumerate(reader.pages):
        text = page.extract_text()
        assert "DESCRIPTION" in text.upper(), f"page {i + 1} has no table header"
        assert f"Page {i + 1} of {len(reader.pages)}" in text
    text = pdf_text(data)
    assert "Northwind Coffee Co." in text
    assert "Estimate item 60" in text
    assert "173,850.00" in text  # 95 * (1 + … + 60)
    # Every row appears exactly once: none is split or lost at a page break.
    assert [int(n) for n in re.findall(r"Estimate item (\d+)", text)] == list(range(1, 61))


def test_purchase_order_on_a4(agency: Cli, home: Path, tmp_path: Path) -> None:
    set_agency(agency, **{"agency.paper": "a4"})
    data = render(agency, tmp_path, "purchase-order", "PO-501")
    text = pdf_text(data)
    for expected in (
        "Lakeside Printing",
        "orders@lakeside.test",
        "PO-501",
        "Posters A2",
        "925.00",
        "420.00",  # quantity x rate when the line has no amount
        "1,345.00",
        "Mar 16, 2026",
    ):
        assert expected in text, expected
    box = pypdf.PdfReader(io.BytesIO(data)).pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("invoice", "NOPE"), "'NOPE'"),
        (("estimate", "E0"), "'E0'"),
        (("purchase-order", "PO-0"), "'PO-0'"),
        (("invoice",), "needs an id"),
        (("cash-flow", "X"), "takes no id"),
        (("balance-sheet", "1"), "'balance-sheet'"),
        (("cash-flow", "--as-of", "31/03/2026"), "--as-of"),
    ],
)
def test_bad_report_requests_exit_2_and_write_nothing(
    agency: Cli, tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    out = tmp_path / "x.pdf"
    r = agency("report", *args, "--out", str(out))
    assert r.exit_code == 2
    assert named in r.stderr
    assert not out.exists()


def test_output_replaces_the_file_atomically(agency: Cli, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "inv.pdf"
    out.parent.mkdir()
    out.write_bytes(b"old")
    r = agency("report", "invoice", "B1", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(b"%PDF-")
    assert [p.name for p in out.parent.iterdir()] == ["inv.pdf"]  # no temporary left behind


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\x1f\x3a\x5f" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_an_svg_logo_draws_nothing_from_the_network_or_other_files(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    """An SVG can name images; rendering fetches none of them: no web address (127.0.0.1
    stands for any), no other file of the machine. The logo itself is drawn."""
    import http.server
    import threading

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = _png(8, 8)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(_png(60, 60))
    (home / "logo.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'width="120" height="40"><rect width="120" height="40" fill="#123"/>'
        f'<image href="http://127.0.0.1:{server.server_port}/tracker.png" width="8" height="8"/>'
        f'<image xlink:href="{elsewhere.as_uri()}" width="60" height="60"/></svg>',
        encoding="utf-8",
    )
    try:
        set_agency(agency, **{"agency.logo": "logo.svg"})
        data = render(agency, tmp_path, "invoice", "B1")
    finally:
        server.shutdown()
        server.server_close()
    assert asked == []
    page = pypdf.PdfReader(io.BytesIO(data)).pages[0]
    assert len(page.images) == 0  # the rectangle is drawn as a vector; no image came in
    assert data.startswith(b"%PDF-")


def test_logo_is_drawn_and_a_missing_logo_is_refused(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    (home / "logo.png").write_bytes(_png(120, 40))
    set_agency(agency, **{"agency.logo": "logo.png"})  # relative to the home
    data = render(agency, tmp_path, "invoice", "B1")
    page = pypdf.PdfReader(io.BytesIO(data)).pages[0]
    assert len(page.images) == 1

    set_agency(agency, **{"agency.logo": str(tmp_path / "gone.png")})
    out = tmp_path / "no.pdf"
    r = agency("report", "invoice", "B1", "--out", str(out))
    assert r.exit_code == 2
    assert "agency.logo" in r.stderr and "gone.png" in r.stderr
    assert not out.exists()

    (tmp_path / "logo.txt").write_text("not an image")
    set_agency(agency, **{"agency.logo": str(tmp_path / "logo.txt")})
    r = agency("report", "invoice", "B1", "--out", str(out))
    assert r.exit_code == 2
    assert "not a PNG" in r.stderr


def test_templates_in_the_home_override_the_built_ins(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    folder = home / "templates" / "reports"
    folder.mkdir(parents=True)
    (folder / "invoice.html").write_text(
        '{% extends "base.html" %}{% block content %}'
        "<p>Remit to lockbox 7731: {{ doc.balance | money }}</p>{% endblock %}",
        encoding="utf-8",
    )
    text = pdf_text(render(agency, tmp_path, "invoice", "B1", "--as-of", "2026-03-31"))
    assert "Remit to lockbox 7731: 10,911.25" in text
    assert AGENCY in text  # the built-in base.html still frames it
    # Other reports keep the built-in templates.
    assert "Lakeside Printing" in pdf_text(render(agency, tmp_path, "purchase-order", "PO-501"))

    (folder / "invoice.html").write_text("{% if %}", encoding="utf-8")
    r = agency("report", "invoice", "B1", "--out", str(tmp_path / "bad.pdf"))
    assert r.exit_code == 2
    assert "invoice.html" in r.stderr
    # a mistake found only while rendering names the line too, and a missing include by name
    (folder / "invoice.html").write_text(
        '{% extends "base.html" %}{% block content %}\n<p>\n{{ doc.nope.x }}</p>{% endblock %}',
        encoding="utf-8",
    )
    r = agency("report", "invoice", "B1", "--out", str(tmp_path / "bad.pdf"))
    assert r.exit_code == 2 and f"{folder / 'invoice.html'}, line 3 failed" in r.stderr, r.stderr
    (folder / "invoice.html").write_text('{% include "gone.html" %}', encoding="utf-8")
    r = agency("report", "invoice", "B1", "--out", str(tmp_path / "bad.pdf"))
    assert r.exit_code == 2 and "includes gone.html, which does not exist" in r.stderr, r.stderr


# ---------------------------------------------------------------- cash flow


def _aging_data(home: Path) -> None:
    """Bills 10, 45, 75 and 120 days past due, part-paid ones, payments after the date."""
    D = Decimal
    day = AS_OF
    with engine_of(home).begin() as c:
        c.execute(
            t.clients.insert(),
            [dict(id="A", name="Acme Foods"), dict(id="Z", name="Zenith Motors")],
        )
        c.execute(t.vendors.insert(), [dict(id="V", name="Pixel Print")])
        bills = [
            ("late10", "A", "1000.00", day - dt.timedelta(days=10)),
            ("late45", "A", "2000.00", day - dt.timedelta(days=45)),
            ("late75", "Z", "3000.00", day - dt.timedelta(days=75)),
            ("late120", "Z", "4000.00", day - dt.timedelta(days=120)),
            ("late30", "A", "100.00", day - dt.timedelta(days=30)),
            ("late31", "A", "200.00", day - dt.timedelta(days=31)),
            ("late90", "Z", "300.00", day - dt.timedelta(days=90)),
            ("late91", "Z", "400.00", day - dt.timedelta(days=91)),
            ("notdue", "A", "500.00", day + dt.timedelta(days=20)),
            ("paidup", "A", "700.00", day - dt.timedelta(days=50)),
            ("future", "A", "9999.00", day + dt.timedelta(days=40)),
        ]
        c.execute(
            t.billings.insert(),
            [
                dict(
                    id=i,
                    client_id=cl,
                    number=i.upper(),
                    amount=D(a),
                    # "future" is billed after the as-of date: not receivable yet
                    created_at=dt.datetime.combine(
                        day + dt.timedelta(days=1) if i == "future" else due - dt.timedelta(30),
                        dt.time(9),
                    ),
                    due_date=due,
                )
                for i, cl, a, due in bills
            ]
            + [  # no due date: aged from the day it was billed
                dict(
                    id="nodue",
                    client_id="Z",
                    number="NODUE",
                    amount=D("50.00"),
                    created_at=dt.datetime(2026, 1, 15, 23, 59),
                    due_date=None,
                )
            ],
        )
        pay = [
            ("p1", "A", "late45", "500.00", dt.datetime(2026, 3, 1, 12)),  # part-paid
            ("p2", "Z", "late120", "1000.00", dt.datetime(2026, 3, 31, 23, 59)),  # on the day
            ("p3", "Z", "late75", "3000.00", dt.datetime(2026, 4, 1, 0, 1)),  # after: ignored
            ("p4", "A", "paidup", "700.00", dt.datetime(2026, 3, 10)),  # fully paid
            ("p5", "Z", None, "25.00", dt.datetime(2026, 3, 5)),  # on account
        ]
        c.execute(
            t.payments.insert(),
            [
                dict(id=i, client_id=cl, billing_id=b, amount=D(a), received_at=w)
                for i, cl, b, a, w in pay
            ],
        )
        c.execute(
            t.vendor_invoices.insert(),
            [
                dict(id="VI1", vendor_id="V", amount=D("600"), due_date=day, paid_at=None),
                dict(
                    id="VI2",
                    vendor_id="V",
                    amount=D("800"),
                    due_date=day - dt.timedelta(days=40),
                    paid_at=dt.datetime(2026, 4, 2, 10),  # paid after: still owed
                ),
                dict(
                    id="VI3",
                    vendor_id="V",
                    amount=D("900"),
                    due_date=day - dt.timedelta(days=100),
                    paid_at=dt.datetime(2026, 3, 30, 10),  # paid before: not owed
                ),
            ],
        )
        c.execute(
            t.bank_accounts.insert(),
            [
                dict(id="b1", name="Operating", balance=D("10000.00"), as_of=dt.date(2026, 3, 1)),
                dict(id="b2", name="Operating", balance=D("12500.50"), as_of=dt.date(2026, 3, 31)),
                dict(id="b3", name="Operating", balance=D("1.00"), as_of=dt.date(2026, 4, 1)),
                dict(id="b4", name="Payroll", balance=D("-200.25"), as_of=dt.date(2026, 3, 15)),
            ],
        )


def test_buckets_edges() -> None:
    assert [b[0] for b in BUCKETS] == ["0–30", "31–60", "61–90", "90+"]
    assert [bucket_of(d) for d in (0, 10, 30, 31, 45, 60, 61, 75, 90, 91, 120, 5000)] == [
        0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3,
    ]  # fmt: skip


def test_cash_flow_ages_receivables_and_payables(initialised: Cli, home: Path) -> None:
    _aging_data(home)
    with engine_of(home).connect() as conn:
        cf = load_cash_flow(conn, AS_OF)
    ar = {it.reference: it for it in cf.receivable.items}
    assert set(ar) == {
        "LATE10", "LATE45", "LATE75", "LATE120", "LATE30", "LATE31",
        "LATE90", "LATE91", "NOTDUE", "NODUE", "payment on account",
    }  # fmt: skip
    expected = {  # reference: (days past due, bucket, still owed)
        "LATE10": (10, 0, "1000.00"),
        "LATE45": (45, 1, "1500.00"),  # part-paid
        "LATE75": (75, 2, "3000.00"),  # the payment came after the as-of date
        "LATE120": (120, 3, "3000.00"),  # paid on the as-of date itself
        "LATE30": (30, 0, "100.00"),
        "LATE31": (31, 1, "200.00"),
        "LATE90": (90, 2, "300.00"),
        "LATE91": (91, 3, "400.00"),
        "NOTDUE": (0, 0, "500.00"),
        "NODUE": (75, 2, "50.00"),  # aged from its created date, Jan 15
    }
    for ref, (days, bucket, owed) in expected.items():
        assert (ar[ref].days, ar[ref].bucket, ar[ref].amount) == (days, bucket, Decimal(owed)), ref
    assert ar["payment on account"].amount == Decimal("-25.00")
    assert ar["LATE45"].original == Decimal("2000.00")
    assert cf.receivable.buckets == [
        Decimal("1600.00"),
        Decimal("1700.00"),
        Decimal("3350.00"),
        Decimal("3400.00"),
    ]
    assert cf.receivable.total == Decimal("10025.00")

    ap = {it.reference: it for it in cf.payable.items}
    assert set(ap) == {"VI1", "VI2"}
    assert (ap["VI2"].days, ap["VI2"].bucket) == (40, 1)
    assert cf.payable.buckets == [Decimal("600"), Decimal("800"), Decimal(0), Decimal(0)]
    assert cf.payable.total == Decimal("1400")

    assert {b.name: b.amount for b in cf.cash} == {
        "Operating": Decimal("12500.50"),
        "Payroll": Decimal("-200.25"),
    }
    assert cf.cash_total == Decimal("12300.25")
    assert cf.net == Decimal("12300.25") + Decimal("10025.00") - Decimal("1400")


def test_cash_flow_pdf_shows_totals_and_net_position(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    set_agency(initialised)
    _aging_data(home)
    data = render(initialised, tmp_path, "cash-flow", "--as-of", "2026-03-31")
    text = pdf_text(data)
    for expected in (
        "Cash flow".upper(),
        "Mar 31, 2026",
        "Operating",
        "12,500.50",
        "(200.25)",
        "12,300.25",  # cash
        "Acme Foods",
        "Zenith Motors",
        "Pixel Print",
        "10,025.00",  # A/R
        "1,400.00",  # A/P
        "20,925.25",  # net position
        "3,400.00",  # the 90+ bucket
    ):
        assert expected in text, expected
    assert kind_of_pdf(data) == "cash-flow"
    # the total row's buckets and the payment on account add up to the total owed
    assert "Payments on account (not aged) (25.00)" in text, text


def test_cash_flow_defaults_to_today_in_the_agency_timezone(
    initialised: Cli, tmp_path: Path
) -> None:
    set_agency(initialised, **{"agency.timezone": "Pacific/Kiritimati"})
    import zoneinfo

    today = dt.datetime.now(zoneinfo.ZoneInfo("Pacific/Kiritimati")).date()
    text = pdf_text(render(initialised, tmp_path, "cash-flow"))
    assert f"{today:%b} {today.day}, {today.year}" in text
    assert "No bank balance" in text


def test_other_pdfs_have_no_report_kind(tmp_path: Path) -> None:
    assert kind_of_pdf(b"%PDF-1.4\n%%EOF\n") is None
    assert kind_of_pdf(b"%PDF-1.4\nstream\n\x00garbage\nendstream\n") is None


def test_report_commands_do_not_load_heavy_libraries_at_start_up() -> None:
    code = (
        "import sys, cpmail.cli.report, cpmail.cli.message\n"
        "print(sorted(m for m in ('weasyprint', 'sqlalchemy', 'jinja2', 'pypdf') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_line_priced_by_quantity_and_rate_is_added_up_as_printed(
    agency: Cli, home: Path, tmp_path: Path
) -> None:
    """0.5 × 0.01 prints as 0.01: three such lines total 0.03, not 0.02 (the unrounded
    0.015), and an invoice of 1.5 × 0.33 for 0.50 has no 'Other charges' of 0.01."""
    D = Decimal
    with engine_of(home).begin() as c:
        c.execute(
            t.purchase_orders.insert(),
            [dict(id="PO-9", job_id="1234", vendor_id="V1", created_at=dt.datetime(2026, 3, 2))],
        )
        c.execute(
            t.po_lines.insert(),
            [
                dict(
                    po_id="PO-9", line=n, description=f"Tiny {n}", quantity=D("0.5"), rate=D("0.01")
                )
                for n in (1, 2, 3)
            ],
        )
        c.execute(
            t.billings.insert(),
            [
                dict(
                    id="B9",
                    job_id="1234",
                    client_id="C1",
                    number="9",
                    amount=D("0.50"),
                    created_at=dt.datetime(2026, 3, 2),
                )
            ],
        )
        c.execute(
            t.billing_lines.insert(),
            [dict(billing_id="B9", line=1, description="Tiny", quantity=D("1.5"), rate=D("0.33"))],
        )
    po = pdf_text(render(agency, tmp_path, "purchase-order", "PO-9"))
    assert po.count("0.01") >= 3 and "0.03" in po and "0.02" not in po, po
    invoice = pdf_text(render(agency, tmp_path, "invoice", "B9"))
    assert "Other charges" not in invoice and "0.50" in invoice, invoice


def test_figures_of_a_hundred_million_keep_to_their_own_columns(
    initialised: Cli, tmp_path: Path
) -> None:
    """Fixed column widths let 111,111,111.00 run into the next cell (read back as
    '111,111,111.0023,456,789.01'): a figure widens its column instead."""
    folder = tmp_path / "big"
    folder.mkdir()
    files = {
        "clients.csv": "id,name,billing_email\nC1,Alpha Co,\nC2,Beta Ltd,\n",
        "jobs.csv": "id,client_id,title,opened_at\n"
        "J1,C1,One,2025-11-01T09:00\nJ2,C2,Two,2025-11-01T09:00\n",
        "billings.csv": "id,job_id,client_id,number,amount,created_at,due_date\n"
        "B50,J1,C1,8050,12345678.90,2026-03-01T10:00,2026-03-20\n"
        "B51,J2,C2,8051,23456789.01,2026-01-01T10:00,2026-02-20\n"
        "B52,J1,C1,8052,98765432.10,2026-03-01T10:00,2026-03-20\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    assert initialised("data", "import", str(folder)).exit_code == 0
    text = pdf_text(render(initialised, tmp_path, "cash-flow", "--as-of", "2026-03-31"))
    assert "111,111,111.00 23,456,789.01" in text, text


def test_a_payment_for_a_bill_made_after_the_as_of_date_is_on_account(
    initialised: Cli, home: Path
) -> None:
    """On the as-of date the money was the client's credit; it vanished from A/R."""
    D = Decimal
    with engine_of(home).begin() as c:
        c.execute(t.clients.insert(), [dict(id="A", name="Alpha Co")])
        c.execute(
            t.billings.insert(),
            [dict(id="B20", client_id="A", amount=D("400"), created_at=dt.datetime(2026, 4, 5))],
        )
        c.execute(
            t.payments.insert(),
            [
                dict(
                    id="P20",
                    client_id="A",
                    billing_id="B20",
                    amount=D("400"),
                    received_at=dt.datetime(2026, 3, 20),
                )
            ],
        )
    with engine_of(home).connect() as conn:
        ar = load_cash_flow(conn, AS_OF).receivable
    assert [(it.party, it.reference, it.amount) for it in ar.items] == [
        ("Alpha Co", "payment on account", D("-400"))
    ]
    with engine_of(home).connect() as conn:  # once the bill is made, it pays it
        assert load_cash_flow(conn, dt.date(2026, 4, 30)).receivable.items == []


def _text_runs(data: bytes) -> list[tuple[str, float, float, float]]:
    """Each piece of text of each page: (text, where it starts, its font size, page width),
    in the page's own units, as pypdf reads the drawing."""
    import functools

    runs: list[tuple[str, float, float, float]] = []
    for page in pypdf.PdfReader(io.BytesIO(data)).pages:
        found: list[tuple[str, float, float]] = []
        page.extract_text(visitor_text=functools.partial(_seen, found))
        width = float(page.mediabox.width)
        runs += [(text, x, size, width) for text, x, size in found]
    return runs


def _seen(
    found: list[tuple[str, float, float]],
    text: str,
    cm: list[float],
    tm: list[float],
    _font: object,
    size: float,
) -> None:
    if text.strip():
        x = cm[0] * tm[4] + cm[2] * tm[5] + cm[4]
        found.append((text, x, size * abs(cm[0] or 1) * abs(tm[0] or 1)))


def test_a_long_word_in_the_data_stays_on_the_page(agency: Cli, home: Path, tmp_path: Path) -> None:
    """A file name or code without spaces in a line or a client's name widened its table
    past the page: the Rate and Amount columns of every line were off the page (the text
    still in the file, so extracting it did not show it)."""
    word = "SPRING_TV_2026_FINAL_APPROVED_MASTER_WITH_CLIENT_CHANGES_V12_HIGHRES_ASSETS.zip"
    with engine_of(home).begin() as c:
        c.execute(t.billing_lines.update().values(description=f"Artwork {word}"))
        c.execute(t.clients.update().values(name="Delta_Outdoor_Recreation_Holdings_LLC" * 2))
    for args in (("invoice", "B1"), ("cash-flow",)):
        data = render(agency, tmp_path, *args, "--as-of", "2026-03-31")
        runs = _text_runs(data)
        assert runs
        # Every piece starts on the page, and none that starts near its right edge is long.
        off = [(text, round(x)) for text, x, _size, width in runs if not 0 <= x < width]
        assert off == [], (args, off)
        for text, x, size, width in runs:
            assert x + 0.4 * size * len(text.strip()) <= width * 1.02, (args, text, x, width)


def test_a_summary_figure_of_hundreds_of_millions_is_never_broken_in_two(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    """The four boxes at the top of the cash flow broke a long figure where the box ended:
    '(123,456,789.' on one line and '12)' under it. A figure stays whole; the boxes go on
    two rows when four such figures do not fit side by side."""
    D = Decimal
    with engine_of(home).begin() as c:
        c.execute(t.clients.insert(), [dict(id="C1", name="Alpha Co")])
        c.execute(t.vendors.insert(), [dict(id="V1", name="Pixel Print")])
        c.execute(
            t.billings.insert(),
            [
                dict(
                    id="B1",
                    client_id="C1",
                    amount=D("987654321.99"),
                    created_at=dt.datetime(2026, 3, 1),
                )
            ],
        )
        c.execute(
            t.vendor_invoices.insert(),
            [dict(id="VI1", vendor_id="V1", amount=D("999999999.99"), due_date=AS_OF)],
        )
        c.execute(
            t.bank_accounts.insert(),
            [dict(id="a", name="Operating", balance=D("-123456789.12"), as_of=AS_OF)],
        )
    data = render(initialised, tmp_path, "cash-flow", "--as-of", "2026-03-31")
    text = pdf_text(data)
    # each figure is in its box at the top, whole, besides where the tables show it
    assert text.count("(123,456,789.12)") == 4, text  # box, account, total cash, totals
    assert text.count("987,654,321.99") == 6, text  # box, 2 of the bill, 2 of the total, totals
    assert text.count("(135,802,467.12)") == 2, text  # box, net position
    runs = _text_runs(data)
    assert all(x + 0.4 * size * len(s.strip()) <= width * 1.02 for s, x, size, width in runs)

    # figures of every day still sit side by side, in boxes of one width
    with engine_of(home).begin() as c:
        c.execute(t.billings.update().values(amount=D("10025.00")))
        c.execute(t.vendor_invoices.update().values(amount=D("1400.00")))
        c.execute(t.bank_accounts.update().values(balance=D("12300.25")))
    data = render(initialised, tmp_path, "cash-flow", "--as-of", "2026-03-31")
    top: dict[str, float] = {}
    for s, x, _size, _width in _text_runs(data):
        top.setdefault(s.strip(), x)  # the first time: in its box
    xs = [top["12,300.25"], top["10,025.00"], top["1,400.00"], top["20,925.25"]]
    assert xs == sorted(xs), top  # one row, left to right
    steps = [b - a for a, b in itertools.pairwise(xs)]
    assert max(steps) - min(steps) < 2, steps


@pytest.mark.parametrize(
    ("paid", "row", "figure", "says"),
    [
        ("10911.25", "Balance due", "0.00", "Nothing is due: this invoice is paid in full."),
        ("11000.00", "Credit balance", "88.75", "exceed the invoice total by 88.75"),
    ],
)
def test_an_invoice_paid_in_full_or_over_asks_for_no_payment(
    agency: Cli, home: Path, tmp_path: Path, paid: str, row: str, figure: str, says: str
) -> None:
    """Paid in full, the invoice still said 'Payment is due by Mar 31, 2026'; paid over, it
    said 'Balance due (88.75)': a balance due, to a client who owes nothing."""
    with engine_of(home).begin() as c:
        c.execute(
            t.payments.insert(),
            [
                dict(
                    id="P3",
                    client_id="C1",
                    billing_id="B1",
                    amount=Decimal(paid),
                    received_at=dt.datetime(2026, 3, 25, 9),
                )
            ],
        )
    text = pdf_text(render(agency, tmp_path, "invoice", "B1", "--as-of", "2026-03-31"))
    assert f"{row} {figure}" in text, text
    assert says in text, text
    assert "Payment is due" not in text and "with your payment" not in text, text
    if row == "Credit balance":
        assert "Balance due" not in text and "(88.75)" not in text, text
    # while something is owed, the invoice asks for it as before
    text = pdf_text(render(agency, tmp_path, "invoice", "B1", "--as-of", "2026-03-24"))
    assert "Balance due 10,911.25" in text and "Payment is due by Mar 31, 2026" in text, text


def test_a_billing_number_of_spaces_only_is_no_number(agency: Cli, home: Path) -> None:
    """A number of spaces was taken as the number: 'Invoice ' with nothing after it in
    the subject, on the page and in the cash flow; the billing's id stands in for it."""
    with engine_of(home).begin() as c:
        c.execute(t.billings.update().where(t.billings.c.id == "B2").values(number="   "))
    r = agency(
        "send-report",
        "--report",
        "invoice",
        "--id",
        "B2",
        "--to",
        "ap@northwind.test",
        "--as",
        "JD",
    )
    assert r.exit_code == 0, r.output
    assert "Sent invoice-B2.pdf" in r.stdout, r.stdout
    from tests.test_send_report import pdf_attachment, sent

    [msg] = sent(home)
    assert msg["Subject"] == f"Invoice B2 from {AGENCY}"
    name, _ctype, data = pdf_attachment(msg)
    assert name == "invoice-B2.pdf"
    assert "Please quote invoice B2 with your payment" in pdf_text(data)
    with engine_of(home).connect() as conn:
        refs = [it.reference for it in load_cash_flow(conn, AS_OF).receivable.items]
    assert "B2" in refs and "" not in refs, refs
