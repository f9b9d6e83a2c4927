"""``python -m ntl_jax.evaluate`` and Hub ids: a run's exported policy reproduces the run's last validation."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
from trainer_fixtures import TINY_EMBEDDED_BINDINGS

from ntl_jax.evaluate import answer_statistics, pass_at_k, summarize
from ntl_jax.models.hub import resolve_model_path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 24 held-out problems in batches of 8 (the validation batch size is part of what must be reproduced).
TINY = TINY_EMBEDDED_BINDINGS + ["ntl_jax.EmbeddedTaskConfig.num_val = 24", "ntl_jax.WarmStartConfig.max_steps = 60",
                                 "ntl_jax.WarmStartConfig.eval_every = 60", "ntl_jax.TrainerConfig.val_batch_size = 8",
                                 "ntl_jax.TrainerConfig.total_training_steps = 2"]


def _python(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_pass_at_k_is_the_unbiased_estimator():
    """Against its definition: the chance that k of the n samples, drawn without replacement, hold a correct one."""
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                draws = list(itertools.combinations([1] * c + [0] * (n - c), k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize("source, text, truth, expected", [
    ("arithmetic", "#### 1,234", "1234", dict(acc=1.0, abs_error=0.0, digit_acc=1.0, answered=1.0)),
    ("arithmetic", "#### 1204", "1234", dict(acc=0.0, abs_error=30.0, digit_acc=0.75, answered=1.0)),
    ("arithmetic", "no idea", "-18", dict(acc=0.0, abs_error=18.0, digit_acc=0.0, answered=0.0)),
    ("openai/gsm8k", "#### 1,8", "18", dict(acc=1.0, abs_error=0.0, digit_acc=1.0, answered=1.0)),
    ("openai/gsm8k", "#### 018", "18", dict(acc=0.0, abs_error=0.0, digit_acc=1.0, answered=1.0)),
    ("openai/gsm8k", "The answer is 18", "18", dict(acc=0.0, abs_error=18.0, digit_acc=0.0, answered=0.0)),
    ("openai/gsm8k", "#### 99999999", "2", dict(acc=0.0, abs_error=1e6, digit_acc=0.0, answered=1.0)),
])
def test_answer_statistics_read_the_answer_the_scorer_grades(source, text, truth, expected):
    assert answer_statistics(source, text, truth) == pytest.approx(expected)


def test_summary_has_medians_and_pass_at_k():
    records = [dict(acc=1.0, abs_error=0.0, digit_acc=1.0, answered=1.0),
               dict(acc=0.0, abs_error=2.0, digit_acc=0.5, answered=1.0),
               dict(acc=0.0, abs_error=1000.0, digit_acc=0.0, answered=1.0)]
    out = summarize(records, [[1, 0], [0, 0], [1, 1]], 1.0)
    assert out["accuracy"] == pytest.approx(1 / 3) and out["answer_mae"] == pytest.approx(334.0)
    assert out["median_abs_error"] == 2.0 and out["pass@1"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx(2 / 3) and out["sampled_accuracy"] == 0.5


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The README's command 1 at a toy size: warm start, 2 PPO iterations, validation and a checkpoint at step 2."""
    out = tmp_path_factory.mktemp("run")
    proc = _python("-m", "ntl_jax.train", "--gin_file=configs/ntl_final.gin", f"--output_dir={out}",
                   "--nomalloc_huge_pages", *[f"--gin_bindings={b}" for b in TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_exported_final_policy_reproduces_the_runs_last_validation(finished_run, tmp_path):
    result = json.loads((finished_run / "result.json").read_text())
    logged = result["val_after"]["val-core/arithmetic/acc/mean@1"]
    proc = _python("-m", "ntl_jax.export", f"--run_dir={finished_run}", f"--output_dir={tmp_path / 'policy'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _python("-m", "ntl_jax.evaluate", f"--model={tmp_path / 'policy'}", f"--run_dir={finished_run}",
                   "--n_samples=4", "--temperature=1.0", f"--output_json={tmp_path / 'eval.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["problems"] == 24 and evaluation["accuracy"] == logged
    assert evaluation["answer_mae"] == pytest.approx(result["val_after"]["val-aux/arithmetic/abs_error/mean@1"])
    assert evaluation["median_abs_error"] == pytest.approx(
        result["val_after"]["val-aux/arithmetic/abs_error/median@1"])
    assert 0.0 <= evaluation["pass@1"] <= evaluation["pass@4"] <= 1.0
    for label in ("| greedy accuracy |", "| answer MAE |", "| median absolute error |", "| digit accuracy |",
                  "| pass@4 (T=1) |"):
        assert label in proc.stdout
    # The warm start (the base model of this run) evaluates too, on the same problems.
    proc = _python("-m", "ntl_jax.evaluate", f"--model={finished_run / 'warm_start'}", f"--run_dir={finished_run}",
                   "--max_samples=8")
    assert proc.returncode == 0 and "(8 problems)" in proc.stdout, proc.stderr[-3000:]


def test_bad_arguments_are_one_line(finished_run, tmp_path):
    proc = _python("-m", "ntl_jax.evaluate", "--model=not/here", f"--run_dir={finished_run}",
                   env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model 'not/here' is not in the Hugging Face cache")
    assert "hf download not/here" in proc.stderr
    proc = _python("-m", "ntl_jax.evaluate", f"--model={finished_run / 'warm_start'}", f"--run_dir={tmp_path}")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --run_dir=") and proc.returncode != 0


def test_a_hub_id_resolves_through_a_prefilled_cache_offline(tmp_path, monkeypatch):
    """The Hub's cache layout (models--owner--name/snapshots/<revision>, refs/main), filled by hand: no network."""
    from trainer_fixtures import make_tiny_policy

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-policy"
    snapshot = repo / "snapshots" / revision
    make_tiny_policy(str(snapshot))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = resolve_model_path("someone/tiny-policy")
    assert os.path.samefile(folder, snapshot) and os.path.isfile(os.path.join(folder, "config.json"))
    assert resolve_model_path(str(snapshot)) == str(snapshot)  # a folder is returned as it is
    with pytest.raises(ValueError, match="is not a folder or a Hub id"):
        resolve_model_path("./missing/folder/x")
