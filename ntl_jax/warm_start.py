"""Supervised warm start: cross-entropy + NTL on reference solutions (the NTL paper's setting).

PPO from random weights learns nothing on a tiny model, so the embedded default first fits the reference
solutions for a short while, stopping as soon as held-out greedy accuracy reaches a target (when learning takes
off varies a lot with the seed; a fixed step budget would over- or under-train).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Any, Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ntl_jax.models.logprobs import sequence_logprobs
from ntl_jax.models.sampler import Sampler, SamplingParams
from ntl_jax.ntl.digits import digit_value_of_tokens
from ntl_jax.ntl.losses import METHODS, ntl_loss
from ntl_jax.knobs import check_choice, check_positive_int, check_range, knob
from ntl_jax.rewards.scoring import default_compute_score, normalize_reward_output

log = logging.getLogger(__name__)


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start: ``loss = CE(solution) + ntl_weight * NTL(solution digits)``."""

    max_steps: int = knob(3000, "most supervised steps (the warm start stops earlier at target_accuracy)")
    batch_size: int = knob(128, "supervised batch size")
    learning_rate: float = knob(3e-3, "peak AdamW learning rate (warm-up, then cosine decay to 10%)")
    warmup_steps: int = knob(100, "linear warm-up steps")
    ntl_weight: float = knob(0.3, "weight of NTL in CE + ntl_weight * NTL")
    ntl_method: str = knob("wasserstein", "NTL variant of the warm start: " + ", ".join(METHODS))
    eval_every: int = knob(100, "steps between greedy evaluations on the selection problems")
    eval_samples: int = knob(256, "selection problems per evaluation")
    target_accuracy: float = knob(0.35, "stop once greedy selection accuracy reaches this")
    seed: int | None = knob(None, "None: the run's TrainerConfig.seed, so one seed binding varies the whole run")

    def __post_init__(self) -> None:
        n = "WarmStartConfig"
        for key in ("max_steps", "batch_size", "eval_every", "eval_samples"):
            check_positive_int(n, key, getattr(self, key))
        check_positive_int(n, "warmup_steps", self.warmup_steps, allow_zero=True)
        check_range(n, "target_accuracy", self.target_accuracy, 0.0, 1.0)
        check_range(n, "learning_rate", self.learning_rate, 0.0, lo_open=True)
        check_range(n, "ntl_weight", self.ntl_weight, 0.0)
        check_choice(n, "ntl_method", self.ntl_method, METHODS)
        if self.seed is not None:
            check_positive_int(n, "seed", self.seed, allow_zero=True)


