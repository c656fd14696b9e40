"""refquant's exceptions (defined in weights_io.errors, the top layer, and re-exported here)."""
from weights_io.errors import (CalibrationError, ConfigError, DTypeError, MissingTensorError,
                               NonFiniteError, OutOfRangeError, RefquantError, ShapeError,
                               TrainingError, WeightsFormatError)

__all__ = ["RefquantError", "WeightsFormatError", "ConfigError", "ShapeError", "DTypeError",
           "NonFiniteError", "MissingTensorError", "OutOfRangeError", "CalibrationError",
           "TrainingError"]
