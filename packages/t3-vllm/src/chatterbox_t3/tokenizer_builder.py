"""Builds tokenizers in the real checkpoints' layouts, for random checkpoints and tests.

English (:func:`build_english_tokenizer`, ``tokenizer.json``) and multilingual
(:func:`build_multilingual_tokenizer`, ``grapheme_mtl_merged_expanded_v1.json``, with
:func:`write_cangjie_table` for ``Cangjie5_TC.json``).

The real file cannot be downloaded in tests, so random checkpoints get a tokenizer with the same
structure: a BPE model (``[UNK]`` for unknown characters, no normaliser), a ``Whitespace``
pre-tokenizer, 704 ids, and the real special ids (``[STOP]`` 0, ``[UNK]`` 1, ``[SPACE]`` 2,
``[START]`` 255, the paralinguistic tags 604-639 and placeholders 695-703). Its merges are learned
deterministically from a small built-in English text, so common words become few tokens as in the
real vocabulary; the exact ids of ordinary words differ from the real file.
"""

from __future__ import annotations

import itertools
import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from chatterbox_t3.config import MULTILINGUAL_FILES

MULTILINGUAL_TOKENIZER_FILE = MULTILINGUAL_FILES.tokenizer
"""The multilingual checkpoint's text tokenizer (next to its T3 weights)."""
assert MULTILINGUAL_FILES.cangjie is not None
CANGJIE_FILE = MULTILINGUAL_FILES.cangjie
"""The multilingual checkpoint's Chinese glyph -> Cangjie code table."""

VOCAB_SIZE = 704
SPECIAL_IDS = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[START]": 255}
TAGS = (
    "[UH] [UM] [giggle] [laughter] [guffaw] [inhale] [exhale] [sigh] [cry] [bark] [howl] [meow] "
    "[singing] [music] [whistle] [humming] [gasp] [groan] [whisper] [mumble] [sniff] [sneeze] "
    "[cough] [snore] [chew] [sip] [clear_throat] [kiss] [shhh] [gibberish] [fr] [es] [de] [it] "
    "[ipa] [end_of_label]"
).split()
FIRST_TAG_ID = 604
FIRST_SPECIAL_PLACEHOLDER = 55  # [PLACEHOLDER55] .. [PLACEHOLDER63] are ids 695..703
LOWER_ALPHABET = "!'(),-./:;?" + string.ascii_lowercase  # ids 3..39, as in the real file
OTHER_CHARACTERS = (
    '"#$%&*+' + string.digits + "<=>@" + string.ascii_uppercase + "[\\]^_`{|}~"
    "‐‑‒–—―‖‗‘’‚‛“”„‟\u00a0…āōéèêàâçñüöäßíóúáï"
)

_CORPUS = """
the quick brown fox jumps over the lazy dog while the people in the other room were talking about
what they would do if they could have anything that they wanted and there was nothing that anyone
could say which would change their minds about the weather or the way that things were going in the
world today when everything seemed to be moving faster than ever before and nobody knew where it
would end but they all agreed that it was important to know about these things and to think about
them with care because some of them would matter for a very long time after this evening was over
she said that he had been working on the station for years and that his mother had told him to come
back home for the summer when the house was quiet and the garden was full of flowers which they had
planted together in the spring of the year before the storm came through the village and took away
the old bridge that everyone used to cross the river on their way to the market in the morning
there are many reasons why people like to read books about history and science and stories about
adventure and friendship and love and they often share them with their friends and family at dinner
i think that you should try to understand how this works before you decide what to do next because
once you start it is hard to stop and you might find that the answer was there all along waiting for
someone like you to notice it and say something about it out loud in front of everyone in the room
hello world this is a test of the speech system speaking clearly and naturally with good rhythm
""".split()


