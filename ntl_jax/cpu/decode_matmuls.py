"""XLA:CPU compiler options for the sampler's decode loop, whose matmuls have few rows (M = sequences in flight).

Recent jaxlibs hand XLA:CPU dots to YNNPACK. At decode shapes its GEMMs were the slower path on a 2-core AVX2
machine, while at training shapes (M = thousands of tokens) YNNPACK was faster; on AVX-512 machines (an AMD Zen 5,
an Intel Xeon with AMX) YNNPACK won at decode shapes too. So 'auto' (the default) turns YNNPACK dot fusions off in
the decode program only, and only where the CPU lacks AVX-512; every other program keeps jaxlib's choice.
Measurements: docs/experiments/cpu_design_choices.md (``benchmarks/rollout.py``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ntl_jax.cpu import DECODE_MATMULS
_YNNPACK_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _jaxlib_knows(option: str) -> bool:
    """Whether this jaxlib's XLA accepts the compiler option (older ones have no YNNPACK and reject its flag)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: ""}).lower(jnp.zeros((), jnp.float32)).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


@functools.cache
def host_has_avx512() -> bool:
    """Whether this machine's CPU reports AVX-512 (``avx512f`` in /proc/cpuinfo; False where that is unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        return False


def resolve_decode_matmuls(cpu_decode_matmuls: str) -> str:
    """'auto' -> 'xla_default' on an AVX-512 CPU, else 'eigen'; other choices unchanged (checked)."""
    if cpu_decode_matmuls not in DECODE_MATMULS:
        raise ValueError(f"cpu_decode_matmuls={cpu_decode_matmuls!r}; allowed: one of {DECODE_MATMULS}")
    if cpu_decode_matmuls == "auto":
        return "xla_default" if host_has_avx512() else "eigen"
    return cpu_decode_matmuls


def decode_compiler_options(cpu_decode_matmuls: str, platform: str) -> dict[str, str]:
    """Compiler options of the decode program: YNNPACK off when ``platform == 'cpu'`` and ``cpu_decode_matmuls``
    resolves to 'eigen' and this jaxlib has YNNPACK; ``{}`` otherwise (accelerators, 'xla_default', jaxlib
    without YNNPACK)."""
    if platform != "cpu" or resolve_decode_matmuls(cpu_decode_matmuls) == "xla_default":
        return {}
    return dict(_YNNPACK_OFF) if all(_jaxlib_knows(name) for name in _YNNPACK_OFF) else {}
