"""The original CLIP tokenizer (OpenAI / open_clip) expressed with Hugging Face ``tokenizers``.

Converted CLIP weights only work with the token ids they were trained on, so this
tokenizer reproduces open_clip's ``SimpleTokenizer`` id for id:

* text cleaning: ``ftfy.fix_text`` (open_clip always applies it), HTML entities
  unescaped twice, runs of whitespace to one space, stripped, lower case;
* pre-tokenization by open_clip's regular expression (contractions, letter runs,
  single digits, runs of other symbols; the literal strings ``<start_of_text>`` and
  ``<end_of_text>`` become those special tokens, as in open_clip);
* byte-level BPE over the 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz`` with
  ``</w>`` marking the end of a word: 49,408 ids, ``<start_of_text>`` = 49406,
  ``<end_of_text>`` = 49407;
* ``[sot] + tokens + [eot]`` padded with 0 to ``context_length``; a longer caption is
  cut to ``context_length`` ids with its last id replaced by end-of-text, as
  open_clip's ``tokenize`` does, so end-of-text pooling always finds it.

The cleaning runs in Python (ftfy and Python's own lower-casing cannot be written as
a ``tokenizers`` normaliser); everything after it is the Hugging Face pipeline. The
saved ``tokenizer.json`` loads on its own in ``tokenizers`` with a normaliser that
approximates the cleaning (NFC, whitespace, lower case) and gives the same ids for
ordinary text; this class gives open_clip's ids for all text.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import os
import unicodedata
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from multimodal.data.tokenization.bpe_tokenizer import encode_rows, read_tokenizer_json, write_tokenizer_json

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT_TOKEN = "<start_of_text>"
END_OF_TEXT_TOKEN = "<end_of_text>"
PAD_ID = 0  # open_clip pads with 0, which is also the id of the token "!"
START_OF_TEXT_ID = 49406
END_OF_TEXT_ID = 49407
VOCAB_SIZE = 49408
# open_clip keeps the merges on lines 1 .. 48894 of the vocabulary file (line 0 is a header).
NUM_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"

# open_clip's pattern (applied to lower-cased text, so its IGNORECASE flag changes nothing).
SPLIT_PATTERN = (
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def default_vocab_path() -> Path:
    """``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip_torch`` package.

    The package is located, not imported. Raises FileNotFoundError when it is not installed.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the CLIP vocabulary {VOCAB_FILE_NAME} was not given and open_clip_torch is not installed to take it "
            "from; pass the path of the file (it ships in the open_clip_torch wheel and in OpenAI's CLIP repository)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / VOCAB_FILE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"open_clip is installed but has no {VOCAB_FILE_NAME} in {list(spec.submodule_search_locations)}; "
        "pass the path of the vocabulary file"
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (CLIP's base vocabulary, in id order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, map(chr, code_points)))


@lru_cache(maxsize=1)
def _fix_text():
    """ftfy's ``fix_text`` when ftfy is installed (open_clip requires it); otherwise NFC with a warning."""
    try:
        import ftfy
    except ImportError:
        warnings.warn(
            "ftfy is not installed: CLIP text is cleaned with Unicode NFC only, so ids can differ from open_clip's "
            "for text that ftfy repairs (mojibake, curly quotes, ligatures, full-width letters); pip install ftfy",
            stacklevel=3,
        )
        return lambda text: unicodedata.normalize("NFC", text)
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """open_clip's default ``clean="lower"``: ftfy, HTML unescape (twice), whitespace runs to one space, lower case."""
    text = _fix_text()(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} is not a gzipped CLIP BPE vocabulary ({VOCAB_FILE_NAME}): {error}") from error
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ValueError(
            f"{path} does not hold CLIP's {NUM_MERGES} BPE merges (found {len(merges)} lines, or lines that are not "
            "pairs); it must be open_clip's / OpenAI's bpe_simple_vocab_16e6.txt.gz"
        )
    return merges  # type: ignore[return-value]


def _build_hf_tokenizer(merges: list[tuple[str, str]]) -> HFTokenizer:
    """The full pipeline as one Hugging Face tokenizer, ids in open_clip's order."""
    base = list(bytes_to_unicode().values())
    vocab_list = base + [symbol + END_OF_WORD for symbol in base] + ["".join(merge) for merge in merges]
    vocab_list += [START_OF_TEXT_TOKEN, END_OF_TEXT_TOKEN]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    assert len(vocab) == VOCAB_SIZE and vocab[END_OF_TEXT_TOKEN] == END_OF_TEXT_ID
    tokenizer = HFTokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD))
    # Standalone use only: this class cleans text in Python and encodes without a normaliser.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # invert=True + "removed": keep the matches, drop what lies between them (whitespace), like re.findall.
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    tokenizer.add_special_tokens([START_OF_TEXT_TOKEN, END_OF_TEXT_TOKEN])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_OF_TEXT_TOKEN} $A {END_OF_TEXT_TOKEN}",
        special_tokens=[(START_OF_TEXT_TOKEN, START_OF_TEXT_ID), (END_OF_TEXT_TOKEN, END_OF_TEXT_ID)],
    )
    return tokenizer


