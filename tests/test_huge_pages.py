"""`ntl_jax.cpu.huge_pages`: when the entry point restarts with glibc's huge-page tunable, and that the restart is real."""
import os
import subprocess
import sys
import textwrap

import pytest

from ntl_jax.cpu.huge_pages import glibc_version, huge_page_tunables, reexec_with_huge_pages, thp_mode


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    mode_file = tmp_path / "enabled"
    for text, expected in [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                           ("always madvise [never]", "never"), ("", None)]:
        mode_file.write_text(text)
        assert thp_mode(str(mode_file)) == expected
    assert thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("environ, glibc, mode, expected", [
    ({}, (2, 36), "madvise", "glibc.malloc.hugetlb=1"),
    ({}, (2, 35), "always", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),  # the user's other tunables are kept
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", None),  # the user's choice wins
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, (2, 36), "madvise", None),  # already restarted: no loop
    ({}, (2, 34), "madvise", None),  # glibc without the tunable
    ({}, None, "madvise", None),  # not glibc (musl, macOS)
    ({}, (2, 36), "never", None),  # THP off: nothing to gain
    ({}, (2, 36), None, None),  # no THP file (not Linux)
])
def test_huge_page_tunables(environ, glibc, mode, expected):
    assert huge_page_tunables(environ, glibc, mode) == expected


CHILD = textwrap.dedent("""
    import os, sys
    from ntl_jax.cpu.huge_pages import reexec_with_huge_pages
    print("run", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
    reexec_with_huge_pages(enabled=sys.argv[1] == "on")
""")


def test_reexec_restarts_the_same_process_once_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if huge_page_tunables(env, glibc_version(), thp_mode()) is None:
        pytest.skip(f"nothing to restart for here: glibc {glibc_version()}, THP mode {thp_mode()}")
    runs = [line.split(" ", 3) for line in subprocess.run(
        [sys.executable, "-c", CHILD, "on", "x"], env=env, capture_output=True, text=True, timeout=60,
        check=True).stdout.splitlines()]
    assert len(runs) == 2, runs  # the first run, then the restarted one, which does not restart again
    (_, pid_before, tunables_before, argv_before), (_, pid_after, tunables_after, argv_after) = runs
    assert pid_before == pid_after and argv_before == argv_after == "['on', 'x']"
    assert tunables_before == "" and tunables_after == "glibc.malloc.hugetlb=1"
    off = subprocess.run([sys.executable, "-c", CHILD, "off"], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    assert len(off) == 1  # --nomalloc_huge_pages: no restart


def test_disabled_reexec_returns():
    assert reexec_with_huge_pages(enabled=False) is None


def test_no_restart_where_jax_runs_on_an_accelerator():
    from ntl_jax.cpu.huge_pages import runs_on_cpu

    nothing, cuda = (lambda name: False), (lambda name: name == "jax_cuda12_plugin")
    assert runs_on_cpu({}, nothing) is True
    assert runs_on_cpu({}, cuda) is False  # a GPU machine: JAX picks the GPU
    assert runs_on_cpu({"JAX_PLATFORMS": "cpu"}, cuda) is True  # asked for the CPU anyway
    assert runs_on_cpu({"JAX_PLATFORMS": "tpu,cpu"}, nothing) is False
    assert runs_on_cpu({"JAX_PLATFORMS": " "}, lambda name: name == "libtpu") is False
