"""Masked statistics over [B, T] matrices (verl ``verl_F.masked_*``), pure jnp, jittable.

Entries with mask 0 never enter a statistic (even when they hold inf or nan); an all-zero mask gives 0 with finite
gradients instead of verl's nan, so padded micro-batches stay finite under jit.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

# verl's masked_whiten adds this to the variance before rsqrt.
_WHITEN_EPS = 1e-8


def as_float(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def masked_sum(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """sum(x * mask) over ``axis``; entries with mask == 0 contribute exactly 0 (even if x is inf/nan there)."""
    chex.assert_equal_shape((x, mask))
    mask = as_float(mask)
    return jnp.sum(jnp.where(mask != 0, x * mask, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """Masked mean (verl ``masked_mean``).

    mean = sum(x * mask, axis) / sum(mask, axis)

    Unlike verl (which returns nan for an empty mask) an all-zero mask gives 0, with finite gradients, so padded
    micro-batches stay finite under jit.
    """
    chex.assert_equal_shape((x, mask))
    mask = as_float(mask)
    total = masked_sum(x, mask, axis)
    count = jnp.sum(mask, axis=axis)
    safe_count = jnp.where(count != 0, count, 1.0)
    return jnp.where(count != 0, total / safe_count, 0.0)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Masked variance over all entries (verl ``masked_var``).

    var = masked_mean((x - masked_mean(x))^2) * (n / (n - 1) if unbiased),  n = sum(mask)

    verl raises for n <= 1; that cannot be checked under jit, so here n <= 1 skips the Bessel correction
    (a single entry has variance 0, an empty mask gives 0).
    """
    chex.assert_equal_shape((x, mask))
    mask = as_float(mask)
    mean = masked_mean(x, mask)
    variance = masked_mean(jnp.square(x - mean), mask)
    if unbiased:
        count = jnp.sum(mask)
        safe_denominator = jnp.where(count > 1, count - 1.0, 1.0)
        variance = jnp.where(count > 1, variance * count / safe_denominator, variance)
    return variance


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """Whiten with masked statistics (verl ``masked_whiten``).

    whitened = (x - mean) * rsqrt(var + 1e-8)   [+ mean when shift_mean is False]
    with mean = masked_mean(x, mask) and var = masked_var(x, mask, unbiased=True) over all entries.
    Masked entries are transformed too (callers zero them); they never enter the statistics.
    """
    chex.assert_equal_shape((x, mask))
    mean = masked_mean(x, mask)
    variance = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * jax.lax.rsqrt(variance + _WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened
