"""Export a run's trained policy as a Hugging Face folder, optionally pushed to the Hub.

    python -m ntl_jax.export --run_dir=outputs/ntl_final --output_dir=exported [--step=150]
                             [--checkpoint_dir=DIR] [--push_to_hub=user/name [--private]]

The policy of the run's newest readable checkpoint (or of ``--step``) is written as ``config.json``,
``model.safetensors``, ``generation_config.json`` and the tokenizer's files: a folder that
``transformers.AutoModelForCausalLM.from_pretrained`` and ``python -m ntl_jax.evaluate --model`` load. The
architecture and tokenizer come from the folder the run started from (``reference_policy_path`` in the checkpoint's
metadata; its weights are not read); only the ``actor`` arrays are read from the checkpoint (optimiser and critic
state stay on disk).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any, Sequence


# transformers announces "PyTorch was not found" at import: JAX users read it as a failure. It is advice only.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from ntl_jax.models.tokenizers import load_tokenizer  # noqa: E402 (after the variable transformers reads)

GENERATION_CONFIG = "generation_config.json"


def checkpoint_dir_of(run_dir: str, checkpoint_dir: str | None = None) -> str:
    """``checkpoint_dir``, else ``<run_dir>/checkpoints`` (``TrainerConfig.checkpoint_dir``'s default)."""
    return checkpoint_dir or os.path.join(run_dir, "checkpoints")


def policy_folder(recorded: str, run_dir: str) -> str:
    """The folder the run started from: as recorded, else (a relative path recorded from another working
    directory) the folder of that name inside ``run_dir`` (the embedded default's ``<run>/warm_start``)."""
    for candidate in (recorded, os.path.join(run_dir, os.path.basename(os.path.normpath(recorded)))):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise ValueError(f"the run's starting policy {recorded!r} is not a folder with a config.json (nor is "
                     f"{os.path.join(run_dir, os.path.basename(os.path.normpath(recorded)))!r}); allowed: a run "
                     "whose starting folder is still on disk")


def restore_policy(run_dir: str, step: int | None = None, checkpoint_dir: str | None = None):
    """(policy module with the checkpoint's actor parameters, tokenizer, step, starting folder)."""
    import jax
    from flax import nnx

    from ntl_jax.models.config import ModelConfig
    from ntl_jax.models.decoder import CausalLM
    from ntl_jax.ppo.checkpoint import CheckpointStore

    directory = checkpoint_dir_of(run_dir, checkpoint_dir)
    if not os.path.isdir(directory):
        raise ValueError(f"--run_dir={run_dir!r} has no checkpoints at {directory!r}; allowed: the output_dir of a "
                         "run that saved at least one checkpoint (or pass --checkpoint_dir)")
    store = CheckpointStore(directory, max_to_keep=None)
    try:
        steps = store.all_steps()
        if not steps:
            raise ValueError(f"no checkpoint in {directory!r}; allowed: a run that saved one (save_freq)")
        step = store.latest_good_step() if step is None else step
        if step is None:
            raise ValueError(f"no readable checkpoint in {directory!r} (steps {steps})")
        meta = store.restore_meta(step)
        folder = policy_folder(str(meta.get("reference_policy_path", "")), run_dir)
        # The architecture only (no weights read): the checkpoint's actor arrays are the weights.
        abstract = nnx.eval_shape(lambda: CausalLM(ModelConfig.from_pretrained_dir(folder), rngs=nnx.Rngs(0)))
        graphdef, shapes = nnx.split(abstract)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        restored = store.restore_subtree(step, "actor", jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes))
    finally:
        store.close()
    return nnx.merge(graphdef, restored), load_tokenizer(folder), step, folder


def write_generation_config(source_folder: str, output_dir: str, tokenizer: Any) -> None:
    """The starting folder's generation_config.json, else one naming the tokenizer's eos / pad / bos ids."""
    source = os.path.join(source_folder, GENERATION_CONFIG)
    if os.path.isfile(source):
        shutil.copyfile(source, os.path.join(output_dir, GENERATION_CONFIG))
        return
    config = {key: getattr(tokenizer, f"{key}", None) for key in ("eos_token_id", "pad_token_id", "bos_token_id")}
    config = {key: value for key, value in config.items() if value is not None}
    with open(os.path.join(output_dir, GENERATION_CONFIG), "w", encoding="utf-8") as f:
        json.dump({**config, "_from_model_config": True}, f, indent=2, sort_keys=True)


def export_policy(run_dir: str, output_dir: str, step: int | None = None,
                  checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Write the policy of ``step`` (default: the newest readable) of ``run_dir`` to ``output_dir``."""
    from ntl_jax.models.hf_io import save_pretrained

    model, tokenizer, step, folder = restore_policy(run_dir, step, checkpoint_dir)
    save_pretrained(model, output_dir, tokenizer=tokenizer)
    write_generation_config(folder, output_dir, tokenizer)
    info = {"run_dir": run_dir, "step": int(step), "starting_policy": folder, "output_dir": output_dir}
    with open(os.path.join(output_dir, "ntl_jax_export.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return info


def push_to_hub(folder: str, repo_id: str, *, private: bool = False, api: Any = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it with ``huggingface_hub``; returns the commit URL.
    The token comes from ``HF_TOKEN`` or ``hf auth login``."""
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                               commit_message="Upload policy trained with ntl-jax")
    return str(getattr(commit, "commit_url", commit))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ntl_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="output_dir of the training run")
    parser.add_argument("--output_dir", required=True, help="folder to write the Hugging Face model to")
    parser.add_argument("--step", type=int, help="checkpoint step to export (default: the newest readable)")
    parser.add_argument("--checkpoint_dir", help="the run's checkpoint folder when not <run_dir>/checkpoints")
    parser.add_argument("--push_to_hub", help="Hub repository id (user/name) to upload the folder to")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        info = export_policy(args.run_dir, args.output_dir, args.step, args.checkpoint_dir)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(f"exported step {info['step']} of {args.run_dir} to {args.output_dir}")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(args.output_dir, args.push_to_hub, private=args.private)}")


if __name__ == "__main__":
    run()
