"""Built-in scorers by data source, the reward items every caller builds, and reward output normalisation.

Every reward function has verl's signature ``fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs)
-> float | dict``; the trainer calls it with keyword arguments (:func:`reward_item`) and may add ``ntl_info`` and
``tau`` to ``kwargs``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from ntl_jax.rewards import arithmetic, gsm8k

RewardFn = Callable[..., Any]

_SCORERS: dict[str, RewardFn] = {
    "openai/gsm8k": lambda solution_str, ground_truth: gsm8k.compute_score(solution_str, ground_truth, method="strict"),
    "arithmetic": arithmetic.compute_score,
}
_SCORERS["gsm8k"] = _SCORERS["openai/gsm8k"]
KNOWN_DATA_SOURCES: tuple[str, ...] = tuple(sorted(_SCORERS))


def default_compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> float | dict:
    """Score with the built-in scorer for ``data_source`` (gsm8k: verl strict; arithmetic: numeric match).

    ``extra_info`` and ``kwargs`` (e.g. ``ntl_info``, ``tau``) are accepted and ignored, as verl's dispatcher does.
    """
    scorer = _SCORERS.get(data_source)
    if scorer is None:
        raise ValueError(f"data_source={data_source!r} has no built-in reward; known: {', '.join(KNOWN_DATA_SOURCES)}")
    return scorer(solution_str, ground_truth)


def reward_item(row: dict, solution_str: str, **kwargs: Any) -> dict:
    """The keyword arguments of one reward call for a verl row and a response: data_source, solution_str,
    ground_truth, extra_info, plus ``kwargs`` (e.g. ``ntl_info``, ``tau``)."""
    return {"data_source": row.get("data_source", ""), "solution_str": solution_str,
            "ground_truth": str(row["reward_model"]["ground_truth"]), "extra_info": row.get("extra_info"), **kwargs}


def _as_score(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_, numbers.Real)):
        score = float(value)
    elif getattr(value, "shape", None) == () and hasattr(value, "item"):  # 0-d numpy / jax / torch value
        return _as_score(value.item(), what)
    else:
        raise TypeError(f"{what} must be a float, int, bool or dict with 'score', got {type(value).__name__}")
    if not math.isfinite(score):
        raise ValueError(f"{what} is {score}; a reward must be finite")
    return score


def normalize_reward_output(out: Any) -> tuple[float, dict]:
    """``float | int | bool | {'score': x, ...}`` -> ``(float(x), other keys)``; non-finite or other types raise."""
    if isinstance(out, dict):
        if "score" not in out:
            raise ValueError(f"reward dict has no 'score' key (keys: {sorted(map(str, out))})")
        extras = {key: value for key, value in out.items() if key != "score"}
        return _as_score(out["score"], "reward dict 'score'"), extras
    return _as_score(out, "reward"), {}
