"""Opening ``.nq`` files by http(s) URL: byte ranges, an on-disk cache, clear errors.

``nqformat.open(url)`` lands here. Importing this package costs nothing: the HTTP client
(urllib3) is imported only when a URL is opened, so the reader's import path stays free of it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nqformat.container.reader import NQFile

__all__ = ["is_url", "open_url"]

_SCHEMES = ("http://", "https://")


def is_url(path: object) -> bool:
    """True for an ``http://`` or ``https://`` address (the only remote schemes supported)."""
    return isinstance(path, str) and path[:8].lower().startswith(_SCHEMES)


def open_url(
    url: str,
    *,
    verify: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    max_bytes: int | None = None,
) -> NQFile:
    """Open the ``.nq`` file at ``url`` lazily (see :func:`nqformat.open`).

    Only the byte ranges the reader asks for are fetched (preamble, header, then ``[DATA,
    part_end)``; LOW when it is paged in) and kept in the on-disk cache (``cache_dir``, default
    :func:`nqformat.remote.cache.default_cache_dir`; ``cache=False`` keeps them in a temporary
    folder removed on close). A cached prefix is used without any request; if it fails the
    file's own CRCs, or the server's copy turns out to have changed, it is dropped and fetched
    again once. ``max_bytes`` is the reader's read budget (spec §10; None: the default).
    """
    from nqformat.container.reader import NQFile
    from nqformat.errors import NQFormatError
    from nqformat.remote.errors import RemoteChangedError
    from nqformat.remote.source import RemoteSource

    while True:
        source = RemoteSource(
            url, cache=cache, cache_dir=cache_dir, timeout=timeout, retries=retries
        )
        try:
            budget = {} if max_bytes is None else {"max_bytes": max_bytes}
            return NQFile(url, verify=verify, source=source, **budget)
        except (NQFormatError, RemoteChangedError):
            if not source.from_cache:
                raise
            source.forget()  # a stale or damaged cached prefix: start over, from the network
