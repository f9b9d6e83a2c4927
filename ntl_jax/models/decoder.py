"""Flax NNX decoder for the Qwen2 / Llama families (GQA, RoPE, RMSNorm, SwiGLU), with a KV cache and a value head.

Every parameter carries logical axis names in its `out_sharding` metadata (see `sharding.py`); they are stored with
`eager_sharding=False`, so building a model never needs a mesh. Compute runs in `dtype`, parameters live in
`param_dtype`; RMSNorm, RoPE tables, attention scores and softmax run in float32.

Masking rule: key slot j may be attended by query slot i iff j <= i and attention_mask[b, j]. Without a cache the
query t sits at slot t (slot P + t after a ``prefix`` of P slots' keys / values); with a cache it sits at slot
cache_index + t, and its k/v are written there.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ntl_jax.models.config import ModelConfig
from ntl_jax.models.sharding import constrain_batch, constrain_stacked_layers

DType = Any
# Large negative but finite: a fully masked query row (left padding) softmaxes to a uniform row instead of NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_INIT_STD = 0.02  # HF `initializer_range`


class KVCache(NamedTuple):
    """Keys and values of S slots, one array per layer: ``k[l]`` [B, KVH, S, Dh] (post-RoPE), ``v[l]`` [B, KVH, Dh, S].

    Why this layout: both attention contractions then read a layer's keys / values as they lie (each contracts its
    minor axis), and separate per-layer arrays are updated in place in the decode loop. A stacked [L, ...] cache or
    a [B, S, KVH, Dh] one made XLA:CPU copy or transpose every layer's whole cache at every decode step
    (docs/experiments/cpu_design_choices.md).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def init_kv_cache(config: ModelConfig, batch: int, max_len: int, dtype: DType = jnp.float32) -> KVCache:
    """Zero cache: per layer k [batch, KVH, max_len, Dh] and v [batch, KVH, Dh, max_len]."""
    if batch <= 0 or max_len <= 0:
        raise ValueError(f"init_kv_cache batch={batch}, max_len={max_len}; allowed: positive ints")
    kvh, dh, layers = config.num_key_value_heads, config.dim_per_head, config.num_hidden_layers
    return KVCache(k=tuple(jnp.zeros((batch, kvh, max_len, dh), dtype) for _ in range(layers)),
                   v=tuple(jnp.zeros((batch, kvh, dh, max_len), dtype) for _ in range(layers)))


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str | None, ...], param_dtype: DType,
           init: str = "normal") -> nnx.Param:
    """A Param with logical axis names; `init` in {'normal' (std 0.02), 'zeros', 'ones'}."""
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
        value = value.astype(param_dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, param_dtype)
    else:
        value = jnp.ones(shape, param_dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [Dh/2] float32: 1 / theta^(2i/Dh), then HF's 'linear' or 'llama3' rescaling."""
    dim = config.dim_per_head
    inv_freq = 1.0 / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    scaling = config.rope_scaling_dict
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type == "llama3":
        factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq.astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, Dh] float32 with freqs = position * inv_freq duplicated over both halves (HF layout)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B,T,H,Dh] -> x*cos + rotate_half(x)*sin, rotate_half(x) = concat(-x2, x1)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def dense(x: jax.Array, kernel: jax.Array, in_dims: int = 1, preferred_element_type: Any = None) -> jax.Array:
    """``x [..., *K] @ kernel [*K, *N] -> [..., *N]`` as one 2-D matmul (``K = kernel.shape[:in_dims]``).

    Batched 3-D contractions make XLA:CPU emit a transposing loop for every weight gradient (about a third of a
    train step); flattened to ``[rows, K] @ [K, N]`` forward and backward are plain GEMMs.
    """
    contract = int(np.prod(kernel.shape[:in_dims]))
    out_shape = kernel.shape[in_dims:]
    lead = x.shape[: x.ndim - in_dims]
    y = jnp.dot(x.reshape(-1, contract), kernel.reshape(contract, -1), preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *out_shape)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32."""

    def __init__(self, dim: int, eps: float, *, dtype: DType, param_dtype: DType):
        self.scale = _param(None, (dim,), ("norm",), param_dtype, init="ones")
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(self.dtype)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # the dtype names configs use
ATTENTION_IMPLEMENTATIONS = ("einsum", "dot_product_attention")


def _check_attention(attention: str) -> None:
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention={attention!r} is invalid; allowed: "
                         + ", ".join(map(repr, ATTENTION_IMPLEMENTATIONS)))


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, attend: jax.Array, *, scale: float) -> jax.Array:
    """``grouped_attention``'s function through ``jax.nn.dot_product_attention`` (JAX picks the implementation per
    backend: cuDNN's fused kernel on GPUs where it applies, XLA's elsewhere): the same layouts in and out, so the
    two are interchangeable. Scores are taken in the inputs' dtype (float32 scores only with float32 inputs)."""
    b, t, kvh, g, hd = q.shape
    out = jax.nn.dot_product_attention(q.reshape(b, t, kvh * g, hd), jnp.transpose(k, (0, 2, 1, 3)),
                                       jnp.transpose(v, (0, 3, 1, 2)), mask=attend[:, None], scale=scale)
    return out.reshape(b, t, kvh, g, hd)


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, attend: jax.Array, *, scale: float, dtype: DType,
                      per_group_member: bool = False) -> jax.Array:
    """q [B,T,KVH,G,Dh], k [B,KVH,S,Dh], v [B,KVH,Dh,S], attend bool [B,T,S] -> [B,T,KVH,G,Dh]:

        out[b,t,k,g] = sum_s softmax_s(where(attend[b,t,s], scale * q[b,t,k,g] . k[b,k,s], MASK_VALUE)) v[b,k,:,s]

    Scores and softmax in float32. ``per_group_member`` runs the two contractions once per g (the same sums per
    head) instead of once with g among the rows; softmax still runs once. At T = 1 each contraction is then a
    batched matrix-vector product, which XLA:CPU keeps for its own dot emitter instead of handing YNNPACK a batch
    of G-column GEMMs (its fixed cost per call dominated the tiny model's decode step). Measured by
    `benchmarks/probes/ab_decode_attention.py`; figures in docs/experiments/cpu_design_choices.md. Accelerators keep
    one contraction: splitting would read the cache G times.
    """
    members = [slice(g, g + 1) for g in range(q.shape[3])] if per_group_member else [slice(None)]
    scores = jnp.concatenate([jnp.einsum("btkgd,bksd->bkgts", q[:, :, :, m], k, preferred_element_type=jnp.float32)
                              for m in members], axis=2) * scale
    scores = jnp.where(attend[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.concatenate([jnp.einsum("bkgts,bkds->btkgd", probs[:, :, m], v) for m in members], axis=3)


class Attention(nnx.Module):
    """Grouped-query attention with RoPE; kernels [D,H,Dh] / [H,Dh,D] so heads can be sharded. ``attention``:
    'einsum' (`grouped_attention`) or 'dot_product_attention' (`fused_attention`) for every pass but a decode step
    (one query against the KV cache), which always reads the cache in place with the einsum."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: DType, param_dtype: DType,
                 attention: str = "einsum"):
        _check_attention(attention)
        self.attention = attention
        d, h, kvh, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.dim_per_head
        self.q_kernel = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), param_dtype)
        self.k_kernel = _param(rngs, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v_kernel = _param(rngs, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.o_kernel = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), param_dtype)
        if config.attention_bias:
            self.q_bias = _param(None, (h, hd), ("heads", "head_dim"), param_dtype, init="zeros")
            self.k_bias = _param(None, (kvh, hd), ("kv_heads", "head_dim"), param_dtype, init="zeros")
            self.v_bias = _param(None, (kvh, hd), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.o_bias = _param(None, (d,), ("embed",), param_dtype, init="zeros") if config.o_proj_bias else None
        self.num_groups = h // kvh
        self.scale = hd ** -0.5
        self.dtype = dtype

    def _project(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param | None) -> jax.Array:
        y = dense(x, kernel[...].astype(self.dtype))
        return y if bias is None else y + bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, attend: jax.Array,
                 layer_cache: tuple[jax.Array, jax.Array] | None, cache_index: jax.Array | int | None,
                 prefix: tuple[jax.Array, jax.Array] | None = None, return_kv: bool = False
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [B,T,D], attend bool [B,T,S]; ``layer_cache`` = this layer's (k [B,KVH,S,Dh], v [B,KVH,Dh,S]) (see
        `KVCache`), whose slot ``cache_index`` receives this call's k/v; or ``prefix`` = (k, v) of P earlier slots in
        the same layout, attended before this call's own (S = P + T).
        -> (y, the updated (k, v) | this call's own (k, v) when ``return_kv`` | None)."""
        t = x.shape[1]
        q = apply_rope(self._project(x, self.q_kernel, self.q_bias), cos, sin)
        # Keys / values head-major, values transposed: the `KVCache` layouts, which both contractions read as they lie.
        k = jnp.transpose(apply_rope(self._project(x, self.k_kernel, self.k_bias), cos, sin), (0, 2, 1, 3))
        v = jnp.transpose(self._project(x, self.v_kernel, self.v_bias), (0, 2, 3, 1))
        new_kv = (k, v) if return_kv else None
        if prefix is not None:
            k = jnp.concatenate([prefix[0].astype(self.dtype), k], axis=2)
            v = jnp.concatenate([prefix[1].astype(self.dtype), v], axis=3)
        if layer_cache is not None:
            cache_k, cache_v = layer_cache
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, 0, cache_index, 0))
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, 0, 0, cache_index))
            new_kv = (cache_k, cache_v)
            if isinstance(cache_index, (int, np.integer)):
                # A static first slot (the prefill's 0): slots past this call's last query are all in its future, so
                # attend over the filled ones only (P, not P + max_new_tokens). Decode's slot is traced: whole cache.
                cache_k, cache_v = cache_k[:, :, :cache_index + t], cache_v[..., :cache_index + t]
                attend = attend[..., :cache_index + t]
            k, v = cache_k.astype(self.dtype), cache_v.astype(self.dtype)
        b, t, h, hd = q.shape
        q = q.reshape(b, t, h // self.num_groups, self.num_groups, hd)
        grouped = functools.partial(grouped_attention, scale=self.scale, dtype=self.dtype)
        decode_step = layer_cache is not None and not isinstance(cache_index, (int, np.integer))
        if self.attention == "dot_product_attention" and not decode_step:
            out = fused_attention(q, k, v, attend, scale=self.scale)
        elif t == 1 and self.num_groups > 1:
            # One query per row (a decode step): on CPU, one contraction per group member (see `grouped_attention`).
            out = jax.lax.platform_dependent(q, k, v, attend, cpu=functools.partial(grouped, per_group_member=True),
                                             default=grouped)
        else:
            out = grouped(q, k, v, attend)
        y = dense(out.reshape(b, t, h, hd), self.o_kernel[...].astype(self.dtype), in_dims=2)
        if self.o_bias is not None:
            y = y + self.o_bias[...].astype(self.dtype)
        return y, new_kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: DType, param_dtype: DType):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_kernel = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.up_kernel = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.down_kernel = _param(rngs, (f, d), ("mlp", "embed"), param_dtype)
        if config.mlp_bias:
            self.gate_bias = _param(None, (f,), ("mlp",), param_dtype, init="zeros")
            self.up_bias = _param(None, (f,), ("mlp",), param_dtype, init="zeros")
            self.down_bias = _param(None, (d,), ("embed",), param_dtype, init="zeros")
        else:
            self.gate_bias = self.up_bias = self.down_bias = None
        self.dtype = dtype

    def _dense(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param | None) -> jax.Array:
        y = dense(x, kernel[...].astype(self.dtype))
        return y if bias is None else y + bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = jax.nn.silu(self._dense(x, self.gate_kernel, self.gate_bias)) * self._dense(x, self.up_kernel, self.up_bias)
        return self._dense(hidden, self.down_kernel, self.down_bias)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: DType, param_dtype: DType,
                 attention: str = "einsum"):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.self_attn = Attention(config, rngs=rngs, attention=attention, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.mlp = MLP(config, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, attend, layer_cache, cache_index, prefix=None, return_kv=False):
        attn_out, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, attend, layer_cache, cache_index,
                                          prefix, return_kv)
        x = constrain_batch(x + attn_out)
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


