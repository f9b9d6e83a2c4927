"""ntl-jax: PPO for language models with the Number Token Loss (JAX / Flax NNX)."""

__version__ = "0.1.0"
