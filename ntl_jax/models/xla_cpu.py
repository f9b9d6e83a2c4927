"""XLA:CPU compiler options for the sampler's decode loop, whose matmuls have few rows (M = sequences in flight).

Recent jaxlibs (0.10.2 here) hand XLA:CPU dots to YNNPACK. At decode shapes its GEMMs were the slower path on a
2-core x86 machine (benchmarks/rollout.py, MID model, batch 32: ~460 tok/s with YNNPACK, ~620-780 tok/s with XLA's
Eigen dots, same tokens), while at training shapes (M = thousands of tokens) YNNPACK was faster (train step 5.5 vs
6.3 s). So only the decode program turns YNNPACK dot fusions off; every other program keeps jaxlib's choice.

On an AVX-512 machine (AMD EPYC, Zen 5 family 26, the project's machine from 2026-12-02) the order reverses at
every decode shape measured: tiny 18,465 vs 15,599 tok/s, mid 2,241 vs 2,129 (benchmarks/rollout.py,
results/cpu_zen5_2026-12-02.json), and larger row counts in a scratch sweep. 'auto' (the default) therefore keeps YNNPACK where the CPU has AVX-512 and uses Eigen
elsewhere (the earlier machine, ~110 GFLOP/s per 2048^3 matmul against ~350 on the Zen 5, had the Eigen result
above; its CPU flags were not recorded). An Intel Xeon with AVX-512 and AMX (family 6, model 167; 2026-12-03,
results/cpu_xeon_2026-12-03.json) agrees: decode matmul floor tiny 31,997 (YNNPACK) vs 28,274 (Eigen) tok/s,
mid 1,772 vs 1,776, GRPO-shaped 2,953 vs 2,443; the tiny rollout 18,531 (auto) vs 14,568 tok/s with Eigen.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CPU_DECODE_MATMULS = ("auto", "eigen", "xla_default")
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
    if cpu_decode_matmuls not in CPU_DECODE_MATMULS:
        raise ValueError(f"cpu_decode_matmuls={cpu_decode_matmuls!r}; allowed: one of {CPU_DECODE_MATMULS}")
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
