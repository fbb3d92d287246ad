"""Render messages from Jinja2 templates: ``<home>/templates/`` first, then the built-ins.

Each event has ``email/<event>.txt`` (blocks ``subject`` and ``body``) and
``email/<event>.html`` (block ``content``); both extend a base layout. Every
template sees ``items`` (what the message is about: one, or a list for task
reminders), ``item`` (the first), ``recipient``, ``reply_to`` (who a reply
reaches, or nothing), ``agency``, ``run_date`` and ``event``. A digest
renders each notification with its event's templates, one at a time (task
lists whole), so that none is left out. Templates are compiled once per
process, and once per process whatever the number of homes
(`CompiledTemplates`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jinja2

from cpmail.errors import ConfigError
from cpmail.triggers import LIST_EVENTS

BUILTIN = Path(__file__).parent / "templates"


class CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates kept in memory for the life of the process.

    An environment made for another home (or a new set of overrides) loads a
    template it has not seen from here instead of compiling it again; Jinja
    keys each entry on the template's file and checks the checksum of its
    source, so an edited template is compiled anew. One instance per kind of
    environment: the compiled code depends on the environment's options.
    """

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_COMPILED = CompiledTemplates()


def environment(home: Path | None) -> jinja2.Environment:
    """The template environment for a home (compiled templates are cached in it).

    Keyed on which override files exist: Jinja's cache would otherwise keep
    serving a built-in after an override appeared in ``<home>/templates/``.
    """
    folder = home / "templates" if home is not None else None
    overrides = (
        tuple(sorted(str(p) for p in folder.rglob("*") if p.is_file()))
        if folder is not None and folder.is_dir()
        else ()
    )
    if folder is not None and folder.is_dir():
        for name in template_names():  # an override that cannot be one is not passed over
            p = folder / name
            if p.is_symlink() and not p.exists():
                raise ConfigError(f"template {p} links to {os.readlink(p)}, which does not exist.")
            if p.exists() and not p.is_file():
                raise ConfigError(f"template {p} is not a file; move it away or make it one.")
    env = _environment(home, overrides)
    # Templates are checked against their files once here, at the start of a
    # run, not on every get_template (with `extends` and `import`, six times
    # a message): an edited override is still seen by the next run.
    cache = env.cache
    if cache is not None and not all(t.is_up_to_date for t in list(cache.values())):
        cache.clear()
    return env


class TextLoader(jinja2.FileSystemLoader):
    """Jinja's file loader, saying which file is not UTF-8 instead of failing with a traceback."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        try:
            return super().get_source(environment, template)
        except UnicodeDecodeError as e:
            where = next((str(Path(p) / template) for p in self.searchpath), template)
            raise jinja2.TemplateSyntaxError(
                f"not UTF-8 text (byte {e.start + 1} is {e.object[e.start]:#04x})",
                lineno=1,
                name=template,
                filename=where,
            ) from None


@cache
def _environment(home: Path | None, overrides: tuple[str, ...]) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if home is not None:  # even if the folder does not exist yet: it is looked at each time
        loaders.append(TextLoader(str(home / "templates")))
    loaders.append(TextLoader(str(BUILTIN)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html", "htm"], default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.ChainableUndefined,
        # An empty cell of the data is shown as nothing, never as Python's "None".
        finalize=_nothing_for_none,
        auto_reload=False,  # see environment()
        bytecode_cache=_COMPILED,
    )
    env.filters["day"] = _day
    env.filters["when"] = _when
    env.filters["first_name"] = lambda name: (name or "").split(" ")[0] or "there"
    return env


def _nothing_for_none(value: Any) -> Any:
    return "" if value is None else value


def _day(value: Any) -> str:
    """2026-11-24 -> 'Tue Nov 24, 2026'."""
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return _date_text(value)
    return str(value or "")


@lru_cache(maxsize=1024)
def _date_text(value: dt.date) -> str:
    # A run names the same few dates in every message.
    return value.strftime("%a %b %-d, %Y")


def _when(value: Any) -> str:
    """A timestamp as 'Tue Nov 24, 2026 9:30'."""
    if isinstance(value, dt.datetime):
        return f"{_day(value)} {value.strftime('%-H:%M')}"
    return _day(value)


def tidy(text: str) -> str:
    """Plain text: no trailing spaces, at most one blank line in a row."""
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def template_names() -> list[str]:
    """The built-in templates, relative to the templates folder."""
    return sorted(str(p.relative_to(BUILTIN)) for p in BUILTIN.rglob("*") if p.is_file())


def failed_in(e: BaseException, name: str) -> str:
    """Where a template failed while rendering: ``FILE, line N`` (Jinja puts the
    template's lines in the traceback), else ``name``; a missing include by name."""
    import traceback

    if isinstance(e, jinja2.TemplateNotFound):
        return f"{name} (it includes {e.name}, which does not exist)"
    lines = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.endswith(".py")]
    if lines:
        return f"{lines[-1].filename}, line {lines[-1].lineno}"
    return name