class ClipTokenizer:
    """OpenAI CLIP's BPE tokenizer with open_clip's ids: pad 0, start-of-text 49406, end-of-text 49407.

    Create one with :meth:`from_bpe_file` (the ``bpe_simple_vocab_16e6.txt.gz`` vocabulary,
    by default the one inside the installed open_clip package) or :meth:`load` (a
    ``tokenizer.json`` it saved); call it on a string or a list of strings to get
    ``(ids, padding_mask)``.
    """

    vocab_size: int = VOCAB_SIZE
    pad_id: int = PAD_ID
    sot_id: int = START_OF_TEXT_ID
    eot_id: int = END_OF_TEXT_ID

    def __init__(self, tokenizer: HFTokenizer):
        """Wrap a Hugging Face tokenizer built by this module; raises ValueError for any other."""
        found = (
            tokenizer.token_to_id(START_OF_TEXT_TOKEN),
            tokenizer.token_to_id(END_OF_TEXT_TOKEN),
            tokenizer.get_vocab_size(with_added_tokens=True),
        )
        if found != (START_OF_TEXT_ID, END_OF_TEXT_ID, VOCAB_SIZE):
            raise ValueError(
                "this is not a CLIP tokenizer: (start-of-text id, end-of-text id, vocabulary size) = "
                f"{found}, expected {(START_OF_TEXT_ID, END_OF_TEXT_ID, VOCAB_SIZE)}; "
                "build one with ClipTokenizer.from_bpe_file()"
            )
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        # Encoding works on text already cleaned in Python and split into open_clip's words.
        self._encoder = HFTokenizer.from_str(tokenizer.to_str())
        self._encoder.normalizer = None
        self._splitter = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)

    # Construction -----------------------------------------------------------------

    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike | None = None) -> ClipTokenizer:
        """Build from ``bpe_simple_vocab_16e6.txt.gz``; ``None`` takes it from the installed open_clip package."""
        path = Path(path) if path is not None else default_vocab_path()
        if not path.is_file():
            raise FileNotFoundError(f"no CLIP BPE vocabulary at {path}")
        return cls(_build_hf_tokenizer(_read_merges(path)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClipTokenizer:
        """Load a ``tokenizer.json`` written by :meth:`save` (a file, or a directory holding one)."""
        return cls(read_tokenizer_json(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (``path`` is the file, or a directory to put it in); returns the file."""
        return write_tokenizer_json(self._tokenizer, path)

    # Encoding ---------------------------------------------------------------------

    def words(self, text: str) -> list[str]:
        """The cleaned text split into open_clip's words (before BPE)."""
        return [word for word, _ in self._splitter.pre_tokenize_str(clean_text(text))]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without start/end tokens, padding or truncation (open_clip's ``encode``)."""
        word_lists = [self.words(text) for text in texts]
        ids: list[list[int]] = [[] for _ in word_lists]
        nonempty = [row for row, words in enumerate(word_lists) if words]
        if nonempty:
            encodings = self._encoder.encode_batch(
                [word_lists[row] for row in nonempty], is_pretokenized=True, add_special_tokens=False
            )
            for row, encoding in zip(nonempty, encodings):
                ids[row] = encoding.ids
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode captions to fixed-length ids, as open_clip's ``tokenize``.

        Args:
            texts: one caption or a list of them.
            context_length: length L of every row, start and end-of-text tokens included.

        Returns:
            ids: int64 (B, L), ``[sot] + tokens + [eot] + [0] * n``; a long caption keeps its
                first L - 2 tokens and ends with end-of-text at position L - 1.
            padding_mask: bool (B, L), True at the positions after end-of-text. (Pad id 0
                is also the token "!", so the mask cannot be read from the ids.)
        """
        return encode_rows(texts, context_length, self.tokenize, pad_id=PAD_ID, sot_id=START_OF_TEXT_ID,
                           eot_id=END_OF_TEXT_ID)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one row of ids, special tokens and padding after end-of-text left out."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if END_OF_TEXT_ID in ids:
            ids = ids[: ids.index(END_OF_TEXT_ID)]
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size})"
