"""Multi-host PPO: two CPU processes (jax.distributed, gloo) run the sharded actor update of
``ntl_jax.ppo.steps.make_actor_update`` on a (data=2, fsdp=2) mesh spanning both, each process feeding only its
own rows (``jax.make_array_from_process_local_data``); the updated parameters equal the single-process update.

The update is the NTL one (policy loss + entropy + KL loss + NTL on the digit slice) with two micro-batches, taken
twice in a row. Plain SGD with learning rate 1 makes the parameter change equal the gradient, so the comparison
checks the gradients themselves (Adam's first step would only compare their signs). Feeding a process the wrong
rows changes the parameters by ~0.2, far above the 1e-5 tolerance.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
import optax
import pytest
from flax import nnx

from multiprocess_harness import run_workers
from ntl_jax.embedded import EmbeddedTaskConfig, tiny_model_config
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.tokenizers import build_char_tokenizer
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ppo.steps import ActorLossSettings, RolloutBatch, batch_sharding, make_actor_update

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
MESH_DATA, MESH_FSDP = 2, 2
NUM_RESPONSES, PROMPT_LEN, RESPONSE_LEN = 8, 6, 8
NUM_MICRO_BATCHES = 2
NUM_UPDATES = 2
NTL_WEIGHT = 0.3
TIMEOUT_S = 120
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

SETTINGS = ActorLossSettings(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, loss_agg_mode="token-mean",
                             entropy_coeff=0.01, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="low_var_kl",
                             ntl_method="wasserstein", chunk_size=4)


def tiny_policy() -> tuple[CausalLM, np.ndarray]:
    """A random 2-layer width-32 decoder over the character tokenizer, and its digit token ids."""
    tokenizer = build_char_tokenizer()
    task = EmbeddedTaskConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    return CausalLM(tiny_model_config(tokenizer, task), rngs=nnx.Rngs(0)), digit_token_ids(tokenizer)


def rollout_arrays(vocab_size: int, digit_ids: np.ndarray) -> dict[str, np.ndarray]:
    """A deterministic batch of NUM_RESPONSES responses: left-padded prompts, right-padded responses, about half
    of the response tokens digits with NTL targets, old log-probs near the random policy's (-log V)."""
    rng = np.random.default_rng(0)
    n, p, t = NUM_RESPONSES, PROMPT_LEN, RESPONSE_LEN
    prompt_lens = rng.integers(2, p + 1, n)
    prompt_mask = (np.arange(p)[None, :] >= p - prompt_lens[:, None]).astype(np.int32)
    prompt_ids = np.where(prompt_mask > 0, rng.integers(3, vocab_size, (n, p)), 0).astype(np.int32)
    response_lens = rng.integers(3, t + 1, n)
    response_mask = (np.arange(t)[None, :] < response_lens[:, None]).astype(np.float32)
    is_digit = rng.random((n, t)) < 0.5
    tokens = np.where(is_digit, rng.choice(digit_ids, (n, t)), rng.integers(3, vocab_size, (n, t)))
    response_ids = np.where(response_mask > 0, tokens, 0).astype(np.int32)
    has_target = is_digit & (response_mask > 0)
    old_logprobs = (-np.log(vocab_size) + 0.1 * rng.normal(size=(n, t))).astype(np.float32) * response_mask
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
        "response_mask": response_mask, "old_logprobs": old_logprobs,
        "ref_logprobs": (old_logprobs + 0.05 * rng.normal(size=(n, t))).astype(np.float32) * response_mask,
        "old_values": np.zeros((n, t), np.float32),
        "advantages": rng.normal(size=(n, t)).astype(np.float32) * response_mask,
        "returns": rng.normal(size=(n, t)).astype(np.float32) * response_mask,
        "ntl_targets": np.where(has_target, rng.integers(0, 10, (n, t)), -1).astype(np.int32),
        "ntl_weights": has_target.astype(np.float32),
    }


def process_rows(sharding, num_rows: int) -> slice:
    """The contiguous rows of a [num_rows, ...] batch that live on this process's devices."""
    starts = sorted({index[0].start or 0 for index in sharding.addressable_devices_indices_map((num_rows,)).values()})
    stops = sorted({index[0].stop or num_rows for index in
                    sharding.addressable_devices_indices_map((num_rows,)).values()})
    rows = slice(starts[0], stops[-1])
    assert sum(stop - start for start, stop in zip(starts, stops)) == rows.stop - rows.start, "non-contiguous rows"
    return rows


