"""The ``cpmail`` command: global options, the command groups, and error handling.

Library code raises ``CpmailError``; this is the only place that turns errors
into messages on stderr and exit codes (2 input/config, 1 not delivered,
3 transport). Tracebacks never show locals: they can hold passcodes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperArgument, TyperGroup

from cpmail import __version__, interrupt
from cpmail.cli import (
    alerts,
    check,
    config,
    data,
    db,
    message,
    outbox,
    report,
    setup,
    signin,
    staff,
    status,
    templates,
)
from cpmail.cli.common import Ctx, printable
from cpmail.errors import CpmailError
from cpmail.settings import home_dir, undecodable


def _usage_name(self: TyperArgument) -> str:
    """Arguments in usage lines as Unix tools write them: ID, [ID], ID... ({a|b} for choices)."""
    name = str(self.display_name_raw)
    if not self.required:
        name = f"[{name}]"
    elif "|" in name:
        name = f"{{{name}}}"
    return name + ("..." if self.nargs != 1 else "")


# typer writes a required argument as {ID}, which reads like a set of choices.
if hasattr(TyperArgument, "_usage_display_name"):
    TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]

_ANYWHERE = ("-q", "--quiet", "-v", "--verbose")


def hoist_global_flags(args: list[str]) -> list[str]:
    """Let -q/-v come after the subcommand too (`cpmail check -q`, as cron lines are written)."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        i += 2 if args[i] == "--home" else 1
    if i >= len(args):
        return args
    head, rest = args[: i + 1], args[i + 1 :]
    end = rest.index("--") if "--" in rest else len(rest)
    moved = [a for a in rest[:end] if a in _ANYWHERE]
    kept = [a for a in rest[:end] if a not in _ANYWHERE] + rest[end:]
    return args[:i] + moved + head[i:] + kept


def not_utf8(argv: list[str]) -> str | None:
    """Why an argument cannot be used: bytes that are not UTF-8 (file names excepted), or None.

    Python hands such bytes over as lone surrogates; as a subject or a message
    they could not be written into mail. A file's name may hold any bytes, so
    an argument naming an existing file passes.
    """
    for n, arg in enumerate(argv, 1):
        if not undecodable(arg):
            continue
        if os.path.lexists(arg):
            continue
        shown = arg.encode("utf-8", "surrogateescape")
        return f"argument {n} ({shown!r}) is not UTF-8 text; cpmail reads text in UTF-8."
    return None


class _Root(TyperGroup):
    """Turns CpmailError into one line on stderr and its exit code, for every command."""

    def _path(self, argv: list[str]) -> str:
        """The command ``argv`` names, as "cpmail config set": for errors that carry no context
        (an option given without its value)."""
        path, group = ["cpmail"], self
        args = iter(argv)
        for arg in args:
            if arg == "--home":
                next(args, None)  # its value
            if arg.startswith("-"):
                continue
            command = getattr(group, "commands", {}).get(arg)
            if command is None:
                break
            path.append(arg)
            group = command
        return " ".join(path)

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        bad = not_utf8(argv)
        if bad is not None:
            typer.echo(f"cpmail: {bad}", err=True)
            raise SystemExit(2)
        kwargs["standalone_mode"] = False  # errors come here, to be said as cpmail says them
        try:
            code = super().main(hoist_global_flags(argv), *rest, **kwargs)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            raise SystemExit(1) from None
        except Exception as e:
            if not _named(e, "ClickException"):
                raise
            if _named(e, "UsageError") and not _named(e, "NoArgsIsHelpError"):
                # A mistyped option or value is bad input like any other: one sentence, exit 2.
                ctx = getattr(e, "ctx", None)
                where = ctx.command_path if ctx is not None else self._path(argv)
                said = brief(_bad_value(e) or e.format_message()).rstrip(".")  # type: ignore[attr-defined]
                if said.endswith("?"):  # "No such command 'chek'. Did you mean 'check'?"
                    typer.echo(f"cpmail: {said} See `{where} -h`.", err=True)
                else:
                    typer.echo(f"cpmail: {said}; see `{where} -h`.", err=True)
            else:
                e.show()  # type: ignore[attr-defined]
            raise SystemExit(getattr(e, "exit_code", 1)) from None
        raise SystemExit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except CpmailError as e:
            typer.echo(f"cpmail: {brief(str(e))}", err=True)
            raise typer.Exit(e.exit_code) from None
        except BrokenPipeError:
            # Whoever read the output stopped reading (`| head`): what was done stands, and
            # exit 1 would say mail was not delivered. As a shell says a process that
            # SIGPIPE ended: 128 + 13, silently.
            _nowhere(sys.stdout)
            raise typer.Exit(128 + 13) from None
        except typer.Abort:  # the end of the input at a prompt (Ctrl-D): it was not answered
            typer.echo("cpmail: no answer was given at the prompt; nothing was changed.", err=True)
            raise typer.Exit(2) from None
        except Exception as e:
            # The database or the disk failing is not a bug: say what failed (exit 3).
            err = _outside_failure(e, ctx)
            if err is None:
                raise
            typer.echo(f"cpmail: {brief(str(err))}", err=True)
            raise typer.Exit(err.exit_code) from None


