"""CheckpointStore on real orbax files: round trips, real corruption, shape errors, sharded restore, real SIGTERM."""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ntl_jax.ppo.checkpoint import (
    CORRUPT_SUFFIX,
    CheckpointStore,
    PreemptionGuard,
    abstract_like,
    install_sigterm_handler,
)


class TinyPolicy(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(11, hidden, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(hidden, 11, rngs=rngs)


@functools.partial(jax.jit, static_argnums=0)
def _build_train_state(hidden: int, key: jax.Array) -> dict:
    params = nnx.state(TinyPolicy(hidden, rngs=nnx.Rngs(key)), nnx.Param)
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    critic = nnx.state(TinyPolicy(hidden, rngs=nnx.Rngs(jax.random.fold_in(key, 1))), nnx.Param)
    return {
        "policy": params,
        "critic": nnx.to_pure_dict(critic),
        "opt": opt_state,
        "rng": jax.random.key_data(jax.random.fold_in(key, 7)),
    }


def _train_state(hidden: int = 8, seed: int = 0) -> dict:
    """Model params (raw nnx State and pure dict), an adamw state after one update, PRNG key data and a python float
    (jitted once per width: building it eagerly compiles every small op and takes seconds)."""
    return {**_build_train_state(hidden, jax.random.key(seed)), "kl_coef": 0.001}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(store: CheckpointStore, steps, hidden: int = 8) -> dict:
    trees = {}
    for step in steps:
        trees[step] = _train_state(hidden, seed=step)
        assert store.save(step, trees[step], {"step": step, "epoch": np.int64(1), "position": [step, 3]})
    store.wait()
    return trees


def test_round_trip_keeps_nnx_state_optax_namedtuples_and_meta(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    trees = _save_steps(store, [1, 2])
    abstract = abstract_like(_train_state())
    restored, meta, step = store.restore(None, abstract)
    assert step == 2 and meta == {"step": 2, "epoch": 1, "position": [2, 3]}
    assert isinstance(meta["epoch"], int)
    _assert_trees_equal(restored, trees[2])
    assert isinstance(restored["policy"], nnx.State)
    assert isinstance(restored["opt"][0], optax.ScaleByAdamState)
    assert int(restored["opt"][0].count) == 1
    assert restored["kl_coef"] == 0.001
    key = jax.random.wrap_key_data(restored["rng"])
    expected_key = jax.random.fold_in(jax.random.key(2), 7)
    np.testing.assert_array_equal(jax.random.normal(key, (3,)), jax.random.normal(expected_key, (3,)))
    # The restored params load straight back into a model.
    model = nnx.eval_shape(lambda: TinyPolicy(8, rngs=nnx.Rngs(99)))
    nnx.update(model, restored["policy"])
    np.testing.assert_array_equal(model.head.kernel[...], trees[2]["policy"]["head"]["kernel"][...])
    # An explicit older step and a fresh store on the same directory see the same data.
    older, _, older_step = CheckpointStore(tmp_path / "ckpt").restore(1, abstract)
    assert older_step == 1
    _assert_trees_equal(older, trees[1])
    store.close()


def test_empty_directory_restores_none(tmp_path):
    store = CheckpointStore(tmp_path / "fresh")
    assert store.restore(None, abstract_like(_train_state())) is None
    assert store.latest_step() is None and store.latest_good_step() is None and store.all_steps() == []


def test_retention_interval_and_duplicate_steps(tmp_path):
    store = CheckpointStore(tmp_path, max_to_keep=2, save_interval_steps=2)
    tree = {"w": jnp.arange(4.0)}
    saved = [store.save(step, tree, {"step": step}) for step in range(1, 7)]
    assert saved == [False, True, False, True, False, True]
    assert store.save(7, tree, {}, force=True)
    assert store.save(7, tree, {}, force=True) is False  # already on disk: nothing to do
    store.wait()
    assert store.all_steps() == [6, 7] and store.latest_step() == 7


def _corrupt(step_dir, mode: str) -> None:
    state_dir = step_dir / "state"
    data_files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files, f"no array data files under {state_dir}"
    if mode == "truncate_data":
        for path in data_files:
            with open(path, "r+b") as f:
                f.truncate(0)
    elif mode == "overwrite_data":
        for path in data_files:
            path.write_bytes(b"\xff" * path.stat().st_size)
    elif mode == "truncate_metadata":
        path = state_dir / "_METADATA"
        path.write_bytes(path.read_bytes()[:17])
    else:
        raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["truncate_data", "overwrite_data", "truncate_metadata"])
def test_corrupted_newest_checkpoint_falls_back_with_warning(tmp_path, caplog, mode):
    store = CheckpointStore(tmp_path)
    trees = _save_steps(store, [1, 2, 3])
    _corrupt(tmp_path / "3", mode)
    abstract = abstract_like(_train_state())
    with caplog.at_level(logging.WARNING, logger="ntl_jax.ppo.checkpoint"):
        restored, meta, step = store.restore(None, abstract)
    assert step == 2 and meta["step"] == 2
    _assert_trees_equal(restored, trees[2])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint step 3" in w and str(tmp_path / "3") in w for w in warnings), warnings
    # The bad step is kept for inspection but no longer blocks saving step 3 again.
    assert (tmp_path / f"3{CORRUPT_SUFFIX}").is_dir() and not (tmp_path / "3").exists()
    assert store.all_steps() == [1, 2]
    assert store.save(3, trees[3], {"step": 3})
    _, meta, step = store.restore(None, abstract)
    assert step == 3 and meta["step"] == 3


def test_all_checkpoints_corrupted_restores_none(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    _save_steps(store, [1, 2])
    for step in (1, 2):
        _corrupt(tmp_path / str(step), "truncate_data")
    assert store.latest_good_step() is None  # orbax metadata reads each array's header: broken already here
    assert store.restore(None, abstract_like(_train_state())) is None
    assert "no readable checkpoint" in caplog.text
    assert store.all_steps() == [] and store.save(1, {"w": jnp.ones(2)}, {})


def test_explicit_corrupted_or_missing_step_raises(tmp_path):
    store = CheckpointStore(tmp_path)
    _save_steps(store, [1, 2])
    _corrupt(tmp_path / "2", "overwrite_data")
    with pytest.raises(RuntimeError, match="checkpoint step 2 in .* cannot be read"):
        store.restore(2, abstract_like(_train_state()))
    with pytest.raises(ValueError, match=r"checkpoint step 5 is not in .*available steps: \[1, 2\]"):
        store.restore(5, abstract_like(_train_state()))


def test_shape_mismatch_is_a_config_error_not_a_fallback(tmp_path):
    store = CheckpointStore(tmp_path)
    _save_steps(store, [1, 2], hidden=8)
    wider = abstract_like(_train_state(hidden=16))
    with pytest.raises(ValueError, match=r"leaf critic/embed/embedding has shape \(11, 8\) but the target expects "
                                         r"\(11, 16\)"):
        store.restore(None, wider)
    assert store.all_steps() == [1, 2]  # nothing quarantined


def test_tree_mismatch_names_the_paths(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, {"policy": {"w": jnp.ones(3)}, "step_count": 4}, {})
    target = {"policy": {"w": jax.ShapeDtypeStruct((3,), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.float32)}}
    with pytest.raises(ValueError, match=r"missing in checkpoint \[policy/b\], not in target \[step_count\]"):
        store.restore(None, target)


def test_typed_prng_keys_round_trip(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, {"rng": jax.random.key(3), "count": jnp.int32(4)}, {})
    target = {"rng": jax.eval_shape(lambda: jax.random.key(0)), "count": jax.ShapeDtypeStruct((), jnp.int32)}
    restored, _, _ = store.restore(None, target)
    assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(jax.random.key(3)))


def test_restore_onto_an_eight_device_mesh(tmp_path):
    assert jax.device_count() == 8
    tree = {"w": jnp.arange(64.0).reshape(16, 4), "b": jnp.arange(4.0)}
    store = CheckpointStore(tmp_path)
    store.save(1, tree, {})  # saved from one device
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "tensor"))
    target = {
        "w": jax.ShapeDtypeStruct((16, 4), jnp.float32, sharding=NamedSharding(mesh, P("data", "tensor"))),
        "b": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(mesh, P())),
    }
    restored, _, _ = store.restore(None, target)
    assert restored["w"].sharding == target["w"].sharding and restored["b"].sharding == target["b"].sharding
    assert len(restored["w"].addressable_shards) == 8
    assert restored["w"].addressable_shards[0].data.shape == (4, 2)
    _assert_trees_equal(restored, tree)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"when": object()}, r"meta\['when'\] has type object"),
        ({1: "x"}, "meta key 1 must be a string"),
        ({"pos": [1, np.ones(2)]}, r"meta\['pos'\]\[1\] has type ndarray"),
    ],
)
def test_meta_must_be_json(tmp_path, meta, message):
    with pytest.raises(ValueError, match=message):
        CheckpointStore(tmp_path).save(1, {"w": jnp.ones(2)}, meta)


