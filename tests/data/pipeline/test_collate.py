"""Collation cuts the padding every caption shares: fewer text columns, the same embeddings."""
import pytest
import torch

from multimodal.data.pipeline.batches import collate_samples, trim_padding_columns
from multimodal.data.tokenization.bpe_tokenizer import encode_rows
from multimodal.encoders import TextConfig, TextEncoder, TransformerConfig

CONTEXT = 12


def tokenize(captions):
    """Word ids 3.. per caption, as our BPE tokenizer lays rows out: [sot] + ids + [eot] + padding."""
    return encode_rows(captions, CONTEXT, lambda texts: [[3 + len(word) for word in text.split()] for text in texts],
                       pad_id=0, sot_id=1, eot_id=2)


def test_columns_past_the_longest_caption_are_cut():
    samples = [{"__key__": "a", "text": "one two"}, {"__key__": "b", "text": "three four five"}]
    batch = collate_samples(samples, tokenize, "s")
    full_ids, full_mask = tokenize(["one two", "three four five"])
    assert batch["text"].shape == (2, 5) and batch["text_padding_mask"].shape == (2, 5)  # sot + 3 words + eot
    assert torch.equal(batch["text"], full_ids[:, :5]) and torch.equal(batch["text_padding_mask"], full_mask[:, :5])
    assert batch["text"].is_contiguous()
    # A row that fills the context keeps every column; a left-padded mask is cut only after its last token.
    long_ids, long_mask = tokenize(["w " * 20])
    assert trim_padding_columns(long_ids, long_mask)[0].shape == (1, CONTEXT)
    left_mask = torch.tensor([[True, True, False, False, True]])
    assert trim_padding_columns(torch.arange(5)[None], left_mask)[1].tolist() == [[True, True, False, False]]


@pytest.mark.parametrize(("causal", "pooling"), [(True, "eot"), (False, "mean")])
def test_cut_batches_embed_as_the_padded_ones(causal, pooling):
    torch.manual_seed(0)
    encoder = TextEncoder(TextConfig(vocab_size=64, context_length=CONTEXT, causal=causal, pooling=pooling,
                                     transformer=TransformerConfig(width=32, depth=2, num_heads=4))).eval()
    captions = ["a b", "ccc dd e", "ffff"]
    ids, mask = tokenize(captions)
    cut_ids, cut_mask = trim_padding_columns(ids, mask)
    assert cut_ids.shape[1] < ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(encoder(cut_ids, cut_mask), encoder(ids, mask), atol=1e-5, rtol=1e-5)
