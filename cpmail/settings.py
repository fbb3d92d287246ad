"""``cpmail.toml``: find the home folder, load, validate, override from the environment, save.

The file is edited with tomlkit so that a person's comments and key order
survive, and written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from cpmail.errors import ConfigError
from cpmail.events import NAMES
from cpmail.files import atomic_open

SETTINGS_FILE = "cpmail.toml"

EVENTS: tuple[str, ...] = NAMES  # every event, in the order of SPEC §5 (cpmail.events)

TRANSPORTS = ("file", "smtp", "gmail", "microsoft")


def home_dir(option: str | Path | None = None) -> Path:
    """Return the home folder: ``--home`` > ``CPMAIL_HOME`` > the platform's config dir."""
    if option:
        return Path(option).expanduser().resolve()
    env = os.environ.get("CPMAIL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_config_dir("cpmail"))


# --- validators: each takes the raw value and returns the typed one or raises ValueError


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected text")
    return v


def _host(v: Any) -> str:
    """A host name or address: one word, no spaces or control characters."""
    text = _str(v).strip()
    if "@" in text:  # USER:PASSWORD@HOST, as in a URL: the password would be shown with it
        raise ValueError(
            "a host name holds no '@': give the server's name alone, and store the "
            "passcode with `cpmail staff passcode`"
        )
    if any(ch.isspace() or ord(ch) < 32 or ch == "\x7f" for ch in text) or "/" in text:
        raise ValueError("expected a host name or address, such as smtp.example.com")
    return text


def _alert_urls(v: Any) -> list[str]:
    """Apprise URLs: each SCHEME://…, such as mailtos://… or json://…."""
    urls = _list_of_str(v)
    if any("://" not in u for u in urls):
        raise ValueError("expected URLs such as 'mailtos://…' or 'json://host/path'")
    return urls


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(v, str) and v.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("expected a whole number")
        try:
            n = int(v)
        except (TypeError, ValueError, OverflowError):  # OverflowError: inf
            raise ValueError("expected a whole number") from None
        if isinstance(v, float) and v != n:
            raise ValueError("expected a whole number")
        if not lo <= n <= hi:
            raise ValueError(f"expected a number from {lo} to {hi}")
        return n

    return check


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("expected a number")
        try:
            n = float(v)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if not lo <= n <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}")
        return n

    return check


