"""Command line: ``python -m ntl_jax.train --gin_file=configs/ntl_final.gin [--gin_bindings=...]``.

With no ``TrainerConfig.model_path`` the run uses the embedded default (tiny decoder, character tokenizer,
generated arithmetic, supervised warm start, then PPO) and prints held-out accuracy and mean absolute error of
the answer before and after PPO. With a model path it trains that Hugging Face checkpoint on verl parquet files
(``TrainerConfig.train_files`` / ``val_files``). Every gin-configurable parameter is listed in
``configs/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any, Sequence

import gin
from absl import app, flags

from ntl_jax.gin_files import CONFIG_DIR, build_experiment, parse_gin  # noqa: F401 (the notebook's entry points)

# transformers announces "PyTorch was not found" at import: JAX users read it as a failure. It is advice only.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), e.g. configs/ntl_final.gin (see configs/README.md).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. \"ntl_jax.NTLConfig.weight = 0.5\" or "
                          "\"use_ntl_trainer = True\".")
flags.DEFINE_string("output_dir", None, "Run directory (checkpoints, metrics.jsonl, TensorBoard, operative config); "
                    "overrides TrainerConfig.output_dir.")
flags.DEFINE_string("coordinator_address", None, "Multi-host (GPU clusters): host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.DEFINE_bool("malloc_huge_pages", True, "Restart once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35, "
                  "Linux with transparent huge pages) so XLA:CPU's per-execution buffers are mapped in 2 MiB pages "
                  "(see ntl_jax/cpu/huge_pages.py); --nomalloc_huge_pages keeps the process as started.")

log = logging.getLogger("ntl_jax.train")
class SetupError(ValueError):
    """Bad configuration or input found while setting the run up (data, model, tokenizer, reward file)."""


def _load_data(config) -> tuple[Any, str, list[dict], list[dict], dict | None]:
    """(tokenizer, policy path, train rows, val rows, warm-start stats) for the configured model and data."""
    from ntl_jax.data.verl_parquet import load_verl_parquet
    from ntl_jax.models.tokenizers import load_tokenizer

    run = config.trainer
    if run.model_path is None:
        from ntl_jax.embedded import EmbeddedTaskConfig, prepare_embedded_default
        from ntl_jax.warm_start import WarmStartConfig

        warm = WarmStartConfig()
        if warm.seed is None:
            warm = dataclasses.replace(warm, seed=run.seed)
        embedded = prepare_embedded_default(run.output_dir, task=EmbeddedTaskConfig(), warm=warm,
                                            max_new_tokens=config.ppo.max_response_length,
                                            progress=run.progress_bar)
        return embedded.tokenizer, embedded.policy_path, embedded.train_rows, embedded.val_rows, embedded.warm_start
    if not run.train_files:
        raise ValueError("TrainerConfig.train_files=() is invalid with a model_path; allowed: verl parquet file paths")
    from ntl_jax.models.hub import resolve_model_path

    folders = {}
    for key in ("model_path", "tokenizer_path"):
        path = getattr(run, key)
        if path is not None:
            try:
                folders[key] = resolve_model_path(path)
            except ValueError as err:
                raise ValueError(f"TrainerConfig.{key}: {err}") from None
    tokenizer = load_tokenizer(folders.get("tokenizer_path") or folders["model_path"])
    train_rows = [row for path in run.train_files for row in load_verl_parquet(path)]
    val_rows = [row for path in run.val_files for row in load_verl_parquet(path)]
    return tokenizer, folders["model_path"], train_rows, val_rows, None


def _summary(result: dict[str, Any]) -> str:
    def pick(metrics: dict[str, float], key: str) -> str:
        values = [v for k, v in metrics.items() if f"/{key}/" in k]
        return f"{values[0]:.4f}" if values else "n/a"

    before, after = result.get("val_before") or {}, result.get("val_after") or {}
    return (f"held-out accuracy: before PPO {pick(before, 'acc')} -> after PPO {pick(after, 'acc')}\n"
            f"held-out answer MAE: before PPO {pick(before, 'abs_error')} -> after PPO {pick(after, 'abs_error')}")


def _logged_validation_before(output_dir: str) -> dict[str, float]:
    from ntl_jax.ppo.metrics import read_metrics_jsonl

    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    for record in read_metrics_jsonl(path):
        if record.get("step") == 0 and any(k.startswith("val-") for k in record):
            return {k: v for k, v in record.items() if k.startswith("val-")}
    return {}


def check_backend(platform: str) -> str:
    """Log the JAX backend, device kind and counts; one-line error when ``platform`` asks for what is not there."""
    import jax

    backend, devices = jax.default_backend(), jax.devices()
    kind = getattr(devices[0], "device_kind", backend)
    line = (f"JAX {jax.__version__}: backend {backend}, {len(devices)} x {kind} "
            f"({jax.local_device_count()} local, process {jax.process_index() + 1} of {jax.process_count()})")
    log.info(line)
    wanted = {"any": None, "cpu": ("cpu",), "gpu": ("gpu", "cuda", "rocm"), "tpu": ("tpu",),
              "accelerator": ("gpu", "cuda", "rocm", "tpu")}[platform]
    if wanted is not None and backend not in wanted:
        hint = ("install the accelerator build of JAX (README: Install on GPU, TPU or Colab)"
                if backend == "cpu" else "run it where that backend is")
        raise ValueError(f"TrainerConfig.platform={platform!r} but JAX runs on {backend}; {hint}, "
                         "or bind ntl_jax.TrainerConfig.platform='any'")
    return line


def enable_compilation_cache(path: str) -> str | None:
    """Point JAX's persistent compilation cache at ``path`` (``~`` expanded); ``''`` leaves it off.

    Takes effect for compilations after the call (JAX opens the cache at the first one), so it runs before the
    trainer compiles anything. Every program is cached, however quick to compile: loading one takes milliseconds,
    while the small ones (advantages, gathers, shapes seen once) add up to seconds of a warm start when recompiled
    (docs/experiments/cpu_design_choices.md).
    """
    if not path:
        return None
    import jax

    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"


def preflight(config) -> None:
    """Every check that needs no model, data load or warm start, so a bad setting fails in seconds with one line:
    the reward file, function and options; optional packages the config asks for; data files; the model's
    location; a writable output directory."""
    import importlib.util

    from ntl_jax.models.hub import is_hub_id
    from ntl_jax.rewards.registry import check_reward_spec, reward_spec

    run = config.trainer
    check_reward_spec(reward_spec(run.reward_fn_path, run.reward_fn_name, run.reward_fn_kwargs, config.use_ntl),
                      tau=config.ntl.tau, ntl_enabled=config.use_ntl)
    if run.use_wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError("TrainerConfig.use_wandb=True needs the wandb package; allowed: pip install wandb, or "
                         "use_wandb=False")
    for key in ("train_files", "val_files"):
        for path in getattr(run, key):
            if "://" not in str(path) and not os.path.isfile(path):
                raise ValueError(f"TrainerConfig.{key} names {path!r}, which does not exist; allowed: verl parquet "
                                 "files (scripts/prepare_gsm8k.py writes GSM8K's)")
    for key in ("model_path", "tokenizer_path"):
        path = getattr(run, key)
        if path is not None and not os.path.isdir(path) and not is_hub_id(str(path)):
            raise ValueError(f"TrainerConfig.{key}={path!r} is not a folder or a Hub id; allowed: a Hugging Face "
                             "model folder or 'owner/name'")
    os.makedirs(run.output_dir, exist_ok=True)
    if not os.access(run.output_dir, os.W_OK):
        raise ValueError(f"TrainerConfig.output_dir={run.output_dir!r} is not writable; allowed: a writable folder")
    if not run.allow_unshared_checkpoint_dir:
        from ntl_jax.distributed.multihost import check_shared_folder

        check_shared_folder(run.checkpoint_dir or os.path.join(run.output_dir, "checkpoints"),
                            "TrainerConfig.checkpoint_dir" if run.checkpoint_dir else "the checkpoint folder "
                            "<output_dir>/checkpoints")


def run_experiment(config) -> dict[str, Any]:
    """Build the trainer the config asks for and train; returns ``PPOTrainer.fit``'s result.

    Any failure before training starts (data, model, tokenizer, reward file, backend) is a ``SetupError`` with one
    line; failures during training keep their traceback."""
    from ntl_jax.ppo.factory import create_ppo_trainer

    try:
        preflight(config)
        enable_compilation_cache(config.trainer.compilation_cache_dir)
        check_backend(config.trainer.platform)
        tokenizer, policy_path, train_rows, val_rows, warm = _load_data(config)
        trainer = create_ppo_trainer(config, tokenizer, policy_path=policy_path, train_rows=train_rows,
                                     val_rows=val_rows)
    except Exception as err:  # noqa: BLE001 - every set-up failure is one line, no traceback (see main)
        raise SetupError(_one_line(err)) from err
    from ntl_jax.distributed.multihost import is_main_process

    if is_main_process():
        with open(os.path.join(config.trainer.output_dir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if warm is not None:
        result["warm_start"] = {k: warm[k] for k in ("steps", "final", "reached_target", "elapsed_s") if k in warm}
    if not result.get("val_before"):
        # A resumed run skips the pre-PPO validation; the first run logged it at step 0.
        result["val_before"] = _logged_validation_before(config.trainer.output_dir)
    return result


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]!r}; use --gin_file / --gin_bindings / --output_dir")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("jax._src.xla_bridge", "absl", "jax._src.distributed", "orbax", "jax._src.compiler",
                  "tensorboardX.summary"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ntl_jax.cpu.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages(FLAGS.malloc_huge_pages)
    from ntl_jax.distributed.multihost import initialize

    try:
        initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
        config = build_experiment(FLAGS.output_dir)
    except Exception as err:  # noqa: BLE001 - a start-up failure is one line, never a traceback
        # gin appends "In call to configurable ..." lines; the first line names the key, value and what is allowed.
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    mode = (f"NTL ({config.ntl.method}, reward_mode={config.ntl.reward_mode})" if config.use_ntl
            else "standard PPO")
    print(f"ntl-jax: {mode}; output in {config.trainer.output_dir}", flush=True)
    try:
        result = run_experiment(config)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(_summary(result), flush=True)
    print(json.dumps({k: result[k] for k in ("start_step", "end_step", "resumed") if k in result}), flush=True)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
