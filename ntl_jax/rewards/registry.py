"""Which reward function a run uses: a built-in by name, or verl-style a function in a Python file by path."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import sys
from typing import Any, Callable

from ntl_jax.rewards import ntl_rewards
from ntl_jax.rewards.scoring import (KNOWN_DATA_SOURCES, default_compute_score, normalize_reward_output,  # noqa: F401
                                     reward_item)

RewardFn = Callable[..., Any]


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


NTL_REWARD_NAMES = ("custom_ntl_reward", "custom_ntl_final", "custom_ntl_all")


def reward_spec(path: str | None, name: str | None, kwargs: Any, ntl_enabled: bool) -> RewardFnSpec:
    """The run's reward function: ``name`` in the file ``path``; without a name, ``compute_score`` from a file, and
    from the built-ins the NTL reward with NTL on, else the data source's scorer. The one place this default lives."""
    default = "compute_score" if path is not None or not ntl_enabled else "custom_ntl_reward"
    return RewardFnSpec(path=path, name=name or default, kwargs=dict(kwargs))


def check_reward_spec(spec: RewardFnSpec, tau: float, ntl_enabled: bool = False) -> None:
    """Load the function (file, name) and, for the built-in NTL reward, check its options: one line each, before
    any model is loaded. With NTL on the trainer passes ``tau`` (NTLConfig's) to every call, which would silently
    override one bound here, so binding it is refused."""
    load_reward_function(spec)
    if spec.path is None and spec.name in NTL_REWARD_NAMES:
        if ntl_enabled and "tau" in spec.kwargs:
            raise ValueError(f"reward_fn_kwargs binds tau={spec.kwargs['tau']!r}, which NTL's own tau would override "
                             "at every call; allowed: set ntl_jax.NTLConfig.tau (or tau_schedule) instead")
        options = {"combination": "add", "correct_weight": 0.5, "ntl_weight": 0.5, "confidence_weight": 0.0,
                   **{key: value for key, value in spec.kwargs.items() if key != "tau"}}
        unknown = set(options) - {"combination", "correct_weight", "ntl_weight", "confidence_weight"}
        if unknown:
            raise ValueError(f"reward_fn_kwargs names {sorted(unknown)}, unknown to {spec.name}; allowed: "
                             "combination, correct_weight, ntl_weight, confidence_weight, tau")
        ntl_rewards.check_reward_options(tau=spec.kwargs.get("tau", tau), **options)


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
