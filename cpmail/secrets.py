"""Passcodes and token caches: 0600 files under ``<home>/secrets/`` or the OS keyring.

A secret never leaves this module except to the transport that uses it: the
``Secret`` wrapper prints as ``••••`` so that it cannot leak through a log line,
an exception or a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import urllib.parse
from pathlib import Path

from cpmail.errors import ConfigError, Unavailable
from cpmail.settings import PRIVATE_DIR, PRIVATE_FILE, private_dir, write_atomic

SHARED = "shared"  # the account name of the one-account sender (`--shared`)


def account_words(account: str) -> str:
    """A sending account in the words of a sentence: ``account JD``, ``the shared account``."""
    return "the shared account" if account == SHARED else f"account {account or '(none)'}"


MASK = "••••"
KEYRING_SERVICE = "cpmail"
# A secret's name is a file's name: characters every file system takes, a length all take.
_NAME = re.compile(r"^[A-Za-z0-9_.@+~%,-]{1,200}$")
_SAFE = re.compile(r"[A-Za-z0-9_.@+-]+")
# No secret is this large (a token cache is a few kilobytes): a larger file is another file.
_LARGEST = 1 << 20


class Secret:
    """A string that will not show itself by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def passcode_name(account: str) -> str:
    """The secret's name for an account's passcode ("shared" for one-account mode)."""
    return _named("passcode.", account)


def token_name(transport: str, account: str) -> str:
    """The secret's name for an account's sign-in with ``transport`` (gmail, microsoft)."""
    return _named(f"token.{transport}.", account)


def _named(kind: str, account: str) -> str:
    """``kind`` and ``account`` as one secret's name, which is a file's name.

    An account (a staff ID) may hold any character but a comma, a file name only a
    few: an account of safe characters is written as it is (``passcode.JD``); any
    other is a comma and its percent-encoding (``passcode.,W%5B%2F%5D1`` for
    ``W[/]1``), or, when that is too long for a file name, two commas and its
    SHA-256. No staff ID holds a comma, so the three forms never meet and no two
    accounts get one name; an account that starts with a comma is such a name's
    end already (the secrets folder lists them so) and stays as it is.
    """
    if not account or account.startswith(",") or _SAFE.fullmatch(account):
        name = kind + account
        if len(name) <= 200:
            return name
    coded = kind + "," + urllib.parse.quote(account, safe="@+", errors="surrogatepass")
    if len(coded) <= 200:
        return coded
    digest = hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind},,{digest}"


def account_of(tail: str) -> str:
    """The account a secret's name ends in (what ``_named`` wrote after its kind).

    A percent-encoded one is read back; one written as its SHA-256 stays as it is (the
    name still finds its secret).
    """
    if tail.startswith(",") and not tail.startswith(",,"):
        return urllib.parse.unquote(tail[1:], errors="surrogatepass")
    return tail