def _learn_merges(words: Counter[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE merge learning; ties go to the lexicographically smallest pair."""
    splits = {word: tuple(word) for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, pieces in splits.items():
            for pair in itertools.pairwise(pieces):
                pairs[pair] += words[word]
        if not pairs:
            break
        best_count = max(pairs.values())
        best = min(pair for pair, count in pairs.items() if count == best_count)
        merges.append(best)
        merged = best[0] + best[1]
        for word, pieces in splits.items():
            out: list[str] = []
            i = 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            splits[word] = tuple(out)
    return merges


def build_english_tokenizer() -> Tokenizer:
    """A deterministic tokenizer in the real layout (same result on every call)."""
    vocab: dict[str, int] = dict(SPECIAL_IDS)
    tag_ids = {tag: FIRST_TAG_ID + i for i, tag in enumerate(TAGS)}
    placeholder_ids = {
        f"[PLACEHOLDER{k}]": FIRST_TAG_ID + len(TAGS) + k
        for k in range(FIRST_SPECIAL_PLACEHOLDER + 9)
    }
    reserved = set(vocab.values()) | set(tag_ids.values()) | set(placeholder_ids.values())
    free_ids = iter(i for i in range(VOCAB_SIZE) if i not in reserved)
    for char in LOWER_ALPHABET:
        vocab[char] = next(free_ids)
    words = Counter(w for w in _CORPUS if re.fullmatch(r"[a-z]+", w))
    merge_slots = SPECIAL_IDS["[START]"] - len(vocab) + 1  # fill ids up to 254 with merges
    merges = _learn_merges(words, merge_slots)
    for left, right in merges:
        vocab[left + right] = next(free_ids)
    for char in OTHER_CHARACTERS:
        vocab[char] = next(free_ids)
    # Remaining ordinary slots keep the real file's placeholder names.
    vocab |= {name: i for name, i in placeholder_ids.items()}
    vocab |= tag_ids
    unused = sorted(set(range(VOCAB_SIZE)) - set(vocab.values()))
    for k, token_id in enumerate(unused):
        vocab[f"[UNUSED{k}]"] = token_id
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]", fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = [*SPECIAL_IDS, *TAGS] + [
        f"[PLACEHOLDER{k}]" for k in range(FIRST_SPECIAL_PLACEHOLDER, FIRST_SPECIAL_PLACEHOLDER + 9)
    ]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tokenizer


# ------------------------------------------------------------------------------- multilingual

MULTILINGUAL_VOCAB_SIZE = 2454
"""``T3Config.multilingual().text_tokens_dict_size``: ids 0..2453."""

# Language tokens at the real file's ids, in its order (ids 728 and 731 are ordinary graphemes).
# The file also has tokens for languages the released model does not offer (sk, cs, ...).
_LANGUAGE_TOKEN_IDS = {
    **{
        f"[{code}]": 708 + i
        for i, code in enumerate(
            "en nl pt el tr sv no da ru pl sk cs hu ar hi ja ko zh ro bg - ea sw - vi".split()
        )
        if code != "-"
    },
    "[fi]": 2107,
    "[ta]": 2108,
    "[ms]": 2109,
    "[he]": 2110,
}
# The real file marks [he] special and the other language tokens as ordinary added tokens; both
# kinds are matched in the text before pre-tokenisation, so this only matters for decoding.
_SPECIAL_LANGUAGE_TOKENS = {"[he]"}
_TAG_LANGUAGE_TOKENS = {"[fr]", "[es]", "[de]", "[it]"}
_CANGJIE_TOKEN_IDS = {
    **{f"[cj_{c}]": 733 + i for i, c in enumerate(string.ascii_lowercase + "012")},
    "[cj_3]": 2052,
    "[cj_4]": 2053,
    **{f"[cj_{d}]": 2059 + i for i, d in enumerate("56789")},
    "[cj_.]": 2064,
}
_MULTILINGUAL_SPECIAL_IDS = {
    **SPECIAL_IDS,
    **{f"[PLACEHOLDER{k}]": 640 + k for k in range(FIRST_SPECIAL_PLACEHOLDER, 64)},
    "[MASK]": 704,
    "[PAD]": 705,
    "[SEP]": 706,
    "[CLS]": 707,
    "[PLACEHOLDER45]": 2065,
}


def _block(first: int, last: int) -> str:
    """The assigned characters of a Unicode range (unassigned code points have no name)."""
    return "".join(chr(c) for c in range(first, last + 1) if unicodedata.name(chr(c), ""))


# The scripts of the 23 languages as they reach the tokenizer: lowercased and NFKD-decomposed
# (accented Latin, Greek and Cyrillic letters arrive as base letter + combining mark, Hangul
# syllables as conjoining jamo, kana with dakuten as kana + combining voiced mark).
_MULTILINGUAL_BLOCKS = (
    (0x00A1, 0x00FF),  # Latin-1 Supplement (æ ø ß ¿ ¡ ...)
    (0x0100, 0x017F),  # Latin Extended-A (ı ł œ ...)
    (0x0180, 0x024F),  # Latin Extended-B
    (0x0300, 0x036F),  # Combining Diacritical Marks
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x0591, 0x05F4),  # Hebrew, with niqqud and cantillation
    (0x0600, 0x06FF),  # Arabic
    (0x0900, 0x097F),  # Devanagari
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2010, 0x205E),  # General Punctuation
    (0x3000, 0x303F),  # CJK Symbols and Punctuation (、 。 「 」 ...)
    (0x3041, 0x309F),  # Hiragana (with the combining voiced sound marks)
    (0x30A0, 0x30FF),  # Katakana
)


def _multilingual_characters() -> Iterator[str]:
    """Every single-character grapheme of the generated vocabulary, in id order."""
    yield from OTHER_CHARACTERS
    for first, last in _MULTILINGUAL_BLOCKS:
        yield from _block(first, last)


def multilingual_added_tokens() -> dict[str, tuple[int, bool]]:
    """The real file's added tokens: content -> (id, special). Special ids, the paralinguistic
    tags, the language tokens ``[xx]`` and the Cangjie tokens ``[cj_*]``."""
    tags = {tag: FIRST_TAG_ID + i for i, tag in enumerate(TAGS)}
    # [fr] [es] [de] [it] sit among the English tags; in this file they are language tokens.
    tokens = {t: (i, True) for t, i in _MULTILINGUAL_SPECIAL_IDS.items()}
    tokens |= {t: (i, t not in _TAG_LANGUAGE_TOKENS) for t, i in tags.items()}
    tokens |= {t: (i, t in _SPECIAL_LANGUAGE_TOKENS) for t, i in _LANGUAGE_TOKEN_IDS.items()}
    tokens |= {t: (i, True) for t, i in _CANGJIE_TOKEN_IDS.items()}
    return tokens


def build_multilingual_tokenizer() -> Tokenizer:
    """A deterministic tokenizer in the layout of ``grapheme_mtl_merged_expanded_v1.json``: a BPE
    (``[UNK]`` for unknown characters, no normaliser, ``Whitespace`` pre-tokenizer) with 2,454
    ids, the real ids of the special tokens, language tokens, tags and Cangjie tokens, the English
    alphabet and merges at the English builder's ids, and the letters, marks and punctuation of
    the 23 languages' scripts in the remaining ids (which differ from the real file's)."""
    added = multilingual_added_tokens()
    vocab = {token: token_id for token, (token_id, _) in added.items()}
    free_ids = iter(i for i in range(MULTILINGUAL_VOCAB_SIZE) if i not in set(vocab.values()))
    for char in LOWER_ALPHABET:
        vocab[char] = next(free_ids)
    words = Counter(w for w in _CORPUS if re.fullmatch(r"[a-z]+", w))
    merges = _learn_merges(words, SPECIAL_IDS["[START]"] - len(LOWER_ALPHABET) - 3)
    for left, right in merges:
        vocab[left + right] = next(free_ids)
    for char in _multilingual_characters():
        if char not in vocab:
            vocab[char] = next(free_ids)
    for k, token_id in enumerate(free_ids):
        vocab[f"[UNUSED{k}]"] = token_id
    assert sorted(vocab.values()) == list(range(MULTILINGUAL_VOCAB_SIZE))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]", fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_tokens(
        [
            AddedToken(t, special=special, normalized=False)
            for t, (_, special) in sorted(added.items(), key=lambda item: item[1][0])
        ]
    )
    return tokenizer


# Common Chinese characters (simplified and traditional forms of everyday words), for the
# synthetic Cangjie table: sentences written with them encode without [UNK].
COMMON_CHINESE = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对"
    "可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公"
    "同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正"
    "名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并"
    "内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表"
    "原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风"
    "战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫"
    "连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士"
    "转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像"
    "找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜"
    "离虽坏兴奇园散步吧习朋欢們這個時說來為會東車國學長門書問開見話電點語氣讀場愛嗎謝"
)


def _cangjie_code(glyph: str) -> str:
    """A synthetic code of 1-5 letters a-z, derived from the code point (the real codes describe
    the glyph's shape; any deterministic letters serve the tokenizer's purpose in tests)."""
    value = ord(glyph) * 2654435761 % 26**5
    letters = []
    for _ in range(1 + ord(glyph) % 5):
        value, digit = divmod(value, 26)
        letters.append(string.ascii_lowercase[digit])
    return "".join(letters)


def cangjie_entries(glyphs: Iterable[str] = COMMON_CHINESE) -> list[str]:
    """``"glyph\tcode"`` lines in the real file's format. Every seventh glyph takes the code of
    the glyph before it, so shared codes (which the converter disambiguates with an index
    suffix: the second glyph of a code gets "1") occur as in the real table."""
    entries: list[str] = []
    previous = ""
    for i, glyph in enumerate(dict.fromkeys(glyphs)):
        code = previous if i % 7 == 6 else _cangjie_code(glyph)
        entries.append(f"{glyph}\t{code}")
        previous = code
    return entries


def write_cangjie_table(path: str | Path, glyphs: Iterable[str] = COMMON_CHINESE) -> Path:
    """Write a synthetic ``Cangjie5_TC.json`` (a JSON list of ``"glyph\tcode"`` strings) for
    ``glyphs`` to ``path`` (a file, or a directory to write :data:`CANGJIE_FILE` in)."""
    target = Path(path)
    if target.is_dir():
        target = target / CANGJIE_FILE
    target.write_text(
        json.dumps(cangjie_entries(glyphs), ensure_ascii=False, indent=0) + "\n", encoding="utf-8"
    )
    return target
