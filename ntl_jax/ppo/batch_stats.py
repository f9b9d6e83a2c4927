"""verl-named statistics of one iteration's batch (``compute_data_metrics``) and of its learning signal."""

from __future__ import annotations

from typing import Any

import numpy as np

from ntl_jax.distributed.multihost import to_host
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


def group_accuracy_metrics(extras: list[dict], group_size: int) -> dict[str, float]:
    """The same for correctness (the reward extra ``acc``), which means one thing in every mode's reward.

    reward_extra/acc/same_frac: fraction of prompts whose samples are all right or all wrong (no correctness signal
                                for GRPO; with an NTL reward the score may still differ within such a group);
    reward_extra/acc/none_frac: fraction of prompts none of whose samples is right (the sparse-reward regime).
    Empty when the reward function returns no ``acc`` for every sample.
    """
    accs = [e.get("acc") for e in extras]
    if not accs or not all(isinstance(a, (int, float, bool)) for a in accs):
        return {}
    grouped = np.asarray(accs, np.float64).reshape(-1, group_size) > 0.5
    same = np.all(grouped == grouped[:, :1], axis=1)
    return {"reward_extra/acc/same_frac": float(same.mean()),
            "reward_extra/acc/none_frac": float((~grouped.any(axis=1)).mean())}


def batch_metrics(gen: GenerationOutput, *, scores: np.ndarray, token_rewards: Any, advantages: Any, returns: Any,
                  values: Any, max_response_length: int, with_critic: bool, group_size: int = 1,
                  reward_extras: list[dict] | None = None) -> dict[str, float]:
    """verl's ``compute_data_metrics``: score / reward / advantage / return (/ value) stats and lengths, plus
    :func:`group_score_metrics` and :func:`group_accuracy_metrics` when there are several samples per prompt."""
    mask = np.asarray(gen.response_mask, np.float32)
    response_length = mask.sum(-1)
    prompt_length = np.asarray(gen.prompt_mask).sum(-1)
    out = {}
    out.update(_stats("critic/score", scores))
    if group_size > 1:
        out.update(group_score_metrics(scores, group_size))
        out.update(group_accuracy_metrics(reward_extras or [], group_size))
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
