"""Builds an English BPE tokenizer in the real ``tokenizer.json`` layout, for random checkpoints.

The real file cannot be downloaded in tests, so random checkpoints get a tokenizer with the same
structure: a BPE model (``[UNK]`` for unknown characters, no normaliser), a ``Whitespace``
pre-tokenizer, 704 ids, and the real special ids (``[STOP]`` 0, ``[UNK]`` 1, ``[SPACE]`` 2,
``[START]`` 255, the paralinguistic tags 604-639 and placeholders 695-703). Its merges are learned
deterministically from a small built-in English text, so common words become few tokens as in the
real vocabulary; the exact ids of ordinary words differ from the real file.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

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
