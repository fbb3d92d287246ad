"""Transports: file, smtp, gmail, microsoft. See ``base.Transport`` for the contract."""
