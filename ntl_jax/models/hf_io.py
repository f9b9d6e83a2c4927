"""Hugging Face checkpoints in and out (safetensors only, never pickle).

Reading memory-maps the safetensors files (the format is an 8-byte header length, a JSON header, raw little-endian
data) so BF16 checkpoints load too (`safetensors.numpy` cannot represent bfloat16) and nothing is read until used.
With a mesh, every parameter is placed with `jax.make_array_from_callback`, each device receiving only its slice.

Value models are saved in HF `*ForTokenClassification` layout (num_labels=1): `model.*` backbone plus
`score.weight` [1, D] and `score.bias` [1], which transformers' AutoModelForTokenClassification (verl's critic) loads.
Loading a value model from a causal-LM checkpoint (no `score.*`) initialises the head (normal 0.02, seed 0).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy
from flax import nnx
from jax.sharding import Mesh

from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM, ValueModel
from ntl_jax.models.sharding import Rules, named_sharding

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class ParamEntry(NamedTuple):
    """One HF tensor <-> one nnx param: ours = hf.T.reshape(shape) if `transpose` else hf.reshape(shape)."""

    hf_name: str
    path: tuple[Any, ...]
    transpose: bool
    hf_shape: tuple[int, ...]


def _read_header(file_path: str) -> tuple[dict[str, Any], int]:
    with open(file_path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    return header, 8 + header_len


def _memmap_tensors(file_path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, read-only memmapped array) for every tensor of one safetensors file."""
    header, data_start = _read_header(file_path)
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{file_path}: tensor {name!r} has dtype {info['dtype']}; allowed: {sorted(_DTYPES)}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{file_path}: tensor {name!r} byte range {begin}..{end} does not match shape {shape}")
        if end == begin:
            yield name, np.zeros(shape, dtype)
            continue
        raw = np.memmap(file_path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
        yield name, raw.view(dtype).reshape(shape)


def _checkpoint_files(path: str | os.PathLike) -> list[str]:
    path = os.fspath(path)
    index_path, single_path = os.path.join(path, SAFETENSORS_INDEX), os.path.join(path, SAFETENSORS_FILE)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    if os.path.isfile(single_path):
        return [single_path]
    raise ValueError(f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} in {path!r}; allowed: safetensors checkpoints only")


def load_hf_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint (single file or sharded index) as read-only memory-mapped numpy arrays."""
    state: dict[str, np.ndarray] = {}
    for file_path in _checkpoint_files(path):
        state.update(_memmap_tensors(file_path))
    return state


def param_table(config: ModelConfig, *, value_model: bool = False) -> list[ParamEntry]:
    """HF name <-> nnx path table for every parameter of CausalLM (or ValueModel) under `config`."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.dim_per_head
    h, kvh = config.num_attention_heads, config.num_key_value_heads
    table = [ParamEntry("model.embed_tokens.weight", ("model", "embed_tokens"), False, (config.vocab_size, d)),
             ParamEntry("model.norm.weight", ("model", "norm", "scale"), False, (d,))]
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        table += [
            ParamEntry(hf + "input_layernorm.weight", ours + ("input_layernorm", "scale"), False, (d,)),
            ParamEntry(hf + "post_attention_layernorm.weight", ours + ("post_attention_layernorm", "scale"), False, (d,)),
            ParamEntry(hf + "self_attn.o_proj.weight", ours + ("self_attn", "o_kernel"), True, (d, h * hd)),
            ParamEntry(hf + "mlp.down_proj.weight", ours + ("mlp", "down_kernel"), True, (d, f)),
        ]
        for name, heads in (("q", h), ("k", kvh), ("v", kvh)):
            table.append(ParamEntry(hf + f"self_attn.{name}_proj.weight", ours + ("self_attn", f"{name}_kernel"),
                                    True, (heads * hd, d)))
            if config.attention_bias:
                table.append(ParamEntry(hf + f"self_attn.{name}_proj.bias", ours + ("self_attn", f"{name}_bias"),
                                        False, (heads * hd,)))
        if config.o_proj_bias:
            table.append(ParamEntry(hf + "self_attn.o_proj.bias", ours + ("self_attn", "o_bias"), False, (d,)))
        for name in ("gate", "up"):
            table.append(ParamEntry(hf + f"mlp.{name}_proj.weight", ours + ("mlp", f"{name}_kernel"), True, (f, d)))
        if config.mlp_bias:
            table += [ParamEntry(hf + f"mlp.{name}_proj.bias", ours + ("mlp", f"{name}_bias"), False, (size,))
                      for name, size in (("gate", f), ("up", f), ("down", d))]
    if value_model:
        table += [ParamEntry("score.weight", ("score_kernel",), True, (1, d)),
                  ParamEntry("score.bias", ("score_bias",), False, (1,))]
    elif not config.tie_word_embeddings:
        table.append(ParamEntry("lm_head.weight", ("lm_head",), True, (config.vocab_size, d)))
    return table


def _to_ours(entry: ParamEntry, hf_array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """View of the HF array in our layout (no copy for memmaps; dtype conversion happens per device slice)."""
    if tuple(hf_array.shape) != entry.hf_shape:
        raise ValueError(f"checkpoint tensor {entry.hf_name!r} has shape {tuple(hf_array.shape)}; "
                         f"expected {entry.hf_shape} from config.json")
    return (hf_array.T if entry.transpose else hf_array).reshape(shape)


def _to_hf(entry: ParamEntry, ours: np.ndarray) -> np.ndarray:
    hf = ours.reshape(entry.hf_shape[::-1]).T if entry.transpose else ours.reshape(entry.hf_shape)
    return np.ascontiguousarray(hf)


def _place(host: np.ndarray, dtype: Any, logical_axes: Any, mesh: Mesh | None, rules: Rules | None) -> jax.Array:
    """Host array -> jax.Array in `dtype`; with a mesh each device gets only its own slice."""
    if mesh is None:
        return jnp.asarray(np.asarray(host, dtype=dtype))
    sharding = named_sharding(logical_axes, host.shape, mesh, rules)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: np.asarray(host[index], dtype=dtype))


def _default_score_head(entry: ParamEntry) -> np.ndarray:
    if entry.hf_name == "score.bias":
        return np.zeros(entry.hf_shape, np.float32)
    return np.random.default_rng(0).normal(0.0, 0.02, entry.hf_shape).astype(np.float32)


def from_pretrained(path: str | os.PathLike, *, dtype: Any = jnp.float32, mesh: Mesh | None = None,
                    rules: Rules | None = None, value_model: bool = False, param_dtype: Any = None,
                    remat: bool = False, scan_layers: bool = False, attention: str = "einsum"
                    ) -> CausalLM | ValueModel:
    """Load config.json + safetensors into a CausalLM (or ValueModel); params in `param_dtype` (default `dtype`);
    ``attention``: 'einsum' or 'dot_product_attention' (`ntl_jax.models.decoder.Attention`)."""
    config = ModelConfig.from_pretrained_dir(path)
    param_dtype = dtype if param_dtype is None else param_dtype
    model_cls = ValueModel if value_model else CausalLM
    abstract = nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
                                                remat=remat, scan_layers=scan_layers, attention=attention))
    graphdef, abstract_state = nnx.split(abstract)
    by_path = {entry.path: entry for entry in param_table(config, value_model=value_model)}
    checkpoint = load_hf_state(path)
    np_param_dtype = np.dtype(param_dtype)
    flat = []
    for var_path, var in nnx.to_flat_state(abstract_state):
        entry = by_path.get(tuple(var_path))
        if entry is None:
            raise ValueError(f"parameter {'.'.join(map(str, var_path))} has no HF checkpoint mapping")
        if entry.hf_name in checkpoint:
            hf_array = checkpoint[entry.hf_name]
        elif value_model and entry.hf_name.startswith("score."):
            hf_array = _default_score_head(entry)
        else:
            raise ValueError(f"checkpoint {os.fspath(path)!r} is missing tensor {entry.hf_name!r} "
                             f"(expected shape {entry.hf_shape})")
        host = _to_ours(entry, hf_array, var.get_value().shape)
        flat.append((var_path, var.replace(_place(host, np_param_dtype, var.get_metadata().get("out_sharding"),
                                                  mesh, rules))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _host_array(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # only needed for multi-process meshes
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_pretrained(model: CausalLM | ValueModel, path: str | os.PathLike, *, tokenizer: Any = None) -> None:
    """Write model.safetensors + config.json (+ tokenizer files) that transformers loads back.

    Multi-process: every process must call it (arrays are gathered); only process 0 writes.
    """
    value_model = isinstance(model, ValueModel)
    config = model.config
    by_path = {entry.path: entry for entry in param_table(config, value_model=value_model)}
    tensors: dict[str, np.ndarray] = {}
    for var_path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        entry = by_path[tuple(var_path)]
        tensors[entry.hf_name] = _to_hf(entry, _host_array(var.get_value()))
    if jax.process_index() != 0:
        return
    os.makedirs(path, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.path.join(path, SAFETENSORS_FILE), metadata={"format": "pt"})
    dtype_name = np.dtype(model.param_dtype).name
    hf_config = config.to_hf_dict(dtype=dtype_name, token_classification=value_model)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(os.fspath(path))