def _nowhere(stream: Any) -> None:
    """Point a stream whose reader has gone at /dev/null, so that what is still buffered
    in it (flushed at exit) does not end in a second broken pipe and Python's complaint."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's buffer)
        pass


def _bad_value(e: Exception) -> str | None:
    """A number option or argument given a value it cannot take, said as cpmail says the
    others ("--limit: 'x' is not a whole number"), not in the words of the library that read
    it ("Input should be a valid integer, unable to parse string as an integer")."""
    param, cause = getattr(e, "param", None), e.__cause__
    errors = getattr(cause, "errors", None)
    if param is None or not callable(errors):
        return None
    try:
        first = errors()[0]
        name = str(param.get_error_hint()).strip("'\"")
        kind, given, limits = first["type"], str(first.get("input", "")), first.get("ctx") or {}
    except Exception:  # another library's shape: its own words, as they are
        return None
    if kind.startswith("int_"):
        return f"{name}: {given!r} is not a whole number"
    if kind.startswith("float_"):
        return f"{name}: {given!r} is not a number"
    if kind == "greater_than_equal":
        return f"{name}: {given} is less than {limits.get('ge')}, the least it takes"
    if kind == "less_than_equal":
        return f"{name}: {given} is more than {limits.get('le')}, the most it takes"
    return None


def _named(e: BaseException, name: str) -> bool:
    """Whether ``e`` is a click error of that class (typer carries its own copy of click)."""
    return any(k.__name__ == name for k in type(e).__mro__)


# A word this long in an error is a value echoed back (an ID, a name): its
# start says which; the whole would bury the sentence (as data import's do).
_LONG_WORD = re.compile(r"[^\s'\"]{300,}")


def brief(text: str) -> str:
    """An error as one line: every word of 300 characters or more cut to its start, a line
    break in it (a server's words) a space, and safe to print."""
    text = " ".join(text.splitlines())
    return printable(_LONG_WORD.sub(lambda m: f"{m[0][:60]}… ({len(m[0])} characters)", text))


def _outside_failure(e: Exception, ctx: typer.Context) -> CpmailError | None:
    drivers = ("sqlalchemy", "sqlite3", "psycopg", "pymysql")
    if not (type(e).__module__.startswith(drivers) or isinstance(e, OSError)):
        return None  # typer's own exits and usage errors pass through untouched
    from cpmail.store.failures import explain

    obj = ctx.obj
    where, sqlite = "", True
    if isinstance(obj, Ctx):
        try:
            where, sqlite = obj.db_where, obj.settings.db_url.startswith("sqlite")
        except Exception:  # the settings themselves may be what failed
            where = str(obj.home / "cpmail.db")
    return explain(e, where=where or "of cpmail", sqlite=sqlite)


# Help and usage errors are formatted by click, not rich: typer's rich formatter
# imports rich's Markdown and Traceback (markdown-it, pygments) before printing
# a line, which made `cpmail --help` take three times as long as importing typer.
app = typer.Typer(
    cls=_Root,
    name="cpmail",
    help="E-mail for the agency: notifications, reports and messages.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _log_masked() -> None:
    """Print log records with -v, on stderr: a library's (httpx names each request's URL,
    with its user part) with every secret masked, as the rest of cpmail's output."""
    import logging

    from cpmail.settings import redact

    class Masked(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return printable(redact(super().format(record)))  # (printable masks by value)

    handler = logging.StreamHandler()
    handler.setFormatter(Masked("cpmail: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cpmail {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    home: Path | None = typer.Option(
        None, "--home", help="Home folder (default: $CPMAIL_HOME, else the user config dir)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print more detail."),
) -> None:
    """E-mail for the agency: notifications, reports and messages."""
    from cpmail.scrub import forget

    forget()  # the secrets a command knows are those it reads
    ctx.obj = Ctx(home=home_dir(home), quiet=quiet, verbose=verbose)
    ctx.call_on_close(ctx.obj.close)
    if verbose:  # what cpmail does while it waits or retries, on stderr
        _log_masked()


setup.register(app)
check.register(app)
report.register(app)
message.register(app)
outbox.register(app)
app.add_typer(config.app, name="config")
app.add_typer(staff.app, name="staff")
app.add_typer(data.app, name="data")
app.add_typer(db.app, name="db")
app.add_typer(templates.app, name="templates")
signin.register(config.app, staff.app)
status.register(app)
app.add_typer(alerts.app, name="alerts")


def _stopped(e: interrupt.Stopped) -> NoReturn:
    detail = e.detail or "what it had not finished was not done, and nothing is lost"
    sys.stderr.write(f"cpmail: stopped by {e.name}; {detail}.\n")
    sys.exit(e.exit_code)


def main() -> None:
    """Entry point of the console script."""
    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    interrupt.install()
    try:
        app()
    except interrupt.Stopped as e:
        _stopped(e)
    except SystemExit as e:
        late = interrupt.finished()  # a signal once its work was done: it finished first
        if late is not None and not e.code:
            _stopped(late)
        raise
    except KeyboardInterrupt:
        sys.stderr.write("cpmail: interrupted; mail not yet sent waits in the outbox.\n")
        sys.exit(130)
    except Exception as e:  # a bug: say so without dumping locals (they may hold secrets)
        if verbose:
            import traceback

            from cpmail.scrub import hide

            # frames and lines only, never locals; an exception's words may quote a secret
            sys.stderr.write(hide("".join(traceback.format_exception(e))))
        sys.stderr.write(
            f"cpmail: internal error ({type(e).__name__}); run again with -v for the traceback "
            "and report it with `cpmail message bug`.\n"
        )
        sys.exit(70)
    finally:
        # What is alive now goes with the process: keep the interpreter's last
        # garbage collection from walking it (0.3-0.5 s after a big check). Files
        # and connections are closed by then; what is on disk is unchanged.
        import gc

        gc.freeze()
