"""Reports as PDF: invoice, estimate, purchase order and cash flow.

``load`` reads what a report needs from the agency's data, ``render`` lays it
out with the report templates and weasyprint, ``write`` puts the PDF in a
file atomically. Every PDF carries the keyword ``cpmail-report:<kind>`` so
that a cash-flow report is recognised when it is sent later as a file.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cpmail import __version__
from cpmail.errors import InputError
from cpmail.files import write_failed
from cpmail.reports import cashflow, documents
from cpmail.reports.render import html_to_pdf, logo_uri, override_dir, render_html
from cpmail.settings import Settings, write_atomic

KINDS: tuple[str, ...] = ("invoice", "estimate", "purchase-order", "cash-flow")
NEEDS_ID: frozenset[str] = frozenset({"invoice", "estimate", "purchase-order"})
MARKER = "cpmail-report:"


@dataclass(frozen=True)
class Report:
    """One report, loaded and ready to render."""

    kind: str
    id: str | None
    label: str  # how a person names it: "Invoice 10234"
    filename: str  # the attachment's name: "invoice-10234.pdf"
    context: dict[str, Any]
    #: who it goes to when `send-report` is given no --to: (address, name)
    recipients: tuple[tuple[str, str], ...] = ()
    about: str = ""  # what it is for, in words: "job 1234 Spring campaign"
    no_recipient: str = ""  # why ``recipients`` is empty
    job_id: str | None = None  # the job it is about, if any (a reply goes to its AE)

    @property
    def template(self) -> str:
        return f"{self.kind}.html"


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"unknown report {kind!r}; the reports are: {', '.join(KINDS)}.")
    return kind


def safe_filename(text: str) -> str:
    """A file name made of ``text`` that every mail client and file system accepts."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return name[:100].rstrip("-.") or "report"  # file systems take 255 bytes at most


def today(settings: Settings) -> dt.date:
    """Today in the agency's time zone."""
    return dt.datetime.now(settings.tz()).date()


def load(
    engine: sa.Engine,
    settings: Settings,
    kind: str,
    *,
    id: str | None = None,
    as_of: dt.date | None = None,
) -> Report:
    """Read report ``kind`` (with ``id`` unless cash-flow) from the agency's data."""
    check_kind(kind)
    if kind in NEEDS_ID and not id:
        raise InputError(
            f"the {kind} report needs an id: `cpmail report {kind} ID …`, or "
            f"`cpmail send-report --report {kind} --id ID …`."
        )
    if kind == "cash-flow" and id:
        raise InputError("the cash-flow report takes no id; give --as-of DATE instead.")
    as_of = as_of or today(settings)
    with engine.connect() as conn:
        if kind == "invoice":
            assert id is not None
            inv = documents.load_invoice(conn, id, as_of=as_of)
            return _document(kind, "Invoice", inv, inv.number, inv.client, "client")
        if kind == "estimate":
            assert id is not None
            est = documents.load_estimate(conn, id)
            return _document(kind, "Estimate", est, est.id, est.client, "client")
        if kind == "purchase-order":
            assert id is not None
            po = documents.load_purchase_order(conn, id)
            return _document(kind, "Purchase order", po, po.id, po.vendor, "vendor")
        return cash_flow_report(conn, as_of)


def _context(kind: str, title: str, doc: Any, **more: Any) -> dict[str, Any]:
    """What the report's template is given (besides the agency)."""
    return {
        "kind": kind,
        "marker": MARKER + kind,
        "version": __version__,
        "title": title,
        "doc": doc,
        **more,
    }


def _document(
    kind: str,
    name: str,
    doc: documents.Invoice | documents.Estimate | documents.PurchaseOrder,
    number: str,
    party: documents.Party,
    what: str,
) -> Report:
    """Invoice, estimate or purchase order ``number``, to ``party``, a client or a vendor."""
    label = f"{name} {number}"
    column = "billing e-mail" if what == "client" else "e-mail"
    return Report(
        kind,
        doc.id,
        label,
        f"{kind}-{safe_filename(number)}.pdf",
        _context(kind, label, doc),
        ((party.email, party.name),) if party.email else (),
        f"job {doc.job.id} {doc.job.title}".strip() if doc.job is not None else "",
        f"{what} {party.id} ({party.name}) has no {column}",
        doc.job.id if doc.job is not None else None,
    )


def cash_flow_report(conn: sa.Connection, as_of: dt.date) -> Report:
    """The cash-flow report as of the end of ``as_of``, read on ``conn``."""
    cf = cashflow.load_cash_flow(conn, as_of)
    return Report(
        "cash-flow",
        None,
        f"Cash flow report as of {as_of.isoformat()}",
        f"cash-flow-{as_of.isoformat()}.pdf",
        _context("cash-flow", "Cash flow", cf, buckets=[b[0] for b in cashflow.BUCKETS]),
        no_recipient="the cash-flow report has no default recipient (name staff with access)",
    )


def render(report: Report, settings: Settings) -> bytes:
    """The report as PDF bytes."""
    logo = logo_uri(settings)
    agency = {
        "name": settings["agency.name"].strip(),
        "address": settings["agency.address"].strip(),
        "logo": logo,
    }
    html = render_html(settings, report.template, {**report.context, "agency": agency})
    return html_to_pdf(
        html,
        paper=settings["agency.paper"],
        base_url=settings.home,
        files=[logo] if logo else [],
        folders=[override_dir(settings)],  # what a person's own templates draw
    )


def write(pdf: bytes, out: Path) -> None:
    """Write ``pdf`` to ``out`` atomically (a reader never sees half a file)."""
    try:
        write_atomic(out, pdf)  # 0600: invoices and cash flow are private
    except OSError as e:
        raise write_failed(out, e) from None


_STREAM = re.compile(rb"(?<!end)stream\r?\n")
_SCAN_LIMIT = 4 * 1024 * 1024  # inflated bytes looked at per stream


def kind_of_pdf(data: bytes) -> str | None:
    """The report kind a PDF made by cpmail says it is, or None for any other PDF.

    weasyprint keeps the document information (where the keyword is) inside a
    compressed object stream, so the streams are inflated and searched too.
    """
    pattern = re.compile(re.escape(MARKER.encode()) + rb"([a-z-]+)")
    found = pattern.search(data)
    pos = 0
    while found is None:
        m = _STREAM.search(data, pos)
        if m is None:
            return None
        end = data.find(b"endstream", m.end())
        if end < 0:
            return None
        try:
            inflated = zlib.decompressobj().decompress(data[m.end() : end], _SCAN_LIMIT)
        except zlib.error:
            inflated = b""
        found = pattern.search(inflated)
        pos = end + len(b"endstream")
    kind = found.group(1).decode()
    return kind if kind in KINDS else None
