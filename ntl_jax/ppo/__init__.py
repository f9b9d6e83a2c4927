"""PPO engine: advantages, losses, KL control, jitted steps, rollout, the trainer, factory.

The trainers and factory are imported lazily (``from ntl_jax.ppo import create_ppo_trainer``) so that importing
the pure algorithm modules stays light.
"""

_LAZY = {
    "PPOTrainer": "ntl_jax.ppo.trainer",
    "PPOConfig": "ntl_jax.ppo.config",
    "TrainerConfig": "ntl_jax.ppo.config",
    "ExperimentConfig": "ntl_jax.ppo.config",
    "create_ppo_trainer": "ntl_jax.ppo.factory",
    "create_standard_trainer": "ntl_jax.ppo.factory",
    "create_ntl_trainer": "ntl_jax.ppo.factory",
    "create_final_answer_ntl_trainer": "ntl_jax.ppo.factory",
    "create_all_tokens_ntl_trainer": "ntl_jax.ppo.factory",
    "EXAMPLE_CONFIGS": "ntl_jax.ppo.factory",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ntl_jax.ppo' has no attribute {name!r}")


__all__ = sorted(_LAZY)
