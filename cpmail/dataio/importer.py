"""The importer: convert, check and upsert rows a batch at a time; several tables in one
transaction; --replace and --dry-run."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cpmail import interrupt
from cpmail.dataio.columns import (
    BATCH_ROWS,
    IN_ORDER,
    KNOWN_KEYS_MAX,
    LOOKUP_CHUNK,
    POLYMORPHIC,
    SQLITE_IMPORT_CACHE_KIB,
    STATUS_COLUMNS,
    ImportResult,
    columns_of,
    get_table,
    key_columns,
    table_names,
)
from cpmail.dataio.converters import (
    _Bad,
    _clip,
    _make_converter,
    _r,
    _sqlite_ts,
)
from cpmail.dataio.readers import (
    _csv_records,
    _json_records,
    _mapping_records,
    _ndjson_records,
    _Record,
    resolve_import,
)
from cpmail.errors import ConfigError, InputError
from cpmail.settings import Settings
from cpmail.store import schema
from cpmail.store.schema import CHECKED

# ------------------------------------------------------------------ the importer


@dataclass
class _Ref:
    """A foreign key of one file column: fixed target, or chosen by another column (``kind``)."""

    index: int
    column: str
    target: tuple[str, str] | None
    by_index: int = -1
    by_target: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class _Plan:
    """How rows with one set of columns are converted, checked and written."""

    names: tuple[str, ...]
    converters: list[Callable[[Any], Any]]
    key_index: list[int]
    refs: list[_Ref]
    sql: str  # an upsert, or an UPDATE when new rows are impossible (see _check_new_rows)
    order: list[int] | None  # the value order ``sql`` takes, when not the file's
    missing_for_new: list[str]
    status_index: list[tuple[int, int]]  # (value index, 0 production / 1 billing)
    in_order: list[tuple[int, int, str]]  # (earlier, later, why) of IN_ORDER, by value index


class _Importer:
    def __init__(
        self,
        conn: sa.Connection,
        settings: Settings,
        table: sa.Table,
        src: str,
        unit: str,
        changed_at: dt.datetime | None,
    ) -> None:
        self.conn = conn
        self.table = table
        self.src = src
        self.unit = unit
        dialect = conn.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"data import supports SQLite and PostgreSQL, not {dialect.name}.")
        self.sqlite = dialect.name == "sqlite"
        self.mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.distinct = "IS NOT" if self.sqlite else "IS DISTINCT FROM"
        self.q = dialect.identifier_preparer.quote
        self.tz = settings.tz()
        self.changed_by = settings["user.staff"] or None
        self.changed_at = changed_at
        self.specs = {s.name: s for s in columns_of(table)}
        self.keys = key_columns(table)
        self.plans: dict[tuple[str, ...], _Plan] = {}
        self.known: dict[tuple[str, str], set[Any]] = {}
        # Forward references of a self-referencing table still waiting for their row:
        # value -> (position, key text, column).
        self.pending: dict[Any, tuple[int, str, str]] = {}
        self.pending_targets: set[str] = set()  # the columns they refer to (``id``)
        self.rows = 0
        self.changed = 0  # rows inserted or changed (the database's row counts)
        self.status_changes = 0
        # --replace: temporary tables of the keys this run gave, per table being replaced.
        self.seen: dict[str, str] = {}
        # A source that gives each key once (a query): a temporary table of the keys it
        # gave, each with the row that gave it first (see _duplicates).
        self.given = ""

    # ---- messages

    def _where(self, pos: int, key: str = "") -> str:
        if pos == 0:  # the names alone, before any row (a query's columns)
            return self.src
        return f"{self.src}, {self.unit} {pos}{f' ({key})' if key else ''}"

    def _key_text(self, plan: _Plan, values: Sequence[Any]) -> str:
        parts = []
        for i in plan.key_index:
            v = values[i]
            if isinstance(v, str):
                v = v.strip()
            if v is not None and v != "":
                parts.append(f"{plan.names[i]} {_clip(str(v))}")
        return ", ".join(parts)

    # ---- plans

    def _plan(self, names: tuple[str, ...], pos: int) -> _Plan:
        plan = self.plans.get(names)
        if plan is None:
            if len(self.plans) > 1000:
                self.plans.clear()
            plan = self._make_plan(names, pos)
            self.plans[names] = plan
        return plan

    def _hint(self, unknown: list[str], seen: set[str]) -> str:
        """Why columns may be unknown, when it shows: the separator, the header, the query."""
        cased = [n for n in unknown if n.lower() in self.specs]
        if cased:  # ID, Name: the names are right but for their case
            return f" (column names are in lower case: {cased[0].lower()!r}, not {cased[0]!r})"
        if any(";" in n or "\t" in n for n in unknown):
            return " (the file seems to use ; or tabs between cells; use commas)"
        if seen & set(self.specs):
            return ""
        if self.unit == "line":
            return " (is the header line missing? the first line must name the columns)"
        if self.unit == "row":
            return " (name the query's columns as cpmail's, with AS)"
        return ""

    def _make_plan(self, names: tuple[str, ...], pos: int) -> _Plan:
        t = self.table.name
        where = self._where(pos)
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not name:
                raise InputError(f"{where}: column {i + 1} has no name; name every column.")
            if name in seen:
                raise InputError(f"{where}: column {_r(name)} appears twice; keep one of them.")
            seen.add(name)
        unknown = [n for n in names if n not in self.specs]
        if unknown:
            raise InputError(
                f"{where}: unknown column {_r(unknown[0])}{self._hint(unknown, seen)}; the {t} "
                f"columns are {', '.join(self.specs)}."
            )
        missing_keys = [k for k in self.keys if k not in seen]
        if missing_keys:
            raise InputError(
                f"{where}: there is no {missing_keys[0]} column; {t} rows are found by "
                f"{' and '.join(self.keys)}, so every row needs "
                f"{'it' if len(self.keys) == 1 else 'them'}."
            )
        index = {n: i for i, n in enumerate(names)}
        refs: list[_Ref] = []
        for i, name in enumerate(names):
            spec = self.specs[name]
            poly = POLYMORPHIC.get((t, name))
            if poly is not None:
                by, targets = poly
                if by not in index:
                    raise InputError(
                        f"{where}: column {name} needs the {by} column beside it, "
                        f"to tell which table it refers to."
                    )
                refs.append(_Ref(i, name, None, index[by], targets))
            elif spec.references is not None:
                refs.append(_Ref(i, name, spec.references))
        for (pt, pc), (by, _targets) in POLYMORPHIC.items():
            if pt == t and by in index and pc not in index:
                raise InputError(
                    f"{where}: column {by} needs the {pc} column beside it; give both or neither."
                )
        converters = [
            _make_converter(self.specs[n], t, sqlite=self.sqlite, tz=self.tz) for n in names
        ]
        status_index = (
            [(index[c], k) for k, c in enumerate(STATUS_COLUMNS) if c in index]
            if t == "jobs"
            else []
        )
        missing_for_new = [
            s.name for s in self.specs.values() if s.needed_for_new_rows and s.name not in seen
        ]
        key_index = [index[k] for k in self.keys]
        if missing_for_new:
            # Every row must already exist (checked per batch), and an upsert cannot be
            # used: both databases check NOT NULL on the proposed row before the conflict.
            sql, order = self._update_sql(names)
        else:
            sql, order = self._upsert_sql(names), None
        return _Plan(
            names=names,
            converters=converters,
            key_index=key_index,
            refs=refs,
            sql=sql,
            order=order,
            missing_for_new=missing_for_new,
            status_index=status_index,
            in_order=[
                (index[a], index[b], why)
                for table, a, b, why in IN_ORDER
                if table == t and a in index and b in index
            ],
        )

    def _upsert_sql(self, names: tuple[str, ...]) -> str:
        q = self.q
        cols = ", ".join(q(n) for n in names)
        marks = ", ".join([self.mark] * len(names))
        conflict = ", ".join(q(k) for k in self.keys)
        others = [q(n) for n in names if n not in self.keys]
        sets = ", ".join(f"{n} = excluded.{n}" for n in others)
        if sets and CHECKED in self.table.c:  # changed: the state triggers look again
            sets += f", {q(CHECKED)} = NULL"
        if sets:
            # Only a row that differs is written (and counted): unchanged rows stay as they
            # were, their state-trigger mark included.
            t = q(self.table.name)
            old = ", ".join(f"{t}.{n}" for n in others)
            new = ", ".join(f"excluded.{n}" for n in others)
            action = f"DO UPDATE SET {sets} WHERE ({old}) {self.distinct} ({new})"
        else:
            action = "DO NOTHING"
        return (
            f"INSERT INTO {q(self.table.name)} ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({conflict}) {action}"
        )

    def _update_sql(self, names: tuple[str, ...]) -> tuple[str, list[int]]:
        q = self.q
        others = [i for i, n in enumerate(names) if n not in self.keys]
        keys = [names.index(k) for k in self.keys]
        if not others:
            return "", []
        sets = ", ".join(f"{q(names[i])} = {self.mark}" for i in others)
        if CHECKED in self.table.c:
            sets += f", {q(CHECKED)} = NULL"
        where = " AND ".join(f"{q(names[i])} = {self.mark}" for i in keys)
        old = ", ".join(q(names[i]) for i in others)
        new = ", ".join([self.mark] * len(others))
        where += f" AND ({old}) {self.distinct} ({new})"
        return f"UPDATE {q(self.table.name)} SET {sets} WHERE {where}", others + keys + others

    # ---- the loop

    def run(self, records: Iterator[_Record]) -> None:
        batch: list[tuple[Any, ...]] = []
        positions: list[int] = []
        plan: _Plan | None = None
        names_now: tuple[str, ...] | None = None
        converters: list[Callable[[Any], Any]] = []
        for pos, names, cells in records:
            if names is not names_now:
                if plan is None or names != plan.names:
                    if plan is not None:
                        self._flush(plan, batch, positions)
                        batch, positions = [], []
                    plan = self._plan(names, pos)
                    converters = plan.converters
                names_now = names
            if not cells and names:
                continue  # a CSV header: its names are checked by now
            try:
                values = tuple([conv(cell) for conv, cell in zip(converters, cells, strict=False)])
            except _Bad:
                assert plan is not None
                self._flush(plan, batch, positions)  # earlier rows' errors come first
                raise self._cell_error(plan, pos, cells) from None
            assert plan is not None
            for a, b, why in plan.in_order:
                if values[a] is not None and values[b] is not None and values[b] < values[a]:
                    self._flush(plan, batch, positions)
                    raise InputError(
                        f"{self._where(pos, self._key_text(plan, values))}, column "
                        f"{plan.names[b]}: {plan.names[b]} {_r(str(cells[b]).strip())} is "
                        f"before {plan.names[a]} {_r(str(cells[a]).strip())}, so {why}."
                    )
            batch.append(values)
            positions.append(pos)
            self.rows += 1
            if len(batch) >= BATCH_ROWS:
                assert plan is not None
                self._flush(plan, batch, positions)
                batch, positions = [], []
        if plan is not None:
            self._flush(plan, batch, positions)
        if self.pending:
            value, (pos, key, column) = min(self.pending.items(), key=lambda kv: kv[1][0])
            target = self.table.name
            raise InputError(
                f"{self._where(pos, key)}, column {column}: there is no {target} row with "
                f"{self.keys[0]} {_r(str(value))}, neither in the database nor in this file."
            )

    def _cell_error(self, plan: _Plan, pos: int, cells: Sequence[Any]) -> InputError:
        key = self._key_text(plan, cells)
        for name, conv, cell in zip(plan.names, plan.converters, cells, strict=True):
            try:
                conv(cell)
            except _Bad as e:
                return InputError(f"{self._where(pos, key)}, column {name}: {e}.")
        raise AssertionError("a converter failed once and then passed")

    # ---- a batch

    def _flush(self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]) -> None:
        if not batch:
            return
        if self.given:
            self._duplicates(plan, batch, positions)
        if plan.missing_for_new:
            self._check_new_rows(plan, batch, positions)
        history = self._status_changes(plan, batch) if plan.status_index else []
        if plan.order is not None:
            order = plan.order
            if order:
                self._execute(plan.sql, [tuple([v[i] for i in order]) for v in batch], positions)
        else:
            self._execute(plan.sql, batch, positions)
        if history:
            self._write_history(history)
        self._check_refs(plan, batch, positions)
        seen = self.seen.get(self.table.name)
        if seen is not None:
            ki = plan.key_index
            self._remember(seen, self.keys, [tuple([v[i] for i in ki]) for v in batch])

    def _remember(self, seen: str, keys: Sequence[str], values: list[tuple[Any, ...]]) -> None:
        """Add keys to a --replace run's table of keys given."""
        sql = (
            f"INSERT INTO {self.q(seen)} ({', '.join(self.q(k) for k in keys)}) "
            f"VALUES ({', '.join([self.mark] * len(keys))})"
        )
        self.conn.exec_driver_sql(sql, values)

    def _execute(self, sql: str, batch: list[tuple[Any, ...]], positions: list[int]) -> None:
        try:
            result = self.conn.exec_driver_sql(sql, batch)
            self.changed += max(result.rowcount, 0)
        except (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError) as e:
            # (the rows' fault; a disk full, a lock, a lost server are the database's:
            # they go on to be said as such, exit 3)
            raise InputError(
                f"{self.src}: the database refused the rows of {self.unit}s {positions[0]} to "
                f"{positions[-1]} ({_first_line(e.orig)}); nothing was imported."
            ) from None

    def _select_in(
        self, table: str, columns: Sequence[str], match: Sequence[str], values: Sequence[Any]
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``table`` whose ``match`` columns equal one of ``values``, raw as stored."""
        q = self.q
        cols = ", ".join(q(c) for c in columns)
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            if len(match) == 1:
                marks = ", ".join([self.mark] * len(chunk))
                sql = f"SELECT {cols} FROM {q(table)} WHERE {q(match[0])} IN ({marks})"
                params: tuple[Any, ...] = tuple(chunk)
            else:
                row = "(" + ", ".join([self.mark] * len(match)) + ")"
                lhs = "(" + ", ".join(q(c) for c in match) + ")"
                marks = ", ".join([row] * len(chunk))
                sql = f"SELECT {cols} FROM {q(table)} WHERE {lhs} IN (VALUES {marks})"
                params = tuple(v for key in chunk for v in key)
            for found in self.conn.exec_driver_sql(sql, params):
                yield tuple(found)

    def _duplicates(self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]) -> None:
        """A key given twice with other values (a query's join that repeats a row with
        another status, say) is an error naming both places: the later values would
        overwrite the earlier ones, and a job's status would seem to change. Given twice
        with the same values, it is the same row (a join that repeats it as it is).

        The keys of earlier batches are in ``given``; this batch is not written yet, so
        the table holds the values an earlier batch gave.
        """
        ki = plan.key_index
        keys = [tuple([v[i] for i in ki]) for v in batch]
        first: dict[tuple[Any, ...], int] = {}  # key -> its first row in this batch
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        q = self.q
        cols = [*self.keys, "given_at"]
        sql = (
            f"INSERT INTO {q(self.given)} ({', '.join(q(c) for c in cols)}) "
            f"VALUES ({', '.join([self.mark] * len(cols))}) "
            f"ON CONFLICT ({', '.join(q(k) for k in self.keys)}) DO NOTHING"
        )
        added = self.conn.exec_driver_sql(sql, [(*k, positions[r]) for k, r in first.items()])
        before: dict[tuple[Any, ...], int] = {}  # key -> where an earlier batch gave it
        if added.rowcount != len(first):
            lookup: list[Any] = [k[0] for k in first] if len(ki) == 1 else list(first)
            for found in self._select_in(self.given, cols, self.keys, lookup):
                given, at = tuple(found[:-1]), found[-1]
                where_first = first.get(given)
                if where_first is not None and at < positions[where_first]:
                    before[given] = at
        clashes = [
            row
            for row, key in enumerate(keys)
            if row != first[key] and batch[row] != batch[first[key]]
        ][:1]
        others = [i for i, n in enumerate(plan.names) if n not in self.keys]
        if before and others:  # the table holds what the earlier batch gave
            where = " AND ".join(f"{q(k)} = {self.mark}" for k in self.keys)
            old = ", ".join(q(plan.names[i]) for i in others)
            new = ", ".join([self.mark] * len(others))
            differs = (
                f"SELECT 1 FROM {q(self.table.name)} WHERE {where} "
                f"AND ({old}) {self.distinct} ({new})"
            )
            for key in before:
                row = first[key]
                params = (*key, *[batch[row][i] for i in others])
                if self.conn.exec_driver_sql(differs, params).first() is not None:
                    clashes.append(row)
        if clashes:
            row = min(clashes)
            at = before.get(keys[row], positions[first[keys[row]]])
            raise self._given_twice(plan, batch[row], at, positions[row])

    def _given_twice(
        self, plan: _Plan, values: Sequence[Any], earlier: int, pos: int
    ) -> InputError:
        key = self._key_text(plan, values)
        return InputError(
            f"{self._where(pos, key)}: this {self.table.name} row ({key}) was given already, "
            f"at {self.unit} {earlier}, with other values; make the query give one row per "
            "key (a join may repeat a row); nothing was imported."
        )

    def _check_new_rows(
        self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]
    ) -> None:
        """A row that will be inserted must carry every column a new row needs."""
        ki = plan.key_index
        keys = [tuple(v[i] for i in ki) for v in batch]
        distinct = list(dict.fromkeys(keys))
        lookup: list[Any] = [k[0] for k in distinct] if len(ki) == 1 else distinct
        found = {tuple(r) for r in self._select_in(self.table.name, self.keys, self.keys, lookup)}
        for key, values, pos in zip(keys, batch, positions, strict=True):
            if key not in found:
                column = plan.missing_for_new[0]
                raise InputError(
                    f"{self._where(pos, self._key_text(plan, values))}, column {column}: "
                    f"this is a new {self.table.name} row, which needs a {column}, and the "
                    f"file has no {column} column."
                )
            found.add(key)

    def _status_changes(
        self, plan: _Plan, batch: list[tuple[Any, ...]]
    ) -> list[tuple[str, str, Any, Any]]:
        """The job_status_history rows this batch adds: (job, field, old, new)."""
        ki = plan.key_index[0]
        ids = list(dict.fromkeys(v[ki] for v in batch))
        current: dict[Any, list[Any]] = {
            r[0]: [r[1], r[2]]
            for r in self._select_in("jobs", ("id", *STATUS_COLUMNS), ("id",), ids)
        }
        out = []
        for values in batch:
            job = values[ki]
            old = current.get(job)
            new = list(old) if old is not None else [None, None]
            for i, k in plan.status_index:
                if old is not None and old[k] != values[i]:
                    out.append((job, STATUS_COLUMNS[k], old[k], values[i]))
                new[k] = values[i]
            current[job] = new
        return out

    def _write_history(self, changes: list[tuple[str, str, Any, Any]]) -> None:
        at = self.changed_at or dt.datetime.now(self.tz).replace(tzinfo=None)
        stored_at: Any = _sqlite_ts(at) if self.sqlite else at
        rows = [
            (_history_id(), job, fld, old, new, stored_at, self.changed_by)
            for job, fld, old, new in changes
        ]
        cols = ("id", "job_id", "field", "old_value", "new_value", "changed_at", "changed_by")
        sql = (
            f"INSERT INTO {self.q('job_status_history')} ({', '.join(cols)}) "
            f"VALUES ({', '.join([self.mark] * len(cols))})"
        )
        self.conn.exec_driver_sql(sql, rows)
        self.status_changes += len(rows)
        seen = self.seen.get("job_status_history")
        if seen is not None:  # history rows written by this run stay when that table is replaced
            self._remember(seen, ("id",), [(r[0],) for r in rows])

    # Complexity above 15 on purpose: one branch per kind of reference: diary parties, link tables,
    # self-references.
    def _check_refs(self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]) -> None:  # noqa: C901
        """Every foreign key must name a row in the database (this batch is written by now)."""
        own = self.table.name
        if self.pending:
            # Forward references that rows of this batch have just satisfied, whether or
            # not these rows name the referring column themselves (JSON objects may differ).
            for column in self.pending_targets & set(plan.names):
                i = plan.names.index(column)
                for v in batch:
                    self.pending.pop(v[i], None)
        errors: list[
            tuple[int, str, Any, tuple[str, str]]
        ] = []  # (row index, column, value, target)
        for ref in plan.refs:
            wanted: dict[tuple[str, str], set[Any]] = {}
            if ref.target is not None:
                values = {v[ref.index] for v in batch}
                values.discard(None)
                values -= self.known.get(ref.target, set())
                if values:
                    wanted[ref.target] = values
            else:
                for v in batch:
                    value = v[ref.index]
                    target = ref.by_target.get(v[ref.by_index])
                    if value is None or target is None:
                        continue
                    if value not in self.known.get(target, ()):
                        wanted.setdefault(target, set()).add(value)
            for target, values in wanted.items():
                known = self.known.setdefault(target, set())
                missing = set(values)
                for (found,) in self._select_in(
                    target[0], (target[1],), (target[1],), list(values)
                ):
                    missing.discard(found)
                    if len(known) >= KNOWN_KEYS_MAX:
                        known.clear()
                    known.add(found)
                if not missing:
                    continue
                for row, v in enumerate(batch):
                    value = v[ref.index]
                    if value not in missing:
                        continue
                    if ref.target is None and ref.by_target.get(v[ref.by_index]) != target:
                        continue
                    if target[0] == own:
                        key = self._key_text(plan, v)
                        self.pending.setdefault(value, (positions[row], key, ref.column))
                        self.pending_targets.add(target[1])
                    else:
                        errors.append((row, ref.column, value, target))
                        break
        if errors:
            row, column, value, (t, c) = min(errors, key=itemgetter(0))
            v = batch[row]
            hint = f"; import {t} first" if t != own else ""
            raise InputError(
                f"{self._where(positions[row], self._key_text(plan, v))}, column {column}: "
                f"there is no {t} row with {c} {_r(str(value))}{hint}."
            )

    def count(self) -> int:
        sql = f"SELECT count(*) FROM {self.q(self.table.name)}"
        return int(self.conn.exec_driver_sql(sql).scalar_one())

    # ---- --replace

    def delete_missing(self, gone: str) -> int:
        """Delete the rows this run did not give; refuse when a row that stays refers to one.

        Tables that refer to this one have had their own deletions done by now
        (children come first), so every row left in them stays.
        """
        q = self.q
        t = q(self.table.name)
        seen = q(self.seen[self.table.name])
        own = self.table.name
        for child, column, tcol, by, kind in _referrers(own):
            c = q(child.name)
            ckeys = key_columns(child)
            conds = [
                f"c.{q(column)} IS NOT NULL",
                f"EXISTS (SELECT 1 FROM {t} p WHERE p.{q(tcol)} = c.{q(column)})",
                f"NOT EXISTS (SELECT 1 FROM {seen} s WHERE s.{q(tcol)} = c.{q(column)})",
            ]
            params: tuple[Any, ...] = ()
            if by is not None:
                conds.append(f"c.{q(by)} = {self.mark}")
                params = (kind,)
            if child.name == own:  # a row of this table that stays
                match = " AND ".join(f"s2.{q(k)} = c.{q(k)}" for k in ckeys)
                conds.append(f"EXISTS (SELECT 1 FROM {seen} s2 WHERE {match})")
            sql = (
                f"SELECT {', '.join(f'c.{q(k)}' for k in ckeys)}, c.{q(column)} FROM {c} c "
                f"WHERE {' AND '.join(conds)} ORDER BY {', '.join(f'c.{q(k)}' for k in ckeys)} "
                "LIMIT 1"
            )
            row = self.conn.exec_driver_sql(sql, params).first()
            if row is not None:
                ckey = ", ".join(f"{k} {_clip(str(v))}" for k, v in zip(ckeys, row, strict=False))
                value = row[-1]
                raise InputError(
                    f"{self.src}: the {own} row with {tcol} {_clip(str(value))} {gone}, so it "
                    f"would be deleted, but the {child.name} row ({ckey}) still refers to it "
                    f"in its column {column}; nothing was changed. Keep that {own} row, or "
                    f"remove or change the {child.name} row as well."
                )
        keys = key_columns(self.table)
        missing = (
            f"NOT EXISTS (SELECT 1 FROM {seen} s WHERE "
            + " AND ".join(f"s.{q(k)} = {t}.{q(k)}" for k in keys)
            + ")"
        )
        for child_name, column in CASCADE:
            (fk,) = get_table(child_name).c[column].foreign_keys
            if fk.column.table.name == own:
                self.conn.exec_driver_sql(
                    f"DELETE FROM {q(child_name)} WHERE {q(column)} IN "
                    f"(SELECT {q(fk.column.name)} FROM {t} WHERE {missing})"
                )
        result = self.conn.exec_driver_sql(f"DELETE FROM {t} WHERE {missing}")
        return max(result.rowcount, 0)


_history_lock = threading.Lock()
_history_last = 0


def _history_id() -> str:
    """``H`` + nanoseconds since the epoch (strictly increasing here) + 4 random hex digits."""
    global _history_last
    with _history_lock:
        ns = max(time.time_ns(), _history_last + 1)
        _history_last = ns
    return f"H{ns:019d}{secrets.token_hex(2)}"


@dataclass(frozen=True)
class ImportSource:
    """One table's rows for :func:`import_sources`: where they come from and how to read them.

    ``records`` is called when the table's turn comes (files are opened, queries
    run, in foreign-key order). ``gone`` says, for --replace errors, why a row
    would be deleted ("is not in the file").
    """

    table: sa.Table
    records: Callable[[], Iterator[_Record]]
    source: str
    unit: str
    replace: bool = False
    origin: str = "file"
    gone: str = "is not in the file"
    # Each key at most once (with other values): a query's rows are the state of the agency
    # system, where a key names one row; a file's may be a log of changes, applied in order.
    once: bool = False


def file_source(
    path: str | os.PathLike[str],
    table: str | None = None,
    fmt: str | None = None,
    *,
    replace: bool = False,
) -> ImportSource:
    """The rows of one CSV, JSON or NDJSON file (table and format as :func:`resolve_import`)."""
    t, form = resolve_import(path, table, fmt)
    src = str(path)
    p = Path(path)
    reader = {"csv": _csv_records, "json": _json_records, "ndjson": _ndjson_records}[form]
    return ImportSource(
        table=t,
        records=lambda: reader(p, src),
        source=src,
        unit="item" if form == "json" else "line",
        replace=replace,
    )


def folder_sources(path: str | os.PathLike[str], *, replace: bool = False) -> list[ImportSource]:
    """Every file of a folder (an export of the agency system), in foreign-key order.

    Each file must be named after a table (``jobs.csv``, ``jobs.2026-11-27.json``);
    files whose names start with a dot are left alone. Raise InputError naming
    a file that is not named after a table, or a table given twice.
    """
    folder = Path(path)
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise InputError(f"cannot read the folder {folder}: {e.strerror}.") from None
    by_table: dict[str, ImportSource] = {}
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            raise InputError(
                f"{p} is a folder; a folder to import holds only files named after tables."
            )
        stem = p.name.split(".", 1)[0]
        if stem not in schema.AGENCY_TABLE_NAMES:
            raise InputError(
                f"{p}: not named after a table, so it cannot be imported with its folder; "
                f"move it away or rename it after one of {', '.join(table_names())}."
            )
        source = file_source(p, replace=replace)
        if stem in by_table:
            raise InputError(
                f"{folder}: two files for the table {stem}: {Path(by_table[stem].source).name} "
                f"and {p.name}; keep one."
            )
        by_table[stem] = source
    if not by_table:
        raise InputError(f"{folder} holds no file to import; the files are named after tables.")
    return [by_table[n] for n in schema.AGENCY_TABLE_NAMES if n in by_table]


def import_file(
    engine: sa.Engine,
    settings: Settings,
    path: str | os.PathLike[str],
    table: str | None = None,
    fmt: str | None = None,
    *,
    changed_at: dt.datetime | None = None,
    replace: bool = False,
    dry_run: bool = False,
) -> ImportResult:
    """Upsert the rows of one CSV, JSON or NDJSON file into one table, in one transaction.

    The table is ``table`` or the file's stem; the format ``fmt`` or the
    extension. Raise InputError (nothing written) on the first bad row.
    ``changed_at`` (naive, agency time) stamps job status history rows;
    default: now. ``replace``: the file is the whole table (rows not in it are
    deleted); ``dry_run``: count, then change nothing.
    """
    source = file_source(path, table, fmt, replace=replace)
    (result,) = import_sources(engine, settings, [source], changed_at=changed_at, dry_run=dry_run)
    return result


def import_folder(
    engine: sa.Engine,
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    changed_at: dt.datetime | None = None,
    replace: bool = False,
    dry_run: bool = False,
) -> list[ImportResult]:
    """Import every file of a folder, in foreign-key order, in one transaction."""
    sources = folder_sources(path, replace=replace)
    return import_sources(engine, settings, sources, changed_at=changed_at, dry_run=dry_run)


def import_rows(
    engine: sa.Engine,
    settings: Settings,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    source: str = "rows",
    changed_at: dt.datetime | None = None,
) -> ImportResult:
    """Upsert mappings of column name to value into ``table``, in one transaction.

    Values may be text as in a CSV cell, or Python/JSON values (int, Decimal,
    float, bool, date, datetime, a list for list columns, None). Errors name
    ``source`` and the 1-based row number.
    """
    src = ImportSource(
        table=get_table(table),
        records=lambda: _mapping_records(rows, source),
        source=source,
        unit="row",
        origin="rows",
    )
    (result,) = import_sources(engine, settings, [src], changed_at=changed_at)
    return result


def import_sources(
    engine: sa.Engine,
    settings: Settings,
    sources: Sequence[ImportSource],
    *,
    changed_at: dt.datetime | None = None,
    dry_run: bool = False,
    done: str | None = None,
) -> list[ImportResult]:
    """Import several tables in one transaction, in the order given (parents first).

    Tables whose source has ``replace`` then lose the rows their source did not
    give, children before parents; a row still referred to by a row that stays
    stops the whole import. With ``dry_run`` everything is done and counted,
    then rolled back. Raise InputError (nothing changed) on the first bad row.

    ``done`` is what a command stopped by a signal once the import is committed
    says of it (``interrupt.committing``); without it, a signal stops at once.
    """
    names = [s.table.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"the table {name} is given twice; give each table once.")
    with engine.connect() as conn:
        restore = _sqlite_import_mode(conn) if conn.dialect.name == "sqlite" else None
        try:
            with conn.begin() as tx:
                results = _run_sources(conn, settings, sources, changed_at, dry_run)
                if dry_run:
                    tx.rollback()
                elif done is not None:
                    with interrupt.committing(done):
                        tx.commit()
        except (sa.exc.IntegrityError, sa.exc.DataError) as e:
            # The checks above name the row at fault; this is the database's last word
            # (a row deleted by someone else meanwhile, a constraint added by hand).
            where = sources[0].source if len(sources) == 1 else "the import"
            raise InputError(
                f"{where}: the database refused the import ({_first_line(e.orig)}); "
                "nothing was imported."
            ) from None
        finally:
            if restore is not None:
                restore()
    return results


def _run_sources(
    conn: sa.Connection,
    settings: Settings,
    sources: Sequence[ImportSource],
    changed_at: dt.datetime | None,
    dry_run: bool,
) -> list[ImportResult]:
    seen: dict[str, str] = {}
    for src in sources:
        if src.replace:
            seen[src.table.name] = _seen_table(conn, src.table)
    done: list[tuple[ImportSource, _Importer, int]] = []
    for src in sources:
        imp = _Importer(conn, settings, src.table, src.source, src.unit, changed_at)
        imp.seen = seen
        imp.given = _given_table(conn, src.table) if src.once else ""
        before = imp.count()
        imp.run(src.records())
        if imp.given:
            conn.exec_driver_sql(f"DROP TABLE {imp.q(imp.given)}")
        done.append((src, imp, imp.count() - before))
    deleted: dict[str, int] = {}
    for src, imp, _new in reversed(done):
        if src.replace:
            deleted[src.table.name] = imp.delete_missing(src.gone)
    for name in seen.values():
        conn.exec_driver_sql(f"DROP TABLE {conn.dialect.identifier_preparer.quote(name)}")
    return [
        ImportResult(
            table=src.table.name,
            source=src.source,
            rows=imp.rows,
            new=new,
            updated=imp.changed - new,
            unchanged=imp.rows - imp.changed,
            deleted=deleted.get(src.table.name, 0),
            status_changes=imp.status_changes,
            replace=src.replace,
            dry_run=dry_run,
            origin=src.origin,
        )
        for src, imp, new in done
    ]


def _seen_table(conn: sa.Connection, table: sa.Table) -> str:
    """A temporary table for the keys a --replace import gives ``table``."""
    q = conn.dialect.identifier_preparer.quote
    name = f"cpmail_seen_{table.name}"
    keys = ", ".join(q(k) for k in key_columns(table))
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {q(name)} AS SELECT {keys} FROM {q(table.name)} WHERE 1 = 0"
    )
    conn.exec_driver_sql(f"CREATE INDEX {q(name + '_key')} ON {q(name)} ({keys})")
    return name


def _given_table(conn: sa.Connection, table: sa.Table) -> str:
    """A temporary table for the keys one source gives ``table``, each once, with the
    first line or row that gave it (``given_at``)."""
    q = conn.dialect.identifier_preparer.quote
    name = f"cpmail_given_{table.name}"
    keys = ", ".join(q(k) for k in key_columns(table))
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {q(name)} AS SELECT {keys}, 0 AS given_at FROM {q(table.name)} "
        "WHERE 1 = 0"
    )
    conn.exec_driver_sql(f"CREATE UNIQUE INDEX {q(name + '_key')} ON {q(name)} ({keys})")
    return name


# Rows that go with the row they refer to when --replace deletes it (job status history).
CASCADE = frozenset({("job_status_history", "job_id")})


def _referrers(target: str) -> list[tuple[sa.Table, str, str, str | None, str | None]]:
    """What refers to rows of ``target``: (table, column, target column, kind column, kind)."""
    out: list[tuple[sa.Table, str, str, str | None, str | None]] = []
    for t in schema.AGENCY_TABLES:
        for spec in columns_of(t):
            refs = spec.references
            if refs is not None and refs[0] == target and (t.name, spec.name) not in CASCADE:
                out.append((t, spec.name, refs[1], None, None))
    for (pt, pc), (by, targets) in POLYMORPHIC.items():
        for kind, (tt, tc) in targets.items():
            if tt == target:
                out.append((get_table(pt), pc, tc, by, kind))
    return out


def _first_line(e: BaseException | None) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _sqlite_import_mode(conn: sa.Connection) -> Callable[[], None]:
    """Turn SQLite's own foreign key checks off for this import, and enlarge its page cache.

    The importer checks every foreign key itself (to name the line at
    fault), and SQLite's per-row checks of an upsert double the time of a big
    import. ``PRAGMA foreign_keys`` only takes effect outside a transaction, so
    it is set before BEGIN and restored after COMMIT or ROLLBACK.
    """
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cache = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute(f"PRAGMA cache_size=-{SQLITE_IMPORT_CACHE_KIB}")

    def restore() -> None:
        try:
            raw.execute("PRAGMA foreign_keys=ON")
            raw.execute(f"PRAGMA cache_size={int(cache)}")
        except Exception:
            # Never hand a connection without foreign keys back to the pool. It is
            # not raised: the transaction has ended either way, and what ended it
            # (a stop signal that closed the connection, say) is what is said.
            conn.invalidate()

    return restore