class SecretStore:
    """Read and write secrets by name, in files or in the keyring."""

    def __init__(self, home: Path, backend: str = "file") -> None:
        self.dir = home / "secrets"
        self.backend = backend

    def _check_name(self, name: str) -> None:
        if not _NAME.match(name):
            raise ConfigError(f"secret name {name!r} has characters cpmail does not allow.")

    def ensure_dir(self) -> None:
        """Create the folder 0700 (or tighten it); a missing home is made 0700 too."""
        private_dir(self.dir)
        os.chmod(self.dir, PRIVATE_DIR)

    def _checked_path(self, name: str, *, links: bool = True) -> Path:
        """The file of the secret ``name``, refused (ConfigError naming it) when it is there
        but cannot be a secret: open to others, a folder, a link to nothing (unless
        ``links`` is False: a link is then just a link, as for deleting it)."""
        self._check_name(name)
        folder = _status(self.dir, kind="secrets folder")
        if folder is not None:
            if not stat.S_ISDIR(folder.st_mode):
                raise ConfigError(
                    f"{self.dir} is not a folder; move it away and run `cpmail init`, which "
                    "makes the secrets folder."
                )
            mode = stat.S_IMODE(folder.st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"{self.dir} is open to other users (mode {mode:04o}); "
                    f"run `chmod 700 {self.dir}`."
                )
        path = self.dir / name
        if folder is None or (not links and path.is_symlink()):
            return path
        st = _status(path, kind="secret")
        if st is None:
            return path
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path} is a folder, not a secret; remove it, then {_redo(name)}.")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file; remove it, then {_redo(name)}.")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by other users (mode {mode:04o}); "
                f"run `chmod 600 {path}` and try again."
            )
        return path

    def get(self, name: str) -> Secret | None:
        """Return the secret, or None when it was never set."""
        if self.backend == "keyring":
            self._check_name(name)
            import keyring

            try:
                value = keyring.get_password(KEYRING_SERVICE, name)
            except Exception as e:  # a keyring service away (no D-Bus) raises anything
                raise _keyring_failed("read", e) from None
            return None if value is None else _remembered(Secret(value))
        path = self._checked_path(name)
        try:
            with path.open("rb") as f:
                data = f.read(_LARGEST + 1)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise ConfigError(
                f"{path} cannot be read (permission denied); run cpmail as the user who owns "
                "it, or give it to that user with mode 600."
            ) from None
        except OSError as e:  # a folder made meanwhile, a failing disk
            raise Unavailable(
                f"{path} could not be read ({e.strerror or type(e).__name__}); "
                f"check the file, then {_redo(name)}."
            ) from None
        if len(data) > _LARGEST:
            raise ConfigError(f"{path} is larger than any secret; remove it, then {_redo(name)}.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # (its words would quote a byte of the secret)
            raise ConfigError(f"{path} is not UTF-8 text; remove it, then {_redo(name)}.") from None
        return _remembered(Secret(text))

    def set(self, name: str, value: str) -> None:
        if self.backend == "keyring":
            self._check_name(name)
            import keyring

            try:
                keyring.set_password(KEYRING_SERVICE, name, value)
                kept = keyring.get_password(KEYRING_SERVICE, name) == value
            except Exception as e:  # a keyring service away (no D-Bus) raises anything
                raise _keyring_failed("written", e, value) from None
            if not kept:  # (the null keyring takes anything and keeps nothing)
                raise ConfigError(
                    f"the keyring ({_keyring_name()}) did not keep it; choose one that stores "
                    "secrets (PYTHON_KEYRING_BACKEND) or set secrets.backend to file."
                )
            return
        self.ensure_dir()
        path = self._checked_path(name)
        write_atomic(path, value.encode("utf-8"), mode=PRIVATE_FILE)

    def delete(self, name: str) -> bool:
        if self.backend == "keyring":
            self._check_name(name)
            import keyring
            from keyring.errors import PasswordDeleteError

            try:
                keyring.delete_password(KEYRING_SERVICE, name)
            except PasswordDeleteError:
                return False
            except Exception as e:
                raise _keyring_failed("changed", e) from None
            return True
        path = self._checked_path(name, links=False)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise ConfigError(
                f"{path} could not be removed ({e.strerror or type(e).__name__}); "
                "remove it by hand."
            ) from None
        return True

    def check(self, name: str) -> None:
        """Refuse now (ConfigError naming the file) what would stop ``delete(name)``."""
        if self.backend == "file":
            self._checked_path(name, links=False)

    def has(self, name: str) -> bool:
        return self.get(name) is not None


def _remembered(secret: Secret) -> Secret:
    """``secret``, its value (a passcode) or the secrets in it (a sign-in's or an OAuth
    client's tokens and client secret) remembered, to be masked wherever they turn up."""
    from cpmail.scrub import remember, remember_document

    text = secret.reveal()
    if text.lstrip().startswith(("{", "[")):
        import json

        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if doc is not None:
            remember_document(doc)
            return secret
    remember([text])
    return secret


def _status(path: Path, *, kind: str) -> os.stat_result | None:
    """``path``'s status through links; None when nothing is there. A link to nothing,
    or a path that cannot be looked at, is a ConfigError naming it: never "no secret"."""
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(
                f"{path} is a link to {os.readlink(path)}, which does not exist; "
                f"point it at the {kind}, or remove it."
            ) from None
        return None
    except OSError as e:  # permission denied on the way, a loop of links
        raise ConfigError(
            f"{path} cannot be looked at ({e.strerror or type(e).__name__}); "
            f"check it and the folders above it."
        ) from None


def _redo(name: str) -> str:
    """How to store the secret ``name`` again, as the end of a sentence."""
    if name.startswith("passcode."):
        return "store the passcode again (`cpmail staff passcode`)"
    if name.startswith("token."):
        return "sign in again (`cpmail staff signin`)"
    return "store it again"


def _keyring_name() -> str:
    """Which keyring is in use, as PYTHON_KEYRING_BACKEND names it (SecretService, null …)."""
    import keyring

    try:
        chosen = type(keyring.get_keyring()).__module__
    except Exception:  # (choosing it is what failed)
        chosen = os.environ.get("PYTHON_KEYRING_BACKEND", "").rpartition(".Keyring")[0]
    return chosen.rsplit(".", 1)[-1] or "the system's"


def _keyring_failed(done: str, e: Exception, value: str = "") -> ConfigError:
    """The keyring could not be used, in a sentence: its kind, what it said, the way out."""
    from cpmail.scrub import Scrubber

    said = Scrubber([value] if value else [])(str(e).splitlines()[0] if str(e) else "")
    return ConfigError(
        f"the keyring ({_keyring_name()}) could not be {done}: {type(e).__name__}"
        + (f" ({said[:200]})" if said else "")
        + "; start its service (a desktop session's D-Bus) or set secrets.backend to file."
    )
