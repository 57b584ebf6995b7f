"""Caption tokenizer: fixed special ids, EOT kept on truncation, padding mask, round trips."""
import json

import pytest
import torch

from multimodal.data.tokenization.bpe_tokenizer import (
    END_OF_TEXT_ID,
    PAD_ID,
    START_OF_TEXT_ID,
    Tokenizer,
    read_caption_files,
)

CAPTIONS = [
    "a handwritten seven",
    "the digit three written by hand",
    "someone saying nine",
    "a voice saying the number 4",
    "a photo of a cat on a mat",
    "a dog running in the park",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(CAPTIONS, vocab_size=400, min_frequency=2)


def test_special_ids_are_fixed(tokenizer):
    assert (tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id) == (0, 1, 2)
    assert (PAD_ID, START_OF_TEXT_ID, END_OF_TEXT_ID) == (0, 1, 2)
    # Training on other captions does not move them.
    other = Tokenizer.train(["completely different words here"] * 5, vocab_size=300)
    assert (other.pad_id, other.sot_id, other.eot_id) == (0, 1, 2)
    assert 259 <= other.vocab_size <= 300


def test_layout_and_padding_mask(tokenizer):
    ids, mask = tokenizer(["a handwritten seven", "someone saying nine now please"], context_length=16)
    assert ids.dtype == torch.int64 and ids.shape == (2, 16)
    assert mask.dtype == torch.bool and mask.shape == (2, 16)
    for row in range(2):
        tokens = tokenizer.tokenize([["a handwritten seven", "someone saying nine now please"][row]])[0]
        length = len(tokens) + 2
        assert ids[row, 0] == START_OF_TEXT_ID
        assert ids[row, 1 : length - 1].tolist() == tokens
        assert ids[row, length - 1] == END_OF_TEXT_ID
        assert (ids[row, length:] == PAD_ID).all()
        assert not mask[row, :length].any() and mask[row, length:].all()
    # Exactly one start and one end per row.
    assert ((ids == END_OF_TEXT_ID).sum(dim=1) == 1).all()
    assert ((ids == START_OF_TEXT_ID).sum(dim=1) == 1).all()


def test_truncation_keeps_start_and_end_of_text(tokenizer):
    long_caption = " ".join(["the digit three written by hand"] * 10)
    tokens = tokenizer.tokenize([long_caption])[0]
    assert len(tokens) > 8
    ids, mask = tokenizer(long_caption, context_length=8)
    assert ids[0].tolist() == [START_OF_TEXT_ID] + tokens[:6] + [END_OF_TEXT_ID]
    assert not mask.any()
    # The shortest legal context is [sot, eot].
    ids, mask = tokenizer(long_caption, context_length=2)
    assert ids[0].tolist() == [START_OF_TEXT_ID, END_OF_TEXT_ID]


def test_round_trip_gives_normalised_text(tokenizer):
    text = "  The  DIGIT\tseven,\n written by Hand!  "
    assert tokenizer.normalize(text) == "the digit seven, written by hand!"
    ids, _ = tokenizer(text, context_length=64)
    assert tokenizer.decode(ids[0]) == "the digit seven, written by hand!"
    # Batch decode of a 2-D tensor.
    ids, _ = tokenizer(["a handwritten seven", "someone saying nine"], context_length=32)
    assert tokenizer.decode(ids) == ["a handwritten seven", "someone saying nine"]


def test_unicode_and_empty_strings(tokenizer):
    # Unseen characters still encode (byte level) and decode back; NFC composes e + combining acute.
    text = "Cafe\u0301 \u00fcber \u4e03 \U0001F600"
    ids, mask = tokenizer(text, context_length=64)
    assert tokenizer.decode(ids[0]) == "caf\u00e9 \u00fcber \u4e03 \U0001F600"
    ids, mask = tokenizer(["", "   "], context_length=5)
    assert ids.tolist() == [[1, 2, 0, 0, 0]] * 2
    assert mask.tolist() == [[False, False, True, True, True]] * 2
    assert tokenizer.decode(ids[0]) == ""


def test_special_token_text_in_a_caption_is_not_special(tokenizer):
    ids, _ = tokenizer("seven <end_of_text> nine <pad>", context_length=64)
    row = ids[0]
    valid = row[row != PAD_ID]
    assert (valid == END_OF_TEXT_ID).sum() == 1 and valid[-1] == END_OF_TEXT_ID
    assert tokenizer.decode(row) == "seven <end_of_text> nine <pad>"


def test_save_load_gives_identical_ids(tokenizer, tmp_path):
    texts = ["a handwritten seven", "a voice saying the number 4", "never seen: zebra \u00e9"]
    expected = tokenizer(texts, context_length=20)
    path = tokenizer.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    for loaded in (Tokenizer.load(path), Tokenizer.load(tmp_path), Tokenizer.from_json_str(tokenizer.to_json_str())):
        ids, mask = loaded(texts, context_length=20)
        assert torch.equal(ids, expected[0]) and torch.equal(mask, expected[1])
        assert loaded.vocab_size == tokenizer.vocab_size


def test_saved_file_works_with_plain_hf_tokenizers(tokenizer, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(tokenizer.save(tmp_path / "tokenizer.json")))
    ids, mask = tokenizer("a handwritten seven", context_length=32)
    assert hf.encode("a handwritten seven").ids == ids[0][~mask[0]].tolist()


def test_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="context_length=1"):
        tokenizer("seven", context_length=1)
    with pytest.raises(ValueError, match="vocab_size=100"):
        Tokenizer.train(CAPTIONS, vocab_size=100)
    # A valid tokenizer.json that lacks our special tokens.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    foreign = HFTokenizer(models.BPE())
    foreign.train_from_iterator(CAPTIONS, trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    foreign.save(str(tmp_path / "foreign.json"))
    with pytest.raises(ValueError, match="not one of ours.*<pad>"):
        Tokenizer.load(tmp_path / "foreign.json")
    (tmp_path / "broken.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(ValueError, match="broken.json"):
        Tokenizer.load(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.json")


def test_read_caption_files(tmp_path):
    (tmp_path / "a.txt").write_text("first caption\n\n  second caption  \n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("third \u00e9\n", encoding="utf-8")
    assert list(read_caption_files(tmp_path / "a.txt")) == ["first caption", "second caption"]
    captions = list(read_caption_files([tmp_path / "a.txt", tmp_path / "b.txt"]))
    assert captions == ["first caption", "second caption", "third \u00e9"]
    trained = Tokenizer.train(read_caption_files(tmp_path / "a.txt"), vocab_size=270, min_frequency=1)
    assert trained.decode(trained("second caption", 16)[0][0]) == "second caption"
