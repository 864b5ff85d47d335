"""Transcript normalisation and the character vocabulary of a CTC head.

All text that meets a vocabulary (training transcripts, LM text, serving's hotwords) goes through `nfc` first:
`é` typed as one code point (NFC) or as `e` + a combining accent (NFD) is then one character, so a
vocabulary never holds both forms and a word is one LM unigram, whichever form a file or a client used.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable

# transformers' run_speech_recognition_ctc.py default, less the apostrophe, which English words need.
DEFAULT_CHARS_TO_IGNORE = ",?.!-;:\"“%‘”�"
WORD_DELIMITER = "|"
UNK = "[UNK]"
PAD = "[PAD]"  # doubles as the CTC blank
_SPACES = re.compile(r"\s+")


def nfc(text: str) -> str:
    """Unicode canonical composition (NFC): one code point per accented letter where Unicode has one."""
    return unicodedata.normalize("NFC", text)


def normalize(text: str, chars_to_ignore: str = DEFAULT_CHARS_TO_IGNORE) -> str:
    """NFC (`nfc`), lower-case, drop ignored characters, fold runs of white space to one space."""
    text = nfc(text)
    if chars_to_ignore:
        chars_to_ignore = nfc(chars_to_ignore)
        text = text.translate({ord(c): None for c in chars_to_ignore})
    return _SPACES.sub(" ", text.lower()).strip()


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Sorted characters of the (normalised) texts, space as '|', then [UNK] and [PAD]."""
    chars = sorted({c for t in texts for c in t} - {" "} | {WORD_DELIMITER})
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[UNK] = len(vocab)
    vocab[PAD] = len(vocab)
    return vocab


def unknown_chars(texts: Iterable[str], vocab: dict[str, int]) -> Counter:
    """Characters of the texts that the vocabulary lacks, with their counts (space maps to '|')."""
    counts: Counter = Counter()
    for t in texts:
        for c in t:
            if c != " " and c not in vocab:
                counts[c] += 1
    return counts
