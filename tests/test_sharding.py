"""Logical-axis sharding over an 8-device CPU mesh (data=2, fsdp=2, tensor=2) equals single-device maths."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.sharding import (LOGICAL_AXIS_RULES, batch_sharding, constrain_batch, fit_spec_to_shape,
                                     logical_to_mesh, shard_state, sharded_activations, state_shardings)

CONFIG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)


def test_make_mesh_shapes_and_errors():
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(data=2, fsdp=-1, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh(tensor=2, devices=jax.devices()[:4]).shape) == {"data": 2, "fsdp": 1, "tensor": 2}
    assert make_mesh().axis_types == (jax.sharding.AxisType.Auto,) * 3
    with pytest.raises(ValueError, match="do not divide the 8 devices"):
        make_mesh(data=-1, tensor=3)
    with pytest.raises(ValueError, match="product equal to the device count"):
        make_mesh(data=2, fsdp=1, tensor=2)
    with pytest.raises(ValueError, match="at most one axis"):
        make_mesh(data=-1, fsdp=-1)


def test_logical_rules_and_shape_fitting():
    assert logical_to_mesh(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_mesh(("batch", None)) == P(("data", "fsdp"), None)
    assert logical_to_mesh(("vocab", "embed"), {"vocab": None, "embed": "fsdp"}) == P(None, "fsdp")
    with pytest.raises(ValueError, match="'experts' has no rule"):
        logical_to_mesh(("experts",), LOGICAL_AXIS_RULES)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert fit_spec_to_shape(P("tensor", "fsdp"), (129, 64), mesh) == P(None, "fsdp")  # 129 % 2 -> replicate
    assert fit_spec_to_shape(P(("data", "fsdp")), (6,), mesh) == P("data")  # 6 % 4 -> keep only 'data'
    assert fit_spec_to_shape(P("tensor", "tensor"), (4, 4), mesh) == P("tensor", None)  # an axis is used once


def test_state_shardings_follow_parameter_metadata():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state = nnx.state(CausalLM(CONFIG, rngs=nnx.Rngs(0)))
    shardings = state_shardings(state, mesh)
    attn = shardings["model"]["layers"][0]["self_attn"]
    assert attn["q_kernel"].get_value().spec == P("fsdp", "tensor", None)
    assert attn["o_kernel"].get_value().spec == P("tensor", None, "fsdp")
    assert shardings["model"]["embed_tokens"].get_value().spec == P("tensor", "fsdp")
    assert shardings["model"]["norm"]["scale"].get_value().spec == P(None)
    placed = shard_state(state, mesh)
    embed = placed["model"]["embed_tokens"].get_value()
    assert {shard.data.shape for shard in embed.addressable_shards} == {(64, 32)}


def _loss(graphdef, params, batch):
    """Next-token cross-entropy over real (mask=1) target positions."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model(batch["ids"], batch["positions"], batch["mask"])
    logits = model.logits(hidden)[:, :-1]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["ids"][:, 1:])
    weights = batch["mask"][:, 1:].astype(jnp.float32)
    return jnp.sum(nll * weights) / jnp.sum(weights)


def _make_train_step(graphdef, optimizer):
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: _loss(graphdef, p, batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads
    return step


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, CONFIG.vocab_size, (8, 12)).astype(np.int32)
    mask = np.ones((8, 12), np.int32)
    mask[::3, :4] = 0  # some left padding
    return {"ids": ids, "positions": np.clip(np.cumsum(mask, -1) - 1, 0, None).astype(np.int32), "mask": mask}


