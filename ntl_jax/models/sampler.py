"""Jitted autoregressive sampler: bucketed left-padded prefill + KV-cache decode in a `lax.while_loop`.

Flow of `Sampler.generate` (N = B * n rows, sample j of prompt i at row i*n + j):
  1. host: left-pad prompts to the smallest bucket P >= longest prompt;
  2. `prefill` (jit): allocate the cache (max_len = P + max_new_tokens), run each prompt through the model once, then
     repeat its cache rows and last-slot logits n times (the n samples of a prompt share its prefix, as vLLM's prefix
     caching shares it: prefill costs B, not B * n, prompt passes);
  3. `decode` (jit, cache donated): samples token 0 per row from the prefill's logits, then a `lax.while_loop` whose
     step s runs the model on token s-1 at cache slot P + s - 1 and samples token s from its logits. Stops when every
     row has emitted an EOS token or after max_new_tokens (max_new_tokens - 1 model steps: the last token is never fed).

Sampling key of row (i, j) at step s: fold_in(fold_in(fold_in(rng, prompt_index_i), j), s), so a prompt's samples do not
depend on what else is in the batch. `response_logprobs` (``return_logprobs=True`` only: the trainer recomputes them, as
verl does, and a vocabulary-wide log-softmax per step costs the tiny benchmark model a sixth of its step) are
log_softmax(logits / temperature)[token] (temperature 1 when greedy), as the PPO recompute computes them, without the
top-k / top-p truncation. `digit_logits` are the raw (unwarped) logits of the 10 digit tokens at every step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ntl_jax.distributed.multihost import put_global, tree_to_host
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import DTYPES, KVCache, init_kv_cache
from ntl_jax.models.logprobs import response_positions
from ntl_jax.models.sharding import LOGICAL_AXIS_RULES, named_sharding, sharded_activations, state_shardings
from ntl_jax.cpu.decode_matmuls import decode_compiler_options

DEFAULT_PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_MESH_AXES = ("data", "fsdp")
CACHE_LOGICAL_AXES = KVCache(k=("batch", "kv_heads", "seq", "head_dim"),  # one layer's keys [B, KVH, S, Dh]
                             v=("batch", "kv_heads", "head_dim", "seq"))  # and values [B, KVH, Dh, S]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """`greedy` (or top_k == 1) -> argmax; else sample from softmax(logits / temperature) restricted to the top_k tokens
    (0 = all) and to the smallest set whose probability reaches top_p (1.0 = all; at least one token is kept)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    n: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens={self.max_new_tokens!r}; allowed: an int >= 1")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature={self.temperature!r}; allowed: > 0 (or greedy=True)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k={self.top_k!r}; allowed: an int >= 0 (0 disables top-k)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p={self.top_p!r}; allowed: 0 < top_p <= 1")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n={self.n!r}; allowed: an int >= 1")


class GenerationOutput(NamedTuple):
    """Numpy arrays; N = B * n rows, T = max_new_tokens (positions after the stop are pad / mask 0)."""

    prompt_ids: np.ndarray  # [N, P] int32, left-padded with pad_token_id
    prompt_mask: np.ndarray  # [N, P] int32
    response_ids: np.ndarray  # [N, T] int32, pad_token_id after EOS
    response_mask: np.ndarray  # [N, T] int32, 1 up to and including the EOS token
    response_logprobs: np.ndarray | None  # [N, T] float32, log_softmax(logits / temperature)[token]; 0 where mask is 0
    digit_logits: np.ndarray | None  # [N, T, 10] float32 raw digit-token logits, or None


