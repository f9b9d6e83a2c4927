"""``python -m ntl_jax.export``: a finished run's policy as a Hugging Face folder that transformers loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.export import export_policy, push_to_hub
from ntl_jax.models.hf_io import from_pretrained
from ntl_jax.ppo import factory
from trainer_fixtures import load_tiny_tokenizer, make_tiny_policy, tiny_experiment, tiny_rows, with_trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 3-step tiny run that checkpoints every step; returns (run_dir, the trainer's final policy params)."""
    policy_dir = make_tiny_policy(str(tmp_path_factory.mktemp("policy")))
    run_dir = str(tmp_path_factory.mktemp("run"))
    config = with_trainer(tiny_experiment(run_dir, use_ntl=True, steps=3), save_freq=1, max_to_keep=5)
    trainer = factory.create_ppo_trainer(config, load_tiny_tokenizer(policy_dir), policy_path=policy_dir,
                                         train_rows=tiny_rows(), val_rows=[],
                                         mesh=make_mesh(devices=jax.devices()[:1]))
    try:
        trainer.fit()
        final = jax.device_get(trainer.runtime.models.policy.params)
    finally:
        trainer.close()
    return run_dir, policy_dir, final


def _ids(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(4, vocab, size=(3, 11)).astype(np.int64)


def _jax_logits(model, ids) -> np.ndarray:
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    hidden, _ = model(jnp.asarray(ids, jnp.int32), jnp.asarray(positions, jnp.int32), jnp.ones(ids.shape, jnp.int32))
    return np.asarray(model.logits(hidden))


def test_exported_policy_loads_in_transformers_with_the_trained_logits(trained_run, tmp_path):
    run_dir, policy_dir, final = trained_run
    info = export_policy(run_dir, str(tmp_path / "out"))
    assert info["step"] == 3 and info["starting_policy"] == policy_dir
    files = set(os.listdir(tmp_path / "out"))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    exported = from_pretrained(tmp_path / "out")
    # The exported weights are the trainer's last ones, not the starting folder's.
    trained = jax.tree.leaves(final)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(exported)), trained))
    start = from_pretrained(policy_dir)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(start)), trained))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids(exported.config.vocab_size)
    with torch.no_grad():
        reference = hf_model(input_ids=torch.from_numpy(ids)).logits.float().numpy()
    assert np.abs(_jax_logits(exported, ids) - reference).max() <= 1e-4
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "out")
    assert tokenizer.decode(tokenizer.encode("12+30=42", add_special_tokens=False)) == "12+30=42"


def test_an_earlier_step_and_a_bad_run_dir(trained_run, tmp_path):
    run_dir, _, final = trained_run
    assert export_policy(run_dir, str(tmp_path / "one"), step=1)["step"] == 1
    one = from_pretrained(tmp_path / "one")
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(one)), jax.tree.leaves(final)))
    proc = subprocess.run([sys.executable, "-m", "ntl_jax.export", f"--run_dir={tmp_path / 'nope'}",
                           f"--output_dir={tmp_path / 'x'}"], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --run_dir={str(tmp_path / 'nope')!r} has no "
                                                           "checkpoints")


def test_the_command_line_exports_and_reports(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    proc = subprocess.run([sys.executable, "-m", "ntl_jax.export", f"--run_dir={run_dir}",
                           f"--output_dir={tmp_path / 'cli'}", "--step=2"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"exported step 2 of {run_dir}" in proc.stdout
    assert json.loads((tmp_path / "cli" / "ntl_jax_export.json").read_text())["step"] == 2


class RecordingHubApi:
    """huggingface_hub.HfApi's two calls, recorded instead of sent (no network in tests)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_push_to_hub_creates_the_repo_then_uploads_the_folder(tmp_path):
    api = RecordingHubApi()
    url = push_to_hub(str(tmp_path), "me/policy", private=True, api=api)
    assert url == "https://huggingface.co/me/policy/commit/abc"
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "me/policy", "repo_type": "model", "private": True, "exist_ok": True}
    assert api.calls[1][1]["folder_path"] == str(tmp_path) and api.calls[1][1]["repo_id"] == "me/policy"
    import huggingface_hub  # the real client exposes the two methods with these keywords
    import inspect
    for name, kwargs in api.calls:
        parameters = inspect.signature(getattr(huggingface_hub.HfApi, name)).parameters
        assert set(kwargs) <= set(parameters), (name, set(kwargs) - set(parameters))
