"""The one exception family a user can cause.

Anything raised as a :class:`VerydeepError` is the user's to fix (a missing file, a bad image,
weights that do not fit, a bad option). The CLI prints its message on one line and exits with
code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import reprlib

#: How much of a bad value a message quotes: enough to recognise it, never the whole of a value that
#: a YAML alias bomb or a pasted file can make gigabytes long.
QUOTE_LIMIT = 200
#: What one message may hold in all (the CLI cuts longer ones: a message is one line of a terminal).
MESSAGE_LIMIT = 2000

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, QUOTE_LIMIT, QUOTE_LIMIT
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters, built without expanding the
    whole value (nested containers are cut at three levels and eight items)."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shorten(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` cut to ``limit`` characters, saying how much was left out."""
    return (
        message
        if len(message) <= limit
        else f"{message[:limit]}... ({len(message) - limit} more characters)"
    )


class VerydeepError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(VerydeepError):
    """An unknown config name, an unknown or ill-typed option, an impossible model size."""


class WeightsError(VerydeepError):
    """A weights file that cannot be read, is unsafe, or does not fit the model."""


class ImageError(VerydeepError):
    """An image that cannot be opened or decoded."""


class DataError(VerydeepError):
    """A data folder that is missing, empty or malformed."""


class WriteError(VerydeepError):
    """An output that cannot be written (read-only, full, no permission) or must not be replaced."""
