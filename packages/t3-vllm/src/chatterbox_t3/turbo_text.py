"""Chatterbox Turbo's text front end: its ``punc_norm`` and the GPT-2 BPE tokenizer.

Reproduces chatterbox-tts 0.1.7 ``tts_turbo.py``: a ``punc_norm`` variant that keeps ``...``,
`` - `` and ``;`` (the English one rewrites them), then the checkpoint's Hugging Face GPT-2
tokenizer (``AutoTokenizer`` on the checkpoint directory) with no start/stop text tokens.
Paralinguistic tags such as ``[laugh]`` are added tokens of that tokenizer and pass through as
single ids. Byte-level BPE represents every character, so nothing is unknown. The one deliberate
difference: text longer than the tokenizer's ``model_max_length`` is an error here
(:class:`~chatterbox_t3.errors.TextTooLongError`, raised by the engine) where the reference
silently truncates it.

:func:`write_turbo_tokenizer` writes a generated GPT-2-style byte-level BPE tokenizer in the real
file layout (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``added_tokens.json``,
``special_tokens_map.json``) for random test checkpoints: the Hub is not reachable from tests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from chatterbox_t3.config import TURBO_FILES
from chatterbox_t3.errors import (
    CheckpointError,
    ConfigurationError,
    MissingCheckpointFileError,
    UnsupportedLanguageError,
)
from chatterbox_t3.text import SENTENCE_ENDINGS, normalize_punctuation

logger = logging.getLogger(__name__)

# Turbo's replacements, in the reference's order ("...", " - " and ";" are kept as they are).
_TURBO_PUNCTUATION_REPLACEMENTS = (
    ("…", ", "),
    (":", ","),
    ("—", "-"),
    ("–", "-"),
    (" ,", ","),
    ("“", '"'),
    ("”", '"'),
    ("‘", "'"),
    ("’", "'"),
)


def turbo_punc_norm(text: str) -> str:
    """chatterbox-tts 0.1.7 ``tts_turbo.punc_norm``, step for step."""
    return normalize_punctuation(
        text, SENTENCE_ENDINGS, replacements=_TURBO_PUNCTUATION_REPLACEMENTS, strip_silent=False
    )


class TurboTokenizer:
    """The checkpoint's GPT-2 tokenizer (``AutoTokenizer``, as the reference loads it)."""

    def __init__(self, directory: str | Path, *, text_vocab_size: int) -> None:
        from transformers import AutoTokenizer

        directory = Path(directory)
        for name in (TURBO_FILES.tokenizer, *TURBO_FILES.tokenizer_extra):
            if not (directory / name).is_file():
                raise MissingCheckpointFileError(
                    f"checkpoint file not found: {directory / name} (part of Chatterbox Turbo's "
                    "GPT-2 text tokenizer)"
                )
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(directory))
        except Exception as error:  # transformers raises OSError, ValueError, JSONDecodeError...
            raise CheckpointError(
                f"the GPT-2 tokenizer files in {directory} ({', '.join(TURBO_FILES.required[2:])})"
                f" cannot be loaded ({type(error).__name__}: {error}); download them again"
            ) from None
        if len(self._tokenizer) != text_vocab_size:
            raise CheckpointError(
                f"the tokenizer in {directory} has {len(self._tokenizer)} entries, the Turbo T3 "
                f"weights have {text_vocab_size} text embeddings; the files do not belong together"
            )
        self.model_max_length = int(self._tokenizer.model_max_length)
        self.added_tokens = tuple(sorted(self._tokenizer.get_added_vocab()))
        """Tokens added to GPT-2's vocabulary (``<|endoftext|>`` and the tags)."""

    def encode_text(self, text: str, language: str | None = None) -> list[int]:
        """Ids of ``turbo_punc_norm(text)`` (no start/stop tokens: Turbo has none)."""
        if language not in (None, "en"):
            raise UnsupportedLanguageError(
                language,
                ["en"],
                "Chatterbox Turbo speaks English only (the multilingual model "
                "speaks 23 languages)",
            )
        # verbose=False: no "Token indices sequence length is longer than..." warning (the
        # callers hold the ids to the text positions and say so in their own words).
        ids = self._tokenizer(turbo_punc_norm(text), add_special_tokens=False, verbose=False)[
            "input_ids"
        ]
        return [int(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids))