def _choice(*options: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError("expected one of " + ", ".join(repr(o) for o in options))
        return str(v)

    return check


def _email_or_blank(raw: Any) -> str:
    v = _str(raw).strip()
    if v:
        from cpmail.addresses import check_address
        from cpmail.errors import InputError

        try:
            check_address(v)
        except InputError as e:  # a value error of this setting, named with its key
            raise ValueError(str(e).rstrip(".")) from None
    return v


def _timezone(raw: Any) -> str:
    v = _str(raw)
    if v:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected a time zone name such as 'America/New_York'") from None
    return v


_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-(?:([01]\d|2[0-3]):([0-5]\d)|24:00)$", re.ASCII)


def _window(raw: Any) -> str:
    v = _str(raw).strip()
    if v and not _WINDOW.match(v):
        raise ValueError("expected HH:MM-HH:MM, such as '07:00-19:00' (24:00 ends at midnight)")
    start, _, end = v.partition("-")
    if v and start == end:
        raise ValueError(
            "a window that ends where it starts never opens; leave it empty to send at any time"
        )
    return v


def _country(raw: Any) -> str:
    v = _str(raw).strip()
    if v:
        import holidays

        # Looks up this one country (list_supported_countries imports all 250).
        try:
            holidays.country_holidays(v.upper())
        except NotImplementedError:
            known = "expected a country code known to the holidays package, or ''"
            raise ValueError(known) from None
    return v.upper()


def _list_of_str(v: Any) -> list[str]:
    if isinstance(v, str) and v.strip().startswith("["):
        v = _env_value(v)
        if isinstance(v, str):
            raise ValueError('expected a TOML array such as ["a", "b"], or a,b')
    if isinstance(v, str):
        v = [p.strip() for p in v.split(",") if p.strip()]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of text")
    return [str(x) for x in v]


# Recipient rules (SPEC §5). The routing module applies them; their spelling lives here so
# that `config set` can refuse a wrong one before it is saved.
PERSON_RULES = ("staff", "supervisor", "assignee", "entered-by")
PLAIN_RULES = (*PERSON_RULES, "team", "listed")
PREFIX_RULES = ("team:", "staff:", "email:")


def is_rule(text: str) -> bool:
    """True for a recipient rule cpmail knows: staff, team:ae, email:x@y …"""
    return text in PLAIN_RULES or (text.startswith(PREFIX_RULES) and len(text.split(":", 1)[1]) > 0)


def _rules(v: Any) -> list[str]:
    rules = _list_of_str(v)
    for rule in rules:
        if not is_rule(rule):
            raise ValueError(
                f"{rule!r} is not a recipient rule; use staff, supervisor, assignee, entered-by, "
                "team, team:ROLE, staff:ID, email:ADDRESS or listed"
            )
        if rule.startswith("email:"):
            from cpmail.addresses import check_address
            from cpmail.errors import InputError

            try:
                check_address(rule[6:])
            except InputError as e:
                raise ValueError(str(e).rstrip(".")) from None
    return rules


def undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (Python passes them on, from the
    command line and the environment, as lone surrogates: surrogateescape)."""
    return not text.isascii() and any("\udc80" <= ch <= "\udcff" for ch in text)


# A date as cpmail takes one: YYYY-MM-DD only (Python also reads 20261224 and 2026-W52-4).
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _list_of_dates(v: Any) -> list[str]:
    out = []
    for x in _list_of_str(v) if not isinstance(v, list) else v:
        if isinstance(x, dt.date):
            x = x.isoformat()
        try:
            if not ISO_DATE.fullmatch(str(x)):  # (not 20261224)
                raise ValueError
            dt.date.fromisoformat(str(x))
        except ValueError:
            raise ValueError(f"expected dates as YYYY-MM-DD, got {x!r}") from None
        out.append(str(x))
    return out


WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # Monday first, as date.weekday()


def _weekdays(v: Any) -> list[str]:
    days = [d.lower()[:3] for d in _list_of_str(v)]
    for d in days:
        if d not in WEEKDAY_NAMES:
            raise ValueError(f"expected weekdays such as mon, tue … sun, got {d!r}")
    return days


def _percentages(v: Any) -> list[int]:
    if isinstance(v, str) and v.strip().startswith("["):
        v = _env_value(v)  # a TOML array such as [80, 100]
    items = v if isinstance(v, list) else _list_of_str(v)
    out = []
    for x in items:
        try:
            n = int(str(x).strip().rstrip("%"))
        except ValueError:
            raise ValueError(f"expected whole percentages such as 80, got {x!r}") from None
        if not 1 <= n <= 1000:
            raise ValueError(f"expected percentages from 1 to 1000, got {n}")
        out.append(n)
    return sorted(set(out))


# How SQLAlchemy splits a URL: user up to ":" or "/", password up to the first "@",
# host up to "/", ":" or "?", the rest up to "?", then the query.
_URL_PARTS = re.compile(
    r"^[\w+.\-]+://(?:[^:/]*(?::(?P<password>[^@]*))?@)?"
    r"(?P<host>\[[^\]]*\]|[^/:?]*)(?::[^/?]*)?(?P<path>[^?]*)"
)


def local_zone() -> dt.tzinfo:
    """This machine's time zone with its rules (summer time included): ``TZ`` as the C
    library reads it (a zone's name, a zone file's path, or a POSIX rule such as
    ``CET-1CEST,M3.5.0,M10.5.0/3``), else /etc/localtime; only without either the
    offset of this moment, which is wrong for dates across a change of summer time."""
    import zoneinfo

    name = os.environ.get("TZ", "").removeprefix(":")
    if name:
        with contextlib.suppress(ValueError, zoneinfo.ZoneInfoNotFoundError):
            return zoneinfo.ZoneInfo(name)
        if name.startswith("/"):
            with contextlib.suppress(OSError, ValueError), open(name, "rb") as f:
                return zoneinfo.ZoneInfo.from_file(f, key=name)
        with contextlib.suppress(ValueError):
            return _posix_zone(name)
    with contextlib.suppress(OSError, ValueError), open("/etc/localtime", "rb") as f:
        return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    tz = dt.datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


# A POSIX rule's standard time, offset and summer time name (``EST5EDT``, ``<+10>-10<+11>``).
_POSIX_SUMMER = re.compile(
    r"(?:<[^>]+>|[A-Za-z]{3,})[+-]?\d{1,2}(?::\d{1,2}){0,2}(?:<[^>]+>|[A-Za-z]{3,})"
    r"(?:[+-]?\d{1,2}(?::\d{1,2}){0,2})?"
)


def _posix_zone(rule: str) -> dt.tzinfo:
    """The zone of a POSIX TZ rule (``EST5EDT,M3.2.0,M11.1.0``, ``JST-9``): a TZif file
    (RFC 8536) of no transitions whose footer is the rule, which zoneinfo follows for
    every date; ValueError for text that is no such rule."""
    import io
    import struct
    import zoneinfo

    if not rule.isascii() or not rule.isprintable():
        raise ValueError(rule)
    if "," not in rule and _POSIX_SUMMER.fullmatch(rule):
        # Summer time named without its dates: the C library's default rule (the US one).
        rule += ",M3.2.0,M11.1.0"
    names = b"UTC\0"
    block = struct.pack(">6l", 0, 0, 0, 0, 1, len(names)) + struct.pack(">lBB", 0, 0, 0) + names
    header = b"TZif2" + b"\0" * 15
    data = header + block + header + block + b"\n" + rule.encode("ascii") + b"\n"
    return zoneinfo.ZoneInfo.from_file(io.BytesIO(data), key=rule)


def _url(raw: Any) -> str:
    v = _str(raw).strip()
    if v and "://" not in v:
        raise ValueError("expected a URL such as 'https://…' or 'postgresql+psycopg://…'")
    if bare_at(v):
        raise ValueError(_BARE_AT)
    return v


def bare_at(url: str) -> bool:
    """Whether ``url`` has an "@" after the one that ends its user part: one in the
    password or in a ?name=value. What follows it would be taken for the host, a
    database or a query, and shown in the database driver's errors; such a URL is
    refused before anything connects. (A web address's or an SQLite file's path may
    hold an "@".)"""
    m = _URL_PARTS.match(url)
    path_may_hold_at = url.lower().startswith(("http://", "https://", "sqlite"))
    if m is None:
        return False
    if "@" in m["host"] or (not path_may_hold_at and "@" in url[m.start("path") :]):
        return True
    # "…/db?password=a@b" without a user part: read as user "127.0.0.1", password
    # "5432/db?password=a". As written, not decoded: "%3F" and "%3D" are a password's own.
    return bool(not path_may_hold_at and m["password"] and _QUERY_IN_PASSWORD.search(m["password"]))


_BARE_AT = (
    "the URL has an '@' after its user:password part; write an @ in the password "
    "or in a ?name=value as %40 (and /, :, ?, = or a space in the password as %2F, %3A, "
    "%3F, %3D, %20)"
)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ENDPOINT_RULE = "use an https:// address (plain http is allowed for 127.0.0.1 only)"


def secure_endpoint(url: str) -> bool:
    """https, or http to this machine (a local stand-in): sign-ins and tokens never go in clear."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS)


def _endpoint(raw: Any) -> str:
    """An API or sign-in address: https (see ``secure_endpoint``); '' where allowed."""
    v = _url(raw)
    if v and not secure_endpoint(v):
        raise ValueError(ENDPOINT_RULE)
    return v


def _db_url(raw: Any) -> str:
    """A database URL SQLAlchemy reads, with a port from 1 to 65535 if it has one.

    The words never repeat the URL (its password): only the part at fault.
    """
    v = _url(raw)
    if not v:
        return v
    from sqlalchemy.engine import make_url  # here: `cpmail --help` does not need it

    try:
        u = make_url(v)
        port = u.port
    except ValueError:  # SQLAlchemy's words quote the port, which may be the password
        raise ValueError(
            "its port is not a number (is a password where the port goes, its @ missing?)"
        ) from None
    except Exception:
        raise ValueError(
            "it is not a database URL such as postgresql+psycopg://USER@HOST/NAME"
        ) from None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"its port {port} is not a port (1 to 65535)")
    return v


