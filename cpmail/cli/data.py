"""`cpmail data …`: import and export the agency's data."""

from __future__ import annotations

from pathlib import Path

import typer

from cpmail.cli.common import ctx_of, emit_json, print_table

app = typer.Typer(help="Import and export the agency's data.", no_args_is_help=True)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE", help="A .csv, .json or .ndjson file."),
    table: str | None = typer.Option(
        None, "--table", help="Table to import into (default: the file's name, jobs.csv → jobs)."
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="csv, json or ndjson (default: from the extension)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Upsert the rows of one file into one table; a bad row changes nothing."""
    from cpmail import dataio

    c = ctx_of(ctx)
    t, form = dataio.resolve_import(file, table, fmt)
    result = dataio.import_file(c.engine(), c.settings, file, t.name, form)
    if as_json:
        emit_json(result.as_dict())
    else:
        c.say(result.summary())


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
    n = dataio.export_file(engine, table, out, fmt)
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
    )
