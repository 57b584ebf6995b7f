"""Caption tokenizer: byte-level BPE (Hugging Face ``tokenizers``) with fixed special ids.

Every encoded caption is ``[sot] + tokens + [eot] + [pad] * n``, exactly
``context_length`` ids long. A caption longer than the context keeps its start
and its end-of-text token: ``[sot] + first (context_length - 2) tokens + [eot]``,
because the text encoder pools the hidden state at the end-of-text token and a
caption cut without it would have nothing to pool.

Text is normalised before BPE (Unicode NFC, lower case, runs of whitespace to
one space, stripped), so ``decode(encode(text)) == normalize(text)``.

The tokenizer is saved as a standard ``tokenizer.json`` that Hugging Face
``tokenizers`` can load on its own; its post-processor adds the same
start/end tokens.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from multimodal.data.atomic_files import write_text_atomically
# Special tokens and their ids; the ids are fixed so that padding is always 0
# and a model's ``eot_token_id`` does not depend on the training captions.
PAD_TOKEN = "<pad>"
START_OF_TEXT_TOKEN = "<start_of_text>"
END_OF_TEXT_TOKEN = "<end_of_text>"
PAD_ID = 0
START_OF_TEXT_ID = 1
END_OF_TEXT_ID = 2
SPECIAL_TOKENS = (PAD_TOKEN, START_OF_TEXT_TOKEN, END_OF_TEXT_TOKEN)  # in id order

# Byte-level BPE starts from 256 byte symbols; the specials come on top.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )


def read_caption_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield captions from UTF-8 text files, one caption per non-empty line."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for line in file:
                line = line.strip()
                if line:
                    yield line


def read_tokenizer_json(path: str | os.PathLike) -> HFTokenizer:
    """A Hugging Face tokenizer from ``tokenizer.json`` (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception
        raise ValueError(f"{path} is not a valid tokenizer.json: {error}") from error


def write_tokenizer_json(tokenizer: HFTokenizer, path: str | os.PathLike) -> Path:
    """Writes ``tokenizer.json`` (``path`` is the file, or a directory to put it in); returns the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    return write_text_atomically(path, tokenizer.to_str())


def encode_rows(
    texts: str | Sequence[str],
    context_length: int,
    tokenize: Callable[[Sequence[str]], list[list[int]]],
    *,
    pad_id: int,
    sot_id: int,
    eot_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> fixed-length rows ``[sot] + tokens + [eot] + [pad] * n`` and their padding mask.

    A long caption keeps its first L - 2 tokens and its end-of-text token (EOT pooling
    needs it). Returns ids int64 (B, L) and padding_mask bool (B, L), True after
    end-of-text: computed from lengths, since a pad id may also be a real token.
    """
    if context_length < 2:
        raise ValueError(
            f"context_length={context_length} is too short: a caption needs at least 2 positions "
            "(start-of-text and end-of-text)"
        )
    if isinstance(texts, str):
        texts = [texts]
    elif not all(isinstance(text, str) for text in texts):
        raise TypeError(f"texts must be a string or a list of strings, got {[type(t).__name__ for t in texts]}")
    token_lists = tokenize(texts)
    ids = np.full((len(token_lists), context_length), pad_id, dtype=np.int64)  # (B, L)
    lengths = np.empty(len(token_lists), dtype=np.int64)  # valid positions per row
    for row, tokens in enumerate(token_lists):
        tokens = tokens[: context_length - 2]
        ids[row, 0] = sot_id
        ids[row, 1 : 1 + len(tokens)] = tokens
        ids[row, 1 + len(tokens)] = eot_id
        lengths[row] = len(tokens) + 2
    padding_mask = np.arange(context_length)[None, :] >= lengths[:, None]  # (B, L)
    return torch.from_numpy(ids), torch.from_numpy(padding_mask)


class Tokenizer:
    """Byte-level BPE caption tokenizer with fixed ids: pad 0, start-of-text 1, end-of-text 2.

    Create one with :meth:`train` (from captions) or :meth:`load` (from a
    ``tokenizer.json``); call it on a string or a list of strings to get
    ``(ids, padding_mask)``.
    """

    pad_id: int = PAD_ID
    sot_id: int = START_OF_TEXT_ID
    eot_id: int = END_OF_TEXT_ID

    def __init__(self, tokenizer: HFTokenizer):
        """Wrap a Hugging Face tokenizer; raises ValueError if its special tokens are not ours."""
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            found = tokenizer.token_to_id(token)
            if found != expected_id:
                raise ValueError(
                    f"this tokenizer is not one of ours: special token {token!r} has id {found}, expected "
                    f"{expected_id}; train one with Tokenizer.train(captions) or load a tokenizer.json it saved"
                )
        # Captions are data: a caption containing the text "<end_of_text>" must be
        # tokenised as text, never turned into a real end-of-text id.
        tokenizer.encode_special_tokens = True
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    # Construction -----------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
        """Train a byte-level BPE on captions.

        Args:
            texts: captions (any iterable of strings; see :func:`read_caption_files`).
            vocab_size: largest vocabulary, special tokens and the 256 byte symbols included.
                A small corpus may give fewer merges, hence a smaller vocabulary.
            min_frequency: a pair is merged only if it occurs at least this often.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE} "
                "(256 bytes + 3 special tokens)"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        tokenizer = HFTokenizer(models.BPE())
        tokenizer.normalizer = _normalizer()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),  # ids 0, 1, 2 in this order
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        # Lets the tokenizer.json stand alone: plain HF encode() adds the same specials.
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{START_OF_TEXT_TOKEN} $A {END_OF_TEXT_TOKEN}",
            special_tokens=[(START_OF_TEXT_TOKEN, START_OF_TEXT_ID), (END_OF_TEXT_TOKEN, END_OF_TEXT_ID)],
        )
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a ``tokenizer.json`` (a file, or a directory holding one, like a checkpoint)."""
        return cls(read_tokenizer_json(path))

    @classmethod
    def from_json_str(cls, text: str) -> Tokenizer:
        """Rebuild from the string :meth:`to_json_str` returned."""
        try:
            tokenizer = HFTokenizer.from_str(text)
        except Exception as error:
            raise ValueError(f"not a valid tokenizer JSON string: {error}") from error
        return cls(tokenizer)

    def to_json_str(self) -> str:
        """The whole tokenizer as a JSON string (the content of ``tokenizer.json``)."""
        return self._tokenizer.to_str()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (``path`` is the file, or a directory to put it in); returns the file."""
        return write_tokenizer_json(self._tokenizer, path)

    # Properties -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (the text encoder's embedding table size), special tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    # Encoding ---------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it: NFC, lower case, single spaces, stripped."""
        return self._tokenizer.normalizer.normalize_str(text)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, padding or truncation."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def __call__(self, texts: str | Sequence[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode captions to fixed-length ids.

        Args:
            texts: one caption or a list of them.
            context_length: length L of every row, start and end-of-text tokens included.

        Returns:
            ids: int64 (B, L), ``[sot] + tokens + [eot] + pad``; a long caption keeps its
                first L - 2 tokens and its end-of-text token.
            padding_mask: bool (B, L), True at padding positions.
        """
        return encode_rows(texts, context_length, self.tokenize, pad_id=PAD_ID, sot_id=START_OF_TEXT_ID,
                           eot_id=END_OF_TEXT_ID)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str | list[str]:
        """Text of one row of ids (a 1-D sequence) or of each row of a 2-D tensor / nested list."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if len(ids) > 0 and isinstance(ids[0], (list, tuple)):
            return self._tokenizer.decode_batch([list(row) for row in ids], skip_special_tokens=skip_special_tokens)
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
