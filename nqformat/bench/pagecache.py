"""Page-cache probes for cold-cache timing: which pages of a file are resident (``mincore``) and
how to evict one file (``posix_fadvise``, else ``/proc/sys/vm/drop_caches``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import tempfile
from pathlib import Path
from typing import Any

from nqformat.bench.cases import MAX_RESIDENT_AFTER_EVICT

__all__ = [
    "EVICT_DROP_CACHES",
    "EVICT_FADVISE",
    "evict",
    "page_cache_method",
    "resident_fraction",
]

_PROT_READ = 1
_MAP_SHARED = 1


def _libc() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return lib


def resident_fraction(path: Path, start: int = 0, end: int | None = None) -> float | None:
    """Fraction of the pages of file bytes [start, end) in the page cache (``mincore``); None
    where that cannot be asked."""
    import numpy as np

    size = path.stat().st_size
    end = size if end is None else min(end, size)
    if end <= start:
        return 0.0
    try:
        lib = _libc()
    except (OSError, AttributeError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = lib.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * pages)()
            if lib.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            bits = np.frombuffer(vec, dtype=np.uint8)[start // page : -(-end // page)] & 1
            return float(bits.mean())
        finally:
            lib.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def _drop_caches_writable() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


EVICT_FADVISE = "fadvise"
EVICT_DROP_CACHES = "drop_caches"


def evict(path: Path, method: str = EVICT_FADVISE) -> None:
    """Drop ``path`` from the page cache.

    ``posix_fadvise(DONTNEED)`` evicts one file without root and without touching other
    processes' caches (pages some process has mapped stay, as they would on a device); the global
    ``/proc/sys/vm/drop_caches`` is used only where that does not work.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        if method == EVICT_FADVISE:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if method == EVICT_DROP_CACHES:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def page_cache_method() -> dict[str, Any]:
    """How (and whether) cold-cache timing works here, tried on a scratch file."""
    method: str | None = None
    before = after = None
    with tempfile.NamedTemporaryFile(prefix="nqbench-probe-") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        path = Path(f.name)
        path.read_bytes()
        before = resident_fraction(path)
        for candidate in (EVICT_FADVISE, EVICT_DROP_CACHES):
            if candidate == EVICT_DROP_CACHES and not _drop_caches_writable():
                continue
            with contextlib.suppress(OSError):
                evict(path, candidate)
                after = resident_fraction(path)
                if after is not None and after <= MAX_RESIDENT_AFTER_EVICT:
                    method = candidate
                    break
    how = {
        EVICT_FADVISE: "posix_fadvise(POSIX_FADV_DONTNEED) on the file after fsync, right before "
        "each timed step (pages the process itself keeps mapped stay resident, as on a device)",
        EVICT_DROP_CACHES: "sync + /proc/sys/vm/drop_caches before each timed step",
    }
    return {
        "cold_supported": method is not None,
        "method": method,
        "eviction": how.get(method, "none") + "; residency checked with mincore",
        "drop_caches_writable": _drop_caches_writable(),
        "probe_resident_before": before,
        "probe_resident_after": after,
        "note": "cold = evicted from this VM's page cache; the host below the virtual disk may "
        "still cache the bytes, so cold reads here are faster than from a real flash card"
        if method
        else "warm: eviction did not work here, every time is with the file in the page cache",
    }
