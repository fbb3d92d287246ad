"""`cpmail templates list|export|preview`: the e-mail and report templates."""

from __future__ import annotations

from pathlib import Path

import typer

from cpmail.cli.common import ctx_of, emit_json, print_table
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
    from cpmail.settings import write_atomic

    for name in names:
        # 0600 in 0700 folders, as everything cpmail writes, whatever the umask
        write_atomic(folder / name, (BUILTIN / name).read_bytes())
    c.say(f"Copied {len(names)} templates to {folder}.")
    if folder.resolve() != (c.home / "templates").resolve():
        c.say(f"To use your edits, put them in {c.home / 'templates'} (same file names).")


@app.command("preview")
def preview(
    ctx: typer.Context,
    event: str = typer.Argument(
        ..., metavar="EVENT", help="The event, e.g. job-opened, or digest."
    ),
    html: bool = typer.Option(False, "--html", help="Print the HTML part instead of the text."),
) -> None:
    """Render one event's message with the demo agency's data."""
    import tempfile

    from cpmail import demo as demo_data
    from cpmail.check import run_check
    from cpmail.cli.setup import DEMO_SETTINGS
    from cpmail.events import check_names
    from cpmail.secrets import SecretStore
    from cpmail.settings import Settings
    from cpmail.store import make_engine, upgrade

    c = ctx_of(ctx)
    if event != "digest":
        check_names([event])
    with tempfile.TemporaryDirectory(prefix="cpmail-preview-") as tmp:
        home = Path(tmp)
        s = Settings.load(home)
        for key, value in DEMO_SETTINGS.items():
            s.set(key, value)
        s.set("mail.subject_prefix", c.settings["mail.subject_prefix"])
        s.set("check.holidays", c.settings["check.holidays"])
        if event == "digest":
            s.set("mail.digest", True)
        s.save()
        s = Settings.load(home)
        engine = make_engine(s.db_url)
        upgrade(engine)
        demo_data.load(engine, s, demo_data.EXAMPLE_DATE)
        result = run_check(
            engine,
            s,
            SecretStore(home),
            c.home,
            date=demo_data.EXAMPLE_DATE,
            only=() if event == "digest" else (event,),
            dry_run=True,
        )
        engine.dispose()
    planned = [p for p in result.planned if p.event == event]
    if not planned:
        raise InputError(f"the demo data has no {event} message to preview.")
    p = planned[0]
    if html:
        typer.echo(p.html)
        return
    typer.echo(f"To: {p.to.name} <{p.to.address}>\nSubject: {p.subject}\n")
    typer.echo(p.text)
