"""configs/README.md documents every gin-configurable parameter, with its current default, and is up to date."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import re
import sys

import pytest

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
    stale.write_text(_readme().replace("| `0.3` |", "| `0.4` |", 1))
    assert gen.main(["--check", "--output", str(stale)]) == 1
    assert gen.main(["--output", str(stale)]) == 0
    assert stale.read_text() == _readme()


# Sources for the parser tests (inspect.getsource needs them in a real file).
@dataclasses.dataclass(frozen=True)
class _Commented:
    """Docstring entries. beta / gamma: shared meaning. delta: from the docstring, allowed: anything."""

    # First group.
    alpha: str = "a#b"  # the alpha, with '#' in its default
    beta: int = 1
    # Second group.
    gamma: float = 0.5
    delta: tuple = ()
    epsilon: bool = True  # comment wins over FALLBACK_MEANINGS


@dataclasses.dataclass(frozen=True)
class _Undocumented:
    """No entries here."""

    documented: int = 1  # yes
    orphan: int = 2


def test_meanings_come_from_comments_then_docstring_then_fallback(monkeypatch):
    monkeypatch.setitem(gen.FALLBACK_MEANINGS, "_Commented.epsilon", "unused")
    doc = gen.document_class("t._Commented", _Commented)
    by_name = {p.name: p for p in doc.params}
    assert by_name["alpha"].meaning == "the alpha, with '#' in its default"
    assert by_name["alpha"].default == "'a#b'"
    assert by_name["beta"].meaning == by_name["gamma"].meaning == "shared meaning"
    assert by_name["delta"].meaning == "from the docstring, allowed: anything"  # 'allowed' is no field
    assert by_name["epsilon"].meaning == "comment wins over FALLBACK_MEANINGS"
    assert [by_name[n].group for n in ("alpha", "beta", "gamma", "delta")] == [
        "First group.", "First group.", "Second group.", "Second group."]
    assert doc.summary.startswith("Docstring entries.")


def test_a_parameter_without_any_meaning_is_an_error():
    with pytest.raises(ValueError, match=r"_Undocumented\.orphan has no meaning"):
        gen.document_class("t._Undocumented", _Undocumented)
