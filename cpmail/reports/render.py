"""Turn a report into a PDF: Jinja2 templates (the home's first, then the built-ins) + weasyprint.

weasyprint is imported inside ``html_to_pdf`` only: it is slow to import and
``cpmail --help`` must stay fast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2

from cpmail.errors import ConfigError
from cpmail.render import CompiledTemplates, TextLoader, failed_in
from cpmail.reports.money import money, quantity
from cpmail.settings import Settings

BUILTIN = Path(__file__).resolve().parent.parent / "templates" / "reports"
_COMPILED = CompiledTemplates()

# Magic numbers of the image formats weasyprint draws.
_IMAGE_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
)


def override_dir(settings: Settings) -> Path:
    """Where a person's own report templates live: ``<home>/templates/reports``."""
    return settings.home / "templates" / "reports"


def environment(settings: Settings) -> jinja2.Environment:
    """The template environment: the home's templates first, then the built-in ones."""
    loader = jinja2.ChoiceLoader(
        [
            TextLoader(str(override_dir(settings))),
            TextLoader(str(BUILTIN)),
        ]
    )
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        bytecode_cache=_COMPILED,
    )
    env.filters["money"] = _money_filter
    env.filters["qty"] = quantity
    env.filters["date"] = long_date
    return env


def _money_filter(value: Decimal | None, blank_zero: bool = False) -> str:
    return money(value, blank_zero=blank_zero)


def long_date(value: dt.date | None) -> str:
    """``2026-03-31`` -> ``Mar 31, 2026``; None -> ``''``."""
    if value is None:
        return ""
    return f"{value:%b} {value.day}, {value.year}"


def logo_uri(settings: Settings) -> str:
    """The ``file://`` address of ``[agency] logo`` ('' when unset); ConfigError when unusable."""
    raw = settings["agency.logo"].strip()
    if not raw:
        return ""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = settings.home / path
    try:
        head = path.read_bytes()[:512]
    except FileNotFoundError:
        raise ConfigError(
            f"agency.logo: {path} does not exist; fix it with "
            "`cpmail config set agency.logo FILE` or clear it with `… agency.logo ''`."
        ) from None
    except OSError as e:
        raise ConfigError(f"agency.logo: cannot read {path}: {e.strerror}.") from None
    is_svg = b"<svg" in head or (path.suffix.lower() == ".svg" and head.lstrip()[:1] == b"<")
    is_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if not (is_svg or is_webp or head.startswith(_IMAGE_MAGIC)):
        raise ConfigError(f"agency.logo: {path} is not a PNG, JPEG, GIF, WebP or SVG image.")
    return path.resolve().as_uri()


def render_html(settings: Settings, template: str, context: Mapping[str, Any]) -> str:
    """Render ``template`` (e.g. ``invoice.html``); a broken override is a ConfigError."""
    env = environment(settings)
    try:
        return env.get_template(template).render(**context)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(
            f"report template {e.filename or e.name}, line {e.lineno}: {e.message}."
        ) from None
    except jinja2.TemplateError as e:
        raise ConfigError(
            f"report template {failed_in(e, template)} failed: {e}; "
            f"fix or remove your copy in {override_dir(settings)}."
        ) from None


def html_to_pdf(
    html: str,
    *,
    paper: str,
    base_url: Path,
    files: Sequence[str] = (),
    folders: Sequence[Path] = (),
) -> bytes:
    """Lay out ``html`` on ``paper`` (letter or a4) and return the PDF bytes.

    Nothing is fetched but ``data:`` URIs, the ``file://`` URIs in ``files``
    and the files inside ``folders``: an SVG logo or a template naming a web
    address, or another file of this machine, gets nothing (it is left out
    of the page, as an image that cannot be loaded).
    """
    import logging
    import urllib.parse
    import urllib.request

    import weasyprint

    folders = [f.resolve() for f in folders]

    def allowed(url: str) -> bool:
        scheme = url.partition(":")[0].lower()
        if scheme == "data":
            return True
        if scheme != "file":
            return False
        if url.split("?")[0] in files:
            return True
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)).resolve()
        return any(path.is_relative_to(f) for f in folders)

    class Fetcher(weasyprint.URLFetcher):  # type: ignore[misc]
        def fetch(self, url: str, headers: Any = None) -> Any:
            if not allowed(url):
                raise ValueError(f"not fetched: {url[:80]}")
            return super().fetch(url, headers)

    # weasyprint logs every CSS property it ignores at WARNING; a person's
    # template should not make `cpmail report` noisy on stderr.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    fetcher = Fetcher()
    page = weasyprint.CSS(string=f"@page {{ size: {paper}; }}", url_fetcher=fetcher)
    document = weasyprint.HTML(string=html, base_url=str(base_url), url_fetcher=fetcher)
    pdf: bytes = document.write_pdf(stylesheets=[page])
    return pdf
