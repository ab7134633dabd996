"""Opening ``.nq`` files by http(s) URL: byte ranges, an on-disk cache, clear errors.

Importing this package costs nothing; the HTTP client (urllib3) is imported only when a URL is
opened, so the reader's import path stays free of it.
"""

from __future__ import annotations

__all__ = ["is_url"]

_SCHEMES = ("http://", "https://")


def is_url(path: object) -> bool:
    """True for an ``http://`` or ``https://`` address (the only remote schemes supported)."""
    return isinstance(path, str) and path[:8].lower().startswith(_SCHEMES)
