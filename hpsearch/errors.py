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


# `scheme://user:password@host`: the user may be empty, and the password runs to the LAST `@` of
# the URL, so that a password with an unencoded `@` is masked whole rather than half shown.
_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*):[^\s'\"]*@")
# `?password=...` in a URL's query, or `password=...` in a libpq connection string.
_PASSWORD_PARAM = re.compile(r"(?P<key>\b(?:password|passwd|pwd)=)[^&\s'\"]+", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace every password in `text` (URL user-info, `password=` parameters) with `***`."""
    return _PASSWORD_PARAM.sub(r"\g<key>***", _PASSWORD.sub(r"\g<scheme>:***@", text))
