"""chatterbox-s3gen vs the reference chatterbox-tts 0.1.2 S3Gen on identical random full-size weights.

One random checkpoint in the released layout is loaded into both implementations (the reference
with ``strict=False`` as ``ChatterboxTTS.from_local`` does; our CFM noise copied into its
``rand_noise``). Both run float32 on CPU; ``torch.manual_seed(K)`` precedes every reference call
and our calls get ``seeds=[K]``. Run: ``.nox/parity/bin/python -m pytest tests/parity/test_s3gen_parity.py``."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch

pytest.importorskip("chatterbox")  # the reference implementation (parity venv only)

from chatterbox.models.s3gen import S3Gen as ReferenceS3Gen  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from chatterbox_s3gen import S3Gen, S3GenReference, write_random_s3gen_checkpoint  # noqa: E402

REL_TOL = 1e-4
EMBEDDING_TOL = 1e-5


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    return float((ours - reference).abs().max() / reference.abs().max())


def _tone_reference(seconds: float, sample_rate: int) -> torch.Tensor:
    """Three partials plus seeded noise (the reference facts' synthetic speaker)."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    wav = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 440 * t)
    wav = wav + 0.1 * torch.sin(2 * math.pi * 1234 * t)
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return (wav + 0.01 * noise).float()


def _chirp_reference(seconds: float, sample_rate: int) -> torch.Tensor:
    """A 150 -> 600 Hz chirp with 4 Hz amplitude modulation and louder noise, at 44.1 kHz."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    phase = 2 * math.pi * (150 * t + (600 - 150) / (2 * seconds) * t**2)
    envelope = 0.35 * (0.6 + 0.4 * torch.sin(2 * math.pi * 4 * t))
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    return (envelope * torch.sin(phase) + 0.03 * noise).float()


VOICES = {
    "tones-24k": (lambda: _tone_reference(1.5, 24_000), 24_000),
    "chirp-44k": (lambda: _chirp_reference(2.3, 44_100), 44_100),
}
# (voice, number of speech tokens, vocoder seed). Full-size CPU inference costs about a second per
# 25 mel frames here, so "long" is modest: 80 new tokens after a 57-token prompt = 274 frames.
CASES = [
    ("tones-24k", 12, 7),
    ("chirp-44k", 80, 8),
]


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory):
    # 1 GB of weights: RAM-backed /dev/shm when the machine has it (disk writes are the slow part).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="s3gen-parity-", dir=shm) as directory:
        path = write_random_s3gen_checkpoint(directory, size="full", seed=1234).parent
        yield path


@pytest.fixture(scope="session")
def ours(checkpoint_dir) -> S3Gen:
    return S3Gen.from_checkpoint(checkpoint_dir, noise_seed=99)


@pytest.fixture(scope="session")
def reference(checkpoint_dir, ours: S3Gen) -> ReferenceS3Gen:
    torch.manual_seed(0)
    model = ReferenceS3Gen()
    result = model.load_state_dict(
        load_file(str(checkpoint_dir / "s3gen.safetensors")), strict=False
    )
    assert not result.missing_keys and not result.unexpected_keys, result
    model.eval()
    model.flow.decoder.rand_noise = ours.flow_noise.clone()
    return model


@pytest.fixture(scope="session")
def voices(ours: S3Gen, reference: ReferenceS3Gen) -> dict[str, tuple[S3GenReference, dict]]:
    out = {}
    for name, (make, sample_rate) in VOICES.items():
        wav = make()
        out[name] = (
            ours.embed_ref(wav, sample_rate),
            reference.embed_ref(wav.clone(), sample_rate),
        )
    return out


def _tokens(count: int, seed: int) -> list[int]:
    return torch.randint(0, 6561, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("voice", sorted(VOICES))
def test_embed_ref_matches_reference(voices, voice: str) -> None:
    ours, ref = voices[voice]
    assert torch.equal(ours.prompt_tokens, ref["prompt_token"][0])
    assert ref["prompt_feat"].shape[1] == ours.num_prompt_frames
    mel_error = float((ours.prompt_mel - ref["prompt_feat"][0]).abs().max())
    emb_error = float((ours.speaker_embedding - ref["embedding"][0]).abs().max())
    print(
        f"\n[parity] embed_ref {voice}: tokens {ours.num_prompt_tokens} identical, "
        f"prompt mel max|diff| {mel_error:.2e}, embedding max|diff| {emb_error:.2e}"
    )
    assert mel_error < 1e-4
    assert emb_error < EMBEDDING_TOL
    # Our conds dict is the reference's layout.
    conds = ours.to_conds_dict()
    assert set(conds) == set(ref)
    for key, value in ref.items():
        if value is None:
            assert conds[key] is None
        else:
            assert conds[key].shape == value.shape and conds[key].dtype == value.dtype, key


@pytest.mark.slow
@pytest.mark.parametrize("max_len", [None, 40])
def test_tokenize_matches_reference(ours, reference, max_len) -> None:
    """The T3 prompt path: 16 kHz audio -> tokens, optionally capped (chatterbox uses 150)."""
    wav = _chirp_reference(2.0, 16_000)
    expected, _ = reference.tokenizer.forward([wav.numpy()], max_len=max_len)
    assert torch.equal(ours.tokenize(wav, max_len=max_len), expected[0])


def _reference_run(reference: ReferenceS3Gen, tokens: list[int], ref_dict: dict, seed: int):
    """``reference.inference`` with its vocoder input captured."""
    captured = {}
    vocoder_inference = reference.mel2wav.inference

    def spy(speech_feat, cache_source):
        captured["mel"] = speech_feat.clone()
        return vocoder_inference(speech_feat=speech_feat, cache_source=cache_source)

    reference.mel2wav.inference = spy
    try:
        torch.manual_seed(seed)
        wav, _ = reference.inference(speech_tokens=torch.tensor([tokens]), ref_dict=dict(ref_dict))
    finally:
        del reference.mel2wav.inference
    return captured["mel"][0], wav[0]


@pytest.fixture(scope="session")
def reference_outputs(reference, voices):
    return {
        (voice, count): _reference_run(reference, _tokens(count, count), voices[voice][1], seed)
        for voice, count, seed in CASES
    }


@pytest.mark.slow
@pytest.mark.parametrize(("voice", "count", "seed"), CASES)
def test_single_utterance_matches_reference(
    ours, voices, reference_outputs, voice, count, seed
) -> None:
    ref_mel, ref_wav = reference_outputs[(voice, count)]
    our_ref = voices[voice][0]
    tokens = _tokens(count, count)
    (mel,) = ours.synthesize_mels([tokens], [our_ref])
    (wav,) = ours.vocode([mel], seeds=[seed])  # synthesize() = synthesize_mels() + vocode()
    assert mel.shape == ref_mel.shape and wav.shape == ref_wav.shape
    mel_error, wav_error = _relative_error(mel, ref_mel), _relative_error(wav, ref_wav)
    print(
        f"\n[parity] {voice} x {count} tokens: mel rel err {mel_error:.2e}, wav rel err {wav_error:.2e} "
        f"({wav.numel()} samples)"
    )
    assert mel_error < REL_TOL
    assert wav_error < REL_TOL


@pytest.mark.slow
def test_batched_run_matches_reference(ours, voices, reference_outputs) -> None:
    """Both cases in one padded batch (different lengths and voices) still match the reference."""
    tokens = [_tokens(count, count) for _, count, _ in CASES]
    refs = [voices[voice][0] for voice, _, _ in CASES]
    mels = ours.synthesize_mels(tokens, refs)
    wavs = ours.vocode(mels, seeds=[seed for _, _, seed in CASES])
    for (voice, count, _), mel, wav in zip(CASES, mels, wavs):
        ref_mel, ref_wav = reference_outputs[(voice, count)]
        mel_error, wav_error = _relative_error(mel, ref_mel), _relative_error(wav, ref_wav)
        print(
            f"\n[parity] batched {voice} x {count}: mel rel err {mel_error:.2e}, wav rel err {wav_error:.2e}"
        )
        assert mel_error < REL_TOL
        assert wav_error < REL_TOL


@pytest.mark.slow
def test_reference_conds_dict_drives_our_model(ours, voices, reference_outputs) -> None:
    """A conds.pt-style dict made by the reference, through the one-call synthesize(), gives the
    reference's audio."""
    voice, count, seed = CASES[0]
    ref_mel, ref_wav = reference_outputs[(voice, count)]
    conds = S3GenReference.from_conds_dict(voices[voice][1])
    (wav,) = ours.synthesize([_tokens(count, count)], [conds], seeds=[seed])
    assert _relative_error(wav, ref_wav) < REL_TOL


def test_mel_filterbanks_equal_librosa() -> None:
    """Our Slaney filterbanks are librosa's, bit for bit (tokenizer 128x201 and S3Gen 80x961)."""
    import librosa
    import numpy as np

    from chatterbox_s3gen.audio import slaney_mel_filterbank

    ours = slaney_mel_filterbank(16_000, 400, 128)
    assert np.array_equal(ours, librosa.filters.mel(sr=16_000, n_fft=400, n_mels=128))
    ours = slaney_mel_filterbank(24_000, 1920, 80, 0.0, 8000.0)
    assert np.array_equal(
        ours, librosa.filters.mel(sr=24_000, n_fft=1920, n_mels=80, fmin=0, fmax=8000)
    )