def pack_supervised(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Left-pad prompts and right-pad responses into fixed arrays (one compiled shape for the whole run)."""
    prompt_len = max(len(p) for p in prompts)
    response_len = max(len(r) for r in responses)
    n = len(prompts)
    out = {"prompt_ids": np.full((n, prompt_len), pad_id, np.int32), "prompt_mask": np.zeros((n, prompt_len), np.int32),
           "response_ids": np.full((n, response_len), pad_id, np.int32),
           "response_mask": np.zeros((n, response_len), np.float32)}
    for i, (p, r) in enumerate(zip(prompts, responses)):
        out["prompt_ids"][i, prompt_len - len(p):] = p
        out["prompt_mask"][i, prompt_len - len(p):] = 1
        out["response_ids"][i, :len(r)] = r
        out["response_mask"][i, :len(r)] = 1
    return out


def supervised_loss(model: nnx.Module, batch: dict[str, jax.Array], digit_ids: jax.Array, ntl_weight: float,
                    ntl_method: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``CE + w * NTL``: CE = token-mean of ``-log p(y_t)``; NTL over positions whose target token is a digit."""
    out = sequence_logprobs(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                            batch["response_mask"], digit_ids=digit_ids, compute_entropy=False)
    mask = batch["response_mask"]
    ce = -jnp.sum(out.logprobs * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    targets = batch["target_digits"]
    ntl = ntl_loss(out.digit_logits, targets, mask * (targets >= 0), ntl_method)
    return ce + ntl_weight * ntl, {"ce": ce, "ntl": ntl}


def greedy_eval(sampler: Sampler, params: Any, rows: list[dict], prompts: list[list[int]], tokenizer: Any,
                max_new_tokens: int, batch_size: int = 256) -> dict[str, float]:
    """Greedy accuracy and mean absolute error of the answer (capped when absent) over ``rows``."""
    scores, errors = [], []
    sampling = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    for start in range(0, len(rows), batch_size):
        chunk = prompts[start:start + batch_size]
        gen = sampler.generate(params, chunk, sampling, jax.random.key(0),
                               prompt_indices=list(range(start, start + len(chunk))))
        texts = tokenizer.batch_decode(np.where(gen.response_mask > 0, gen.response_ids, tokenizer.pad_token_id),
                                       skip_special_tokens=True)
        for row, text in zip(rows[start:start + batch_size], texts):
            score, extra = normalize_reward_output(default_compute_score(
                row["data_source"], text, str(row["reward_model"]["ground_truth"]), row.get("extra_info")))
            scores.append(float(extra.get("acc", score)))
            errors.append(float(extra.get("abs_error", np.nan)))
    return {"acc": float(np.mean(scores)), "abs_error": float(np.nanmean(errors)) if errors else float("nan")}


def supervised_warm_start(model: nnx.Module, tokenizer: Any, train_rows: list[dict], val_rows: list[dict],
                          cfg: WarmStartConfig, *, digit_ids: np.ndarray, max_new_tokens: int,
                          on_eval: Callable[[int, dict], None] | None = None,
                          progress: bool = True) -> tuple[nnx.Module, dict[str, Any]]:
    """Train ``model`` on ``row['solution']`` until greedy held-out accuracy >= ``cfg.target_accuracy``."""
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(r["prompt"][-1]["content"], add_special_tokens=False)["input_ids"] for r in train_rows]
    responses = [tokenizer(r["solution"], add_special_tokens=False)["input_ids"] + [eos] for r in train_rows]
    data = pack_supervised(prompts, responses, tokenizer.pad_token_id)
    data["target_digits"] = np.where(data["response_mask"] > 0,
                                     digit_value_of_tokens(data["response_ids"], digit_ids), -1).astype(np.int32)
    val_prompts = [tokenizer(r["prompt"][-1]["content"], add_special_tokens=False)["input_ids"] for r in val_rows]
    val_rows, val_prompts = val_rows[:cfg.eval_samples], val_prompts[:cfg.eval_samples]

    graphdef, params = nnx.split(model)
    warmup = min(cfg.warmup_steps, cfg.max_steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, cfg.max_steps,
                                                  cfg.learning_rate * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = tx.init(params)
    digit_ids_j = jnp.asarray(digit_ids, jnp.int32)

    @jax.jit
    def train_step(params, opt_state, batch):
        def loss_of(p):
            return supervised_loss(nnx.merge(graphdef, p), batch, digit_ids_j, cfg.ntl_weight, cfg.ntl_method)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

    sampler = Sampler(graphdef, model.config, eos_token_ids=[eos], pad_token_id=tokenizer.pad_token_id)
    rng = np.random.default_rng(0 if cfg.seed is None else cfg.seed)
    history: list[dict[str, float]] = []
    start_time = time.perf_counter()
    # No total: the warm start stops when it reaches its target accuracy, long before max_steps as a rule; and no
    # bar off a terminal, where the evaluation log lines below say the same.
    bar = tqdm(desc="warm start", disable=not (progress and sys.stderr.isatty()), dynamic_ncols=True)
    result = {"acc": 0.0}
    step = 0
    for step in range(1, cfg.max_steps + 1):
        idx = rng.integers(0, len(train_rows), cfg.batch_size)
        params, opt_state, metrics = train_step(params, opt_state, {k: v[idx] for k, v in data.items()})
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            result = greedy_eval(sampler, params, val_rows, val_prompts, tokenizer, max_new_tokens)
            record = {"step": step, "loss": float(metrics["loss"]), "ce": float(metrics["ce"]),
                      "ntl": float(metrics["ntl"]), **result, "elapsed_s": time.perf_counter() - start_time}
            history.append(record)
            log.info("warm start step %d: loss %.4f (ce %.4f, ntl %.4f), held-out acc %.3f, answer MAE %.2f",
                     step, record["loss"], record["ce"], record["ntl"], result["acc"], result["abs_error"])
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{result['acc']:.2f}")
            if on_eval is not None:
                on_eval(step, record)
            if result["acc"] >= cfg.target_accuracy:
                break
    bar.close()
    stats = {"steps": step, "final": result, "history": history,
             "reached_target": result["acc"] >= cfg.target_accuracy,
             "elapsed_s": time.perf_counter() - start_time}
    return nnx.merge(graphdef, params), stats
