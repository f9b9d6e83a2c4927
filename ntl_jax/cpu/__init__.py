"""Everything ntl-jax tunes for XLA:CPU, in one place; nothing here runs on a GPU or a TPU.

Two settings, each kept only because it measurably helps on the CPU (figures, commands and machines:
docs/experiments/cpu_design_choices.md):

- ``decode_matmuls``: the compiler options of the sampler's decode program (``TrainerConfig.cpu_decode_matmuls``):
  YNNPACK dot fusions off for that one program on CPUs without AVX-512, where its few-row matmuls are faster
  on Eigen. Every other program, and every accelerator, keeps jaxlib's choice.
- ``huge_pages``: ``python -m ntl_jax.train`` restarts itself once with glibc's ``malloc.hugetlb`` tunable when JAX
  will run on the CPU (``--nomalloc_huge_pages`` turns it off); no restart on GPU or TPU machines.

``DECODE_MATMULS`` is the one name the configuration needs (to check its knob) and lives here, not in the
submodules, so that reading the configuration imports no tuning code.
"""

DECODE_MATMULS = ("auto", "eigen", "xla_default")

__all__ = ["DECODE_MATMULS"]
