"""verl parquet I/O, prompt rendering and the resumable PromptLoader, with a real character-level tokenizer."""
import logging
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ntl_jax.data.arithmetic import make_arithmetic_examples
from ntl_jax.data.verl_parquet import (
    PromptBatch,
    PromptLoader,
    load_verl_parquet,
    render_prompt,
    write_verl_parquet,
)

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def char_tokenizer(chat_template=None):
    chars = string.digits + "+-*/=().,$#<> \n" + string.ascii_letters + "?:'\""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for char in chars:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def rows():
    return make_arithmetic_examples(40, seed=1)


def _collect(batches):
    return [(b.indices, b.prompt_token_ids) for b in batches]


def test_write_then_load_round_trips(tmp_path, rows):
    path = tmp_path / "sub" / "train.parquet"
    write_verl_parquet(rows, path)
    assert load_verl_parquet(path) == rows


def test_missing_column_names_file_and_column(tmp_path, rows):
    path = tmp_path / "no_reward.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "reward_model"} for r in rows]), path)
    with pytest.raises(ValueError, match=r"no_reward\.parquet: missing required column 'reward_model'"):
        load_verl_parquet(path)


@pytest.mark.parametrize("field, value, problem", [
    ("prompt", [], "prompt=.* must be a non-empty list"),
    ("reward_model", {"style": "rule", "ground_truth": None}, "reward_model=.* must be a dict with a 'ground_truth'"),
    ("data_source", "", "data_source=.* must be a non-empty string"),
])
def test_malformed_row_names_file_row_and_problem(tmp_path, rows, field, value, problem):
    bad_rows = [dict(r) for r in rows[:5]]
    bad_rows[3][field] = value
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(bad_rows), path)
    with pytest.raises(ValueError, match=rf"bad\.parquet: row 3: {problem}"):
        load_verl_parquet(path)
    with pytest.raises(ValueError, match=r"row 3"):
        write_verl_parquet(bad_rows, tmp_path / "other.parquet")


def test_render_prompt_plain_and_with_chat_template(tokenizer):
    row = {"prompt": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "12+7"}]}
    assert render_prompt(row, tokenizer) == "Be exact.\n12+7"
    chat = char_tokenizer(CHAT_TEMPLATE)
    assert render_prompt(row, chat) == "<system>Be exact.\n<user>12+7\n<assistant>"
    loader = PromptLoader([dict(row, data_source="x", reward_model={"ground_truth": "19"})], chat, 1, shuffle=False)
    (ids,) = next(iter(loader)).prompt_token_ids
    assert chat.decode(ids) == "<system>Be exact.\n<user>12+7\n<assistant>"


def test_epoch_covers_each_prompt_once_and_shuffles_per_epoch(tokenizer, rows):
    loader = PromptLoader(rows, tokenizer, 8, seed=7)
    assert loader.steps_per_epoch == 5 and len(loader) == 5
    epoch0 = list(loader)
    epoch1 = list(loader)
    assert all(isinstance(b, PromptBatch) and len(b.rows) == 8 for b in epoch0 + epoch1)
    for epoch in (epoch0, epoch1):
        assert sorted(i for b in epoch for i in b.indices) == list(range(40))
    assert [b.indices for b in epoch0] != [b.indices for b in epoch1]
    for batch in epoch0:
        for ids, row, index in zip(batch.prompt_token_ids, batch.rows, batch.indices):
            assert row is rows[index]
            assert tokenizer.decode(ids) == row["prompt"][0]["content"]
    assert _collect(PromptLoader(rows, tokenizer, 8, seed=7)) == _collect(epoch0)
    assert [b.indices for b in PromptLoader(rows, tokenizer, 8, shuffle=False)][0] == list(range(8))


def test_drop_last_false_keeps_the_partial_batch(tokenizer, rows):
    loader = PromptLoader(rows, tokenizer, 16, drop_last=False)
    assert loader.steps_per_epoch == 3
    assert [len(b.indices) for b in loader] == [16, 16, 8]
    assert PromptLoader(rows, tokenizer, 16).steps_per_epoch == 2