def warp_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus) masking of float32 logits [..., V] (masked -> -inf).

    top-p keeps sorted token r iff cumprob_{<r} < top_p: the smallest prefix whose mass reaches top_p, never empty.
    """
    logits = logits.astype(jnp.float32) / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, params.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if params.top_p < 1.0:
        sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        num_kept = jnp.maximum(jnp.sum(mass_before < params.top_p, axis=-1, keepdims=True), 1)
        cutoff = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def sample_tokens(logits: jax.Array, row_keys: jax.Array, params: SamplingParams, blocked_argmax: bool = True
                  ) -> jax.Array:
    """One token per row from logits [N, V] with one PRNG key per row [N] -> int32 [N]. ``blocked_argmax``: the
    argmax by blocks (`_blocked_argmax`, for XLA:CPU), else ``jnp.argmax`` (accelerators: the blocked search needs
    a ``cond``, and on XLA:GPU a ``cond`` in the decode loop's body is a device-to-host sync per step)."""
    argmax = _blocked_argmax if blocked_argmax else (lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32))
    if params.greedy or params.top_k == 1:
        return argmax(logits)
    warped = warp_logits(logits, params)
    # Gumbel-max, as jax.random.categorical computes it (same noise, same samples), with a cheaper argmax.
    noise = jax.vmap(lambda key: jax.random.gumbel(key, warped.shape[-1:], warped.dtype))(row_keys)
    return argmax(warped + noise)


_ARGMAX_BLOCK = 128


