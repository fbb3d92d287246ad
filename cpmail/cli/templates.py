"""`cpmail templates list|export|preview`: the e-mail and report templates."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from cpmail.cli.common import ctx_of, emit_json, print_table, printable
from cpmail.errors import InputError

app = typer.Typer(
    help="E-mail and report templates: list, export to edit, preview.", no_args_is_help=True
)


@app.command("list")
def list_(
    ctx: typer.Context,
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List the templates and whether this home overrides them."""
    from cpmail.render import template_names

    c = ctx_of(ctx)
    rows = [
        {"template": name, "overridden": (c.home / "templates" / name).is_file()}
        for name in template_names()
    ]
    if json:
        emit_json(rows)
        return
    print_table(c, rows, ["template", "overridden"])
    c.say(f"Overrides go in {c.home / 'templates'} under the same names.")


@app.command("export")
def export(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., metavar="DIR", help="Where to copy the built-ins."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that exist."),
) -> None:
    """Copy the built-in templates to DIR to edit (use <home>/templates to make them live)."""

    from cpmail.render import BUILTIN, template_names

    c = ctx_of(ctx)
    names = template_names()
    clashes = [n for n in names if (folder / n).exists()]
    if clashes and not force:
        raise InputError(f"{folder / clashes[0]} exists; use --force to overwrite.")
    from cpmail.files import write_failed
    from cpmail.settings import write_atomic

    # All or nothing: stopped half-way (a full disk, a signal), the files and
    # folders this command made go again (those it overwrote stay overwritten).
    made: list[Path] = []
    target = folder
    try:
        for name in names:
            target = folder / name
            made.extend(reversed([d for d in (target, *target.parents) if not d.exists()]))
            # 0600 in 0700 folders, as everything cpmail writes, whatever the umask
            write_atomic(target, (BUILTIN / name).read_bytes())
    except BaseException as e:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            raise write_failed(target, e) from None
        raise
    c.say(f"Copied {len(names)} templates to {folder}.")
    if folder.resolve() != (c.home / "templates").resolve():
        c.say(f"To use your edits, put them in {c.home / 'templates'} (same file names).")


@app.command("preview")
def preview(
    ctx: typer.Context,
    event: str = typer.Argument(
        ...,
        metavar="EVENT",
        help="The event, e.g. job-opened; or cash-flow, digest, or failure-summary.",
    ),
    html: bool = typer.Option(False, "--html", help="Print the HTML part instead of the text."),
) -> None:
    """Render one event's message with the demo agency's data."""
    from cpmail.cli.setup import DEMO_SETTINGS
    from cpmail.preview import preview as render_preview

    c = ctx_of(ctx)
    p = render_preview(c.settings, c.home, event, demo_settings=DEMO_SETTINGS)
    if html:
        typer.echo(p.html)
        return
    typer.echo(printable(f"To: {p.to.name} <{p.to.address}>\nSubject: {p.subject}\n"))
    typer.echo(printable(p.text))
