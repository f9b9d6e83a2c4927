"""The embedded default: a tiny decoder, the built-in character tokenizer and the generated arithmetic task.

``python -m ntl_jax.train --gin_file=configs/ntl_final.gin`` with no ``model_path`` runs on this: no downloads,
a few minutes on a laptop CPU. The supervised warm start is cached in ``<output_dir>/warm_start`` (an HF-format
model folder) keyed by the task and warm-start settings, so a rerun or a resume goes straight to PPO.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import gin
from flax import nnx

from ntl_jax.data.arithmetic import make_arithmetic_examples
from ntl_jax.distributed.multihost import is_main_process, sync
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.hf_io import save_pretrained
from ntl_jax.models.tokenizers import build_char_tokenizer, load_tokenizer
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.knobs import check_positive_int, fail, knob
from ntl_jax.warm_start import WarmStartConfig, supervised_warm_start

log = logging.getLogger(__name__)


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class EmbeddedTaskConfig:
    """Size of the generated task and of the tiny decoder (Qwen2 layout, tied embeddings)."""

    num_train: int = knob(20000, "generated training problems")
    num_val: int = knob(1000, "generated held-out problems (validation; as many again select the warm start)")
    ops: str = knob("+-*", "operators to draw from ('+', '-', '*')")
    min_digits: int = knob(1, "fewest digits per operand")
    max_digits: int = knob(2, "most digits per operand")
    hidden_size: int = knob(64, "tiny decoder width")
    num_layers: int = knob(2, "tiny decoder layers")
    num_heads: int = knob(4, "tiny decoder attention heads")
    num_kv_heads: int = knob(2, "tiny decoder key/value heads (grouped-query attention)")
    intermediate_size: int = knob(256, "tiny decoder MLP width")
    data_seed: int = knob(1234, "seed of the generated problems (held-out problems use data_seed + 1)")

    def __post_init__(self) -> None:
        for key in ("num_train", "num_val", "min_digits", "max_digits", "hidden_size", "num_layers", "num_heads",
                    "num_kv_heads", "intermediate_size"):
            check_positive_int("EmbeddedTaskConfig", key, getattr(self, key))
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            fail("EmbeddedTaskConfig", "(hidden_size, num_heads, num_kv_heads)",
                 (self.hidden_size, self.num_heads, self.num_kv_heads), "num_heads | hidden_size, num_kv_heads | num_heads")


@dataclasses.dataclass
class EmbeddedDefault:
    policy_path: str
    tokenizer: Any
    train_rows: list[dict]
    val_rows: list[dict]
    warm_start: dict[str, Any]


def tiny_model_config(tokenizer: Any, task: EmbeddedTaskConfig) -> ModelConfig:
    return ModelConfig(vocab_size=len(tokenizer), hidden_size=task.hidden_size,
                       intermediate_size=task.intermediate_size, num_hidden_layers=task.num_layers,
                       num_attention_heads=task.num_heads, num_key_value_heads=task.num_kv_heads,
                       rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=True,
                       max_position_embeddings=256, model_type="qwen2", bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def embedded_rows(task: EmbeddedTaskConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, selection) rows; validation and selection are disjoint held-out problems.

    The warm start stops on the *selection* set's accuracy: stopping on the validation set would pick an upward
    fluctuation of it and make "accuracy before PPO" look better than the policy is. The two sets take alternate
    rows of one draw of distinct problems, so they have the same mix of easy and hard problems (later draws of
    distinct problems are skewed towards the rarer two-digit operands).
    """
    common = dict(ops=task.ops, min_digits=task.min_digits, max_digits=task.max_digits)
    train = make_arithmetic_examples(task.num_train, task.data_seed, split="train", **common)
    held_out = make_arithmetic_examples(2 * task.num_val, task.data_seed + 1, split="test", **common)
    return train, held_out[0::2], held_out[1::2]


def _cache_key(task: EmbeddedTaskConfig, warm: WarmStartConfig, max_new_tokens: int) -> str:
    blob = json.dumps({"task": dataclasses.asdict(task), "warm": dataclasses.asdict(warm), "selection": "interleaved",
                       "max_new_tokens": max_new_tokens}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_embedded_default(output_dir: str, *, task: EmbeddedTaskConfig | None = None,
                             warm: WarmStartConfig | None = None, max_new_tokens: int = 48,
                             progress: bool = True) -> EmbeddedDefault:
    """Build (or reuse) the warm-started tiny policy in ``<output_dir>/warm_start``."""
    task = task or EmbeddedTaskConfig()
    warm = warm or WarmStartConfig()
    train_rows, val_rows, select_rows = embedded_rows(task)
    model_dir = os.path.join(output_dir, "warm_start")
    stats_path = os.path.join(model_dir, "warm_start.json")
    key = _cache_key(task, warm, max_new_tokens)
    sync("ntl_jax_warm_start_check")  # every process decides on the same folder state
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
        if stats.get("cache_key") == key:
            log.info("reusing the cached warm start in %s", model_dir)
            return EmbeddedDefault(model_dir, load_tokenizer(model_dir), train_rows, val_rows, stats)
        log.warning("warm start in %s was made with other settings; training a new one", model_dir)
    tokenizer = build_char_tokenizer()
    model = CausalLM(tiny_model_config(tokenizer, task), rngs=nnx.Rngs(0 if warm.seed is None else warm.seed))
    digit_ids = digit_token_ids(tokenizer)
    # Every process trains the (deterministic) warm start; process 0 writes it, the others wait and all load that
    # one copy, so a multi-host run shares one policy and nobody reads a half-written folder.
    model, stats = supervised_warm_start(model, tokenizer, train_rows, select_rows, warm, digit_ids=digit_ids,
                                         max_new_tokens=max_new_tokens, progress=progress)
    stats["cache_key"] = key
    save_pretrained(model, model_dir, tokenizer=tokenizer)  # gathers on every process, writes on process 0
    if is_main_process():
        with open(stats_path, "w") as f:
            json.dump(stats, f, indent=2)
    sync("ntl_jax_warm_start_saved")
    return EmbeddedDefault(model_dir, load_tokenizer(model_dir), train_rows, val_rows, stats)


__all__ = ["EmbeddedTaskConfig", "EmbeddedDefault", "prepare_embedded_default", "tiny_model_config"]
