"""cpmail: e-mail notifications, reports and messages for an advertising agency."""

__version__ = "0.1.0"
