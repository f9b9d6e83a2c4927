"""Trainer factory: standard or NTL PPO from one :class:`~ntl_jax.ppo.config.ExperimentConfig`.

``create_ppo_trainer(config, tokenizer)`` follows ``config.ntl.enabled`` (or ``use_ntl`` when given), so switching an
existing setup to NTL is one gin binding: ``use_ntl_trainer = True``. Every function returns the one
:class:`~ntl_jax.ppo.trainer.PPOTrainer`; standard and NTL runs differ only in their ``NTLConfig``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from ntl_jax.ppo.config import ExperimentConfig
from ntl_jax.ppo.trainer import PPOTrainer

#: Named NTL settings on top of a mode file (keyword arguments of :func:`create_ntl_trainer`). Each is identical to
#: ``configs/presets/<name>.gin`` (tests/test_trainer.py parses the gin files and compares).
EXAMPLE_CONFIGS: dict[str, dict[str, Any]] = {
    "final_answer_mode": {"reward_mode": "final_answer"},
    "all_tokens_mode": {"reward_mode": "all_tokens"},
    "aggressive_ntl": {"tau": 0.03, "weight": 1.0},
    "forgiving_ntl": {"tau": 0.3, "weight": 0.03},
    "debug_mode": {"debug_mode": True, "save_digit_info": True},
}


def create_standard_trainer(config: ExperimentConfig, tokenizer: Any, **trainer_kwargs: Any) -> PPOTrainer:
    """Plain PPO: NTL off whatever the config says."""
    return PPOTrainer(config.replace(ntl=dataclasses.replace(config.ntl, enabled=False)), tokenizer, **trainer_kwargs)


def create_ntl_trainer(config: ExperimentConfig, tokenizer: Any, method: str | None = None,
                       reward_mode: str | None = None, tau: float | None = None, weight: float | None = None,
                       extract_during_generation: bool | None = None, debug_mode: bool | None = None,
                       save_digit_info: bool | None = None, temperature: float | None = None,
                       **trainer_kwargs: Any) -> PPOTrainer:
    """PPO + NTL; arguments left as None keep the config's value (validated by ``NTLConfig``).

    ``temperature`` is the seed's name of ``tau`` (the NTL reward's temperature), kept so old calls work; it warns.
    """
    if temperature is not None:
        warnings.warn("create_ntl_trainer(temperature=...) is the NTL reward's tau; pass tau=...", DeprecationWarning,
                      stacklevel=2)
        tau = temperature if tau is None else tau
    overrides = {k: v for k, v in dict(method=method, reward_mode=reward_mode, tau=tau, weight=weight,
                                       extract_during_generation=extract_during_generation,
                                       debug_mode=debug_mode, save_digit_info=save_digit_info).items()
                 if v is not None}
    ntl = dataclasses.replace(config.ntl, enabled=True, **overrides)
    return PPOTrainer(config.replace(ntl=ntl), tokenizer, **trainer_kwargs)


def create_final_answer_ntl_trainer(config: ExperimentConfig, tokenizer: Any, **kwargs: Any) -> PPOTrainer:
    return create_ntl_trainer(config, tokenizer, reward_mode="final_answer", **kwargs)


def create_all_tokens_ntl_trainer(config: ExperimentConfig, tokenizer: Any, **kwargs: Any) -> PPOTrainer:
    return create_ntl_trainer(config, tokenizer, reward_mode="all_tokens", **kwargs)


def create_ppo_trainer(config: ExperimentConfig, tokenizer: Any, use_ntl: bool | None = None,
                       **trainer_kwargs: Any) -> PPOTrainer:
    """Standard or NTL trainer: ``use_ntl=None`` follows ``config.ntl.enabled``."""
    if use_ntl is None:
        use_ntl = config.ntl.enabled
    if use_ntl:
        return create_ntl_trainer(config, tokenizer, **trainer_kwargs)
    return create_standard_trainer(config, tokenizer, **trainer_kwargs)
