"""Write each message as an ``.eml`` file instead of sending it (the default)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cpmail.errors import ConfigError, Unreachable
from cpmail.settings import PRIVATE_FILE, private_dir, write_atomic
from cpmail.transports.base import Envelope, Outcome, Report, Transport


class FileTransport(Transport):
    """One ``<home>/mail/<time>-<id>.eml`` per message; every recipient counts as accepted.

    A message holds the agency's data: the folder is made 0700 and each file 0600,
    whatever the umask.
    """

    name = "file"

    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        folder = self.settings.mail_dir
        try:
            private_dir(folder)
        except OSError as e:
            raise Unreachable(f"cannot create the mail folder {folder}: {e.strerror}.") from None
        except ConfigError as e:  # not a bad setting to refuse: the mail stays queued
            raise Unreachable(f"mail.file.dir: {e}") from None
        for env in envelopes:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = folder / f"{stamp}-{env.id:06d}.eml"
            try:
                write_atomic(path, env.raw, mode=PRIVATE_FILE)
            except OSError as e:
                raise Unreachable(f"cannot write {path}: {e.strerror}.") from None
            report(Outcome(env.id, accepted=env.rcpt_to))
