"""`cpmail data …`: import and export the agency's data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cpmail.cli.common import Ctx, ctx_of, emit_json, print_table

if TYPE_CHECKING:
    from cpmail.dataio import ImportResult

app = typer.Typer(help="Import and export the agency's data.", no_args_is_help=True)

# What `data import` and `data pull` stopped by a signal once the import is committed say.
IMPORT_DONE = "the import was finished first and is kept whole, as its summary says"


@app.command("import")
def import_(
    ctx: typer.Context,
    path: Path = typer.Argument(
        ...,
        metavar="PATH",
        help="A .csv, .json or .ndjson file, or a folder of them named after their tables.",
    ),
    table: str | None = typer.Option(
        None, "--table", help="Table to import into (default: the file's name, jobs.csv → jobs)."
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="csv, json or ndjson (default: from the extension)."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Each file is the whole table: rows not in it are deleted."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what would be new, updated, deleted; change nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Upsert the rows of a file, or of every file in a folder; a bad row changes nothing."""
    from cpmail import dataio
    from cpmail.errors import InputError

    c = ctx_of(ctx)
    if path.is_dir():
        if table or fmt:
            raise InputError(
                f"{path} is a folder: its files are imported into the tables they are named "
                "after; --table and --format are for one file."
            )
        sources = dataio.folder_sources(path, replace=replace)
    else:
        sources = [dataio.file_source(path, table, fmt, replace=replace)]
    results = dataio.import_sources(
        c.engine(), c.settings, sources, dry_run=dry_run, done=IMPORT_DONE
    )
    if as_json:
        if path.is_dir():
            emit_json([r.as_dict() for r in results])
        else:
            emit_json(results[0].as_dict())
        return
    report(c, results, dry_run=dry_run)


def report(c: Ctx, results: Sequence[ImportResult], *, dry_run: bool) -> None:
    """One line per table; a dry run says that nothing was changed."""
    for r in results:
        c.say(r.summary())
    if dry_run:
        c.note("Dry run: nothing was changed.")


@app.command("pull")
def pull(
    ctx: typer.Context,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what would be new, updated, deleted; change nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as a JSON array."),
) -> None:
    """Read the agency system's database ([source] url, queries per table) and import it."""
    from cpmail.pull import pull as pull_source

    c = ctx_of(ctx)
    results = pull_source(c.engine(), c.settings, dry_run=dry_run, done=IMPORT_DONE)
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    report(c, results, dry_run=dry_run)


@app.command("export")
def export(
    ctx: typer.Context,
    table: str = typer.Argument(..., metavar="TABLE", help="The table to write out."),
    fmt: str | None = typer.Option(
        None, "--format", help="csv, json or ndjson (default: from --out's extension, else csv)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="File to write (atomically); default: standard output."
    ),
) -> None:
    """Write every row of a table as CSV or JSON, ordered by key."""
    from cpmail import dataio

    c = ctx_of(ctx)
    dataio.get_table(table)
    if fmt is not None and fmt.lower() not in dataio.EXPORT_FORMATS:
        from cpmail.errors import InputError

        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(dataio.EXPORT_FORMATS)}.")
    engine = c.engine()
    if out is None:
        dataio.export_stdout(engine, table, fmt or "csv")
        return
    n = dataio.export_file(engine, table, c.output_file(out), fmt)
    c.note(f"{table}: {n} {'row' if n == 1 else 'rows'} written to {out}")


@app.command("tables")
def tables(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List the agency tables with their columns and row counts."""
    from cpmail import dataio

    c = ctx_of(ctx)
    infos = dataio.table_info(c.engine())
    if as_json:
        emit_json([{"table": i.table, "columns": i.columns, "rows": i.rows} for i in infos])
        return
    print_table(
        c,
        [
            {
                "table": i.table,
                "key": ", ".join(i.key),
                "columns": ", ".join(i.columns),
                "rows": i.rows,
            }
            for i in infos
        ],
        ["table", "key", "columns", "rows"],
        wrap=("key", "columns"),
    )
