"""Transparent huge pages for XLA:CPU's per-execution buffers, through glibc's ``glibc.malloc.hugetlb`` tunable.

Why: XLA:CPU allocates each program's temporary buffer with malloc at every execution (the GRPO benchmark's actor
update: 153 MB). glibc serves any allocation over its mmap threshold (at most 32 MB) with a fresh mmap and unmaps
it on free, so every execution page-faults the whole buffer in again, 4 KiB at a time: ~40,000 minor faults per
update, each zeroing a page, a quarter of the update's time on the project's 2-core machine. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc advises transparent huge pages for those mmaps,
so the kernel (THP mode 'madvise' or 'always') maps 2 MiB pages: ~350 faults, and the update runs in 77-82 ms
instead of 103-117 ms (`benchmarks/probes/time_shared_prompt_update.py --groups 8`, three alternating runs each). Numerics
are unchanged: only how the buffers are paged in.

glibc reads tunables once, at process start, so ``python -m ntl_jax.train`` re-executes itself once with the
tunable added (`reexec_with_huge_pages`, on unless ``--nomalloc_huge_pages``). Code that imports ntl-jax as a
library (a notebook, your own script) sets it in its launch environment instead:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py``.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb

log = logging.getLogger(__name__)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'; the bracketed word of ``path``), or
    None where the file is missing or unreadable (not Linux, no THP)."""
    try:
        with open(path, encoding="utf-8") as f:
            words = f.read().split()
    except OSError:
        return None
    chosen = [w[1:-1] for w in words if w.startswith("[") and w.endswith("]")]
    return chosen[0] if chosen else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this interpreter runs on, or None when it is not glibc."""
    name, version = platform.libc_ver()
    if name != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def huge_page_tunables(environ: Mapping[str, str], glibc: tuple[int, int] | None, mode: str | None) -> str | None:
    """The ``GLIBC_TUNABLES`` value to restart with, or None when there is nothing to gain: not glibc or older
    than 2.35, no THP or THP 'never', or the tunable already set (to any value: the user's choice wins). Other
    tunables already in ``environ`` are kept."""
    current = environ.get("GLIBC_TUNABLES", "")
    if glibc is None or glibc < MIN_GLIBC or mode not in ("always", "madvise"):
        return None
    if any(item.split("=", 1)[0] == TUNABLE for item in current.split(":") if item):
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def reexec_with_huge_pages(enabled: bool = True) -> None:
    """Replace this process by the same command with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, when
    `huge_page_tunables` says it helps; returns (doing nothing) otherwise. Call it first thing in an entry point,
    before any thread or device starts: the process is replaced, and nothing it has done survives."""
    if not enabled:
        return
    tunables = huge_page_tunables(os.environ, glibc_version(), thp_mode())
    if tunables is None:
        return
    log.info("restarting with GLIBC_TUNABLES=%s (transparent huge pages for XLA:CPU's buffers; "
             "--nomalloc_huge_pages skips this)", tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
