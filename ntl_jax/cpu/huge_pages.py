"""Transparent huge pages for XLA:CPU's per-execution buffers, through glibc's ``glibc.malloc.hugetlb`` tunable.

Why: XLA:CPU allocates each program's temporary buffer with malloc at every execution. glibc serves any
allocation over its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it on free, so every execution
page-faults the whole buffer in again, 4 KiB at a time. With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35) malloc advises transparent huge pages for those mmaps, so the kernel (THP mode 'madvise' or
'always') maps 2 MiB pages: a few hundred faults instead of tens of thousands. Numerics are unchanged: only how
the buffers are paged in. Measured with ``benchmarks/probes/time_shared_prompt_update.py``; figures in
docs/experiments/cpu_design_choices.md.

glibc reads tunables once, at process start, so ``python -m ntl_jax.train`` re-executes itself once with the
tunable added (`reexec_with_huge_pages`, on unless ``--nomalloc_huge_pages``), and only where JAX will run on the CPU
(no restart on GPU or TPU machines: `runs_on_cpu`). Code that imports ntl-jax as a
library (a notebook, your own script) sets it in its launch environment instead:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py``.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable, Mapping

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


#: Modules of JAX's accelerator backends: where one is installed, JAX runs there and XLA:CPU's buffers do not matter.
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13",
                       "libtpu", "jax_rocm60_plugin", "jax_rocm7_plugin")


def runs_on_cpu(environ: Mapping[str, str], installed: Callable[[str], bool]) -> bool:
    """Whether JAX will run on XLA:CPU: ``JAX_PLATFORMS`` starts with ``cpu``, or it is unset and no accelerator
    backend is installed. Only then is the restart worth its cost (a second interpreter start)."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not any(installed(name) for name in ACCELERATOR_PLUGINS)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def reexec_with_huge_pages(enabled: bool = True) -> None:
    """Replace this process by the same command with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, when
    `huge_page_tunables` says it helps; returns (doing nothing) otherwise. Call it first thing in an entry point,
    before any thread or device starts: the process is replaced, and nothing it has done survives."""
    if not enabled or not runs_on_cpu(os.environ, _installed):
        return
    tunables = huge_page_tunables(os.environ, glibc_version(), thp_mode())
    if tunables is None:
        return
    log.info("restarting with GLIBC_TUNABLES=%s (transparent huge pages for XLA:CPU's buffers; "
             "--nomalloc_huge_pages skips this)", tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
