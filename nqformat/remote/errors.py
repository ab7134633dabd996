"""Errors of the HTTP range source. They say what the server did wrong, not the file: a file
that arrives intact but is malformed still raises the format's own errors (spec §11)."""

from __future__ import annotations

from nqformat.errors import RemoteError  # the root, so that nqformat.RemoteError catches all

__all__ = [
    "ContentEncodingError",
    "RangeNotSupportedError",
    "RemoteChangedError",
    "RemoteError",
]


class RangeNotSupportedError(RemoteError):
    """The server answered a Range request with the whole body (status 200) or a range other
    than the one asked: progressive loading needs byte ranges, and downloading the whole file
    instead is exactly what it exists to avoid."""


class ContentEncodingError(RemoteError):
    """The server compressed the response (``Content-Encoding``): byte ranges of a compressed
    stream are not byte ranges of the file."""


class RemoteChangedError(RemoteError):
    """The file behind the URL changed between two requests (ETag, Last-Modified or total
    size differ): bytes of two different files must never be mixed."""
