"""A wheel, not a checkout: the shipped configs travel inside the package, and the documented command runs from
any directory with ``--gin_file=ntl_final.gin``."""
from __future__ import annotations

import glob
import os
import site
import subprocess
import sys

from trainer_fixtures import TINY_EMBEDDED_BINDINGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_EMBEDDED_BINDINGS + ["ntl_jax.TrainerConfig.total_training_steps = 2",
                                 "ntl_jax.TrainerConfig.progress_bar = True"]


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)


def test_a_wheel_in_a_fresh_venv_runs_the_main_command_from_another_directory(tmp_path):
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(tmp_path / "dist"), REPO_ROOT])
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "dist" / "ntl_jax-*.whl"))
    listing = _run([sys.executable, "-m", "zipfile", "-l", wheel]).stdout
    for shipped in ("ntl_jax/configs/ntl_final.gin", "ntl_jax/configs/base.gin", "ntl_jax/configs/presets/",
                    "ntl_jax/configs/models/qwen2.5-0.5b-instruct.json"):
        assert shipped in listing, shipped
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    (target,) = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel])
    assert installed.returncode == 0, installed.stderr[-3000:]
    # The dependencies come from this interpreter's site-packages, as plain paths: its editable ntl_jax (a .pth
    # finder there) is not activated, so the venv can only import the wheel's copy.
    with open(os.path.join(target, "deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    python, elsewhere = str(venv / "bin" / "python"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([python, "-c", "import ntl_jax; print(ntl_jax.__file__)"], cwd=elsewhere)
    assert where.stdout.strip().startswith(target), where.stdout + where.stderr
    run = _run([python, "-m", "ntl_jax.train", "--gin_file=ntl_final.gin", "--output_dir=run", "--nomalloc_huge_pages",
                *[f"--gin_bindings={b}" for b in TINY]], cwd=elsewhere)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "held-out accuracy: before PPO" in run.stdout and (elsewhere / "run" / "result.json").is_file()
    bad = _run([python, "-m", "ntl_jax.train", "--gin_file=ntl_finale.gin", "--nomalloc_huge_pages"], cwd=elsewhere)
    assert bad.returncode == 2
    assert "--gin_file='ntl_finale.gin' does not exist; allowed: a gin file, or a shipped config: " in bad.stderr
    assert "ntl_final.gin" in bad.stderr.splitlines()[-1]