def _apply_layer(layer: DecoderLayer, *args):
    return layer(*args)


def _apply_layer_returning_kv(layer: DecoderLayer, *args):
    return layer(*args, return_kv=True)


def attention_allowed(attention_mask: jax.Array, num_queries: int, first_slot: jax.Array | int) -> jax.Array:
    """attend[b, t, j] = j <= first_slot + t and attention_mask[b, j]  -> bool [B, T, S]."""
    query_slots = first_slot + jnp.arange(num_queries)
    key_slots = jnp.arange(attention_mask.shape[1])
    causal = key_slots[None, :] <= query_slots[:, None]
    return causal[None, :, :] & attention_mask.astype(bool)[:, None, :]


class DecoderBody(nnx.Module):
    """Embedding, L decoder layers and the final RMSNorm (HF's `model.*`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: DType = jnp.float32,
                 param_dtype: DType = jnp.float32, remat: bool = False, scan_layers: bool = False,
                 attention: str = "einsum"):
        self.config = config
        self.embed_tokens = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype)
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                             attention=attention)
                                for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype
        self.remat = remat
        self.scan_layers = scan_layers

    def __call__(self, input_ids: jax.Array, positions: jax.Array, attention_mask: jax.Array, *,
                 cache: KVCache | None = None, cache_index: jax.Array | int | None = None,
                 prefix: KVCache | None = None, return_kv: bool = False) -> tuple[jax.Array, KVCache | None]:
        """-> (final-norm hidden [B,T,D], KV cache). Without ``cache``: ``prefix`` (a `KVCache` of P slots) holds
        the keys / values of P earlier slots (``attention_mask`` then covers P + T slots, query t sits at slot P + t),
        and ``return_kv`` returns this call's own keys / values (a `KVCache` of T slots) in place of the cache. Both
        are differentiable, so a shared prompt can run once and its responses continue from it in training."""
        _check_inputs(input_ids, positions, attention_mask, cache, cache_index, prefix, len(self.layers))
        x = constrain_batch(jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype))
        cos, sin = rope_tables(positions, rope_inv_freq(self.config))
        first_slot = cache_index if cache is not None else (0 if prefix is None else prefix.k[0].shape[2])
        attend = attention_allowed(attention_mask, input_ids.shape[1], first_slot)
        if cache is None and self.scan_layers:
            x, own_kv = self._scanned_layers(x, cos, sin, attend, prefix, return_kv)
            return self.norm(x), own_kv
        # Rematerialise only passes that are differentiated (no KV cache): decoding keeps nothing for a backward
        # pass, and nnx.remat inside the sampler's while_loop would rebind Variables across trace levels.
        apply_layer: Callable = _apply_layer_returning_kv if return_kv else _apply_layer
        if self.remat and cache is None:
            apply_layer = nnx.remat(apply_layer)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i])
            x, layer_kv = apply_layer(layer, x, cos, sin, attend, layer_cache, cache_index, layer_prefix)
            x = constrain_batch(x)
            if layer_kv is not None:
                keys.append(layer_kv[0])
                values.append(layer_kv[1])
        return self.norm(x), (KVCache(tuple(keys), tuple(values)) if keys else None)

    def _scanned_layers(self, x: jax.Array, cos: jax.Array, sin: jax.Array, attend: jax.Array,
                        prefix: KVCache | None, return_kv: bool) -> tuple[jax.Array, KVCache | None]:
        """x -> layer_{L-1}(... layer_0(x)) as one ``lax.scan`` over the layers' weights stacked on a new axis.

        Why: unrolled, XLA schedules every layer's gathered (fsdp) weights and weight gradients to be live at once
        in the backward pass (Qwen2.5-7B on 8 devices: ~2.3 GiB per layer). Scanned, one layer's gathered weights
        and its gradient exist at a time, the stacked gradient stays sharded, and the layer compiles once. The
        stacked copy of the weights costs one sharded parameter copy. Same function as the loop (tested).
        """
        graphdef, _ = nnx.split(self.layers[0])
        stacked = constrain_stacked_layers(
            jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(layer) for layer in self.layers]))

        def one_layer(h: jax.Array, xs: Any) -> tuple[jax.Array, Any]:
            layer_state, layer_prefix = xs
            h, own = nnx.merge(graphdef, layer_state)(h, cos, sin, attend, None, None, layer_prefix, return_kv)
            return constrain_batch(h), own

        layer_prefixes = None if prefix is None else (jnp.stack(prefix.k), jnp.stack(prefix.v))
        x, own_kv = jax.lax.scan(jax.checkpoint(one_layer) if self.remat else one_layer, x, (stacked, layer_prefixes))
        return x, (KVCache(tuple(jnp.unstack(own_kv[0])), tuple(jnp.unstack(own_kv[1]))) if return_kv else None)


def _check_inputs(input_ids, positions, attention_mask, cache, cache_index, prefix, num_layers) -> None:
    if input_ids.ndim != 2 or positions.shape != input_ids.shape:
        raise ValueError(f"input_ids {input_ids.shape} / positions {positions.shape}; allowed: equal [B, T] shapes")
    if attention_mask.ndim != 2 or attention_mask.shape[0] != input_ids.shape[0]:
        raise ValueError(f"attention_mask shape {attention_mask.shape}; allowed: [B={input_ids.shape[0]}, S]")
    for name, kv in (("cache", cache), ("prefix", prefix)):
        if kv is not None and (len(kv.k) != num_layers or len(kv.v) != num_layers):
            raise ValueError(f"{name} with {len(kv.k)} / {len(kv.v)} layers of keys / values; allowed: {num_layers}")
    if prefix is not None and (cache is not None or prefix.k[0].shape[0] != input_ids.shape[0]):
        raise ValueError(f"prefix keys of shape {prefix.k[0].shape} with a cache or for {input_ids.shape[0]} rows; "
                         "allowed: no cache and a prefix [B, KVH, P, Dh] per layer over the same B rows")
    if cache is None:
        prefix_len = 0 if prefix is None else prefix.k[0].shape[2]
        if cache_index is not None:
            raise ValueError(f"cache_index={cache_index!r} given without a cache; allowed: None")
        if attention_mask.shape[1] != prefix_len + input_ids.shape[1]:
            raise ValueError(f"attention_mask length {attention_mask.shape[1]} without cache; "
                             f"allowed: prefix + T = {prefix_len + input_ids.shape[1]}")
    else:
        if cache_index is None:
            raise ValueError("cache given without cache_index; allowed: an int or int32 scalar slot")
        if cache.k[0].shape[0] != input_ids.shape[0] or cache.k[0].shape[2] != attention_mask.shape[1]:
            raise ValueError(f"cache keys of shape {cache.k[0].shape} vs attention_mask {attention_mask.shape}; "
                             "allowed: [B, KVH, S, Dh] per layer with S = attention_mask length")


class CausalLM(nnx.Module):
    """Decoder + LM head. `__call__` returns final-norm hidden states; `logits` applies the head in float32."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: DType = jnp.float32,
                 param_dtype: DType = jnp.float32, remat: bool = False, scan_layers: bool = False,
                 attention: str = "einsum"):
        self.config = config
        self.model = DecoderBody(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, remat=remat,
                                 scan_layers=scan_layers, attention=attention)
        self.lm_head = None if config.tie_word_embeddings else _param(
            rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), param_dtype)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.remat = remat

    def __call__(self, input_ids: jax.Array, positions: jax.Array, attention_mask: jax.Array, *,
                 cache: KVCache | None = None, cache_index: jax.Array | int | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """-> (hidden [B,T,D] in `dtype`, updated cache or None)."""
        return self.model(input_ids, positions, attention_mask, cache=cache, cache_index=cache_index)

    def lm_head_kernel(self) -> jax.Array:
        """[D, V] in `dtype` (the embedding transposed when tied)."""
        kernel = self.model.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        return kernel.astype(self.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [B,T,D] -> logits [B,T,V] float32 (float32 accumulation)."""
        return dense(hidden, self.lm_head_kernel(), preferred_element_type=jnp.float32)


class ValueModel(nnx.Module):
    """Critic: the same decoder body + `score` head Linear(D, 1) (HF *ForTokenClassification layout, bias included)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: DType = jnp.float32,
                 param_dtype: DType = jnp.float32, remat: bool = False, scan_layers: bool = False,
                 backbone: DecoderBody | None = None, attention: str = "einsum"):
        self.config = config
        self.model = backbone if backbone is not None else DecoderBody(
            config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers,
            attention=attention)
        self.score_kernel = _param(rngs, (config.hidden_size, 1), ("embed", None), param_dtype)
        self.score_bias = _param(None, (1,), (None,), param_dtype, init="zeros")
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.remat = remat

    def __call__(self, input_ids: jax.Array, positions: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """-> values [B,T] float32 = hidden @ w + b."""
        hidden, _ = self.model(input_ids, positions, attention_mask)
        return self.score(hidden)

    def score(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden states [B, T, D] -> values [B, T] float32 (the score head)."""
        values = dense(hidden, self.score_kernel[...].astype(self.dtype), preferred_element_type=jnp.float32)
        return values[..., 0] + self.score_bias[...].astype(jnp.float32)[0]

    @classmethod
    def from_policy(cls, policy: CausalLM, *, rngs: nnx.Rngs) -> "ValueModel":
        """Critic initialised from the actor (verl style): backbone weights copied (fresh buffers), new score head."""
        backbone = nnx.clone(policy.model)
        nnx.update(backbone, jax.tree.map(jnp.copy, nnx.state(backbone)))
        return cls(policy.config, rngs=rngs, dtype=policy.dtype, param_dtype=policy.param_dtype,
                   remat=policy.remat, scan_layers=policy.model.scan_layers, backbone=backbone)
