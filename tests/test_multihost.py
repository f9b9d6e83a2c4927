"""Multi-process JAX: two real CPU processes on localhost, and the single-process no-op path."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from multiprocess_harness import run_workers
from ntl_jax.distributed import multihost

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
TIMEOUT_S = 60

# Each worker joins the run through NTL_JAX_* environment variables (the path launch scripts use), shards a
# least-squares batch over the processes and takes one jitted gradient step on the global 4-device mesh.
WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from ntl_jax.distributed import multihost

    info = multihost.initialize()
    import jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    def problem():
        rng = np.random.default_rng(0)
        features = rng.normal(size=(16, 3)).astype(np.float32)
        targets = (features @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1 * rng.normal(size=16)).astype(np.float32)
        return features, targets, np.zeros(3, np.float32), np.float32(0.1)

    features, targets, weights, lr = problem()
    mesh = Mesh(np.array(jax.devices()).reshape(-1), ("data",))
    rows_per_process = features.shape[0] // info.process_count
    mine = slice(info.process_index * rows_per_process, (info.process_index + 1) * rows_per_process)
    batch_sharding = NamedSharding(mesh, P("data"))
    x = jax.make_array_from_process_local_data(batch_sharding, features[mine], features.shape)
    y = jax.make_array_from_process_local_data(batch_sharding, targets[mine], targets.shape)
    w = jax.device_put(weights, NamedSharding(mesh, P()))

    @jax.jit
    def sgd_step(w, x, y):
        loss_fn = lambda w: 0.5 * jnp.mean((x @ w - y) ** 2)
        loss, grad = jax.value_and_grad(loss_fn)(w)
        return w - lr * grad, loss

    new_w, loss = sgd_step(w, x, y)
    # The replicated result is fully addressable on every process.
    new_w, loss = np.asarray(new_w.addressable_data(0)), float(loss.addressable_data(0))
    residual = features @ weights - targets
    expected_w = weights - lr * features.T @ residual / features.shape[0]
    multihost.sync("after_step")
    print("RESULT " + json.dumps({
        "process_index": info.process_index, "process_count": info.process_count, "mode": info.mode,
        "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "is_main": multihost.is_main_process(), "new_w": new_w.tolist(), "loss": loss,
        "local_max_err": float(np.max(np.abs(new_w - expected_w))),
        "any_stop": multihost.any_process(info.process_index == 1),
        "none_stop": multihost.any_process(False),
        "seed_from_main": int(multihost.broadcast_from_main(np.int32(100 + info.process_index))),
    }), flush=True)
    """
)


def _reference_step() -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, 3)).astype(np.float64)
    targets = features @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=16)
    residual = features @ np.zeros(3) - targets
    return -0.1 * features.T @ residual / 16, 0.5 * float(np.mean(residual**2))


def test_two_cpu_processes_match_single_process_step(tmp_path):
    results = run_workers(WORKER, tmp_path, num_processes=NUM_PROCESSES, devices_per_process=DEVICES_PER_PROCESS,
                          timeout_s=TIMEOUT_S)

    expected_w, expected_loss = _reference_step()
    assert sorted(r["process_index"] for r in results) == [0, 1]
    for r in results:
        assert r["process_count"] == NUM_PROCESSES and r["mode"] == "explicit"
        assert r["global_devices"] == NUM_PROCESSES * DEVICES_PER_PROCESS
        assert r["local_devices"] == DEVICES_PER_PROCESS
        assert r["is_main"] == (r["process_index"] == 0)
        assert r["local_max_err"] < 1e-5
        np.testing.assert_allclose(r["new_w"], expected_w, rtol=1e-5, atol=1e-6)
        assert r["loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert r["any_stop"] is True and r["none_stop"] is False
        assert r["seed_from_main"] == 100
    assert results[0]["new_w"] == results[1]["new_w"]


def test_single_process_is_a_noop(monkeypatch):
    for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "LOCAL_DEVICE_IDS"):
        monkeypatch.delenv("NTL_JAX_" + name, raising=False)
        monkeypatch.delenv("JAX_" + name, raising=False)
    monkeypatch.setenv("NTL_JAX_DISTRIBUTED", "off")
    info = multihost.initialize()
    assert info == multihost.DistributedInfo(0, 1, "single")
    assert multihost.process_index() == 0 and multihost.process_count() == 1 and multihost.is_main_process()
    multihost.sync("single")
    assert multihost.any_process(True) is True and multihost.any_process(False) is False
    tree = {"seed": np.int32(7)}
    assert multihost.broadcast_from_main(tree) is tree


def test_one_explicit_process_is_a_noop(monkeypatch):
    monkeypatch.delenv("NTL_JAX_DISTRIBUTED", raising=False)
    info = multihost.initialize(coordinator_address="127.0.0.1:1234", num_processes=1, process_id=0)
    assert info.mode == "single" and info.process_count == 1


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({"coordinator_address": "127.0.0.1:1"}, {}, "missing num_processes, process_id"),
        ({"coordinator_address": "nohostport", "num_processes": 2, "process_id": 0}, {}, "host:port"),
        ({"coordinator_address": "h:99999", "num_processes": 2, "process_id": 0}, {}, "host:port"),
        ({"coordinator_address": "h:1234", "num_processes": 2, "process_id": 2}, {},
         r"process_id=2 must be in \[0, 2\)"),
        ({}, {"NTL_JAX_NUM_PROCESSES": "two"}, "num_processes='two' is not an integer"),
        ({}, {"NTL_JAX_DISTRIBUTED": "maybe"}, "NTL_JAX_DISTRIBUTED='maybe' is not allowed"),
    ],
)
def test_bad_settings_are_refused_before_connecting(monkeypatch, kwargs, env, message):
    monkeypatch.delenv("NTL_JAX_DISTRIBUTED", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        multihost.initialize(**kwargs)


def test_detect_cluster_reads_environment(monkeypatch):
    for name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                 "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    baseline = multihost.detect_cluster()
    assert baseline in (None, "tpu")  # 'tpu' only on a real TPU VM
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    if baseline is None:
        assert multihost.detect_cluster() == "slurm"
        monkeypatch.setenv("SLURM_NTASKS", "1")
        assert multihost.detect_cluster() is None
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
    assert multihost.detect_cluster() == "tpu"
