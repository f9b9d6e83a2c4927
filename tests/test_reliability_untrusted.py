"""Model output is attacker-controlled text: every consumer of it stays bounded in time and memory.

Consumers: answer extraction (``find_final_answer``, the GSM8K and arithmetic scorers, the NTL rewards), target
alignment (``arithmetic_steps``, ``build_targets`` from token ids with the character tokenizer and a byte-level BPE)
and the arithmetic checker (``safe_eval_arithmetic``). Each hostile input below goes through each consumer; the
worst time and peak allocation are printed; only the memory bound is asserted (no test may depend on how busy
the machine is: a consumer that went superlinear on these 10^6-character inputs would stop the run at pytest's
timeout instead). A second test scans the package's syntax trees for any way to reach eval/exec.
"""

from __future__ import annotations

import ast
import math
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import ntl_jax
from ntl_jax.models.tokenizers import build_char_tokenizer, train_byte_level_bpe
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.safe_eval import safe_eval_arithmetic
from ntl_jax.ntl.targets import arithmetic_steps, build_targets, find_final_answer
from ntl_jax.rewards import arithmetic, gsm8k
from ntl_jax.rewards.ntl_rewards import custom_ntl_all

MEMORY_BOUND_MB = 512.0
MILLION = 1_000_000


def hostile_inputs() -> dict[str, str]:
    sys.set_int_max_str_digits(0)  # only to write the factorial's digits out; the code under test never needs it
    factorial = str(math.factorial(25_000))  # 99,094 digits
    sys.set_int_max_str_digits(4300)
    return {
        "1e6 chars of prose with numbers": ("The farmer had 3 cows and 12 + 30 = 42 sheep. " * 21_300)[:MILLION],
        "1e6 chars of letters then an answer": "a" * (MILLION - 8) + " #### 42",
        "1e5 digits in a row": "9" * 100_000,
        "1e5 digits then #### answer": "7" * 100_000 + " #### 5",
        "25000! written out (99k digits)": f"25000! = {factorial} #### {factorial[-40:]}",
        "25000! = product (1e5-char expression)": "*".join(str(i) for i in range(1, 25_001))[:100_000] + " = 1",
        "1e5 nested parentheses": "(" * 100_000 + "1" + ")" * 100_000 + " = 1",
        "nested parentheses chain": "((((((((((1+2)*3)-4)*5)+6)*7)-8)*9)+10)*11) = 1331",
        "9**9**9": "9**9**9 = 1 #### 9**9**9",
        "10**10**10": "So 10**10**10 = 10000000000 and #### 10**10**10",
        "huge product with '='": "123456789" * 11 + " * " + "987654321" * 11 + " = 5 #### 5",
        "1/0 steps x1024": "1 / 0 + 1 / 0 + 1 / 0 + 1 / 0 = 2 " * 1024,
        "20-term sums x1024": ("1 + " * 20 + "1 = 21 ") * 1024,
        "arabic-indic digits": "#### ٣٤٥ so ٣ + ٤ = ٧" * 1000,
        "fullwidth digits": "＃＃＃＃ ３４５ and ３ + ４ = ７ " * 1000,
        "math-bold digits": "#### 𝟗𝟗 and 𝟐 + 𝟐 = 𝟒 " * 1000,
        "nan / inf strings": "#### nan #### inf #### -Infinity #### 1e309 #### NaN = inf " * 1000,
        "1e6 of '1,'": "1," * 500_000,
        "1e6 of '#### '": "#### " * 200_000,
        "1e6 of '=-'": "=-" * 500_000,
        "1e6 of '1='": "1=" * 500_000,
        "1e6 of '1+'": "1+" * 500_000,
        "1e6 of '-'": "-" * MILLION,
        "1e6 of '1.'": "1." * 500_000,
        "1e6 of '$-$'": "$-$" * 333_333,
        "1e6 of ',111'": "1" + ",111" * 250_000,
        "GSM8K calculator annotations x1e4": "<<48/2=24>>24 " * 10_000,
        "1e6 whitespace and control chars": ("\t\n \x00\x0b" * 200_000),
    }


def char_ids(tokenizer, text: str) -> list[int]:
    """The character tokenizer's encoding, by vocabulary lookup (identical to ``encode``, 30x faster on 1e6 chars)."""
    vocab, unk = tokenizer.get_vocab(), tokenizer.unk_token_id
    return [vocab.get(c, unk) for c in text]


