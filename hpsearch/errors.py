"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""

from __future__ import annotations

import re


class HpsearchError(Exception):
    """A problem with the user's input (config, data, arguments, storage): shown as one line."""

    exit_code = 2


class ConfigError(HpsearchError):
    pass


class DataError(HpsearchError):
    pass


class StorageError(HpsearchError):
    pass


_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):[^@\s]*@")


def mask_url(text: str) -> str:
    """Replace the password of any `scheme://user:password@host` in `text` with `***`."""
    return _PASSWORD.sub(r"\g<scheme>:***@", text)