@dataclass(frozen=True)
class Key:
    """One known setting: its validator, default and one line of help."""

    check: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False


KEYS: dict[str, Key] = {
    "agency.name": Key(_str, "", "the agency's name, on reports and in messages"),
    "agency.address": Key(_str, "", "postal address printed on reports"),
    "agency.logo": Key(_str, "", "path of a logo image for reports"),
    "agency.timezone": Key(_timezone, "", "time zone of the agency's data; '' = this machine's"),
    "agency.paper": Key(_choice("letter", "a4"), "letter", "paper size of reports"),
    "user.staff": Key(_str, "", "staff ID this machine acts as (sender of check and reports)"),
    "mail.enabled": Key(_bool, True, "master switch: false records mail as suppressed"),
    "mail.transport": Key(_choice(*TRANSPORTS), "file", "file, smtp, gmail or microsoft"),
    "mail.one_account": Key(_bool, False, "send all mail from mail.sender"),
    "mail.sender": Key(_email_or_blank, "", "the one account all mail is sent from"),
    "mail.digest": Key(_bool, False, "one message per person per run"),
    "mail.send_window": Key(_window, "", "send only between these times, e.g. '07:00-19:00'"),
    "mail.subject_prefix": Key(_str, "[C&P]", "text every subject starts with"),
    "mail.max_attachment_mb": Key(_int(1, 150), 20, "largest attachment accepted, in MB"),
    "mail.smtp.host": Key(_host, "", "SMTP server name"),
    "mail.smtp.port": Key(_int(1, 65535), 587, "SMTP server port"),
    "mail.smtp.security": Key(
        _choice("starttls", "ssl", "none"), "starttls", "starttls, ssl or none"
    ),
    "mail.smtp.timeout": Key(_float(1, 600), 30.0, "seconds to wait for the server"),
    "mail.smtp.verify": Key(_bool, True, "verify the server's certificate"),
    "mail.smtp.connections": Key(_int(1, 16), 3, "connections used in parallel"),
    "mail.smtp.ca_file": Key(_str, "", "PEM file of CAs to trust; '' = the system's"),
    "mail.gmail.client_secrets": Key(
        _str, "", "'secret:gmail-client' (set by `config gmail`) or an OAuth client file's path"
    ),
    "mail.gmail.timeout": Key(_float(1, 600), 60.0, "seconds to wait for the Gmail API"),
    "mail.gmail.api_base": Key(_endpoint, "https://gmail.googleapis.com", "Gmail API address"),
    "mail.gmail.token_uri": Key(_endpoint, "", "token endpoint; '' = the client file's"),
    "mail.microsoft.client_id": Key(_str, "", "application (client) ID of the Entra app"),
    "mail.microsoft.tenant": Key(_str, "organizations", "organizations, common or a tenant ID"),
    "mail.microsoft.timeout": Key(_float(1, 600), 60.0, "seconds to wait for Microsoft Graph"),
    "mail.microsoft.api_base": Key(_endpoint, "https://graph.microsoft.com", "Graph API address"),
    "mail.microsoft.authority_base": Key(
        _endpoint, "https://login.microsoftonline.com", "sign-in authority address"
    ),
    "mail.file.dir": Key(_str, "mail", "folder for .eml files, relative to the home"),
    "manager.name": Key(_str, "", "the system manager's name"),
    "manager.email": Key(_email_or_blank, "", "the system manager's address"),
    "helpdesk.email": Key(_email_or_blank, "", "the help desk's address"),
    "check.lookback_days": Key(_int(0, 366), 7, "days back that event triggers look"),
    "check.holidays": Key(_country, "US", "country code of public holidays; '' = none"),
    "check.extra_holidays": Key(_list_of_dates, [], "more days off, as YYYY-MM-DD"),
    "outbox.max_attempts": Key(_int(1, 1000), 8, "tries before a message fails for good"),
    "outbox.max_age_hours": Key(_int(1, 24 * 365), 72, "hours before a message fails for good"),
    "outbox.stale_claim_minutes": Key(
        _float(0.05, 24 * 60),
        15.0,
        "minutes after which a dead run's claimed messages are taken up again",
    ),
    "mail.pace.per_minute": Key(
        _int(0, 1_000_000), 0, "messages a minute per sending account; 0 = no limit"
    ),
    "mail.pace.per_day": Key(
        _int(0, 10_000_000), 0, "messages a day per sending account; 0 = no limit"
    ),
    "database.url": Key(_db_url, "", "SQLAlchemy URL; '' = cpmail.db in the home"),
    "database.busy_seconds": Key(
        _float(0.1, 3600), 60.0, "seconds to wait for another process's lock on SQLite"
    ),
    "source.url": Key(
        _db_url, "", "SQLAlchemy URL of the agency system's database, for `data pull`"
    ),
    "reports.cash-flow.days": Key(
        _weekdays, [], 'weekdays `check` sends the cash-flow PDF, e.g. ["mon"]'
    ),
    "reports.cash-flow.to": Key(_list_of_str, [], "staff IDs the scheduled cash-flow goes to"),
    "alerts.urls": Key(_alert_urls, [], "Apprise URLs alerts go to", secret=True),
    "alerts.token_days": Key(_int(0, 365), 7, "alert when a sign-in expires within this many days"),
    "alerts.waiting_hours": Key(
        _float(0.1, 24 * 365), 4.0, "alert when mail has waited this many hours"
    ),
    "secrets.backend": Key(_choice("file", "keyring"), "file", "file or keyring"),
}
KEYS["events.budget-alert.thresholds"] = Key(
    _percentages, [], "percentages of a task's budget that raise a budget-alert; [] = off"
)
for _ev in EVENTS:
    KEYS[f"events.{_ev}.enabled"] = Key(_bool, True, f"send {_ev} notifications")
    KEYS[f"events.{_ev}.notify"] = Key(_rules, [], "recipient rules; [] = the default")

