"""Tokenizer helpers: a deterministic character-level HF tokenizer and a loader that round-trips it.

The character tokenizer is a `tokenizers` WordLevel model over single characters
(`pre_tokenizers.Split("", "isolated")` cuts the text into characters, `decoders.Fuse()` joins them back),
wrapped in `transformers.PreTrainedTokenizerFast` so the rest of the code sees the usual HF API.
Every digit is its own token, which is what the Number Token Loss needs.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
BOS_TOKEN = "<bos>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)

BASE_CHARS: str = (
    string.digits + "+-*/=().,$#<> \n" + string.ascii_lowercase + string.ascii_uppercase + "?:"
)


def char_vocabulary(extra_chars: str = "") -> dict[str, int]:
    """Token -> id: the special tokens, then BASE_CHARS, then new characters of `extra_chars` in first-seen order."""
    if not isinstance(extra_chars, str):
        raise ValueError(f"extra_chars={extra_chars!r} is not allowed; pass a str of characters")
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *BASE_CHARS, *extra_chars):
        vocab.setdefault(token, len(vocab))
    return vocab


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one token per character of BASE_CHARS + extra_chars, unknown chars -> <unk>.

    Special tokens: <pad>=0, <eos>=1, <bos>=2, <unk>=3 (no BOS/EOS is added by `encode`).
    """
    backend = Tokenizer(models.WordLevel(vocab=char_vocabulary(extra_chars), unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def save_char_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> Path:
    """Writes tokenizer.json + tokenizer_config.json into `directory` (created if needed); returns the directory."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Loads a tokenizer from a folder (or hub-style name) through transformers.

    When the folder holds a tokenizer.json it is loaded as-is with PreTrainedTokenizerFast: AutoTokenizer would pick
    the class named by a neighbouring config.json (e.g. Qwen2Tokenizer), which rebuilds the pipeline and drops the
    char tokenizer's spaces.
    """
    path_str = os.fspath(path)
    if os.path.isfile(os.path.join(path_str, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(path_str)
    if os.path.isdir(path_str) and not os.path.isfile(os.path.join(path_str, "tokenizer_config.json")):
        raise ValueError(f"tokenizer path={path_str!r} has no tokenizer.json or tokenizer_config.json")
    # Imported here: AutoTokenizer pulls in transformers' model configs and, where PyTorch is installed, PyTorch itself
    # (seconds of start-up that a char tokenizer or a tokenizer.json never needs).
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path_str)


def train_byte_level_bpe(
    texts: Iterable[str],
    vocab_size: int = 300,
    *,
    individual_digits: bool = True,
    special_tokens: Sequence[str] = (PAD_TOKEN, EOS_TOKEN),
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 / Qwen2 style) trained on `texts`, for tests and small experiments.

    individual_digits=True pre-splits every digit into its own pre-token (Qwen2.5 style: digits never merge);
    False lets BPE merge digit runs (Llama-3 style groups).
    """
    if not special_tokens:
        raise ValueError("special_tokens=() is not allowed; pass at least a pad token")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if individual_digits
        else byte_level
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer)
    names = dict(zip(("pad_token", "eos_token", "bos_token"), special_tokens))
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **names)
