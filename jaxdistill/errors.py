"""User-facing errors: one family, one line each, always naming the key and a fix.

The CLI catches `JaxdistillError` and prints ``error: <message>`` on one line and
exits non-zero; anything else is a bug in jaxdistill and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JaxdistillError(Exception):
    """Base of every error that is the user's input, not our bug."""


class ConfigError(JaxdistillError, ValueError):
    """A config key has a bad value: the message names the key and the fix."""


class DataError(JaxdistillError, ValueError):
    """The data named by the config cannot be found or read."""


class CheckpointError(JaxdistillError, ValueError):
    """A checkpoint is missing, damaged or does not match the module."""


class TrainingError(JaxdistillError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss): names the step and what to do."""


def closest(name: str, known: Iterable[str], n: int = 1) -> str:
    """Returns ``"did you mean 'x'?"`` text (or a list of the known names)."""
    known = sorted(set(known))
    matches = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    if matches:
        return 'did you mean ' + ' or '.join(repr(m) for m in matches) + '?'
    return 'known: ' + ', '.join(known)