def text_consumers() -> dict[str, Callable[[str], object]]:
    info = {"ntl_loss": 0.7, "has_digits": True, "digit_accuracy": 0.5, "total_digits": 10}
    return {
        "find_final_answer": find_final_answer,
        "arithmetic_steps": arithmetic_steps,
        "gsm8k strict": lambda t: gsm8k.compute_score(t, "42"),
        "gsm8k flexible": lambda t: gsm8k.compute_score(t, "42", method="flexible"),
        "arithmetic score": lambda t: arithmetic.compute_score(t, "42"),
        "custom_ntl_all": lambda t: custom_ntl_all("arithmetic", t, "42", ntl_info=info, tau=2.0),
        "safe_eval (whole text)": safe_eval_arithmetic,
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_mb(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


class Worst:
    """Worst time and peak memory per consumer, with the input that caused each."""

    def __init__(self):
        self.time: dict[str, tuple[float, str]] = {}
        self.memory: dict[str, tuple[float, str]] = {}

    def add(self, consumer: str, input_name: str, seconds: float, mb: float | None = None) -> None:
        if seconds > self.time.get(consumer, (-1.0, ""))[0]:
            self.time[consumer] = (seconds, input_name)
        if mb is not None:
            assert mb < MEMORY_BOUND_MB, (consumer, input_name, mb)
            if mb > self.memory.get(consumer, (-1.0, ""))[0]:
                self.memory[consumer] = (mb, input_name)

    def report(self, title: str) -> None:
        print(f"\n{title}; worst case per consumer:")
        for consumer, (seconds, input_name) in self.time.items():
            mb, big = self.memory.get(consumer, (float("nan"), "-"))
            print(f"  {consumer:38s} {seconds * 1e3:8.1f} ms  {input_name:38s} peak {mb:6.1f} MB  {big}")


@pytest.fixture(scope="module")
def tokenizers():
    corpus = ["The farmer had 3 cows and 12 + 30 = 42 sheep.", "#### 72", "<<48/2=24>>24", "0123456789"] * 5
    return build_char_tokenizer(), train_byte_level_bpe(corpus, vocab_size=300)


BPE_TAIL_CHARS = 20_000  # a long real response; byte-level BPE encoding of 1e6 chars alone takes seconds
MEMORY_PROBES = ("1e6 chars of prose with numbers", "1e6 of ',111'", "1e6 of '1+'", "1e5 digits in a row")


def test_hostile_model_output_is_processed_in_bounded_time_and_memory(tokenizers):
    char_tok, bpe_tok = tokenizers
    char_digits, bpe_digits = digit_token_ids(char_tok), digit_token_ids(bpe_tok)
    inputs, fns, worst = hostile_inputs(), text_consumers(), Worst()
    for input_name, text in inputs.items():
        for fn_name, fn in fns.items():
            worst.add(fn_name, input_name, timed(lambda: fn(text)), peak_mb(lambda: fn(text)))
        # Target alignment starts from token ids (what the sampler returns), so encoding is not timed.
        ids = char_ids(char_tok, text)
        align = lambda: build_targets(ids, "345", char_tok, char_digits, "hybrid")  # noqa: E731
        worst.add("build_targets (char, 1e6 tokens)", input_name, timed(align),
                  peak_mb(align) if input_name in MEMORY_PROBES else None)
        bpe = bpe_tok.encode(text[-BPE_TAIL_CHARS:], add_special_tokens=False)
        worst.add("build_targets (BPE, 2e4-char tail)", input_name,
                  timed(lambda: build_targets(bpe, "345", bpe_tok, bpe_digits, "all_tokens")))
    # Token-level garbage (an untrained policy): random ids, i.e. byte soup with invalid UTF-8, for both tokenizers.
    rng = np.random.default_rng(0)
    for tokenizer, digits in ((char_tok, char_digits), (bpe_tok, bpe_digits)):
        ids = rng.integers(0, len(tokenizer), 32_768).tolist()
        kind = "char" if tokenizer is char_tok else "BPE"
        worst.add(f"build_targets ({kind}, 32768 random ids)", "random token ids",
                  timed(lambda: build_targets(ids, "345", tokenizer, digits, "hybrid")))
    worst.report(f"{len(inputs)} hostile texts x {len(fns) + 2} consumers + random token ids")


def test_hostile_expressions_are_refused_not_computed():
    """The checker refuses (None) what it must not compute, quickly; the answer extractors read only ASCII digits."""
    for expr in ("9**9**9", "10**10**10", "2**10000", "(" * 100_000 + "1" + ")" * 100_000, "1/0", "nan", "inf",
                 "1e309", "__import__('os')", "(lambda: 1)()", "[1]*10**9", "٣+٤", "３+４", "1" * 100_000):
        assert safe_eval_arithmetic(expr) is None, expr
    assert safe_eval_arithmetic("999999999 * 999999") == 999999999 * 999999
    for text in ("#### ٣", "#### ３", "#### 𝟗", "#### nan", "#### inf"):
        assert find_final_answer(text) is None and arithmetic.extract_answer(text) is None, text
        assert gsm8k.compute_score(text, "3") == 0.0
    assert arithmetic_steps("3 + 4 = ٧") == [] and arithmetic_steps("٣ + ٤ = 7") == []


# ---------------------------------------------------------------------------------------------- no eval / exec
# tests/test_safe_eval.py already fails on a direct ``eval(...)`` / ``exec(...)`` call; this scan also catches the
# indirect ways: a reference (``f = eval``), an attribute (``builtins.eval``), a string handed to getattr, the
# ``compile`` and ``__import__`` builtins.
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__"}


def forbidden_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            hits.append(f"{path}:{node.lineno} name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in ("eval", "exec"):
            hits.append(f"{path}:{node.lineno} attribute .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and any(isinstance(a, ast.Constant) and a.value in FORBIDDEN_NAMES for a in node.args)):
            hits.append(f"{path}:{node.lineno} getattr of {node.args[1].value!r}")
    return hits


def test_no_indirect_eval_or_exec_in_the_package():
    files = sorted(Path(ntl_jax.__file__).parent.rglob("*.py"))
    assert len(files) > 20
    assert [hit for f in files for hit in forbidden_uses(f)] == []


def test_the_scan_catches_each_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import builtins\nf = eval\nbuiltins.exec('1')\ngetattr(builtins, 'eval')\n"
                      "compile('1', 'x', 'exec')\nre_like.compile('x')\n")
    hits = forbidden_uses(sample)
    assert sorted(hit.split(" ", 1)[1] for hit in hits) == [
        "attribute .exec", "getattr of 'eval'", "name compile", "name eval"]
    assert all(hit.startswith(f"{sample}:") for hit in hits)