def _failed(e: Exception, name: str) -> ConfigError:
    """A template that failed while rendering, in one sentence naming its file and line.

    Whatever the expression raised ({{ 1/0 }}, a %-format of the wrong type, a
    missing key): the template is at fault, not cpmail, and nothing is queued.
    """
    words = str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"
    return ConfigError(f"template {failed_in(e, name)}: {words.rstrip('.')}.")


class Renderer:
    """Render one message for one recipient."""

    def __init__(self, home: Path | None, context: dict[str, Any]) -> None:
        self.env = environment(home)
        self.context = context  # agency, run_date … shared by every message

    def _get(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(
                f"template {e.filename or name}, line {e.lineno}: {e.message}."
            ) from None
        except jinja2.TemplateNotFound:
            raise ConfigError(f"template {name} is missing; see `cpmail templates list`.") from None

    def _block(self, tmpl: jinja2.Template, block: str, ctx: dict[str, Any]) -> str:
        render = tmpl.blocks.get(block)
        if render is None:
            raise ConfigError(f"template {tmpl.name} has no {{% block {block} %}}.")
        try:
            return "".join(render(tmpl.new_context(ctx)))
        except Exception as e:
            raise _failed(e, str(tmpl.name)) from None

    def _full(self, tmpl: jinja2.Template, ctx: dict[str, Any]) -> str:
        try:
            return tmpl.render(ctx)
        except Exception as e:
            raise _failed(e, str(tmpl.name)) from None

    def _ctx(
        self,
        event: str,
        items: list[dict[str, Any]],
        recipient: dict[str, Any],
        reply_to: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return {
            **self.context,
            "event": event,
            "items": items,
            "item": items[0],
            "count": len(items),
            "recipient": recipient,
            "reply_to": reply_to,
        }

    def render(self, name: str, ctx: dict[str, Any]) -> tuple[str, str, str]:
        """Return (subject without prefix, text, html) of the pair ``email/<name>.txt|html``.

        ``ctx`` is added to the run's shared context (agency, run date …).
        """
        full = {**self.context, **ctx}
        txt = self._get(f"email/{name}.txt")
        html = self._get(f"email/{name}.html")
        subject = " ".join(self._block(txt, "subject", full).split())
        return subject, tidy(self._full(txt, full)), self._full(html, full)

    def message(
        self,
        event: str,
        items: list[dict[str, Any]],
        recipient: dict[str, Any],
        reply_to: dict[str, str] | None = None,
    ) -> tuple[str, str, str]:
        """Return (subject without prefix, text, html) for one event's items.

        Only task reminders list several items in one message of their own; any
        other event's items, when there are several, go out as a digest so
        that none is left out. ``reply_to`` (name, address): who a reply reaches,
        which the footer says; None when a reply would reach nobody.
        """
        if len(items) > 1 and event not in LIST_EVENTS:
            return self.digest([(event, items)], recipient, reply_to)
        return self.render(event, self._ctx(event, items, recipient, reply_to))

    def sections(
        self, sections: list[tuple[str, list[dict[str, Any]]]], recipient: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The parts of a digest: one per notification, one per task list.

        A task reminder's items stay one list (as in their own message); every
        other notification is a section of its own, rendered in full.
        """
        parts = []
        for event, items in sections:
            groups = [items] if event in LIST_EVENTS else [[it] for it in items]
            txt = self._get(f"email/{event}.txt")
            html = self._get(f"email/{event}.html")
            for group in groups:
                ctx = self._ctx(event, group, recipient)
                parts.append(
                    {
                        "event": event,
                        "count": len(group),
                        "list": event in LIST_EVENTS,
                        "title": " ".join(self._block(txt, "subject", ctx).split()),
                        "text": tidy(self._block(txt, "body", ctx)).strip("\n"),
                        "html": self._block(html, "content", ctx),
                    }
                )
        return parts

    def digest(
        self,
        sections: list[tuple[str, list[dict[str, Any]]]],
        recipient: dict[str, Any],
        reply_to: dict[str, str] | None = None,
    ) -> tuple[str, str, str]:
        """One message with every item of every event for one recipient."""
        parts = self.sections(sections, recipient)
        ctx = {
            **self.context,
            "event": "digest",
            "sections": parts,
            "recipient": recipient,
            "reply_to": reply_to,
            "count": sum(p["count"] for p in parts),
        }
        txt = self._get("email/digest.txt")
        html = self._get("email/digest.html")
        subject = " ".join(self._block(txt, "subject", ctx).split())
        return subject, tidy(self._full(txt, ctx)), self._full(html, ctx)
