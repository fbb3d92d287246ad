"""The typed reading of settings: the overloads of ``Settings.__getitem__`` agree with KEYS.

Each key written out in the code (every key but those made per event and per source
table) is in exactly one ``Literal`` group, and the group's value type is what the
key's check returns and what its default is.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from cpmail.settings import EVENTS, KEYS, SOURCE_TABLES, Settings

MADE_AT_RUN_TIME = {f"events.{e}.{k}" for e in EVENTS for k in ("enabled", "notify")} | {
    f"source.tables.{t}.{k}" for t in SOURCE_TABLES for k in ("query", "replace")
}


def _groups() -> list[tuple[tuple[str, ...], Any]]:
    """(keys, value type) of each overload of ``Settings.__getitem__``."""
    out = []
    for fn in typing.get_overloads(Settings.__getitem__):
        hints = get_type_hints(fn)
        # no catch-all `str` overload: a key that is not in a group is a type error
        assert get_origin(hints["key"]) is Literal, hints["key"]
        out.append((get_args(hints["key"]), hints["return"]))
    return out


def _is(value: Any, kind: Any) -> bool:
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        return isinstance(value, list) and all(_is(x, item) for x in value)
    # bool is an int to isinstance; a key is one or the other
    return isinstance(value, kind) and (kind is bool) == isinstance(value, bool)


def test_every_key_written_in_code_is_in_exactly_one_group() -> None:
    groups = _groups()
    assert len(groups) >= 6
    seen: dict[str, int] = {}
    for keys, _ in groups:
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
    assert {k for k, n in seen.items() if n > 1} == set()
    assert set(seen) - set(KEYS) == set(), "a typed key that KEYS does not have"
    assert set(seen) & MADE_AT_RUN_TIME == set()
    assert set(KEYS) - MADE_AT_RUN_TIME - set(seen) == set(), "a key with no typed group"


def test_each_group_types_what_its_keys_hold() -> None:
    for keys, kind in _groups():
        for key in keys:
            spec = KEYS[key]
            assert get_type_hints(spec.check)["return"] == kind, key
            assert _is(spec.default, kind), key
            assert _is(spec.check(spec.default), kind), key


def test_keys_made_at_run_time_are_what_their_helpers_give(tmp_path: Path) -> None:
    s = Settings.load(tmp_path)
    for ev in EVENTS:
        assert get_type_hints(KEYS[f"events.{ev}.enabled"].check)["return"] is bool
        assert get_type_hints(KEYS[f"events.{ev}.notify"].check)["return"] == list[str]
        assert s.event_enabled(ev) is True and s.event_notify(ev) == []
    for t in SOURCE_TABLES:
        assert isinstance(s.get(f"source.tables.{t}.query"), str)
        assert isinstance(s.get(f"source.tables.{t}.replace"), bool)
