"""configs/README.md documents every gin-configurable parameter, with its current default, and is up to date."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import re
import sys

import pytest

from ntl_jax.knobs import knob

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO_ROOT, "configs", "README.md")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", os.path.join(REPO_ROOT, "scripts",
                                                                                  "gen_config_docs.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def _parameters(obj) -> dict[str, str]:
    """name -> default as the doc writes it, straight from the dataclass / signature (not via the generator)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for field in dataclasses.fields(obj):
            if field.default_factory is not dataclasses.MISSING:
                out[field.name] = f"{field.default_factory.__name__}()"
            else:
                out[field.name] = "required" if field.default is dataclasses.MISSING else repr(field.default)
        return out
    return {name: repr(p.default) for name, p in inspect.signature(obj).parameters.items()}


def test_every_parameter_of_every_configurable_is_documented_with_its_default():
    text = _readme()
    found = gen.configurables()
    selectors = {selector for selector, _ in found}
    # The configurables users bind in the shipped configs are all there.
    assert {"ntl_jax.PPOConfig", "ntl_jax.TrainerConfig", "ntl_jax.NTLConfig", "ntl_jax.EmbeddedTaskConfig",
            "ntl_jax.WarmStartConfig", "ntl_jax.ExperimentConfig"} <= selectors
    checked = 0
    for selector, obj in found:
        assert f"## `{selector}`" in text, selector
        for name, default in _parameters(obj).items():
            row = re.search(rf"^\| `{re.escape(selector)}\.{re.escape(name)}` \| `([^`]*)` \| (.+) \|$", text,
                            re.MULTILINE)
            assert row is not None, f"{selector}.{name} is missing from configs/README.md"
            assert row.group(1) == default.replace("|", "\\|"), f"{selector}.{name}: doc {row.group(1)} != {default}"
            assert row.group(2).strip(), f"{selector}.{name} has an empty meaning"
            checked += 1
    assert checked > 100


def test_every_macro_of_the_config_files_is_documented():
    text = _readme()
    macros = gen.config_macros()
    assert {"use_ntl_trainer", "MODEL_PATH", "PPO_MICRO_BATCH_SIZE_PER_DEVICE"} <= set(macros)
    for name in macros:
        assert re.search(rf"^\| `{name}` \|", text, re.MULTILINE), name


def test_readme_is_what_the_generator_writes():
    assert gen.render() == _readme(), "configs/README.md is stale: run python scripts/gen_config_docs.py"
    assert gen.main(["--check"]) == 0


def test_check_mode_flags_a_stale_file(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text(_readme().replace("| knob |", "| parameter |", 1))
    assert gen.main(["--check", "--output", str(stale)]) == 1
    assert gen.main(["--output", str(stale)]) == 0
    assert stale.read_text() == _readme()


@dataclasses.dataclass(frozen=True)
class _WithoutHelp:
    """A configurable whose second field has no help."""

    documented: int = knob(1, "yes")
    orphan: int = 2


def test_a_knob_without_help_is_an_error():
    with pytest.raises(ValueError, match=r"t\._WithoutHelp\.orphan has no help"):
        gen.knob_rows("t._WithoutHelp", _WithoutHelp)


def test_a_macro_without_a_meaning_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.gin").write_text("# A file.\nFOO = 3\n")
    monkeypatch.setattr(gen, "CONFIG_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="macro FOO .* has no meaning"):
        gen.render()
    (tmp_path / "b.gin").write_text("# B file.\nFOO = 4  # what foo is\n")
    assert gen.config_macros()["FOO"] == ("3", ["a.gin", "b.gin"], "what foo is")
