"""Trainer factory: standard or NTL PPO from one :class:`~ntl_jax.ppo.config.ExperimentConfig`.

``create_ppo_trainer(config, tokenizer)`` follows ``config.use_ntl_trainer`` (or ``use_ntl`` when given), so
switching an existing setup to NTL is one gin binding: ``use_ntl_trainer = True``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ntl_jax.ppo.config import ExperimentConfig
from ntl_jax.ppo.ntl_trainer import NTLPPOTrainer
from ntl_jax.ppo.trainer import PPOTrainer

#: Named NTL settings (keyword arguments of :func:`create_ntl_trainer`), as in the verl NTL guide.
EXAMPLE_CONFIGS: dict[str, dict[str, Any]] = {
    "final_answer_mode": {"reward_mode": "final_answer", "method": "wasserstein", "temperature": 0.1, "weight": 0.1},
    "all_tokens_mode": {"reward_mode": "all_tokens", "method": "wasserstein", "temperature": 0.1, "weight": 0.1},
    "aggressive_ntl": {"reward_mode": "final_answer", "method": "wasserstein", "temperature": 0.03, "weight": 1.0},
    "forgiving_ntl": {"reward_mode": "final_answer", "method": "wasserstein", "temperature": 0.3, "weight": 0.03},
    "debug_mode": {"reward_mode": "final_answer", "method": "wasserstein", "temperature": 0.1, "weight": 0.1,
                   "debug_mode": True},
}


def create_standard_trainer(config: ExperimentConfig, tokenizer: Any, **trainer_kwargs: Any) -> PPOTrainer:
    """Plain PPO: NTL off whatever the config says."""
    config = config.replace(use_ntl_trainer=False, ntl=dataclasses.replace(config.ntl, enabled=False))
    return PPOTrainer(config, tokenizer, **trainer_kwargs)


def create_ntl_trainer(config: ExperimentConfig, tokenizer: Any, method: str | None = None,
                       reward_mode: str | None = None, temperature: float | None = None, weight: float | None = None,
                       extract_during_generation: bool | None = None, debug_mode: bool | None = None,
                       **trainer_kwargs: Any) -> NTLPPOTrainer:
    """PPO + NTL; arguments left as None keep the config's value (validated by ``NTLConfig``)."""
    overrides = {k: v for k, v in dict(method=method, reward_mode=reward_mode, temperature=temperature, weight=weight,
                                       extract_during_generation=extract_during_generation,
                                       debug_mode=debug_mode).items() if v is not None}
    ntl = dataclasses.replace(config.ntl, enabled=True, **overrides)
    return NTLPPOTrainer(config.replace(use_ntl_trainer=True, ntl=ntl), tokenizer, **trainer_kwargs)


def create_final_answer_ntl_trainer(config: ExperimentConfig, tokenizer: Any, **kwargs: Any) -> NTLPPOTrainer:
    return create_ntl_trainer(config, tokenizer, reward_mode="final_answer", **kwargs)


def create_all_tokens_ntl_trainer(config: ExperimentConfig, tokenizer: Any, **kwargs: Any) -> NTLPPOTrainer:
    return create_ntl_trainer(config, tokenizer, reward_mode="all_tokens", **kwargs)


def create_ppo_trainer(config: ExperimentConfig, tokenizer: Any, use_ntl: bool | None = None,
                       **trainer_kwargs: Any) -> PPOTrainer:
    """Standard or NTL trainer: ``use_ntl=None`` follows ``config.use_ntl_trainer``."""
    if use_ntl is None:
        use_ntl = config.use_ntl_trainer
    if use_ntl:
        return create_ntl_trainer(config, tokenizer, **trainer_kwargs)
    return create_standard_trainer(config, tokenizer, **trainer_kwargs)