def test_resume_mid_epoch_gives_the_same_following_batches(tokenizer, rows):
    original = PromptLoader(rows, tokenizer, 6, seed=3)
    consumed = [original.next_batch() for _ in range(9)]  # 6 batches per epoch: stops inside epoch 1
    state = original.state_dict()
    assert state == {"epoch": 1, "position": 3}
    expected = [original.next_batch() for _ in range(10)]
    resumed = PromptLoader(rows, tokenizer, 6, seed=3)
    resumed.load_state_dict(state)
    assert _collect(resumed.next_batch() for _ in range(10)) == _collect(expected)
    assert len(consumed) == 9


def test_resume_exactly_at_an_epoch_boundary_runs_the_next_epoch(tokenizer, rows):
    original = PromptLoader(rows, tokenizer, 8, seed=5)
    iterator = iter(original)
    for _ in range(original.steps_per_epoch):
        next(iterator)
    state = original.state_dict()
    assert state == {"epoch": 0, "position": original.steps_per_epoch}
    uninterrupted_next_epoch = list(original)
    assert len(uninterrupted_next_epoch) == original.steps_per_epoch

    resumed = PromptLoader(rows, tokenizer, 8, seed=5)
    resumed.load_state_dict(state)
    next_epoch = list(resumed)
    assert len(next_epoch) == resumed.steps_per_epoch  # verl's resume ran zero steps here
    assert _collect(next_epoch) == _collect(uninterrupted_next_epoch)
    assert resumed.state_dict() == {"epoch": 1, "position": resumed.steps_per_epoch}


def test_bad_state_is_rejected(tokenizer, rows):
    loader = PromptLoader(rows, tokenizer, 8)
    with pytest.raises(ValueError, match="position=6"):
        loader.load_state_dict({"epoch": 0, "position": 6})
    with pytest.raises(ValueError, match="epoch=-1"):
        loader.load_state_dict({"epoch": -1, "position": 0})


def _long_rows():
    lengths = [3, 12, 5, 20, 4]
    return [{"data_source": "t", "prompt": [{"role": "user", "content": "7" * n}],
             "reward_model": {"ground_truth": "1"}} for n in lengths]


def test_overlong_prompts_are_filtered_and_counted(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="ntl_jax.data.verl_parquet"):
        loader = PromptLoader(_long_rows(), tokenizer, 1, max_prompt_length=10, shuffle=False)
    assert "filtered 2 of 5 prompts" in caplog.text
    assert [b.indices[0] for b in loader] == [0, 2, 4]


def test_truncation_left_right_and_error(tokenizer):
    rows = _long_rows()
    rows[1]["prompt"] = [{"role": "user", "content": "123456789012"}]
    common = dict(max_prompt_length=10, filter_overlong_prompts=False, shuffle=False)
    left = PromptLoader(rows, tokenizer, 5, truncation="left", **common).next_batch()
    right = PromptLoader(rows, tokenizer, 5, truncation="right", **common).next_batch()
    assert tokenizer.decode(left.prompt_token_ids[1]) == "3456789012"
    assert tokenizer.decode(right.prompt_token_ids[1]) == "1234567890"
    assert max(len(ids) for ids in left.prompt_token_ids) == 10
    with pytest.raises(ValueError, match="row 1 has 12 tokens > max_prompt_length=10"):
        PromptLoader(rows, tokenizer, 5, truncation="error", **common)
    with pytest.raises(ValueError, match="truncation='middle'"):
        PromptLoader(rows, tokenizer, 5, truncation="middle", **common)


def test_nothing_left_after_filtering_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="no prompts left .*5 filtered"):
        PromptLoader(_long_rows(), tokenizer, 1, max_prompt_length=2)
    with pytest.raises(ValueError, match="make no full batch of batch_size=8"):
        PromptLoader(_long_rows(), tokenizer, 8)