# `data pull`: per agency table, the query that gives its rows and whether those are the
# whole table. The names are cpmail.store.schema.AGENCY_TABLE_NAMES (a test holds them
# equal), listed here so that reading the settings does not load SQLAlchemy.
SOURCE_TABLES: tuple[str, ...] = (
    "staff",
    "time_off",
    "staff_opt_out",
    "clients",
    "vendors",
    "client_team",
    "job_status_codes",
    "jobs",
    "job_status_history",
    "tasks",
    "time_entries",
    "job_costs",
    "budget_alerts",
    "billings",
    "billing_lines",
    "payments",
    "estimates",
    "estimate_lines",
    "purchase_orders",
    "po_lines",
    "vendor_invoices",
    "bank_accounts",
    "diary_entries",
    "homebase_entries",
    "change_orders",
    "calendar_entries",
)
for _t in SOURCE_TABLES:
    KEYS[f"source.tables.{_t}.query"] = Key(
        _str, "", f"SELECT giving the {_t} rows for `data pull`; '' = not pulled"
    )
    KEYS[f"source.tables.{_t}.replace"] = Key(
        _bool, False, f"`data pull` deletes {_t} rows the query no longer gives"
    )


# The keys written out in the code, by the type of their value: `settings["mail.smtp.port"]`
# is an int to the type checker, and a key missing here is refused. The keys the loops above
# make are read with `Settings.get`, `event_enabled` and `event_notify`.
# tests/test_settings_types.py holds these equal to KEYS.
StrKey = Literal[
    "agency.name",
    "agency.address",
    "agency.logo",
    "agency.timezone",
    "agency.paper",
    "user.staff",
    "mail.transport",
    "mail.sender",
    "mail.send_window",
    "mail.subject_prefix",
    "mail.smtp.host",
    "mail.smtp.security",
    "mail.smtp.ca_file",
    "mail.gmail.client_secrets",
    "mail.gmail.api_base",
    "mail.gmail.token_uri",
    "mail.microsoft.client_id",
    "mail.microsoft.tenant",
    "mail.microsoft.api_base",
    "mail.microsoft.authority_base",
    "mail.file.dir",
    "manager.name",
    "manager.email",
    "helpdesk.email",
    "check.holidays",
    "database.url",
    "source.url",
    "secrets.backend",
]
BoolKey = Literal["mail.enabled", "mail.one_account", "mail.digest", "mail.smtp.verify"]
IntKey = Literal[
    "mail.max_attachment_mb",
    "mail.smtp.port",
    "mail.smtp.connections",
    "mail.pace.per_minute",
    "mail.pace.per_day",
    "check.lookback_days",
    "outbox.max_attempts",
    "outbox.max_age_hours",
    "alerts.token_days",
]
FloatKey = Literal[
    "mail.smtp.timeout",
    "mail.gmail.timeout",
    "mail.microsoft.timeout",
    "outbox.stale_claim_minutes",
    "database.busy_seconds",
    "alerts.waiting_hours",
]
StrListKey = Literal[
    "check.extra_holidays", "reports.cash-flow.days", "reports.cash-flow.to", "alerts.urls"
]
IntListKey = Literal["events.budget-alert.thresholds"]


MASK = "••••"

# A URL's scheme and its "://" (the group: the leftmost that starts with a letter; ASCII,
# as RFC 3986 has it, so "éhttp://" holds one). Each run of such characters is read once
# from its start: tried from every character of a long word, the search took seconds (a
# query of 20 000 characters, on every command).
_SCHEME = re.compile(r"(?<![A-Za-z0-9_+.\-])[0-9_+.\-]*([A-Za-z][A-Za-z0-9_+.\-]*://)")
# A query parameter (``?name=value``, ``&name=value``); its value runs to the next
# ``&name=`` or the end, so an unencoded ``&`` or space in it stays hidden too.
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#\s]*)=(.*?)(?=&[^=&;#\s]+=|$)", re.DOTALL)
# Names of parameters that carry a secret (``password``, ``sslpassword``, ``token``…),
# looked for in the name as the database driver reads it: ``pass%77ord`` is ``password``.
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|sig|key|auth|credential", re.IGNORECASE)


def _hide_query_secrets(text: str) -> str:
    """``text`` with the value of every secret query parameter replaced by ``••••``."""
    from urllib.parse import unquote_plus

    def one(m: re.Match[str]) -> str:
        # A secret's name, or a value that holds one (ODBC's odbc_connect=…PWD%3D…,
        # libpq's options=-c password=…).
        if _SECRET_NAME.search(unquote_plus(m.group(2))) or _KEYWORD_SECRET.search(
            unquote_plus(m.group(3))
        ):
            return f"{m.group(1)}{m.group(2)}={MASK}"
        return m.group(0)

    return _QUERY_PARAM.sub(one, text)


