"""Chatterbox Turbo's meanflow S3Gen vs the reference chatterbox-tts 0.1.7 ``S3Gen(meanflow=True)``
on identical random full-size weights, float32, CPU.

One random ``s3gen_meanflow.safetensors`` in the released layout is loaded into both (the
reference strictly, as ``ChatterboxTurboTTS.from_local`` does). The reference draws its start
noise inside ``inference`` (the generated part as ``noised_mels``, the prompt part with
``randn_like``); the test captures the start state its Euler solver receives and gives it to our
model as ``flow_noise``, and re-seeds the vocoder's draws so ``seeds=[K]`` reproduces them.
The checkpoint and the capture hooks are the package's fixtures (``conftest.py``), shared with the
end-to-end case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("chatterbox")  # the reference implementation (parity venv only)

from chatterbox.models.s3gen import S3Gen as ReferenceS3Gen  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from chatterbox_s3gen import S3Gen, S3GenConfig  # noqa: E402

REL_TOL = 1e-4
MIXER = "flow.decoder.estimator.time_embed_mixer.weight"


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    return float((ours - reference).abs().max() / reference.abs().max())


# (voice seconds, voice sample rate, speech tokens, vocoder seed): a 44.1 kHz voice (resampled on
# both paths) whose prompt mel has an odd frame count; the tokens end in the three silence tokens
# Turbo appends. One case: a full-size CPU flow costs seconds per step, and the CI budget is 40 s
# (the standard decoder's parity covers more voices through the same encoder and vocoder).
CASES = [(1.7, 44_100, 24, 7)]
SILENCE = [4299, 4299, 4299]


def _tokens(count: int, seed: int) -> list[int]:
    ids = torch.randint(
        0, 6561, (count - len(SILENCE),), generator=torch.Generator().manual_seed(seed)
    )
    return ids.tolist() + SILENCE


@pytest.fixture(scope="module")
def checkpoint_dir(meanflow_s3gen_file: Path) -> Path:
    return meanflow_s3gen_file


@pytest.fixture(scope="module")
def ours(checkpoint_dir: Path) -> S3Gen:
    return S3Gen.from_checkpoint(checkpoint_dir.parent)


@pytest.fixture(scope="module")
def reference(checkpoint_dir: Path) -> ReferenceS3Gen:
    torch.manual_seed(0)
    model = ReferenceS3Gen(meanflow=True)
    model.load_state_dict(load_file(str(checkpoint_dir)), strict=True)
    return model.eval()


def test_random_file_has_the_reference_layout(
    checkpoint_dir: Path, reference: ReferenceS3Gen
) -> None:
    """Every tensor of the reference's ``S3Gen(meanflow=True)`` (name, shape, dtype) and no other,
    and our model's state dict is that same layout."""
    written = load_file(str(checkpoint_dir))
    expected = {k: (tuple(v.shape), v.dtype) for k, v in reference.state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in written.items()} == expected
    assert MIXER in written and written[MIXER].shape == (1024, 2048)
    with torch.random.fork_rng(devices=[]):
        mine = S3Gen(S3GenConfig(meanflow=True)).state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in mine.items()} == expected


def _reference_run(
    reference: ReferenceS3Gen,
    tokens: list[int],
    ref_dict: dict,
    vocoder_seed: int,
    capture: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``reference.inference`` (Turbo's call: ``n_cfm_timesteps=2``) with the Euler start state
    and the vocoder input captured; the vocoder's draws start from ``vocoder_seed``."""
    with capture(reference, vocoder_seed) as captured:
        torch.manual_seed(1000 + vocoder_seed)
        wav, _ = reference.inference(
            speech_tokens=torch.tensor(tokens), ref_dict=dict(ref_dict), n_cfm_timesteps=2
        )
    assert torch.allclose(captured["steps"], torch.tensor([0.0, 0.5, 1.0]))  # 2 linear steps
    return captured["x0"], captured["mel"][0], wav[0]


@pytest.mark.parametrize(("seconds", "sample_rate", "count", "seed"), CASES)
def test_meanflow_mel_and_wav_match_reference(
    ours: S3Gen,
    reference: ReferenceS3Gen,
    seconds: float,
    sample_rate: int,
    count: int,
    seed: int,
    voice_recording: Any,
    reference_meanflow_capture: Any,
) -> None:
    wav_in = voice_recording(seconds, sample_rate, seed)
    voice = ours.embed_ref(wav_in, sample_rate)
    ref_dict = reference.embed_ref(wav_in.clone(), sample_rate)
    tokens = _tokens(count, seed)
    x0, ref_mel, ref_wav = _reference_run(
        reference, tokens, ref_dict, seed, reference_meanflow_capture
    )

    ours.flow_noise = x0  # the reference's start state for this utterance, prompt part included
    assert ours.flow_steps == 2
    (mel,) = ours.synthesize_mels([tokens], [voice])
    (wav,) = ours.vocode([mel], seeds=[seed])  # synthesize() = synthesize_mels() + vocode()
    assert mel.shape == ref_mel.shape and wav.shape == ref_wav.shape
    mel_error, wav_error = _relative_error(mel, ref_mel), _relative_error(wav, ref_wav)
    print(
        f"\n[parity] meanflow {count} tokens after {seconds} s at {sample_rate} Hz: "
        f"mel rel err {mel_error:.2e}, wav rel err {wav_error:.2e}"
    )
    assert mel_error < REL_TOL
    assert wav_error < REL_TOL
