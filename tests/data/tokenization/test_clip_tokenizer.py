"""CLIP's BPE tokenizer gives open_clip's ids on a varied corpus, its padding mask and a standalone tokenizer.json."""
import importlib.util
import json
import sys

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from multimodal.data.tokenization import clip_tokenizer
from multimodal.data.tokenization.clip_tokenizer import END_OF_TEXT_ID, PAD_ID, START_OF_TEXT_ID, VOCAB_SIZE, ClipTokenizer

open_clip = pytest.importorskip("open_clip")

CORPUS = [
    "a photo of a cat",
    "",
    "   ",
    "Hello, World!!! What's up? I'm fine; we'll see... they'd've",
    "naïve café résumé Ångström façade",
    "ΟΔΟΣ ΣΟΦΟΣ σοφός",  # Python's lower() gives a final sigma at word ends
    "İstanbul ǅ ß ẞ ﬀ",
    "😀🎉 emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "12345 3.14159 1,000,000 ½ ² ٣",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &amp;amp; &quot;quoted&quot; &#39;apos&#39; e&#769;",
    "tab\tnew\nline\r\n  many   spaces \u00a0nbsp\u3000ideographic",
    "“curly quotes” and ‘single’ — dash … ellipsis",
    "ﬁne ligature, ＦＵＬＬ width, mojibake CafÃ© â€œhiâ€\x9d",
    "日本語のテキスト 中文 한국어 Привет мир مرحبا שלום",
    "<start_of_text> inside <end_of_text> text, !<end_of_text> and <<end_of_text>> and a<end_of_text>b",
    "don't DON'T can't 's 're snake_case_name aaaaaaaaaaaaaaaa",
    "\u200bzero width\u200d joiner, I ♥ NY ©2020 ™ °C ± ≤ ∞",
    " ".join(f"word{i}" for i in range(60)),  # far over 77 tokens
    "x" * 300,
]


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer.from_bpe_file()


@pytest.fixture(scope="module")
def reference():
    return open_clip.tokenizer.SimpleTokenizer()


def test_ids_equal_open_clip_on_a_varied_corpus(tokenizer, reference):
    ids, _ = tokenizer(CORPUS)
    expected = reference(CORPUS, context_length=77)
    mismatched = [text for text, a, b in zip(CORPUS, ids, expected) if not torch.equal(a, b)]
    assert not mismatched, f"ids differ from open_clip for {mismatched}"
    assert ids.dtype == torch.int64 and ids.shape == (len(CORPUS), 77)


def test_unpadded_ids_equal_open_clip_encode(tokenizer, reference):
    assert tokenizer.tokenize(CORPUS) == [reference.encode(text) for text in CORPUS]


@pytest.mark.parametrize("context_length", [2, 5, 16])
def test_truncation_keeps_end_of_text_last_like_open_clip(tokenizer, reference, context_length):
    ids, padding_mask = tokenizer(CORPUS, context_length=context_length)
    assert torch.equal(ids, reference(CORPUS, context_length=context_length))
    long_rows = [i for i, tokens in enumerate(tokenizer.tokenize(CORPUS)) if len(tokens) > context_length - 2]
    assert long_rows, "the corpus must hold texts longer than the context"
    assert (ids[long_rows, -1] == END_OF_TEXT_ID).all()
    assert not padding_mask[long_rows].any()


def test_padding_mask_is_true_exactly_after_end_of_text(tokenizer):
    texts = ["wow !(", "a", "", "!/"]
    ids, padding_mask = tokenizer(texts, context_length=12)
    for row in range(len(texts)):
        eot = (ids[row] == END_OF_TEXT_ID).nonzero().max()
        assert torch.equal(padding_mask[row], torch.arange(12) > eot)
    # Pad id 0 is also the token "!": a mask read from the ids would hide real text.
    tokens = tokenizer.tokenize(texts)
    assert any(PAD_ID in row for row in tokens), "expected some text to use id 0"
    assert padding_mask.dtype == torch.bool


def test_special_ids_and_sizes(tokenizer):
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id) == (49408, 0, 49406, 49407)
    ids, padding_mask = tokenizer("")
    assert ids[0, :2].tolist() == [START_OF_TEXT_ID, END_OF_TEXT_ID]
    assert padding_mask[0].tolist() == [False, False] + [True] * 75
    single, _ = tokenizer("a photo")
    assert single.shape == (1, 77)


def test_save_and_load_round_trip_and_standalone_json(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    loaded = ClipTokenizer.load(path)
    assert torch.equal(loaded(CORPUS)[0], tokenizer(CORPUS)[0])
    # Hugging Face alone reads the file and gives the same ids for ordinary text.
    standalone = HFTokenizer.from_file(str(path))
    assert standalone.get_vocab_size() == VOCAB_SIZE
    for text in ["A Photo of a CAT.", "two  dogs, playing in the snow!", "naïve café"]:
        ids, padding_mask = tokenizer(text)
        assert standalone.encode(text).ids == ids[0][~padding_mask[0]].tolist()
    assert tokenizer.decode(tokenizer("a photo of a cat")[0][0]) == "a photo of a cat"


def test_refuses_other_tokenizers_and_bad_arguments(tokenizer, tmp_path):
    from multimodal.data.tokenization.bpe_tokenizer import Tokenizer

    ours = Tokenizer.train(["a cat", "a dog"] * 10, vocab_size=300, min_frequency=1)
    ours.save(tmp_path / "ours.json")
    with pytest.raises(ValueError, match="not a CLIP tokenizer"):
        ClipTokenizer.load(tmp_path / "ours.json")
    with pytest.raises(FileNotFoundError):
        ClipTokenizer.from_bpe_file(tmp_path / "missing.txt.gz")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a gzipped CLIP BPE vocabulary"):
        ClipTokenizer.from_bpe_file(tmp_path / "bad.txt.gz")
    with pytest.raises(ValueError, match="context_length=1"):
        tokenizer("a cat", context_length=1)
    with pytest.raises(TypeError):
        tokenizer(["a cat", 3])


def test_vocabulary_without_open_clip_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="open_clip_torch is not installed"):
        ClipTokenizer.from_bpe_file()


def test_without_ftfy_text_is_nfc_normalised_with_a_warning(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # import ftfy now raises ImportError
    clip_tokenizer._fix_text.cache_clear()
    try:
        with pytest.warns(UserWarning, match="ftfy is not installed"):
            decomposed = tokenizer("cafe\u0301")[0]
        assert torch.equal(decomposed, tokenizer("café")[0])
    finally:
        clip_tokenizer._fix_text.cache_clear()


def test_saved_json_names_the_special_tokens(tokenizer, tmp_path):
    data = json.loads(tokenizer.save(tmp_path / "t.json").read_text())
    specials = {token["content"]: token["id"] for token in data["added_tokens"]}
    assert specials == {"<start_of_text>": START_OF_TEXT_ID, "<end_of_text>": END_OF_TEXT_ID}
