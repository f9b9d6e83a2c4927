"""Validation (greedy generation + scoring) and verl-named batch statistics."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import jax
import numpy as np

from ntl_jax.data.verl_parquet import PromptDataset
from ntl_jax.distributed.multihost import broadcast_from_main, to_host
from ntl_jax.models.sampler import GenerationOutput


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {}
    return {f"{prefix}/mean": float(values.mean()), f"{prefix}/max": float(values.max()),
            f"{prefix}/min": float(values.min())}


def _masked(values: Any, mask: np.ndarray) -> np.ndarray:
    return to_host(values)[mask > 0]


def group_score_metrics(scores: np.ndarray, group_size: int) -> dict[str, float]:
    """How much learning signal a batch of ``group_size`` samples per prompt carries (rows of a prompt adjacent).

    critic/score/same_frac: fraction of prompts whose samples all got the same score (a group advantage of 0:
                            the prompt teaches nothing; DAPO's dynamic sampling drops such groups);
    critic/score/group_std: mean over prompts of the within-group (population) score standard deviation.
    """
    grouped = np.asarray(scores, np.float64).reshape(-1, group_size)
    same = np.all(grouped == grouped[:, :1], axis=1)
    return {"critic/score/same_frac": float(same.mean()), "critic/score/group_std": float(grouped.std(axis=1).mean())}


def batch_metrics(gen: GenerationOutput, *, scores: np.ndarray, token_rewards: Any, advantages: Any, returns: Any,
                  values: Any, max_response_length: int, with_critic: bool, group_size: int = 1) -> dict[str, float]:
    """verl's ``compute_data_metrics``: score / reward / advantage / return (/ value) stats and lengths, plus
    :func:`group_score_metrics` when there are several samples per prompt."""
    mask = np.asarray(gen.response_mask, np.float32)
    response_length = mask.sum(-1)
    prompt_length = np.asarray(gen.prompt_mask).sum(-1)
    out = {}
    out.update(_stats("critic/score", scores))
    if group_size > 1:
        out.update(group_score_metrics(scores, group_size))
    out.update(_stats("critic/rewards", to_host(token_rewards).sum(-1)))
    out.update(_stats("critic/advantages", _masked(advantages, mask)))
    out.update(_stats("critic/returns", _masked(returns, mask)))
    if with_critic:
        value_tokens, return_tokens = _masked(values, mask), _masked(returns, mask)
        out.update(_stats("critic/values", value_tokens))
        var_returns = np.var(return_tokens)
        out["critic/vf_explained_var"] = float(1.0 - np.var(return_tokens - value_tokens) / (var_returns + 1e-5))
    out.update(_stats("response_length", response_length))
    out["response_length/clip_ratio"] = float(np.mean(response_length >= max_response_length))
    out.update(_stats("prompt_length", prompt_length))
    return out


def evaluate(trainer: Any, rows: list[dict], *, n: int = 1) -> dict[str, float]:
    """Greedy (``val_temperature=0``) generation over ``rows``, scored with the trainer's reward function.

    Returns ``val-core/<data_source>/acc/mean@1`` (and ``reward``), plus ``val-aux/<data_source>/<key>/mean@1``
    for every numeric extra the reward function returns (e.g. ``abs_error`` on the arithmetic task).
    Validation rewards get no ``ntl_info``: they measure the answer, not the shaping.
    """
    run = trainer.run
    dataset = PromptDataset(rows, trainer.tokenizer, max_prompt_length=trainer.ppo.max_prompt_length,
                            truncation=run.truncation, filter_overlong_prompts=run.filter_overlong_prompts,
                            source="val")
    params = trainer.sampling_params(validation=True)
    rng = jax.random.key(run.seed + 1)
    per_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in range(0, len(dataset), run.val_batch_size):
        items = [dataset[i] for i in range(start, min(start + run.val_batch_size, len(dataset)))]
        gen = trainer.rollout.generate(trainer.models.policy.params, [ids for ids, _, _ in items], params, rng,
                                       prompt_indices=[index for _, _, index in items])
        texts = trainer.tokenizer.batch_decode(np.where(gen.response_mask > 0, gen.response_ids, trainer.pad_id),
                                               skip_special_tokens=True)
        score_items = [{"data_source": row.get("data_source", ""), "solution_str": text,
                        "ground_truth": str(row["reward_model"]["ground_truth"]), "extra_info": row.get("extra_info")}
                       for (_, row, _), text in zip(items, texts)]
        result = trainer.val_runner.score(score_items)
        scores = broadcast_from_main(np.asarray(result.scores, np.float32))  # every process reports process 0's
        accs = broadcast_from_main(np.asarray([float(e.get("acc", s)) for e, s in zip(result.extras, scores)],
                                              np.float32))
        for (_, row, _), score, acc, extra in zip(items, scores, accs, result.extras):
            bucket = per_source[row.get("data_source", "")]
            bucket["reward"].append(float(score))
            bucket["acc"].append(float(acc))
            for key, value in extra.items():
                if key != "acc" and isinstance(value, (int, float, bool)):
                    bucket[key].append(float(value))
    out = {}
    for source, bucket in per_source.items():
        for key, values in bucket.items():
            group = "val-core" if key in ("acc", "reward") else "val-aux"
            out[f"{group}/{source}/{key}/mean@{n}"] = float(np.mean(values))
    return out
