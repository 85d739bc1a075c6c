"""Exceptions a user can cause, each carrying one message that names the problem and the fix.

The command line turns every :class:`JaxCNNError` into a one-line message and exit code 2,
before anything is compiled or written.
"""


class JaxCNNError(ValueError):
    """Base class of the errors caused by user input (names, shapes, config values, files)."""


class UnknownNameError(JaxCNNError):
    """A model, dataset or config key that does not exist; the message lists the known ones."""


class ConfigError(JaxCNNError):
    """A configuration value out of its allowed range or of the wrong type."""


class InputShapeError(JaxCNNError):
    """Images whose shape a model cannot take (wrong channel count, too small)."""


class DataError(JaxCNNError):
    """Missing, truncated or corrupted data files, or a split too small for the request."""


class RunDirError(JaxCNNError):
    """A workdir that is not a run, or holds a run that does not match the request."""


class DiskFullError(RunDirError):
    """The disk of a run directory filled up while a checkpoint or a record was being written."""


def unknown(kind: str, value: str, known) -> UnknownNameError:
    """Builds the error for an unknown ``kind`` named ``value``, listing the known names."""
    names = ", ".join(sorted(known))
    return UnknownNameError(f"unknown {kind} {value!r}; known {kind}s: {names}")


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient norm (not a user-input error)."""
