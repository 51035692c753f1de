"""conds.pt I/O against the reference layout recorded in tests/data/conds_layout.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.errors import CheckpointError

LAYOUT = json.loads((Path(__file__).parent / "data" / "conds_layout.json").read_text())


def assert_matches_reference_layout(conds: dict, *, t3_tokens: int, s3gen_tokens: int) -> None:
    """Same keys, None entries, dtypes and ranks as the reference's conds.pt; the token-count
    dimensions follow the voice's length (the recorded file used a 3 s voice: 75 tokens)."""
    assert set(conds) == {"t3", "gen"}
    for group in ("t3", "gen"):
        assert set(conds[group]) == set(LAYOUT[group]), group
        for key, spec in LAYOUT[group].items():
            value = conds[group][key]
            if spec == "None":
                assert value is None, f"{group}.{key}"
                continue
            assert isinstance(value, torch.Tensor), f"{group}.{key}"
            assert str(value.dtype) == f"torch.{spec['dtype']}", f"{group}.{key}"
            assert value.dim() == len(spec["shape"]), f"{group}.{key}"
    assert conds["t3"]["speaker_emb"].shape == (1, 256)
    assert conds["t3"]["cond_prompt_speech_tokens"].shape == (1, t3_tokens)
    assert conds["t3"]["emotion_adv"].shape == (1, 1, 1)
    assert conds["gen"]["prompt_token"].shape == (1, s3gen_tokens)
    assert conds["gen"]["prompt_token_len"].tolist() == [s3gen_tokens]
    assert conds["gen"]["prompt_feat"].shape[2] == 80
    assert conds["gen"]["prompt_feat"].shape[1] in (2 * s3gen_tokens, 2 * s3gen_tokens + 1)
    assert conds["gen"]["embedding"].shape == (1, 192)
    norm = float(conds["t3"]["speaker_emb"].norm())
    assert norm == pytest.approx(LAYOUT["ve_embedding_norm"], abs=1e-4)


def _voice(t3_tokens: int = 75, s3gen_tokens: int = 75) -> VoiceConditionals:
    generator = torch.Generator().manual_seed(0)
    embedding = torch.rand(256, generator=generator)
    return VoiceConditionals(
        speaker_embedding=embedding / embedding.norm(),
        t3_prompt_tokens=torch.randint(0, 6561, (t3_tokens,), generator=generator),
        s3gen_prompt_tokens=torch.randint(0, 6561, (s3gen_tokens,), generator=generator),
        s3gen_prompt_mel=torch.randn(2 * s3gen_tokens, 80, generator=generator),
        s3gen_speaker_embedding=torch.randn(192, generator=generator),
        exaggeration=0.5,
    )


def test_saved_file_has_the_reference_layout_and_loads_back(tmp_path: Path) -> None:
    voice = _voice(t3_tokens=150, s3gen_tokens=250)
    path = voice.save(tmp_path / "conds.pt")
    raw = torch.load(path, weights_only=True)
    assert_matches_reference_layout(raw, t3_tokens=150, s3gen_tokens=250)
    assert raw["t3"]["emotion_adv"].item() == 0.5
    loaded = VoiceConditionals.load(path)
    for field in (
        "speaker_embedding",
        "t3_prompt_tokens",
        "s3gen_prompt_tokens",
        "s3gen_prompt_mel",
        "s3gen_speaker_embedding",
    ):
        torch.testing.assert_close(getattr(loaded, field), getattr(voice, field))


def test_t3_prompt_longer_than_375_tokens_is_refused() -> None:
    """375 tokens (15 s) is the longest prompt of any model (Turbo's; the others take 150)."""
    assert _voice(t3_tokens=375).t3_prompt_tokens.numel() == 375
    with pytest.raises(ValueError, match="at most 375"):
        _voice(t3_tokens=376)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["gen"].pop("embedding"), r"missing gen\.embedding"),
        (
            lambda c: c["t3"].update(speaker_emb=torch.zeros(1, 128)),
            r"t3\.speaker_emb .*\(1, 128\)",
        ),
        (lambda c: c["gen"].update(prompt_token=torch.zeros(1, 5)), r"gen\.prompt_token .*float32"),
        (lambda c: c.pop("gen"), "keys 't3' and 'gen'"),
    ],
)
def test_malformed_conds_name_the_bad_entry(tmp_path: Path, edit, message: str) -> None:
    conds = _voice().to_dict()
    edit(conds)
    torch.save(conds, tmp_path / "conds.pt")
    with pytest.raises(CheckpointError, match=message):
        VoiceConditionals.load(tmp_path / "conds.pt")


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "conds.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable conds.pt") as error:
        VoiceConditionals.load(tmp_path / "conds.pt")
    # torch's reason only, without its advice to load with weights_only=False (which would run
    # the file's code) or to file an issue with torch.
    message = str(error.value)
    assert "Unsupported operand" in message
    assert "weights_only" not in message and "Please file" not in message


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    # It was 'voice conditionals file not found' for a directory that is there (e.g. voices.pt/).
    (tmp_path / "voices.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"voices\.pt is a directory; give a \.pt voice file"):
        VoiceConditionals.load(tmp_path / "voices.pt")
    with pytest.raises(CheckpointError, match="voice conditionals file not found"):
        VoiceConditionals.load(tmp_path / "missing.pt")
