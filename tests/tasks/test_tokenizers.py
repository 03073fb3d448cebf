"""Tokenizers: exact GPT-2 and BERT ids with the network blocked, bytes for `char`, local files, errors."""

from __future__ import annotations

import pytest

from toylens.errors import ToylensError
from toylens.tasks.tokenizers import load_tokenizer

TEXT = "Hello world, this movie was great!"


def test_gpt2_and_bert_ids_offline(no_network):
    gpt2 = load_tokenizer("gpt2")
    assert gpt2.encode(TEXT) == [15496, 995, 11, 428, 3807, 373, 1049, 0]
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256 and gpt2.suffix_ids == []
    bert = load_tokenizer("bert-base-uncased")
    assert bert.encode(TEXT) == [101, 7592, 2088, 1010, 2023, 3185, 2001, 2307, 999, 102]
    assert bert.vocab_size == 30522 and bert.pad_id == 0 and bert.eos_id == 102 and bert.suffix_ids == [102]
    assert bert.encode(TEXT, special_tokens=False) == [7592, 2088, 1010, 2023, 3185, 2001, 2307, 999]


def test_char_is_bytes_and_round_trips():
    char = load_tokenizer("char")
    text = "héllo ☃\n<br />"
    ids = char.encode(text)
    assert ids == list(text.encode("utf-8")) and char.decode(ids) == text
    assert char.vocab_size == 258 and char.eos_id == 256 and char.pad_id == 257


def test_token_labels_are_readable():
    assert load_tokenizer("gpt2").token_labels([15496, 995, 0]) == ["Hello", " world", "!"]
    bert = load_tokenizer("bert-base-uncased")
    assert bert.token_labels(bert.encode("tokenization")) == ["[CLS]", "token", "##ization", "[SEP]"]


def test_local_tokenizer_json_by_file_and_folder(tmp_path):
    bert = load_tokenizer("bert-base-uncased")
    bert.tok.save(str(tmp_path / "tokenizer.json"))
    for where in (tmp_path / "tokenizer.json", tmp_path):
        local = load_tokenizer(str(where))
        assert local.encode(TEXT) == bert.encode(TEXT) and local.fingerprint == bert.fingerprint
    assert load_tokenizer("char").fingerprint != bert.fingerprint


@pytest.mark.parametrize(
    "name,expected",
    [
        ("gtp2", "task.tokenizer: unknown tokenizer 'gtp2'; use one of gpt2, bert-base-uncased, char"),
        ("missing/tokenizer.json", "task.tokenizer: missing/tokenizer.json: no such tokenizer file"),
    ],
)
def test_errors_are_one_line(name, expected):
    with pytest.raises(ToylensError) as e:
        load_tokenizer(name)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_invalid_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(ToylensError, match="not a valid tokenizer.json") as e:
        load_tokenizer(str(bad))
    assert "\n" not in str(e.value)