def _hide_stray_password(rest: str) -> str:
    """A URL without ``@``: whatever follows a ``:`` in place of a port is a password."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if authority.endswith("]") or ":" not in authority:  # no port, or an IPv6 host alone
        return rest
    host, _, port = authority.rpartition(":")
    return rest if port.isdigit() or not port else f"{host}:{MASK}{rest[end:]}"


def redact_url(url: str) -> str:
    """``url`` with its password, and any secret query parameter, replaced by ``••••``.

    SQLAlchemy's own parser says where the password is, whatever characters it
    holds (``/``, a space, ``?``, ``#``, ``:``). Where that parse cannot be
    trusted — it fails, or an ``@`` turns up in the host, database or query,
    which means the password held an ``@`` — everything between ``://`` and
    the last ``@`` is hidden, except a user name before the first ``:``.
    """
    m = _SCHEME.search(url)
    if m is None:
        return url
    head, rest = url[: m.end(1)], url[m.end(1) :]
    if "@" not in rest:  # no user part, so no password in it (and no need to parse)
        return head + _hide_query_secrets(_hide_stray_password(rest))
    trusted, password = _parse_url(url) if m.start(1) == 0 else (False, None)
    if trusted and password is not None:
        # Trusted parse with a password: it follows the user name's ":" and ends at the
        # first "@" after it (SQLAlchemy's password holds no "@").
        colon = rest.find(":")
        at = rest.find("@", colon + 1)
        if colon < 0 or at < 0:  # cannot happen for a parsed password; hide it all
            return head + MASK
        userinfo = rest[: colon + 1] + MASK
        tail = rest[at:]
    elif trusted:
        userinfo, tail = "", rest
    else:
        at = rest.rfind("@")
        user, sep, _ = rest[:at].partition(":")
        keep = sep and user and not any(ch in user for ch in "/ ?#@")
        userinfo = f"{user}:{MASK}" if keep else MASK
        tail = rest[at:]
        if not _HOST_AFTER_AT.match(tail):  # "@Tr4Pq7": the end of a password, not a host
            return head + userinfo
    return head + userinfo + _hide_query_secrets(tail)


# What follows the last "@" when it is a host: a name or [address] and a port, then a
# path or a query (or nothing, after a name of several labels).
_HOST_AFTER_AT = re.compile(
    r"@(?:(?:\[[^\]]*\]|[\w\-]+(?:\.[\w\-]+)*)(?::\d+)?[/?]"  # a host, then a path or query
    r"|(?:[\w\-]+(?:\.[\w\-]+)+|localhost)(?::\d+)?$)"  # or a host of several labels alone
)


def _parse_url(url: str) -> tuple[bool, str | None]:
    """(whether SQLAlchemy's parse of ``url`` can be trusted, the password it found)."""
    from sqlalchemy.engine import make_url  # here, not at the top: `cpmail --help` stays fast

    try:
        u = make_url(url)
    except Exception:  # any failure to parse means: hide conservatively
        return False, None
    if u.drivername.startswith("sqlite") and u.username is None and u.password is None:
        return True, None  # a file path may hold an "@"; there is no password
    return (False, None) if _misread(u) else (True, u.password)


# What a query looks like where SQLAlchemy found a password: "…/db?password=a" before an @.
_QUERY_IN_PASSWORD = re.compile(r"\?[\w.%\-]+=")


def _misread(u: Any) -> bool:
    """Whether SQLAlchemy's reading ``u`` of a database URL cannot be right: an "@" it did
    not take for the end of the user part (in the host, database or query), or a password
    that holds a query, ended by an "@" inside a ?name=value. The rest of the password
    would then be read as a host, a database or a query, and shown in the driver's errors.
    (An SQLite file's path may hold an "@".)"""
    if u.drivername.startswith("sqlite"):
        return False
    parts = [u.host or "", u.database or ""]
    for k, v in u.query.items():
        parts.append(k)
        parts.extend([v] if isinstance(v, str) else list(v))
    if any("@" in part for part in parts):
        return True
    return bool(u.password and _QUERY_IN_PASSWORD.search(u.password))


# ``password=value`` in a connection string (libpq's, inside a query's dblink(…), say;
# ODBC's, inside OPENROWSET(…)): the value in doubled quotes inside an SQL string
# ('…password=''a b''…'), in quotes, in ODBC's braces (PWD={a b;c}, a brace doubled), or
# bare. A bare value runs to a space, a quote or ODBC's ";": a password may hold "&", ","
# or ")", and hiding a character too many is better than showing the rest of one. In a
# PostgreSQL escape string (E'…password=\'a b\'…'), where a quote is written \', a value
# that starts with one is hidden to the end of that string. A value masked already (a
# URL's query parameter, which an "&" ends) is left as it is.
_KEYWORD_SECRET = re.compile(
    r"""(\b[\w.\-]*(?:pass(?:word|wd|code)?|pwd|secret|token|api_?key|credential)\s*=\s*)"""
    r"""(\u2022{4}(?![^\s;'"&])|''(?:\\(?:''|.)|[^'\\]|'(?!'))*''|'(?:\\.|''|[^'\\])*'"""
    r"""|\\'(?:\\.|[^'\\])*|"[^"]*"|\{(?:[^}]|\}\})*\}|(?:\\.|''|[^\s;'"\\])+)""",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` as cpmail may print or mail it: no URL's password, no ``password=…`` value.

    See ``redact_url`` for URLs (a database URL holds a password).
    """
    m = _SCHEME.search(text)
    if m is not None:
        text = text[: m.start(1)] + redact_url(text[m.start(1) :])
    return _KEYWORD_SECRET.sub(lambda k: k.group(1) + MASK, text)


def shown(key: str, value: Any) -> Any:
    """A setting's value as cpmail may print or mail it: a secret setting as ``••••``,
    the password of any URL hidden."""
    spec = KEYS.get(key)
    if spec is not None and spec.secret:
        return value if value in ("", None, []) else MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact(x) if isinstance(x, str) else x for x in value]
    return value


def env_name(key: str) -> str:
    """Return the environment variable that overrides ``key``."""
    return "CPMAIL_" + re.sub(r"[.\-]", "_", key).upper()


@functools.cache
def _setting_variables() -> tuple[frozenset[str], tuple[str, ...]]:
    """Every setting's variable, and the prefixes of their sections (``CPMAIL_MAIL_`` …)."""
    known = frozenset(env_name(k) for k in KEYS)
    return known, tuple(sorted({"CPMAIL_" + k.split(".", 1)[0].upper() + "_" for k in KEYS}))


def _unknown_variables() -> None:
    """Refuse a ``CPMAIL_<SECTION>_…`` variable that is no setting, as an unknown key in the
    file is refused: ``CPMAIL_MAIL_ENABLE=false`` (one letter short) was ignored, and the
    mail it meant to hold back was sent. Other ``CPMAIL_`` names (``CPMAIL_HOME``) are left
    alone."""
    known, sections = _setting_variables()
    for name in sorted(os.environ):
        if name.startswith(sections) and name not in known:
            section = name.removeprefix("CPMAIL_").split("_", 1)[0].lower()
            raise ConfigError(
                f"{name} is not a setting: [{section}] has no such key; see `cpmail config "
                "show` for every key, and settings.md for the variable of each."
            )


DEFAULT_TOML = """\
# cpmail settings. Edit with `cpmail config …` or by hand; comments are kept.
# Every key can be overridden by an environment variable CPMAIL_<SECTION>_<KEY>.

[agency]
name = ""
address = ""
# timezone = "America/New_York"   # default: this machine's time zone

[user]
# The staff ID this machine acts as: the sender of `check` and reports.
staff = ""

[mail]
# The master switch. While false, checks record what they would have sent
# as "suppressed" and nothing is sent later.
enabled = true
transport = "file"        # file | smtp | gmail | microsoft
one_account = false
sender = ""
digest = false
send_window = ""          # e.g. "07:00-19:00"
subject_prefix = "[C&P]"
max_attachment_mb = 20

[mail.file]
dir = "mail"

[check]
lookback_days = 7
holidays = "US"
extra_holidays = []

[outbox]
max_attempts = 8
max_age_hours = 72
"""


# Variables that name a proxy, which may hold its password: read by httpx, requests and
# the libraries built on them (google-auth, msal, Apprise).
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def _remember_secrets(values: Mapping[str, Any], *, environment: bool) -> None:
    """Let ``cpmail.scrub.hide`` mask, by value, every secret these settings hold (and a
    proxy's password), wherever it turns up later."""
    from cpmail.scrub import remember_setting

    for key, value in values.items():
        spec = KEYS.get(key)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and text:
                remember_setting(text, secret=bool(spec and spec.secret))
    if environment:
        for name in _PROXY_VARIABLES:
            for text in (os.environ.get(name), os.environ.get(name.lower())):
                if text:
                    remember_setting(text, secret=False)


class Settings:
    """Effective settings: defaults < ``cpmail.toml`` < environment."""

    def __init__(
        self, home: Path, path: Path, data: Mapping[str, Any], *, environment: bool = True
    ) -> None:
        self.home = home
        self.path = path
        self._data = data  # what the file holds, as read ({} with no file)
        self._environment = environment  # whether CPMAIL_* variables override the file
        # Keys `set` and not yet saved: `save` writes them into the file as it is then,
        # read with tomlkit, which keeps comments and order (and reads ten times slower).
        self._pending: dict[str, Any] = {}
        self._values: dict[str, Any] = {}
        self._source: dict[str, str] = {}
        self._resolve()

    # ---- loading
    @classmethod
    def load(cls, home: Path, *, environment: bool = True) -> Settings:
        """Read ``<home>/cpmail.toml`` (if any); raise ConfigError naming file and line.

        Without ``environment`` the ``CPMAIL_*`` variables are not read: a home of
        cpmail's own making (a preview's) must not take the user's database or transport.
        """
        path = home / SETTINGS_FILE
        data: Mapping[str, Any] = {}
        text = ""
        if path.is_symlink() and not path.exists():
            raise ConfigError(
                f"{path} points to {os.readlink(path)}, which does not exist; "
                "restore it, or remove the link and run `cpmail init`."
            )
        in_home = not environment or not os.environ.get(env_name("database.url"), "").strip()
        db_file = home / "cpmail.db"
        if not path.exists() and in_home and db_file.exists() and db_file.stat().st_size > 0:
            # A home in use without its settings would send from the defaults (the file
            # transport, no sender) and record the day's mail as sent.
            raise ConfigError(
                f"{path} is missing, though {home} holds a cpmail database; restore it, "
                "or run `cpmail init` to write a new one with the defaults."
            )
        if path.exists():
            import tomllib

            try:
                # utf-8-sig: an editor's byte order mark is not taken for a key
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
            except OSError as e:
                raise ConfigError(f"cannot read {path}: {e.strerror}.") from None
            try:
                data = _read_toml(text)
            except tomllib.TOMLDecodeError as e:
                data = _edit_document(path, text, e)  # names the line, or reads what tomlkit reads
            except RecursionError:
                # Nested too deeply for tomllib (it has no limit of its own): tomlkit's
                # limit of 100 levels names the line.
                data = _edit_document(path, text)
        return cls(home, path, data, environment=environment)

    def _resolve(self) -> None:
        flat = dict(_flatten(self._data))
        for key, value in flat.items():
            spec = KEYS.get(key)
            if spec is None:
                raise ConfigError(
                    f"{self.path}: unknown setting {key!r}; see `cpmail config show` "
                    "for the known keys."
                )
            self._values[key] = self._check(key, spec, value, f"{self.path}: {key}")
            self._source[key] = "file"
        for key, spec in KEYS.items():
            env = os.environ.get(env_name(key)) if self._environment else None
            if env is not None:
                if undecodable(env):
                    # bytes that are not UTF-8, as Python passes them on (surrogateescape)
                    raise ConfigError(f"{env_name(key)} is not UTF-8 text; set it in UTF-8.")
                self._values[key] = self._check(key, spec, _env_value(env), env_name(key))
                self._source[key] = "env"
            elif key not in self._values:
                self._values[key] = spec.default
                self._source[key] = "default"
        if self._environment:
            _unknown_variables()
        _remember_secrets(self._values, environment=self._environment)

    @staticmethod
    def _check(key: str, spec: Key, value: Any, where: str) -> Any:
        try:
            return spec.check(_plain(value))
        except ValueError as e:
            plain = _plain(value)
            if (
                spec.secret
                or spec.check in (_url, _db_url)
                or "://" in str(plain)
                or (spec.check is _host and "@" in str(plain))
            ):
                # A URL may hold a password even where it does not parse: never echo it.
                raise ConfigError(f"{where}: {e}.") from None
            shown = redact(str(plain))
            if shown in str(e) or ", got " in str(e):  # the words name the value already
                raise ConfigError(f"{where}: {e}.") from None
            raise ConfigError(f"{where}: {e} (got {shown!r}).") from None

    # ---- reading
    @overload
    def __getitem__(self, key: StrKey) -> str: ...
    @overload
    def __getitem__(self, key: BoolKey) -> bool: ...
    @overload
    def __getitem__(self, key: IntKey) -> int: ...
    @overload
    def __getitem__(self, key: FloatKey) -> float: ...
    @overload
    def __getitem__(self, key: StrListKey) -> list[str]: ...
    @overload
    def __getitem__(self, key: IntListKey) -> list[int]: ...
    def __getitem__(self, key: str) -> object:
        return self._values[key]

    def get(self, key: str) -> object:
        """Return the effective value of a dotted key made at run time; ConfigError for an
        unknown key. A key written out in the code is read as ``settings[key]``, typed."""
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r}; see `cpmail config show`.")
        return self._values[key]

    def source(self, key: str) -> str:
        return self._source[key]

    def items(self) -> Iterator[tuple[str, Any]]:
        for key in KEYS:
            yield key, self._values[key]

    @property
    def db_url(self) -> str:
        return self["database.url"] or f"sqlite:///{self.home / 'cpmail.db'}"

    @property
    def mail_dir(self) -> Path:
        return self.home / self["mail.file.dir"]

    def event_enabled(self, event: str) -> bool:
        return bool(self._values[f"events.{event}.enabled"])

    def event_notify(self, event: str) -> list[str]:
        return list(self._values[f"events.{event}.notify"])

    def tz(self) -> dt.tzinfo:
        """The agency's time zone (this machine's when unset)."""
        name = self["agency.timezone"]
        if name:
            import zoneinfo

            return zoneinfo.ZoneInfo(name)
        return local_zone()

    # ---- writing
    def set(self, key: str, value: Any) -> Any:
        """Validate ``key`` and keep it to be written (call ``save`` after)."""
        spec = KEYS.get(key)
        if spec is None:
            raise ConfigError(f"unknown setting {key!r}; see `cpmail config show` for the keys.")
        typed = self._check(key, spec, value, key)
        _remember_secrets({key: typed}, environment=False)
        self._pending[key] = typed
        self._values[key] = typed
        if self._source.get(key) != "env":
            self._source[key] = "file"
        return typed

    def save(self) -> None:
        """Write the keys `set` into the file atomically, mode 0600 (it may hold a password).

        Under a lock, the file is read as it is now and only this command's keys
        change in it: two commands setting different keys at once both count.
        """
        import tomlkit
        from tomlkit.items import Whitespace

        with _locked(self.path):
            try:
                text = self.path.read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                text = ""
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read {self.path} to change it: {e}.") from None
            document = _edit_document(self.path, text)
            made = [t for key, v in self._pending.items() if (t := _put(document, key, v))]
            for table in made:
                # A table made here ends with a blank line, so that the next table's
                # header does not stick to its last key.
                body = table.value.body
                if body and not isinstance(body[-1][1], Whitespace):
                    table.add(tomlkit.nl())
            text = tomlkit.dumps(document)
            text = text.rstrip("\n") + "\n" if text.strip() else text
            write_atomic(self.path, text.encode("utf-8"), mode=PRIVATE_FILE)
        self._pending.clear()


def _put(document: Any, key: str, typed: Any) -> Any:
    """Set dotted ``key`` in a tomlkit document; return the ordinary table it made, if any.

    Inside an inline table (``mail = { enabled = true }``) a missing table is made
    inline too (``smtp = { host = "…" }``): an inline table cannot hold a [table].
    """
    import tomlkit
    from tomlkit.items import InlineTable

    parts = key.split(".")
    table, made = document, None
    for n, part in enumerate(parts[:-1], start=1):
        if part not in table:
            if isinstance(table, InlineTable):
                table[part] = tomlkit.inline_table()
            else:
                super_table = len(parts) > 2 and part == parts[0]
                table[part] = tomlkit.table(is_super_table=super_table)
                if not super_table:
                    made = table[part]
        table = table[part]
        if not isinstance(table, Mapping):  # (the file changed since it was read)
            raise ConfigError(
                f"cannot set {key}: {'.'.join(parts[:n])} in the file is a value, not a "
                "table; fix the file."
            )
    table[parts[-1]] = typed
    return made


def lock_path(path: Path) -> Path:
    """The lock file kept beside ``path`` while it is written."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for writing ``path`` (a lock file beside it, kept)."""
    import fcntl

    private_dir(path.parent)
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700, whatever the umask.

    A folder that exists already keeps its mode: it may be shared on purpose.
    """
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        except OSError as e:  # a file in the way, a read-only or missing place
            from cpmail.errors import ConfigError

            why = (e.strerror or type(e).__name__).lower()
            raise ConfigError(f"cannot make the folder {d}: {why}.") from None
        os.chmod(d, PRIVATE_DIR)
    if not path.is_dir():
        from cpmail.errors import ConfigError

        raise ConfigError(f"{path} is not a folder (a file of that name is in the way).")
    return path


def write_atomic(path: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    The file gets ``mode`` exactly (0600 unless told otherwise), whatever the umask;
    missing folders are made 0700.
    """
    private_dir(path.parent)
    with atomic_open(path, mode=mode) as f:
        f.write(data)


def _edit_document(path: Path, text: str, error: Exception | None = None) -> Any:
    """``text`` as a tomlkit document (comments and order kept, for writing);
    ConfigError naming the file, line and column where it is not TOML.

    ``error`` is the standard library's complaint about the same text, whose
    position serves where tomlkit's error gives none (a key twice in a table).
    """
    import tomlkit
    from tomlkit.exceptions import ParseError, TOMLKitError, UnexpectedEofError

    line: int | None = None
    column: int | None = None
    try:
        return tomlkit.parse(text)
    except RecursionError:
        reason = "values are nested too deeply (lists or tables inside one another)"
    except ParseError as e:
        if isinstance(e, UnexpectedEofError) or str(e).startswith("Unexpected character: '\\x00'"):
            # The text stops inside something (tomlkit's own end-of-text mark is a NUL),
            # and tomlkit's position is not where that began: look for it.
            kind, line = _unclosed(text)
            reason = (
                f"{kind} opened on line {line} is not closed before the file ends"
                if line is not None
                else "the file ends before a value, a quoted text or a [list] is finished"
            )
        else:
            line, column = e.line, e.col + 1  # tomlkit counts columns from 0
            reason = _bare_word(text, line) or _parse_reason(e, _char_at(text, line, e.col), line)
    except TOMLKitError as e:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(error or ""))
        if found:
            line, column = int(found[1]), int(found[2])
        reason = _parse_reason(e)
    nul = text.find("\x00")
    if nul >= 0 and (line is None or (line, column or 0) >= _position(text, nul)):
        # tomlkit reads a NUL as the end of the text: name the NUL, not what follows
        line, column = _position(text, nul)
        reason = "a NUL character (byte 0), which a settings file cannot hold"
    if line is None:
        raise ConfigError(f"{path}: {reason}; fix the file.")
    where = f"line {line}" + (f", column {column}" if column is not None else "")
    raise ConfigError(f"{path}, {where}: {reason}; fix the file at line {line}.")


