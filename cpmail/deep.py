"""Parsing text that may be nested thousands deep (settings, data files, error bodies).

Python's TOML and JSON parsers recurse once per level, up to the interpreter's limit.
A garbage collection that starts there runs finalizers with no stack left, and Python
prints "Exception ignored in ..." on standard error over the one-line error cpmail
gives. No collection runs while ``NoCollection`` is entered.
"""

from __future__ import annotations

import gc
from types import TracebackType


class NoCollection:
    """``with NoCollection(): ...``: automatic garbage collection off inside, as it was after."""

    __slots__ = ("_was",)

    def __enter__(self) -> None:
        self._was = gc.isenabled()
        gc.disable()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._was:
            gc.enable()
