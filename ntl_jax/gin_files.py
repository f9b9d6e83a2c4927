"""Gin config files: where they are found, how they are parsed, and the experiment config they bind.

Shared by ``python -m ntl_jax.train`` and ``python -m ntl_jax.evaluate`` (no command-line flags defined here).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import gin

#: The shipped configs, inside the package (a wheel has them too); ``configs/`` in a checkout links here.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class _GinProbeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Path not found", "system_path_file_exists"))


def shipped_configs() -> list[str]:
    """Names of the configs in the package (``ntl_final.gin``, ``presets/debug_mode.gin``, ...)."""
    names = []
    for folder, _, files in os.walk(CONFIG_DIR):
        names += [os.path.relpath(os.path.join(folder, f), CONFIG_DIR) for f in files if f.endswith(".gin")]
    return sorted(names)


def resolve_gin_file(path: str) -> str:
    """``path`` if it is a file, else the shipped config of that name (``ntl_final.gin``, ``configs/ntl_final.gin``
    from any directory); one line naming the shipped ones otherwise."""
    if os.path.isfile(path):
        return path
    name = path[len("configs/"):] if path.startswith("configs/") else path
    shipped = os.path.join(CONFIG_DIR, name)
    if os.path.isfile(shipped):
        return shipped
    raise ValueError(f"--gin_file={path!r} does not exist; allowed: a gin file, or a shipped config: "
                     f"{', '.join(shipped_configs())}")


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> None:
    """Parse gin files (``include`` resolved against each file's folder and ``configs/``) and bindings."""
    import ntl_jax.embedded  # noqa: F401 - registers EmbeddedTaskConfig
    import ntl_jax.warm_start  # noqa: F401 - registers WarmStartConfig
    from ntl_jax.ntl import config as _ntl_config  # noqa: F401 - registers NTLConfig
    from ntl_jax.ppo import config as _ppo_config  # noqa: F401 - registers PPOConfig, TrainerConfig

    gin_files = [resolve_gin_file(path) for path in gin_files]
    for path in gin_files:
        gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
    gin.add_config_file_search_path(CONFIG_DIR)
    # gin probes each search path for an ``include`` and logs an ERROR for every miss before it finds the file.
    probe_filter = _GinProbeFilter()
    logging.getLogger().addFilter(probe_filter)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings))
    except (ValueError, KeyError, TypeError, SyntaxError) as err:
        # gin's messages are long and multi-line; keep the first line, which names the bad parameter.
        raise ValueError(f"bad gin config: {str(err).strip().splitlines()[0]}") from None
    finally:
        logging.getLogger().removeFilter(probe_filter)


def build_experiment(output_dir: str | None = None):
    from ntl_jax.ppo.config import ExperimentConfig

    config = ExperimentConfig()
    if output_dir:
        config = config.replace(trainer=dataclasses.replace(config.trainer, output_dir=output_dir))
    return config