def sharded_actor_updates(mesh, place_batch) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    """NUM_UPDATES actor updates on ``mesh``; ``place_batch(arrays, sharding)`` puts the batch on it.

    Returns the updated parameters gathered to host ({path: array}) and each update's metrics.
    """
    import jax
    from jax.experimental import multihost_utils

    from ntl_jax.ppo.state import ModuleState

    model, digit_ids = tiny_policy()
    state = ModuleState.from_module(model, mesh, optax.sgd(1.0))
    update = make_actor_update(state.graphdef, state.tx, SETTINGS, digit_ids=jax.numpy.asarray(digit_ids),
                               num_micro_batches=NUM_MICRO_BATCHES, mesh=mesh, param_shardings=state.shardings,
                               opt_shardings=state.opt_shardings)
    arrays = rollout_arrays(model.config.vocab_size, digit_ids)
    targets = DigitTargets.from_arrays(arrays.pop("ntl_targets"), arrays.pop("ntl_weights"))
    place = lambda x: place_batch(np.asarray(x), batch_sharding(mesh))  # noqa: E731
    batch = RolloutBatch(**{k: place(v) for k, v in arrays.items()}, ntl=jax.tree.map(place, targets))
    params, opt_state, history = state.params, state.opt_state, []
    for _ in range(NUM_UPDATES):
        params, opt_state, metrics = update(params, opt_state, batch, np.float32(NTL_WEIGHT))
        # Metrics are replicated over the mesh: every process holds the whole value.
        history.append({k: float(v.addressable_data(0)) for k, v in metrics.items()})
    gathered = multihost_utils.process_allgather(nnx.to_pure_dict(params), tiled=True)
    flat = {"/".join(map(str, path)): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(gathered)}
    return flat, history


def initial_params() -> dict[str, np.ndarray]:
    import jax

    _, params = nnx.split(tiny_policy()[0])
    return {"/".join(map(str, path)): np.asarray(leaf) for path, leaf in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params))}


WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from ntl_jax.distributed import multihost

    info = multihost.initialize()
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from ntl_jax.distributed.mesh import make_mesh
    import test_multihost_ppo as case

    mesh = make_mesh(data=case.MESH_DATA, fsdp=case.MESH_FSDP, tensor=1)

    def place_local_rows(array, sharding):
        rows = case.process_rows(sharding, array.shape[0])
        return jax.make_array_from_process_local_data(sharding, array[rows], array.shape)

    params, history = case.sharded_actor_updates(mesh, place_local_rows)
    np.savez(f"{sys.argv[1]}/params_{info.process_index}.npz", **params)
    print("RESULT " + json.dumps({"process_index": info.process_index, "process_count": info.process_count,
                                  "global_devices": jax.device_count(), "history": history}), flush=True)
    """
)


def _run_workers(tmp_path) -> list[dict]:
    return run_workers(WORKER, tmp_path, num_processes=NUM_PROCESSES, devices_per_process=DEVICES_PER_PROCESS,
                       timeout_s=TIMEOUT_S, args=(str(tmp_path), TESTS_DIR))


@pytest.mark.slow  # ~45 s on 2 idle cores, 80+ s when they are shared: two JAX processes each compile the update
def test_two_process_sharded_actor_update_equals_single_process(tmp_path):
    import jax

    from ntl_jax.distributed.mesh import make_mesh

    results = _run_workers(tmp_path)

    # The same updates in this process, on a mesh of the same shape over 4 local devices, whole batch placed here.
    mesh = make_mesh(data=MESH_DATA, fsdp=MESH_FSDP, tensor=1, devices=jax.devices()[:NUM_PROCESSES *
                                                                                       DEVICES_PER_PROCESS])
    expected, expected_history = sharded_actor_updates(mesh, lambda array, sharding: jax.device_put(array, sharding))
    before = initial_params()

    assert sorted(r["process_index"] for r in results) == list(range(NUM_PROCESSES))
    for result in results:
        assert result["process_count"] == NUM_PROCESSES
        assert result["global_devices"] == NUM_PROCESSES * DEVICES_PER_PROCESS
        for got, want in zip(result["history"], expected_history, strict=True):
            assert got.keys() == want.keys()
            for name in ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/entropy", "ntl/train_loss",
                         "actor/grad_norm"):
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
            assert got["actor/update_skipped"] == 0.0
        got_params = np.load(tmp_path / f"params_{result['process_index']}.npz")
        assert sorted(got_params.files) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(got_params[name], value, rtol=0, atol=1e-5, err_msg=name)
    # The updates did something: NTL and the policy loss both contributed, and parameters moved.
    assert expected_history[0]["ntl/train_loss"] > 0
    moved = max(float(np.max(np.abs(expected[k] - before[k]))) for k in expected)
    assert moved > 1e-3
