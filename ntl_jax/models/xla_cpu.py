"""XLA:CPU compiler options for the sampler's decode loop, whose matmuls have few rows (M = sequences in flight).

Recent jaxlibs (0.10.2 here) hand XLA:CPU dots to YNNPACK. At decode shapes its GEMMs were the slower path on a
2-core x86 machine (benchmarks/rollout.py, MID model, batch 32: ~460 tok/s with YNNPACK, ~620-780 tok/s with XLA's
Eigen dots, same tokens), while at training shapes (M = thousands of tokens) YNNPACK was faster (train step 5.5 vs
6.3 s). So only the decode program turns YNNPACK dot fusions off; every other program keeps jaxlib's choice.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CPU_DECODE_MATMULS = ("eigen", "xla_default")
_YNNPACK_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _jaxlib_knows(option: str) -> bool:
    """Whether this jaxlib's XLA accepts the compiler option (older ones have no YNNPACK and reject its flag)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: ""}).lower(jnp.zeros((), jnp.float32)).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def decode_compiler_options(cpu_decode_matmuls: str, platform: str) -> dict[str, str]:
    """Compiler options of the decode program: YNNPACK off when ``platform == 'cpu'`` and ``cpu_decode_matmuls ==
    'eigen'`` and this jaxlib has YNNPACK; ``{}`` otherwise (accelerators, 'xla_default', jaxlib without YNNPACK)."""
    if cpu_decode_matmuls not in CPU_DECODE_MATMULS:
        raise ValueError(f"cpu_decode_matmuls={cpu_decode_matmuls!r}; allowed: one of {CPU_DECODE_MATMULS}")
    if platform != "cpu" or cpu_decode_matmuls == "xla_default":
        return {}
    return dict(_YNNPACK_OFF) if all(_jaxlib_knows(name) for name in _YNNPACK_OFF) else {}
