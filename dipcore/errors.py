"""Typed errors of dipcore: callers catch `DipcoreError` and show its message."""


class DipcoreError(Exception):
    """Base class of every error dipcore raises on purpose."""


class ConfigError(DipcoreError, ValueError):
    """A task, preset or override that does not make sense."""


class ImageDecodeError(DipcoreError, ValueError):
    """Bytes that are not a readable image: empty, truncated, corrupt or another format."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose pixel count exceeds the configured limit (decompression-bomb guard)."""


class OutOfMemoryError(DipcoreError):
    """A job whose estimated peak memory exceeds what its device has free, even with activation checkpointing;
    raised before the fit starts."""
