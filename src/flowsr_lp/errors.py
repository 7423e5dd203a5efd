"""The package's exceptions: every error FlowSR-LP raises on purpose derives from `FlowSRError`.

The command line maps them to exit codes (`flowsr_lp.cli`): a `UsageError` (bad option or
unusable model, detected before any work) exits 2; a per-input failure is reported on one
`error:` line and the other inputs still run. Library code raises these and never imports
the command line.
"""
from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none
    (library messages such as torch's or PIL's can run over many lines)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


class FlowSRError(Exception):
    """Base class of every error the package raises on purpose (one line, no traceback)."""


class UsageError(FlowSRError, ValueError):
    """A problem with the whole call (bad option, unusable device or model): exit 2."""


class CheckpointError(FlowSRError, ValueError):
    """A checkpoint cannot be read, is not one the package knows, or does not match its config."""


class ModelNotFoundError(CheckpointError):
    """A model name, path or URL that cannot be resolved (unknown name, offline, missing file)."""


class DownloadError(CheckpointError):
    """A download failed (network, HTTP status, truncated, wrong checksum, disk full)."""


class DataError(FlowSRError):
    """A data set cannot be downloaded or prepared (network, checksum, archive contents)."""


class ImageError(FlowSRError, ValueError):
    """An input image cannot be used (unreadable, not an image, too large)."""


class ExplodingInverse(FlowSRError, RuntimeError):
    """The flow's inverse overflowed to inf/NaN (the paper's exploding inverse)."""


class ConfigError(FlowSRError, ValueError):
    """A training or evaluation config is invalid."""


class TrainingError(FlowSRError, RuntimeError):
    """Training cannot start or continue (damaged checkpoint, refused overwrite, ...)."""