def test_sharded_forward_and_gradient_step_match_single_device():
    graphdef, params = nnx.split(CausalLM(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    optimizer = optax.sgd(0.5, momentum=0.9)
    step = _make_train_step(graphdef, optimizer)
    batch = _batch()
    initial = jax.tree.map(np.asarray, jax.tree.leaves(params))  # host copy: the sharded step donates its inputs

    single_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    reference = jax.jit(step)(jax.device_put(params, single_device), jax.device_put(optimizer.init(params), single_device),
                              jax.device_put(batch, single_device))

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    param_shardings = state_shardings(params, mesh)
    opt_state = optimizer.init(params)
    opt_shardings = state_shardings(opt_state, mesh)
    data_shardings = {key: batch_sharding(mesh, 2) for key in batch}
    replicated = NamedSharding(mesh, P())
    sharded_step = jax.jit(step, in_shardings=(param_shardings, opt_shardings, data_shardings),
                           out_shardings=(param_shardings, opt_shardings, replicated, param_shardings),
                           donate_argnums=(0, 1))
    result = sharded_step(shard_state(params, mesh), jax.device_put(opt_state, opt_shardings),
                          jax.device_put(batch, data_shardings))

    new_q = result[0]["model"]["layers"][1]["self_attn"]["q_kernel"].get_value()
    assert new_q.sharding.spec == P("fsdp", "tensor", None) and len(new_q.addressable_shards) == 8
    np.testing.assert_allclose(float(result[2]), float(reference[2]), rtol=1e-6)
    for name, index in (("params", 0), ("grads", 3), ("momentum", 1)):
        for ours, expected in zip(jax.tree.leaves(result[index]), jax.tree.leaves(reference[index])):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-5, err_msg=name)
    changed = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(reference[0]), initial))
    assert changed > 1e-3  # the step really moved the parameters


def test_fsdp_forward_keeps_rows_on_their_devices_and_gathers_weights():
    """Inside ``sharded_activations`` an fsdp forward computes each device's rows with gathered weights (at 7B
    shapes XLA otherwise gathered the global batch and all-reduced partial sums: a 5 GB MLP activation per device,
    which tests/test_scripts.py's 7B memory plan guards)."""
    mesh = make_mesh(data=1, fsdp=8, tensor=1)
    wide = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
    graphdef, params = nnx.split(CausalLM(wide, rngs=nnx.Rngs(0)), nnx.Param)
    ids = jnp.zeros((64, 256), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(256), ids.shape)

    def forward(state, input_ids, pos):
        hidden, _ = nnx.merge(graphdef, state)(input_ids, pos, jnp.ones_like(input_ids))
        return hidden

    data = batch_sharding(mesh, 2)
    hlo = jax.jit(sharded_activations(mesh, forward), in_shardings=(state_shardings(params, mesh), data, data),
                  out_shardings=batch_sharding(mesh, 3)).lower(params, ids, positions).compile().as_text()
    # No op carries a [64 * 256, mlp] activation (the global batch); weights are all-gathered instead.
    assert "f32[16384,512]" not in hlo and "f32[2048,512]" in hlo and "all-gather" in hlo
    x = jnp.ones((8, 3))
    assert constrain_batch(x) is x  # outside sharded_activations it does nothing


def test_scanned_layers_under_fsdp_match_the_loop_and_never_gather_the_stack():
    """``scan_layers``: the fsdp gradient equals the single-device loop's, the layer runs inside one while loop,
    and the stacked weights stay sharded (each step gathers one layer: 7B actor update 92 -> 38 GiB per device)."""
    mesh = make_mesh(data=1, fsdp=8, tensor=1)
    wide = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=512, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2)
    graphdef, params = nnx.split(CausalLM(wide, rngs=nnx.Rngs(0), scan_layers=True), nnx.Param)
    loop_graphdef, _ = nnx.split(CausalLM(wide, rngs=nnx.Rngs(0)), nnx.Param)
    ids = jax.random.randint(jax.random.key(0), (16, 12), 0, wide.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(12), ids.shape)

    def loss_of(definition):
        def loss(state, input_ids, pos):
            model = nnx.merge(definition, state)
            hidden, _ = model(input_ids, pos, jnp.ones_like(input_ids))
            return jnp.mean(model.logits(hidden) ** 2)
        return jax.value_and_grad(loss)

    expected_loss, expected_grads = jax.jit(loss_of(loop_graphdef))(params, ids, positions)
    data, shardings = batch_sharding(mesh, 2), state_shardings(params, mesh)
    sharded = jax.jit(sharded_activations(mesh, loss_of(graphdef)), in_shardings=(shardings, data, data),
                      out_shardings=(NamedSharding(mesh, P()), shardings))
    compiled = sharded.lower(params, ids, positions).compile()
    value, grads = compiled(shard_state(params, mesh), jax.device_put(ids, data), jax.device_put(positions, data))
    np.testing.assert_allclose(float(value), float(expected_loss), rtol=1e-6)
    for ours, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-6)
    hlo = compiled.as_text()
    assert "while" in hlo and "f32[64,512]" in hlo  # the loop, gathering one layer's gate/up kernel per step
    assert "f32[3,64,512]" not in hlo and "f32[3,8,512]" in hlo  # the stack: sharded, never gathered whole