@pytest.mark.parametrize("kwargs", [{"max_to_keep": 0}, {"save_interval_steps": 0}, {"max_to_keep": 1.5}])
def test_bad_store_options(tmp_path, kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        CheckpointStore(tmp_path, **kwargs)


def _wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_guard_turns_signals_into_a_flag_and_restores_handlers():
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with PreemptionGuard(handle_sigint=True) as guard:
        assert not guard.should_stop and not guard.stop_agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: guard.should_stop)
        assert guard.should_stop and guard.stop_agreed() and guard.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C means "stop now"
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False, timeout_s=2.0)
    assert signal.getsignal(signal.SIGTERM) is before_term and signal.getsignal(signal.SIGINT) is before_int


def test_guard_request_stop_and_reentry():
    guard = PreemptionGuard()
    with guard:
        guard.request_stop("eval budget")
        assert guard.should_stop and guard.signal_name == "eval budget"
        with pytest.raises(ValueError, match="already active"):
            guard.__enter__()


def test_install_sigterm_handler_calls_back_and_uninstalls():
    received = []
    before = signal.getsignal(signal.SIGTERM)
    uninstall = install_sigterm_handler(received.append)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: received)
    finally:
        uninstall()
    assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


TRAINER = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp
    from ntl_jax.ppo.checkpoint import CheckpointStore, PreemptionGuard

    store = CheckpointStore(sys.argv[1], max_to_keep=2, save_interval_steps=1000)
    weights, step = jnp.zeros(4), 0
    with PreemptionGuard() as guard:
        print("ready", flush=True)
        while step < 100_000:
            step += 1
            weights = weights + 1.0  # one "training step"
            time.sleep(0.002)
            if guard.stop_agreed():
                store.save(step, {"w": weights}, {"step": step, "signal": guard.signal_name}, force=True)
                store.wait()
                print(f"saved {step}", flush=True)
                break
    store.close()
    sys.exit(0 if guard.should_stop else 3)
    """
)


def _read_line(stream, timeout_s: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline() if ready else ""


def test_real_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    ckpt_dir = tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _read_line(proc.stdout, 60).strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)  # let it run a few steps
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    saved_step = int(out.strip().split()[-1])
    assert saved_step > 1
    restored, meta, step = CheckpointStore(ckpt_dir).restore(None, {"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert step == saved_step and meta == {"step": saved_step, "signal": "SIGTERM"}
    np.testing.assert_array_equal(restored["w"], np.full(4, saved_step, np.float32))
