"""Errors a user can act on. The `edgessl` command prints them without a traceback.

This module is the one shared by every part (train, export, edge_runtime, devices): it
imports nothing, so it keeps the dependency directions intact.
"""


class EdgesslError(Exception):
    """Bad input or a bad file: the message names what was wrong and what is valid."""


class BundleError(EdgesslError):
    """A bundle is missing a file, fails a checksum or has an invalid manifest."""


class GalleryError(EdgesslError):
    """The few-shot gallery was asked for something it cannot do."""


class ImageError(EdgesslError):
    """An image or video could not be read or decoded."""


class BackendError(EdgesslError):
    """An inference backend is unknown, cannot load a model or got input of the wrong shape."""


class SignatureError(BundleError):
    """A bundle is unsigned, signed by a key the device does not trust, or its manifest changed after signing."""


class UnsafeArchiveError(BundleError):
    """A bundle archive holds a member that could write outside its folder or is not a plain file."""


class InstallError(EdgesslError):
    """A bundle was refused or failed to install; the previous model stays (or is again) active.

    `result` is the installer's InstallResult (ok=False, with the steps taken), when there is one."""

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result
