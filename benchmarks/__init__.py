"""ntl-jax benchmark suite: `python -m benchmarks.run [--only name[,name]] [--quick] [--json out.json]`.

Every benchmark reports a ratio against a baseline measured in the same run; absolute times are reported, never
asserted. Heavy sides run in their own subprocess (see `benchmarks.common.run_worker`).
"""
