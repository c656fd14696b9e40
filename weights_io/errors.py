"""The one exception hierarchy of refquant and weights_io.

It lives in ``weights_io`` because that is the top layer (``refquant``
imports ``weights_io``, never the reverse); ``refquant.errors`` re-exports it.
Every message names the file or tensor concerned and what was expected.
"""


class RefquantError(Exception):
    """Base class: every error refquant raises on purpose is one of these."""


class WeightsFormatError(RefquantError):
    """A checkpoint file is malformed, truncated, lies about itself, or is of a refused kind."""


class ConfigError(RefquantError):
    """A config.json (or a QuantSpec / dialect option) is missing a field or has a bad value."""


class ShapeError(RefquantError, ValueError):
    """An array has a shape (or a length) that the operation cannot accept."""


class DTypeError(RefquantError, TypeError):
    """An array has a dtype that the operation cannot accept."""


class NonFiniteError(RefquantError, ValueError):
    """A tensor to be quantized holds NaN or Inf (the numeric contract, rule 6)."""


class CalibrationError(RefquantError):
    """Calibration cannot give a result: an observer was asked for its range before it saw any
    (non-empty) data."""


class MissingTensorError(WeightsFormatError, KeyError):
    """A tensor that was asked for is not in the checkpoint."""

    def __str__(self):  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class OutOfRangeError(RefquantError, ValueError):
    """An integer value lies outside the range a storage format can hold (e.g. 9 for int4)."""


class TrainingError(RefquantError):
    """Training cannot go on (a loss that became NaN or Inf): the message names the block and
    step; ``partial`` holds what was trained before it (the last good weights), when any."""

    def __init__(self, message: str, partial=None):
        super().__init__(message)
        self.partial = partial