def _blocked_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` (first index of the maximum; a NaN counts as the maximum) for x [N, V] -> int32 [N].

    With V a multiple of ``_ARGMAX_BLOCK`` (at least four blocks), one pass takes each block's maximum (a NaN read as
    +inf) and only the first block holding the row's maximum is searched:

        argmax = b* * block + first_max(x[b*]),    b* = first_max(block maxima)

    exact unless a row holds +inf or NaN (an earlier +inf block would hide a later NaN), so a batch with one runs the
    whole-row search (`_first_max`) instead. On XLA:CPU it took about half the whole-row search's time at decode
    shapes, and ``jnp.argmax`` and ``lax.top_k`` were slower than either (docs/experiments/cpu_design_choices.md).
    """
    num_rows, vocab = x.shape
    if vocab % _ARGMAX_BLOCK or vocab < 4 * _ARGMAX_BLOCK:
        return _first_max(x)
    blocks = x.reshape(num_rows, vocab // _ARGMAX_BLOCK, _ARGMAX_BLOCK)
    block_max = jnp.max(jnp.where(jnp.isnan(blocks), jnp.inf, blocks), axis=-1)
    best_block = _first_max(block_max)
    within = jnp.take_along_axis(blocks, best_block[:, None, None], axis=1)[:, 0]
    blocked = best_block * _ARGMAX_BLOCK + _first_max(within)
    return jax.lax.cond(jnp.any(block_max == jnp.inf), lambda: _first_max(x), lambda: blocked)


def _first_max(x: jax.Array) -> jax.Array:
    """First index of the maximum over the last axis of [N, V], the first NaN if there is one (``jnp.argmax``)
    -> int32 [N], as two plain reductions:

        m = max_v x[v] (NaN read as +inf);   first = min_v (v if x[v] is NaN, else V + v if x[v] == m, else 2V) mod V

    (XLA:CPU's max reduction does not reliably propagate NaN, so NaN is handled explicitly.)
    """
    vocab = x.shape[-1]
    largest = jnp.max(jnp.where(jnp.isnan(x), jnp.inf, x), axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    candidate = jnp.where(jnp.isnan(x), index, jnp.where(x == largest, index + vocab, 2 * vocab))
    return jnp.min(candidate, axis=-1) % vocab


def resolve_cache_dtype(name: str, platform: str) -> Any:
    """The KV cache dtype named by ``TrainerConfig.kv_cache_dtype``: ``auto`` is bfloat16 on accelerators (half the
    decode memory and cache traffic; the cache is read whole at every step) and float32 on CPU (XLA:CPU converts a
    bfloat16 cache back to float32 at every read, which costs more than the smaller reads save)."""
    if name == "auto":
        return jnp.float32 if platform == "cpu" else jnp.bfloat16
    if name not in DTYPES:
        raise ValueError(f"kv_cache_dtype={name!r} is invalid; allowed: 'auto', {', '.join(map(repr, DTYPES))}")
    return DTYPES[name]


def row_keys(rng: jax.Array, prompt_index: jax.Array, sample_index: jax.Array) -> jax.Array:
    """Key of row (i, j) = fold_in(fold_in(rng, prompt_index_i), j); independent of the batch composition."""
    return jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(rng, p), s))(prompt_index, sample_index)


class _DecodeCarry(NamedTuple):
    step: jax.Array  # int32 scalar: tokens sampled so far per row
    cache: KVCache
    done: jax.Array  # [N] bool: row has emitted EOS
    tokens: jax.Array  # [N, T] int32
    mask: jax.Array  # [N, T] int32
    logprobs: jax.Array  # [N, T] float32 (T = 0 when not requested)
    digit_logits: jax.Array  # [N, T, 10] float32 (T = 0 when not requested)


def _bucket_for(length: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise ValueError(f"prompt length {length} exceeds the largest prompt bucket {max(buckets)}; allowed: <= {max(buckets)}")


class Sampler:
    """Generates responses for batches of token-id prompts with a `CausalLM` given as (graphdef, state).

    `cpu_decode_matmuls`: on XLA:CPU, 'eigen' compiles the decode loop with YNNPACK dot fusions off (faster at its
    few-row matmuls on AVX2 machines, see `ntl_jax.cpu`); 'xla_default' keeps jaxlib's choice; 'auto'
    (default) is 'xla_default' on AVX-512 CPUs, else 'eigen'. No effect elsewhere.

    `platform`: the platform the programs are built for ('cpu', 'gpu', 'tpu'; default: the mesh's devices', else
    the default backend's). It picks the platform's argmax (see `sample_tokens`); a memory planner on simulated CPU
    devices passes the accelerator it plans for.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        config: ModelConfig,
        *,
        eos_token_ids: int | Sequence[int],
        pad_token_id: int,
        digit_ids: np.ndarray | Sequence[int] | None = None,
        mesh: Mesh | None = None,
        prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
        cache_dtype: Any = jnp.float32,
        cpu_decode_matmuls: str = "auto",
        platform: str | None = None,
    ) -> None:
        eos = (eos_token_ids,) if isinstance(eos_token_ids, (int, np.integer)) else tuple(eos_token_ids)
        if not eos or any(not 0 <= int(t) < config.vocab_size for t in eos):
            raise ValueError(f"eos_token_ids={eos_token_ids!r}; allowed: one or more ids in [0, {config.vocab_size})")
        if not 0 <= int(pad_token_id) < config.vocab_size:
            raise ValueError(f"pad_token_id={pad_token_id!r}; allowed: an id in [0, {config.vocab_size})")
        buckets = tuple(sorted(int(b) for b in prompt_buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"prompt_buckets={prompt_buckets!r}; allowed: a non-empty sequence of positive ints")
        if digit_ids is not None:
            digit_ids = np.asarray(digit_ids, np.int32)
            if digit_ids.shape != (10,):
                raise ValueError(f"digit_ids shape {digit_ids.shape}; allowed: (10,)")
        if mesh is not None and not set(BATCH_MESH_AXES) <= set(mesh.axis_names):
            raise ValueError(f"mesh axes {mesh.axis_names}; allowed: a mesh with axes {BATCH_MESH_AXES}")
        self.graphdef = graphdef
        self.config = config
        self.eos_token_ids = tuple(int(t) for t in eos)
        self.pad_token_id = int(pad_token_id)
        self.digit_ids = digit_ids
        self.mesh = mesh
        self.prompt_buckets = buckets
        self.cache_dtype = cache_dtype
        if platform is None:
            platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
        self.platform = platform
        self.decode_compiler_options = decode_compiler_options(cpu_decode_matmuls, platform)
        self._programs: dict[tuple, tuple[Any, Any]] = {}
        self._state_shardings: dict[Any, Any] = {}  # state tree structure -> its NamedShardings
        self._trace_counts = {"prefill": 0, "decode": 0}
        self.last_num_steps: int | None = None  # tokens sampled per row by the latest `generate` (model steps + 1)

    @property
    def num_compilations(self) -> int:
        """Distinct generation programs traced so far (one prefill + one decode each)."""
        return self._trace_counts["prefill"]

    @property
    def trace_counts(self) -> dict[str, int]:
        return dict(self._trace_counts)

    def _batch_multiple(self) -> int:
        if self.mesh is None:
            return 1
        return int(np.prod([self.mesh.shape[a] for a in BATCH_MESH_AXES]))

    def padded_sizes(self, num_prompts: int, n: int) -> tuple[int, int]:
        """(prompts prefilled, rows decoded) for `num_prompts` prompts x `n` samples: each rounded up to a multiple
        of the mesh's batch shards (1 without a mesh)."""
        multiple = self._batch_multiple()
        return tuple(-(-k // multiple) * multiple for k in (num_prompts, num_prompts * n))

    def build_programs(self, prompt_len: int, num_rows: int, params: SamplingParams, with_digits: bool,
                       with_logprobs: bool) -> tuple[Any, Any]:
        """The jitted (prefill, decode) programs for ``num_rows`` rows of ``prompt_len`` prompt columns, built anew
        (``generate`` keeps one pair per shape); public so a memory planner or a test can lower them ahead."""
        graphdef, config, cache_dtype = self.graphdef, self.config, self.cache_dtype
        max_new, cache_len = params.max_new_tokens, prompt_len + params.max_new_tokens
        eos_ids = jnp.asarray(self.eos_token_ids, jnp.int32)
        pad_id = self.pad_token_id
        digit_ids = None if self.digit_ids is None else jnp.asarray(self.digit_ids)
        counts, mesh = self._trace_counts, self.mesh
        logprob_temperature = 1.0 if params.greedy else params.temperature
        blocked_argmax = self.platform == "cpu"

        def pin_cache_rows(cache: KVCache) -> KVCache:
            if mesh is None:
                return cache
            # rows over (data, fsdp), kv heads over tensor where they divide
            k, v = (named_sharding(axes, layers[0].shape, mesh, LOGICAL_AXIS_RULES)
                    for axes, layers in zip(CACHE_LOGICAL_AXES, cache))
            return jax.lax.with_sharding_constraint(cache, KVCache((k,) * len(cache.k), (v,) * len(cache.v)))

        def prefill(state, prompt_ids, prompt_mask):
            counts["prefill"] += 1  # runs once per trace, i.e. per compilation
            model = nnx.merge(graphdef, state)
            batch = prompt_ids.shape[0]
            cache = pin_cache_rows(init_kv_cache(config, batch, cache_len, cache_dtype))
            # Generated slots are always attendable; causality hides the future ones.
            cache_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new), jnp.int32)], axis=1)
            hidden, cache = model(prompt_ids, response_positions(prompt_mask), cache_mask, cache=cache, cache_index=0)
            # Left padding puts every row's last real token at slot P-1.
            first_logits = model.logits(hidden[:, -1:])[:, 0]
            # Row i * n + j (sample j of prompt i) starts from prompt i's cache and logits; the first num_rows rows
            # are decoded (fewer than padded prompts * n when the prompts were padded to the batch shards).
            cache = pin_cache_rows(KVCache(*(tuple(jnp.repeat(x, params.n, axis=0)[:num_rows] for x in layers)
                                             for layers in cache)))
            return cache, jnp.repeat(first_logits, params.n, axis=0)[:num_rows]

        def decode(state, cache, first_logits, prompt_mask, rng, prompt_index, sample_index):
            counts["decode"] += 1
            model = nnx.merge(graphdef, state)
            batch = prompt_mask.shape[0]
            keys = row_keys(rng, prompt_index, sample_index)
            cache_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new), jnp.int32)], axis=1)
            prompt_lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)

            def cond(c: _DecodeCarry) -> jax.Array:
                return (c.step < max_new) & ~jnp.all(c.done)

            def emit(c: _DecodeCarry, logits: jax.Array) -> _DecodeCarry:
                """Sample token ``c.step`` of every row from its logits [N, V] and record it."""
                step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, c.step)
                sampled = sample_tokens(logits, step_keys, params, blocked_argmax=blocked_argmax)
                token = jnp.where(c.done, pad_id, sampled)
                alive = ~c.done
                logprobs, digit_logits = c.logprobs, c.digit_logits
                if with_logprobs:
                    log_probs = jax.nn.log_softmax(logits / logprob_temperature, axis=-1)
                    token_logprob = jnp.take_along_axis(log_probs, sampled[:, None], axis=-1)[:, 0]
                    logprobs = logprobs.at[:, c.step].set(jnp.where(alive, token_logprob, 0.0))
                if with_digits:
                    digit_logits = digit_logits.at[:, c.step].set(jnp.take(logits, digit_ids, axis=-1))
                return c._replace(step=c.step + 1, done=c.done | jnp.isin(token, eos_ids),
                                  tokens=c.tokens.at[:, c.step].set(token),
                                  mask=c.mask.at[:, c.step].set(alive.astype(jnp.int32)),
                                  logprobs=logprobs, digit_logits=digit_logits)

            def body(c: _DecodeCarry) -> _DecodeCarry:
                slot = c.step - 1  # the latest token's index, fed to the model now
                token = jax.lax.dynamic_index_in_dim(c.tokens, slot, axis=1)
                hidden, cache = model(token, (prompt_lengths + slot)[:, None], cache_mask, cache=c.cache,
                                      cache_index=prompt_len + slot)
                return emit(c._replace(cache=cache), model.logits(hidden)[:, 0])

            init = _DecodeCarry(
                step=jnp.zeros((), jnp.int32),
                cache=cache,
                done=jnp.zeros((batch,), bool),
                tokens=jnp.full((batch, max_new), pad_id, jnp.int32),
                mask=jnp.zeros((batch, max_new), jnp.int32),
                logprobs=jnp.zeros((batch, max_new if with_logprobs else 0), jnp.float32),
                digit_logits=jnp.zeros((batch, max_new if with_digits else 0, 10), jnp.float32),
            )
            final = jax.lax.while_loop(cond, body, emit(init, first_logits))
            # The final cache is returned (and dropped by the caller) so it can alias the donated input cache: the
            # loop then updates that buffer in place instead of copying it.
            return final.tokens, final.mask, final.logprobs, final.digit_logits, final.step, final.cache

        # Prefill pins its rows to their devices (fsdp gathers weights); decode does not: one token per row is
        # cheaper to all-reduce than a layer's weights are to gather, and pinning it gathered every layer at once.
        return (jax.jit(sharded_activations(mesh, prefill)),
                jax.jit(decode, donate_argnums=(1,), compiler_options=self.decode_compiler_options))

    def _programs_for(self, prompt_len: int, batch: int, num_rows: int, params: SamplingParams, with_digits: bool,
                      with_logprobs: bool) -> tuple[Any, Any]:
        key = (prompt_len, batch, num_rows, params, with_digits, with_logprobs)
        if key not in self._programs:
            self._programs[key] = self.build_programs(prompt_len, num_rows, params, with_digits, with_logprobs)
        return self._programs[key]

    def prompt_width(self, prompts: Sequence[Sequence[int]]) -> int:
        """Columns of `generate`'s ``prompt_ids`` for these prompts: the smallest bucket >= the longest prompt."""
        return _bucket_for(max(len(p) for p in prompts), self.prompt_buckets)

    def _left_pad(self, prompts: Sequence[Sequence[int]], prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
        prompt_ids = np.full((len(prompts), prompt_len), self.pad_token_id, np.int32)
        prompt_mask = np.zeros((len(prompts), prompt_len), np.int32)
        for row, prompt in enumerate(prompts):
            if len(prompt):
                prompt_ids[row, prompt_len - len(prompt):] = prompt
                prompt_mask[row, prompt_len - len(prompt):] = 1
        return prompt_ids, prompt_mask

    def _place(self, state: Any, arrays: list[np.ndarray]) -> tuple[Any, list[jax.Array]]:
        """Without a mesh: plain device arrays. With a mesh: rows sharded over (data, fsdp), state per its logical axes."""
        if self.mesh is None:
            return state, [jnp.asarray(a) for a in arrays]
        # Computed once per state layout (walking the metadata costs ~20 ms of Python a call for a 4-layer model);
        # the device_put is a no-op when the caller already placed the state with these shardings.
        structure = jax.tree.structure(state)
        if structure not in self._state_shardings:
            self._state_shardings[structure] = state_shardings(state, self.mesh, LOGICAL_AXIS_RULES)
        placed_state = jax.device_put(state, self._state_shardings[structure])
        rows = NamedSharding(self.mesh, PartitionSpec(BATCH_MESH_AXES))
        return placed_state, [put_global(a, rows) for a in arrays]

    def generate(
        self,
        state: Any,
        prompts: list[list[int]],
        params: SamplingParams,
        rng: jax.Array,
        *,
        return_digit_logits: bool = False,
        return_logprobs: bool = False,
        prompt_indices: list[int] | None = None,
    ) -> GenerationOutput:
        """Sample `params.n` responses per prompt; see the module docstring for keys, masks and log-probs."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError(f"prompts has {len(prompts)} entries, some empty; allowed: a non-empty list of non-empty id lists")
        if prompt_indices is None:
            prompt_indices = list(range(len(prompts)))
        if len(prompt_indices) != len(prompts):
            raise ValueError(f"prompt_indices has {len(prompt_indices)} entries; allowed: one per prompt ({len(prompts)})")
        if return_digit_logits and self.digit_ids is None:
            raise ValueError("return_digit_logits=True but the Sampler has digit_ids=None; allowed: pass digit_ids")
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise ValueError(f"a prompt token id is outside [0, {vocab}); allowed: ids in [0, {vocab})")

        prompt_len = self.prompt_width(prompts)
        prompt_ids, prompt_mask = self._left_pad(prompts, prompt_len)
        num_rows = len(prompts) * params.n

        # With a mesh, pad the prompts (prefill) and the rows (decode) each to a multiple of the batch shards by
        # repeating prompt 0; the padding rows are dropped afterwards.
        padded_prompts, padded_rows = self.padded_sizes(len(prompts), params.n)
        take = np.concatenate([np.arange(len(prompts)), np.zeros(padded_prompts - len(prompts), np.int64)])
        prompt_index = np.repeat(np.asarray(prompt_indices, np.int32)[take], params.n)[:padded_rows]
        sample_index = np.tile(np.arange(params.n, dtype=np.int32), padded_prompts)[:padded_rows]
        row_mask = np.repeat(prompt_mask[take], params.n, 0)[:padded_rows]
        placed_state, (ids_d, mask_d, row_mask_d, pidx_d, sidx_d) = self._place(
            state, [prompt_ids[take], prompt_mask[take], row_mask, prompt_index, sample_index]
        )
        prefill, decode = self._programs_for(prompt_len, padded_prompts, padded_rows, params, return_digit_logits,
                                             return_logprobs)
        cache, first_logits = prefill(placed_state, ids_d, mask_d)
        tokens, mask, logprobs, digit_logits, num_steps, _ = decode(
            placed_state, cache, first_logits, row_mask_d, rng, pidx_d, sidx_d
        )
        # Rows sharded over the devices of several processes are gathered, so every process sees the whole batch.
        tokens, mask, logprobs, digit_logits, num_steps = tree_to_host(
            (tokens, mask, logprobs if return_logprobs else None, digit_logits if return_digit_logits else None,
             num_steps))
        self.last_num_steps = int(num_steps)
        return GenerationOutput(
            prompt_ids=np.repeat(prompt_ids, params.n, 0),
            prompt_mask=np.repeat(prompt_mask, params.n, 0),
            response_ids=tokens[:num_rows],
            response_mask=mask[:num_rows],
            response_logprobs=logprobs[:num_rows] if return_logprobs else None,
            digit_logits=digit_logits[:num_rows] if return_digit_logits else None,
        )