# ------------------------------------------------------------------------------ generated files
TURBO_TAGS = (
    "[laugh]",
    "[chuckle]",
    "[cough]",
    "[sigh]",
    "[gasp]",
    "[groan]",
    "[sniff]",
    "[shush]",
    "[clear throat]",
    "[breath]",
    "[inhale]",
    "[exhale]",
    "[whisper]",
    "[yawn]",
    "[sneeze]",
    "[hum]",
    "[giggle]",
    "[cry]",
    "[scream]",
)
"""Added tokens of the generated tokenizers: 19 tags, so the full one has the real 50,276
entries. ``[laugh]``, ``[cough]`` and ``[chuckle]`` are tags of the real tokenizer; the others
stand in for its remaining added tokens (their names are not known offline)."""
END_OF_TEXT = "<|endoftext|>"
GPT2_MERGES = 50000
TINY_MERGES = 700


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, in GPT-2's vocabulary order: printable Latin-1
    bytes stand for themselves, the others (control characters, space, ...) are shifted to
    code points from 256 on (so a space is ``Ġ``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def _byte_symbol(byte: int) -> str:
    alphabet = _byte_alphabet()
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    if byte in printable:
        return chr(byte)
    return alphabet[len(printable) + [b for b in range(256) if b not in printable].index(byte)]


def generated_bpe(num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merge list: the 256 byte symbols, then ``num_merges``
    two-symbol merges (pairs of frequent English letters first), then ``<|endoftext|>``."""
    alphabet = _byte_alphabet()
    frequent = "etaoinshrdlucmfwypvbgkjqxz"
    order = [_byte_symbol(ord(" ")), *frequent, *frequent.upper(), *"0123456789.,'!?-\""]
    rank = {symbol: i for i, symbol in enumerate(order)}
    ranked = sorted(alphabet, key=lambda s: (rank.get(s, len(order)), alphabet.index(s)))
    position = {symbol: i for i, symbol in enumerate(ranked)}
    pairs = sorted(
        ((a, b) for a in ranked for b in ranked),
        key=lambda p: (position[p[0]] + position[p[1]], position[p[0]]),
    )
    if num_merges > len(pairs):
        raise ConfigurationError(
            f"num_merges must be at most {len(pairs)} (two-symbol merges), got {num_merges}"
        )
    merges = pairs[:num_merges]
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[END_OF_TEXT] = len(vocab)
    return vocab, merges


def turbo_tokenizer_size(size: Literal["tiny", "full"]) -> int:
    """Entries of the generated tokenizer of ``size`` (full: the real 50,276)."""
    return 256 + (GPT2_MERGES if size == "full" else TINY_MERGES) + 1 + len(TURBO_TAGS)


def write_turbo_tokenizer(directory: str | Path, size: Literal["tiny", "full"] = "full") -> int:
    """Write a generated GPT-2 tokenizer directory's files into ``directory``; returns its size.

    The BPE files are generated here; ``transformers``' ``GPT2Tokenizer.save_pretrained`` writes
    the configuration files exactly as a GPT-2 Hub repository holds them.
    """
    from transformers import AddedToken, GPT2Tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = generated_bpe(GPT2_MERGES if size == "full" else TINY_MERGES)
    staging = directory / ".turbo-tokenizer"
    staging.mkdir(exist_ok=True)
    (staging / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (staging / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = GPT2Tokenizer(
        str(staging / "vocab.json"),
        str(staging / "merges.txt"),
        unk_token=END_OF_TEXT,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        model_max_length=1024,
    )
    tokenizer.add_tokens([AddedToken(tag, normalized=False) for tag in TURBO_TAGS])
    tokenizer.save_pretrained(str(directory))
    for path in staging.iterdir():
        path.unlink()
    staging.rmdir()
    expected = turbo_tokenizer_size(size)
    if len(tokenizer) != expected:
        raise ConfigurationError(
            f"the generated tokenizer has {len(tokenizer)} entries, expected {expected}"
        )
    return expected