def _unclosed(text: str) -> tuple[str, int | None]:
    """What is still open where TOML ``text`` ends: a quote, or a [ or { (the innermost),
    and the line it was opened on; (``''``, None) if nothing is."""
    opened: list[int] = []  # the lines of the brackets open here, innermost last
    line, i, n = 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "#":  # a comment, to the end of its line
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        elif ch in "[{":
            opened.append(line)
        elif ch in "]}" and opened:
            opened.pop()
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            start, i = line, i + len(quote)
            while i < n and not text.startswith(quote, i):
                if text[i] == "\n":
                    if len(quote) == 1:  # a line ends a "…": tomlkit says so at that line
                        break
                    line += 1
                elif text[i] == "\\" and ch == '"':
                    line += text[i + 1 : i + 2] == "\n"
                    i += 1
                i += 1
            if i >= n:
                return "a quote", start
            i += len(quote) if text.startswith(quote, i) else 0
            continue
        i += 1
    return ("a [ or {", opened[-1]) if opened else ("", None)


def _position(text: str, index: int) -> tuple[int, int]:
    """The line and column (each counted from 1) of ``text[index]``."""
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


def _read_toml(text: str) -> dict[str, Any]:
    """``text`` read by tomllib, which has no depth limit of its own."""
    import tomllib

    from cpmail.deep import NoCollection

    with NoCollection():
        return tomllib.loads(text)


