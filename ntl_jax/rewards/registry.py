"""Reward function lookup: the built-in dispatcher, verl-style loading from a file, and output normalisation.

Every reward function has verl's signature
``fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float | dict``;
the trainer calls it with keyword arguments and may add ``ntl_info`` and ``tau`` to ``kwargs``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import math
import numbers
import os
import sys
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


def scorer_found_answer(data_source: str, solution_str: str, extras: dict) -> bool | None:
    """Whether the built-in scorer of ``data_source`` extracted an answer (None: not a built-in scorer)."""
    if data_source == "arithmetic":
        return bool(extras.get("has_answer", arithmetic.extract_answer(solution_str) is not None))
    if data_source in ("openai/gsm8k", "gsm8k"):
        return gsm8k.extract_solution(solution_str, method="strict") is not None
    return None


@dataclasses.dataclass
class RewardFnSpec:
    """Which reward function to use: function ``name`` in the Python file at ``path`` (verl's
    ``custom_reward_function.path/name``), or with ``path=None`` a built-in by name: ``'compute_score'`` (=
    ``default_compute_score``), ``'custom_ntl_final'``, ``'custom_ntl_all'``. ``kwargs`` are bound with
    ``functools.partial`` (verl's ``reward_kwargs``)."""

    path: str | None = None
    name: str = "compute_score"
    kwargs: dict = dataclasses.field(default_factory=dict)


def _import_file(path: str):
    # A stable, path-derived module name keeps two reward files with the same basename apart and lets code in the
    # file (dataclasses, pickle) find its own module in sys.modules, as it would after a normal import.
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    module_name = f"ntl_jax_user_reward_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ValueError(f"reward file {path!r} cannot be imported as Python (expected a .py file)")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module
    try:
        import_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ValueError(f"reward file {path!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _builtin_reward_function(name: str) -> RewardFn:
    from ntl_jax.rewards import ntl_rewards  # imports this module: resolve at call time

    builtins = {
        "compute_score": default_compute_score,
        "default_compute_score": default_compute_score,
        "custom_ntl_reward": ntl_rewards.custom_ntl_reward,
        "custom_ntl_final": ntl_rewards.custom_ntl_final,
        "custom_ntl_all": ntl_rewards.custom_ntl_all,
    }
    if name not in builtins:
        raise ValueError(f"built-in reward function {name!r} (path=None) unknown; known: {', '.join(builtins)}")
    return builtins[name]


def load_reward_function(spec: RewardFnSpec) -> RewardFn:
    """Return the reward function ``spec`` names, with ``spec.kwargs`` bound (``functools.partial``)."""
    if not isinstance(spec, RewardFnSpec):
        raise TypeError(f"spec must be RewardFnSpec, got {type(spec).__name__}")
    if not isinstance(spec.kwargs, dict):
        raise ValueError(f"RewardFnSpec.kwargs must be a dict, got {type(spec.kwargs).__name__}")
    if spec.path is None:
        return functools.partial(_builtin_reward_function(spec.name), **spec.kwargs)
    path = os.path.abspath(os.path.expanduser(str(spec.path)))
    if not os.path.isfile(path):
        raise ValueError(f"reward function file not found: {spec.path!r} (resolved to {path!r})")
    module = _import_file(path)
    fn = getattr(module, spec.name, None)
    if fn is None:
        raise ValueError(f"reward function {spec.name!r} not found in {path!r}")
    if not callable(fn):
        raise ValueError(f"{spec.name!r} in {path!r} is a {type(fn).__name__}, not a function")
    return functools.partial(fn, **spec.kwargs)


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
