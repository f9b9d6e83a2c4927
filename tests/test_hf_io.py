"""HF checkpoint I/O: sharded index, error messages, bfloat16, direct sharded placement, config and tokenizer files."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.hf_io import SAFETENSORS_INDEX, from_pretrained, load_hf_state, save_pretrained
from ntl_jax.models.sharding import named_sharding

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, eos_token_id=(1, 2), pad_token_id=0, model_type="qwen2")


def params_of(model) -> dict:
    return {".".join(map(str, path)): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b, dtype=None):
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        np.testing.assert_array_equal(pa[key].astype(dtype or pa[key].dtype), pb[key].astype(dtype or pa[key].dtype))


@pytest.fixture
def saved(tmp_path):
    model = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    save_pretrained(model, tmp_path / "single")
    return model, tmp_path / "single"


def rewrite_checkpoint(src, dst, edit=lambda tensors: tensors, config_edit=lambda d: d):
    """Copy a checkpoint with edited tensors / config.json."""
    os.makedirs(dst, exist_ok=True)
    tensors = edit({name: np.array(array) for name, array in load_hf_state(src).items()})
    safetensors.numpy.save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        config = config_edit(json.load(f))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)


def test_sharded_index_checkpoint_loads_like_single_file(saved, tmp_path):
    model, single = saved
    tensors = {name: np.array(array) for name, array in load_hf_state(single).items()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    os.makedirs(sharded)
    for file_name, shard_names in shards.items():
        safetensors.numpy.save_file({n: tensors[n] for n in shard_names}, str(sharded / file_name),
                                    metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {n: f for f, shard_names in shards.items() for n in shard_names}}
    (sharded / SAFETENSORS_INDEX).write_text(json.dumps(index))
    (sharded / "config.json").write_text((single / "config.json").read_text())
    assert load_hf_state(sharded).keys() == tensors.keys()
    assert_same_params(from_pretrained(sharded), model)


def test_missing_tensor_is_named(saved, tmp_path):
    _, single = saved
    name = "model.layers.1.mlp.up_proj.weight"
    rewrite_checkpoint(single, tmp_path / "broken", edit=lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        from_pretrained(tmp_path / "broken")


def test_shape_mismatch_names_tensor_and_shapes(saved, tmp_path):
    _, single = saved
    rewrite_checkpoint(single, tmp_path / "wrong", config_edit=lambda d: {**d, "intermediate_size": 48})
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(32, 64\); "
                                         r"expected \(32, 48\)"):
        from_pretrained(tmp_path / "wrong")


def test_directory_without_safetensors_is_refused(saved, tmp_path):
    _, single = saved
    os.makedirs(tmp_path / "pickle")
    (tmp_path / "pickle" / "config.json").write_text((single / "config.json").read_text())
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors checkpoints only"):
        from_pretrained(tmp_path / "pickle")


def test_bfloat16_checkpoint_round_trip(tmp_path):
    model = CausalLM(CONFIG, rngs=nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    assert {a.dtype.name for a in load_hf_state(tmp_path).values()} == {"bfloat16"}
    reloaded = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert reloaded.model.embed_tokens.get_value().dtype == jnp.bfloat16
    assert_same_params(reloaded, model)
    upcast = from_pretrained(tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert upcast.model.embed_tokens.get_value().dtype == jnp.float32
    assert_same_params(upcast, model, dtype=np.float32)


def test_mesh_load_places_each_tensor_with_its_sharding(saved):
    model, single = saved
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = from_pretrained(single, mesh=mesh)
    assert_same_params(sharded, model)
    for path, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        value = var.get_value()
        expected = named_sharding(var.get_metadata()["out_sharding"], value.shape, mesh)
        assert value.sharding.is_equivalent_to(expected, value.ndim), path
    q_kernel = sharded.model.layers[0].self_attn.q_kernel.get_value()  # [D=32, H=4, Dh=8] on (fsdp, tensor, -)
    assert {shard.data.shape for shard in q_kernel.addressable_shards} == {(16, 2, 8)}


def test_config_round_trip_and_tokenizer_files(saved, tmp_path):
    model, _ = saved
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{str(d): 3 + d for d in range(10)}, "+": 13, "=": 14}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    save_pretrained(model, tmp_path / "with_tok", tokenizer=tokenizer)
    assert ModelConfig.from_pretrained_dir(tmp_path / "with_tok") == CONFIG
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "with_tok")
    assert reloaded("12+3=15")["input_ids"] == tokenizer("12+3=15")["input_ids"] == [4, 5, 13, 6, 14, 4, 8]
    rope3 = ModelConfig(**{**CONFIG.__dict__, "model_type": "llama", "attention_bias": False,
                           "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert ModelConfig.from_hf_dict(rope3.to_hf_dict()) == rope3
    assert jax.tree.leaves(rope3.rope_scaling) == ["factor", 2.0, "rope_type", "linear"]


def test_value_model_from_causal_checkpoint_gets_fresh_head(saved):
    model, single = saved
    critic = from_pretrained(single, value_model=True)
    critic_params, policy_params = params_of(critic), params_of(model)
    backbone = sorted(k for k in critic_params if k.startswith("model."))
    assert backbone == sorted(k for k in policy_params if k.startswith("model."))
    for key in backbone:
        np.testing.assert_array_equal(critic_params[key], policy_params[key])
    head = np.asarray(critic.score_kernel.get_value())
    assert head.shape == (CONFIG.hidden_size, 1) and 0.005 < head.std() < 0.05
    assert not np.asarray(critic.score_bias.get_value()).any()