def _bare_word(text: str, line: int) -> str | None:
    """A value written without its quotes (``enabled = yes``, ``host = mail.example``), in
    plain words; None if the parser stopped at something else."""
    import tomllib

    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return None
    found = re.fullmatch(r"\s*[\w.\-\"']+\s*=\s*([^\"'\[{#=\s][^#]*?)\s*(#.*)?", lines[line - 1])
    if not found:
        return None
    value = found[1]
    try:
        tomllib.loads(f"v = {value}")
        return None  # a value TOML reads: the trouble is elsewhere
    except tomllib.TOMLDecodeError:
        pass
    if value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return f"{value!r} is not a value TOML knows: write true or false, in small letters"
    if value[0].isdigit() or value[0] in "+-":
        return (
            f"{value!r} is not a value TOML knows: a number is written alone, and text goes "
            f'in quotes ("{value}")'
        )
    return f'{value!r} is not a value TOML knows: text goes in quotes ("{value}")'


def _char_at(text: str, line: int, col: int) -> str:
    """The character at ``line`` (from 1) and ``col`` (from 0); '' past the text."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return ""
    here = lines[line - 1] + ("\n" if line < len(lines) else "")
    return here[col] if 0 <= col < len(here) else ""


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _plain(v: Any) -> Any:
    """tomlkit items -> plain Python values."""
    unwrap = getattr(v, "unwrap", None)
    return unwrap() if callable(unwrap) else v


def _env_value(text: str) -> Any:
    """Environment values are text; a TOML array literal is accepted for lists."""
    text = text.strip()
    if text.startswith("["):
        import tomlkit

        try:
            return tomlkit.parse(f"v = {text}")["v"].unwrap()
        except Exception:
            return text
    return text


def _parse_reason(e: Exception, char: str = "", line: int = 0) -> str:
    """The parser's complaint in plain words; ``char`` is the character it stopped at,
    on ``line``."""
    msg = re.sub(r"\s*at line \d+ col \d+\s*$", "", str(e)).rstrip(". ")
    if msg.startswith("Control characters"):  # tomlkit's words, with a \\u escape to use
        if " in strings" in msg and char in ("\n", "\r", ""):
            # the line ends inside "…" or '…'
            return f"a quote on line {line} is not closed (its closing quote is missing)"
        code = f"U+{ord(char):04X}" if char else "a code below 32"
        where = "inside quotes" if " in strings" in msg else "in a comment"
        return f"a control character ({code}) {where}, which TOML does not allow"
    return msg or "not valid TOML"
