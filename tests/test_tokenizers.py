"""Character tokenizer, its save/load round trip, and the byte-level BPE helper."""
import json

import pytest
from transformers import PreTrainedTokenizerBase

from ntl_jax.models.tokenizers import (
    BASE_CHARS,
    SPECIAL_TOKENS,
    build_char_tokenizer,
    load_tokenizer,
    save_char_tokenizer,
    train_byte_level_bpe,
)

SAMPLE = "12 + 34 = 46\n#### 46"


def test_char_tokenizer_has_fixed_special_ids_and_one_token_per_char():
    tokenizer = build_char_tokenizer()
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", 1)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<bos>", 2)
    assert tokenizer.unk_token == "<unk>"
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(BASE_CHARS)
    ids = tokenizer.encode(SAMPLE, add_special_tokens=False)
    assert len(ids) == len(SAMPLE)
    assert [tokenizer.decode([i]) for i in ids] == list(SAMPLE)
    assert tokenizer.decode(ids) == SAMPLE


def test_char_tokenizer_vocabulary_is_deterministic():
    first, second = build_char_tokenizer("é€"), build_char_tokenizer("é€")
    assert first.get_vocab() == second.get_vocab()
    vocab = first.get_vocab()
    assert [vocab[c] for c in "0123456789"] == list(range(4, 14))
    assert vocab["é"] == len(SPECIAL_TOKENS) + len(BASE_CHARS)
    assert vocab["€"] == vocab["é"] + 1


def test_extra_chars_are_added_once_and_unknown_chars_map_to_unk():
    plain = build_char_tokenizer()
    assert plain.encode("é", add_special_tokens=False) == [plain.unk_token_id]
    extended = build_char_tokenizer("éé+")  # '+' already exists; 'é' only once
    assert len(extended) == len(plain) + 1
    assert extended.decode(extended.encode("1é2", add_special_tokens=False)) == "1é2"


def test_bad_extra_chars_raise():
    with pytest.raises(ValueError, match="extra_chars"):
        build_char_tokenizer(["a"])


def test_save_and_load_round_trip_preserves_text_with_spaces(tmp_path):
    tokenizer = build_char_tokenizer()
    save_char_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, PreTrainedTokenizerBase)
    ids = tokenizer.encode(SAMPLE, add_special_tokens=False)
    assert loaded.encode(SAMPLE, add_special_tokens=False) == ids
    assert loaded.decode(ids) == SAMPLE
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (0, 1, 2)


def test_load_ignores_a_neighbouring_qwen2_config(tmp_path):
    # AutoTokenizer would build a Qwen2Tokenizer from this folder and drop the spaces.
    tokenizer = build_char_tokenizer()
    save_char_tokenizer(tokenizer, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": len(tokenizer)}))
    loaded = load_tokenizer(str(tmp_path))
    ids = loaded.encode(SAMPLE, add_special_tokens=False)
    assert ids == tokenizer.encode(SAMPLE, add_special_tokens=False)
    assert loaded.decode(ids) == SAMPLE


def test_load_from_a_folder_without_tokenizer_files_raises(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_byte_level_bpe_splits_digits_and_round_trips_unicode():
    tokenizer = train_byte_level_bpe(["12 apples cost $3.50", "café 1234 #### 99"] * 5, vocab_size=280)
    text = "café 1234 naïve 日本 #### 9,950"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    digit_tokens = [t for t in tokenizer.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert digit_tokens == list("12349950")


def test_the_training_path_never_imports_pytorch(tmp_path):
    """transformers' AutoTokenizer imports PyTorch where it is installed (seconds of start-up); ntl-jax needs neither
    for a tokenizer.json folder. Checked in a fresh interpreter, with PyTorch installed (the test extra has it)."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    save_char_tokenizer(build_char_tokenizer(), tmp_path)
    code = ("import sys\n"
            "import ntl_jax.train, ntl_jax.embedded, ntl_jax.ppo.factory, ntl_jax.ppo.trainer\n"
            "from ntl_jax.models.tokenizers import load_tokenizer\n"
            f"assert load_tokenizer({str(tmp_path)!r}).pad_token_id == 0\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
