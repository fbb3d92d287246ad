"""Staff members: add, edit, remove, list, mute; and who sends a message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from cpmail.addresses import check_address, normal_address
from cpmail.errors import ConfigError, InputError
from cpmail.events import check_names
from cpmail.secrets import SHARED
from cpmail.settings import Settings
from cpmail.store.schema import staff, staff_opt_out, staff_prefs, time_off
from cpmail.workdays import parse_workdays

# What no staff ID holds: control characters and line breaks (an ID is printed on one
# line), characters that show as nothing ("JD" and "JD" with a zero-width space would be
# two people who look one), and half of a UTF-16 pair (no text at all).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _shown(staff_id: str) -> str:
    """``staff_id`` quoted for a sentence: cut when long, one line whatever it holds."""
    text = staff_id if len(staff_id) <= 60 else staff_id[:40] + "…"
    quoted = repr(text)  # (repr writes a control character as its escape)
    return quoted if len(staff_id) <= 60 else f"{quoted} ({len(staff_id)} characters)"


def staff_id_problem(staff_id: str) -> str | None:
    """Why ``staff_id`` cannot be a staff member's ID, or None when it can.

    The one rule of `staff add` and of `data import` and `data pull`: any text an agency
    system uses as an ID (initials, a UUID, a space, accents, ``W[/]1``), but no comma,
    which separates the staff in every list of them (notify, attendees), nothing that
    does not print, no spaces around it, and not the one-account sender's name.
    """
    shown = _shown(staff_id)
    if not staff_id.strip():
        return "is empty" if not staff_id else f"{shown} is only spaces"
    if staff_id != staff_id.strip():
        return f"{shown} has spaces around it"
    if "," in staff_id:
        return f"{shown} holds a comma, which separates the staff in every list"
    if _CONTROL.search(staff_id):
        return f"{shown} holds a line break or a control character"
    if m := _INVISIBLE.search(staff_id):
        return f"{shown} holds U+{ord(m.group()):04X}, a character that shows as nothing"
    if m := _SURROGATE.search(staff_id):
        return f"{shown} holds \\u{ord(m.group()):04x}, half of a character (not valid text)"
    return reserved(staff_id)


def check_staff_id(staff_id: str) -> str:
    """``staff_id`` if it can name a staff member (``staff_id_problem``); else InputError."""
    if why := staff_id_problem(staff_id):
        raise InputError(f"staff ID {why}; choose another ID.")
    return staff_id


def reserved(staff_id: str) -> str | None:
    """Why ``staff_id`` cannot be a staff member's, or None: "shared" names the one-account
    sender, whose passcode and sign-ins are stored under it. ("Shared" is another ID, as
    an older cpmail took it and an agency's data may hold it; on a file system that ignores
    case its secrets would meet the shared account's: documented.)"""
    if staff_id != SHARED:
        return None
    return (
        f"{staff_id!r} is reserved for the one-account sender (--shared), whose passcode and "
        "sign-ins a staff member of that ID would share"
    )


def _values(**opts: Any) -> dict[str, Any]:
    """Validate the options of `staff add|edit` into column values (None = not given)."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if value is None:
            continue
        if key == "name" and not str(value).strip():
            raise InputError("--name is empty; give the staff member's name.")
        if key in ("work_email", "username"):
            value = check_address(value, where=f"--{key.replace('_', '-')}") if value else None
        elif key == "planned_hours":
            try:
                value = Decimal(str(value))
            except InvalidOperation:
                raise InputError(f"--planned-hours {value!r} is not a number.") from None
            if not value.is_finite():  # nan, inf: not hours
                raise InputError(f"--planned-hours {str(value)!r} is not a number of hours.")
            if not Decimal(0) <= value <= Decimal(24):
                raise InputError("--planned-hours must be between 0 and 24.")
        elif key == "workdays":
            parse_workdays(value)
            value = value.lower()
        elif key == "access":
            value = ",".join(p.strip() for p in value.split(",") if p.strip())
        elif key == "supervisor_id":  # "" clears it; _check_supervisor finds them
            value = value or None
        out[key] = value
    return out


def get(conn: sa.Connection, staff_id: str) -> Any:
    row = conn.execute(sa.select(staff).where(staff.c.id == staff_id)).first()
    if row is None:
        raise InputError(f"no staff member {staff_id!r}; see `cpmail staff list`.")
    return row


def add(engine: sa.Engine, staff_id: str, **opts: Any) -> None:
    check_staff_id(staff_id)
    values = _values(**opts)
    with engine.begin() as conn:
        if conn.execute(sa.select(staff.c.id).where(staff.c.id == staff_id)).first():
            raise InputError(
                f"staff member {staff_id!r} exists; use `cpmail staff edit {staff_id}`."
            )
        _check_supervisor(conn, staff_id, values.get("supervisor_id"))
        conn.execute(staff.insert().values(id=staff_id, **values))


_UNSET = object()


def edit(engine: sa.Engine, staff_id: str, *, digest: Any = _UNSET, **opts: Any) -> None:
    """Change the options given; ``digest`` True/False is the person's choice, None the default."""
    values = _values(**opts)
    if not values and digest is _UNSET:
        raise InputError("nothing to change: give at least one option, e.g. --work-email.")
    with engine.begin() as conn:
        get(conn, staff_id)
        _check_supervisor(conn, staff_id, values.get("supervisor_id"))
        if values:
            conn.execute(staff.update().where(staff.c.id == staff_id).values(**values))
        if digest is not _UNSET:
            conn.execute(staff_prefs.delete().where(staff_prefs.c.staff_id == staff_id))
            if digest is not None:
                conn.execute(staff_prefs.insert().values(staff_id=staff_id, digest=bool(digest)))


def _check_supervisor(conn: sa.Connection, staff_id: str, sup: str | None) -> None:
    if not sup:
        return
    if sup == staff_id:
        raise InputError("--supervisor: a staff member cannot supervise themselves.")
    if not conn.execute(sa.select(staff.c.id).where(staff.c.id == sup)).first():
        raise InputError(f"--supervisor {sup!r}: no such staff member; add them first.")


def remove(engine: sa.Engine, staff_id: str) -> None:
    """Delete a staff member; refused while agency data refers to them (make them inactive)."""
    try:
        with engine.begin() as conn:
            get(conn, staff_id)
            conn.execute(staff_opt_out.delete().where(staff_opt_out.c.staff_id == staff_id))
            conn.execute(staff_prefs.delete().where(staff_prefs.c.staff_id == staff_id))
            conn.execute(time_off.delete().where(time_off.c.staff_id == staff_id))
            conn.execute(staff.delete().where(staff.c.id == staff_id))
    except sa.exc.IntegrityError:
        raise InputError(
            f"staff member {staff_id!r} is still named in the agency's data; "
            f"make them inactive instead (`cpmail staff edit {staff_id} --inactive`)."
        ) from None


def listing(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(staff).order_by(staff.c.id)).mappings().all()
        muted: dict[str, list[str]] = {}
        for r in conn.execute(sa.select(staff_opt_out).order_by(staff_opt_out.c.event)):
            muted.setdefault(r.staff_id, []).append(r.event)
        digest = {
            r.staff_id: ("on" if r.digest else "off")
            for r in conn.execute(sa.select(staff_prefs).where(staff_prefs.c.digest.is_not(None)))
        }
    out = []
    for m in rows:
        d = dict(m)
        d["planned_hours"] = float(d["planned_hours"]) if d["planned_hours"] is not None else None
        d["muted"] = muted.get(d["id"], [])
        d["digest"] = digest.get(d["id"], "default")
        out.append(d)
    return out


def check_events(events: list[str]) -> list[str]:
    return check_names(events)


def mute(engine: sa.Engine, staff_id: str, events: list[str], *, on: bool) -> None:
    if not events:
        raise InputError("name at least one event, e.g. task-overdue (see `cpmail config show`).")
    check_events(events)
    with engine.begin() as conn:
        get(conn, staff_id)
        for ev in events:
            conn.execute(
                staff_opt_out.delete().where(
                    staff_opt_out.c.staff_id == staff_id, staff_opt_out.c.event == ev
                )
            )
            if on:
                conn.execute(staff_opt_out.insert().values(staff_id=staff_id, event=ev))


@dataclass(frozen=True)
class Sender:
    """Who a message is from: the account whose credentials send it, and the address
    (in its normal form, the one the From header shows: the envelope's sender is the same).
    """

    account: str
    address: str
    name: str


def resolve_sender(settings: Settings, engine: sa.Engine, as_staff: str | None) -> Sender:
    """``--as`` > ``[user] staff``; one-account mode overrides both."""
    if settings["mail.one_account"]:
        sender = settings["mail.sender"]
        if not sender:
            raise ConfigError(
                "mail.one_account is on but mail.sender is empty; "
                "run `cpmail config one-account --sender ADDRESS`."
            )
        return Sender(SHARED, normal_address(sender), settings["agency.name"])
    staff_id = as_staff or settings["user.staff"]
    if not staff_id:
        raise ConfigError(
            "no sender: give --as STAFF, set [user] staff (`cpmail config set user.staff JD`), "
            "or send everything from one account (`cpmail config one-account --sender ADDRESS`)."
        )
    with engine.connect() as conn:
        try:
            row = get(conn, staff_id)
        except InputError as e:
            if as_staff:
                raise
            # from the settings, not the command line: say which setting names them
            raise ConfigError(
                f"[user] staff = {staff_id!r} names no staff member; set it to a staff ID "
                "(`cpmail config set user.staff ID`, see `cpmail staff list`)."
            ) from e
    if not row.active:
        raise ConfigError(f"staff member {staff_id} ({row.name}) is inactive and cannot send.")
    if why := reserved(staff_id):  # (a row from before the ID was reserved)
        raise ConfigError(f"staff member {why}; give them another ID to send as them.")
    address = row.username or row.work_email
    if not address:
        raise ConfigError(
            f"staff member {staff_id} ({row.name}) has no username or work e-mail to send from; "
            f"run `cpmail staff edit {staff_id} --work-email ADDRESS`."
        )
    return Sender(staff_id, normal_address(address), row.name)
