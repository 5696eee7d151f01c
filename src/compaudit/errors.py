"""User-facing errors.

Every error a user can cause by what they wrote (a config, a path, a checkpoint) is a
:class:`CompauditError`. The CLI prints its message on one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CompauditError(Exception):
    """An error caused by the user's input; the message names the culprit."""


class ConfigError(CompauditError):
    """The experiment file is malformed or has an invalid value."""


class DataError(CompauditError):
    """A data set is unknown, missing or malformed."""


class ModelError(CompauditError):
    """A model is unknown, cannot be built, or a checkpoint does not fit it."""


class MethodError(CompauditError):
    """A compression method cannot be applied to a model."""


class ProbeError(CompauditError):
    """A probe cannot measure a variant."""
