"""Process-wide thread pools for the numeric kernels (bit unpacking, the fused dequantizer, the
quantizer), one per purpose, created on first use and created again in a forked child (the
parent's threads do not survive fork, so its executor would hang there)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["shared_pool"]

_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}
_lock = threading.Lock()


def _forget_pools() -> None:
    global _lock
    _pools.clear()
    _lock = threading.Lock()  # it may have been held by a parent thread at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def shared_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The pool called ``name`` (threads named ``nq-<name>``) of ``workers`` threads."""
    with _lock:
        entry = _pools.get(name)
        if entry is None or entry[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"nq-{name}")
            entry = _pools[name] = (os.getpid(), pool)
        return entry[1]
