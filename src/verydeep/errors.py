"""The one exception family a user can cause.

Anything raised as a :class:`VerydeepError` is the user's to fix (a missing file, a bad image,
weights that do not fit, a bad option). The CLI prints its message on one line and exits with
code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


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
