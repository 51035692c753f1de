"""Voice conditioning: T3Voice validation, the encoder's row structure, the LRU cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatterbox_t3 import T3Config, T3Voice
from chatterbox_t3.checkpoint import T3_FILE
from chatterbox_t3.conditioning import ConditioningCache, ConditioningEncoder
from chatterbox_t3.errors import InvalidVoiceError


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint: Path) -> ConditioningEncoder:
    return ConditioningEncoder.from_checkpoint_dir(tiny_checkpoint)


def test_voice_normalises_tensors_and_hashes_content(make_voice) -> None:
    voice = make_voice(0)
    batched = T3Voice(voice.speaker_embedding[None].double(), voice.prompt_tokens[None].int())
    assert batched.speaker_embedding.dtype == torch.float32
    assert batched.prompt_tokens.dtype == torch.int64 and batched.prompt_tokens.dim() == 1
    assert batched.content_hash == voice.content_hash
    assert make_voice(1).content_hash != voice.content_hash


@pytest.mark.parametrize(
    ("embedding", "tokens", "message"),
    [
        (torch.zeros(2, 256), torch.zeros(5, dtype=torch.long), "1-D float"),
        (torch.full((256,), float("nan")), torch.zeros(5, dtype=torch.long), "NaN"),
        (torch.zeros(256), torch.zeros(5), "integer"),
        (torch.zeros(256), torch.zeros(0, dtype=torch.long), "empty"),
        ([0.0] * 256, torch.zeros(5, dtype=torch.long), "torch tensors"),
    ],
)
def test_malformed_voices_are_rejected(embedding, tokens, message) -> None:
    with pytest.raises(InvalidVoiceError, match=message):
        T3Voice(embedding, tokens)


def test_voice_checks_sizes_against_the_model() -> None:
    config = T3Config()
    with pytest.raises(InvalidVoiceError, match="256"):
        T3Voice(torch.zeros(128), torch.zeros(5, dtype=torch.long)).validate_for(config)
    with pytest.raises(InvalidVoiceError, match="at most 150"):
        T3Voice(torch.zeros(256), torch.zeros(151, dtype=torch.long)).validate_for(config)
    with pytest.raises(InvalidVoiceError, match=r"\[0, 6561\)"):
        T3Voice(torch.zeros(256), torch.tensor([0, 6561])).validate_for(config)


def test_rows_are_speaker_perceiver_emotion(encoder, make_voice, tiny_checkpoint) -> None:
    voice, other = make_voice(0), make_voice(1)
    rows = encoder(voice, 0.5)
    assert rows.shape == (34, 1024)
    state = load_file(tiny_checkpoint / T3_FILE)
    # Row 0: the speaker projection alone.
    speaker = state["cond_enc.spkr_enc.weight"] @ voice.speaker_embedding
    torch.testing.assert_close(rows[0], speaker + state["cond_enc.spkr_enc.bias"])
    # Last row: the bias-free emotion projection of the exaggeration.
    torch.testing.assert_close(rows[-1], state["cond_enc.emotion_adv_fc.weight"][:, 0] * 0.5)
    # The perceiver rows see only the prompt tokens, the speaker row only the embedding.
    mixed = T3Voice(other.speaker_embedding, voice.prompt_tokens)
    mixed_rows = encoder(mixed, 0.5)
    torch.testing.assert_close(mixed_rows[1:33], rows[1:33])
    assert not torch.allclose(mixed_rows[0], rows[0])
    assert not torch.allclose(encoder(other, 0.5)[1:33], rows[1:33])
    # Exaggeration changes only the last row.
    louder = encoder(voice, 0.9)
    torch.testing.assert_close(louder[:-1], rows[:-1])
    assert not torch.allclose(louder[-1], rows[-1])


def test_short_prompts_are_resampled_to_the_same_number_of_rows(encoder, make_voice) -> None:
    assert encoder(make_voice(2, num_prompt_tokens=3), 0.5).shape == (34, 1024)


def test_cache_reuses_equal_voices_and_evicts_least_recent(encoder, make_voice) -> None:
    cache = ConditioningCache(encoder, max_entries=2)
    a, b, c = make_voice(0), make_voice(1), make_voice(2)
    first = cache.get(a, 0.5)
    same_content = T3Voice(a.speaker_embedding.clone(), a.prompt_tokens.clone())
    assert cache.get(same_content, 0.5) is first
    assert cache.get(a, 0.7) is not first  # exaggeration is part of the key
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)
    cache.get(b, 0.5)  # evicts (a, 0.5)
    cache.get(c, 0.5)
    assert len(cache) == 2
    again = cache.get(a, 0.5)
    assert again is not first and torch.equal(again, first)
