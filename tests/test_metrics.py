"""MetricsLogger writes real JSONL and TensorBoard files that read back to the logged values."""

from __future__ import annotations

import json
import math
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.ppo.metrics import (
    MetricsLogger,
    format_metrics,
    read_metrics_jsonl,
    read_tensorboard_scalars,
    reduce_metrics,
)


def test_jsonl_and_tensorboard_round_trip(tmp_path):
    with MetricsLogger(tmp_path / "run") as logger:
        logger.log(1, {"actor/pg_loss": jnp.float32(0.25), "ntl/total_digits": np.int64(12), "critic/score/mean": 0.5})
        logger.log(2, {"actor/pg_loss": np.array([0.125]), "actor/grad_norm": float("nan"), "perf/x": -math.inf})
        # Each line is on disk before close (crash safety).
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2
        assert json.loads(lines[1]) == {"step": 2, "actor/pg_loss": 0.125, "actor/grad_norm": "nan", "perf/x": "-inf"}

    records = read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records[0] == {"step": 1, "actor/pg_loss": 0.25, "ntl/total_digits": 12.0, "critic/score/mean": 0.5}
    assert isinstance(records[0]["ntl/total_digits"], float)
    assert math.isnan(records[1]["actor/grad_norm"]) and records[1]["perf/x"] == -math.inf

    scalars = read_tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert scalars["actor/pg_loss"] == [(1, 0.25), (2, 0.125)]
    assert scalars["ntl/total_digits"] == [(1, 12.0)]
    assert math.isnan(scalars["actor/grad_norm"][0][1])


def test_resumed_logger_appends(tmp_path):
    for step in (1, 2):
        with MetricsLogger(tmp_path, use_tensorboard=False) as logger:
            logger.log(step, {"loss": step / 10})
    assert [r["step"] for r in read_metrics_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "tensorboard").exists()


def test_non_main_process_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "worker1", is_main_process=False, use_wandb=True)
    logger.log(3, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "worker1").exists()
    with pytest.raises(ValueError, match="metric 'loss' has shape"):
        logger.log(4, {"loss": np.ones(3)})


@pytest.mark.parametrize(
    "step, metrics, message",
    [
        (1, {"loss": "high"}, "metric 'loss' has value 'high'"),
        (1, {"loss": np.zeros((2, 2))}, r"metric 'loss' has shape \(2, 2\)"),
        (1, {"loss": None}, "metric 'loss' has value None"),
        (-1, {"loss": 1.0}, "step=-1 must be a non-negative integer"),
        (1.5, {"loss": 1.0}, "step=1.5 must be a non-negative integer"),
        (1, {"step": 1.0}, "metric name 'step' is reserved"),
    ],
)
def test_bad_metrics_are_refused(tmp_path, step, metrics, message):
    with MetricsLogger(tmp_path, use_tensorboard=False) as logger:
        with pytest.raises(ValueError, match=message):
            logger.log(step, metrics)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_log_after_close_is_refused(tmp_path):
    logger = MetricsLogger(tmp_path, use_tensorboard=False)
    logger.close()
    logger.close()
    with pytest.raises(ValueError, match="is closed"):
        logger.log(1, {"loss": 1.0})


def test_truncated_last_line_is_skipped_but_corrupt_middle_line_raises(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert read_metrics_jsonl(path) == [{"step": 1, "loss": 0.5}]
    assert "truncated last line 2" in caplog.text
    path.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 3, "loss": 0.1}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics_jsonl(path)


def test_torn_tensorboard_record_is_ignored(tmp_path):
    with MetricsLogger(tmp_path, use_tensorboard=True) as logger:
        for step in range(3):
            logger.log(step, {"loss": float(step)})
    (event_file,) = (tmp_path / "tensorboard").rglob("events.out.tfevents.*")
    data = event_file.read_bytes()
    event_file.write_bytes(data[:-5])  # tear the last record
    assert read_tensorboard_scalars(tmp_path / "tensorboard")["loss"] == [(0, 0.0), (1, 1.0)]


def test_reduce_metrics_means_over_dicts_that_have_the_key():
    reduced = reduce_metrics([{"a": 1.0, "b": jnp.float32(4.0)}, {"a": 3.0}, {"a": np.float64(5.0), "c": 2}])
    assert reduced == {"a": 3.0, "b": 4.0, "c": 2.0}
    assert reduce_metrics([]) == {}
    assert math.isnan(reduce_metrics([{"a": 1.0}, {"a": float("nan")}])["a"])


def test_format_metrics_is_short_and_selects_keys():
    metrics = {"actor/pg_loss": 0.123456, "training/global_step": 12.0, "ntl/loss": jnp.float32(2.5e-5)}
    assert format_metrics(metrics) == "actor/pg_loss=0.1235 | training/global_step=12 | ntl/loss=2.5e-05"
    assert format_metrics(metrics, keys=["ntl/loss", "missing"]) == "ntl/loss=2.5e-05"
    assert format_metrics({"x": float("inf")}) == "x=inf"


def test_wandb_requested_but_not_installed_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="use_wandb=True needs the wandb package"):
        MetricsLogger(tmp_path, use_wandb=True)


def test_wandb_receives_logged_values(tmp_path, monkeypatch):
    # W&B needs a network service: a minimal stand-in module records the calls the real client would get.
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path, use_tensorboard=False, use_wandb=True, wandb_project="ntl", run_name="r1") as logger:
        logger.log(5, {"loss": np.float32(0.5)})
    assert calls == [
        ("init", {"project": "ntl", "name": "r1", "dir": str(tmp_path)}),
        ("log", {"loss": 0.5}, 5),
        ("finish",),
    ]


def test_group_accuracy_metrics_count_prompts_without_a_correctness_signal():
    from ntl_jax.ppo.batch_stats import group_accuracy_metrics

    # Three prompts of two samples: all right, mixed, all wrong (scores may still differ within a group).
    extras = [{"acc": 1.0}, {"acc": 1.0}, {"acc": 1.0}, {"acc": 0.0}, {"acc": 0.0}, {"acc": False}]
    assert group_accuracy_metrics(extras, 2) == {"reward_extra/acc/same_frac": pytest.approx(2 / 3),
                                                 "reward_extra/acc/none_frac": pytest.approx(1 / 3)}
    # A failed sample (empty extra) or a reward without ``acc`` gives no number rather than a wrong one.
    assert group_accuracy_metrics(extras[:5] + [{}], 2) == {}
    assert group_accuracy_metrics([{"score": 1.0}] * 4, 2) == {}
