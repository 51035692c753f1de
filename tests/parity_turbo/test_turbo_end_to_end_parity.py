"""Chatterbox Turbo end to end: our product (``ChatterboxTTS.from_local`` on a Turbo checkpoint:
voice preparation, the text front end, T3 on vLLM, the three trailing silence tokens, the 2-step
meanflow S3Gen, the vocoder) from text and a voice file to the audio, vs chatterbox-tts 0.1.7's
``ChatterboxTurboTTS.from_local(...).generate`` on the same files, float32, CPU. Both without
the Perth watermark (perth's neural watermarker is not importable in the parity environment; it
is a separate last step on both sides, and the product's own tests cover it).

The checkpoint is the real file layout: the tiny random Turbo T3 (``turbo_tiny_dir``) and a
full-size random ``s3gen_meanflow.safetensors`` (the reference's S3Gen has one size). The
reference loads it with its own ``from_local``, its ``T3Config`` given the tiny text vocabulary and
backbone where it hard-codes the released ones; nothing else of its pipeline is touched but:

* greedy decoding on both sides (ours ``temperature=0``: the argmax of the penalised logits; the
  reference ``temperature=1, top_k=0, top_p=1`` with ``torch.multinomial`` replaced by the argmax,
  which is the same choice; with its top-k / top-p the reference picks its candidates before the
  penalty, see ``chatterbox_t3.sampling``), and the same token budget (its ``max_gen_len``);
* the reference draws its flow's start noise from the global RNG in every call, ours keeps one
  fixed noise (``S3Gen.flow_noise``): the reference's draw is captured and given to ours, and its
  vocoder is seeded as ours is for the request's seed.

The reference never splits text; the product splits long Turbo text into chunks (sentences packed
up to ``max_chunk_chars``), so the texts here are each one chunk (asserted): the fair comparison.

Run: ``nox -s parity_turbo``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
import torch

from chatterbox_t3.config import load_t3_config
from chatterbox_vllm import ChatterboxTTS
from chatterbox_vllm.audio import load_voice_audio
from chatterbox_vllm.voices import normalize_loudness
from vllm_cpu_test_support.settings import CHATTERBOX_ENGINE

REL_TOL = 1e-4  # the S3Gen parity's (tests/parity, tests/parity_turbo/test_meanflow_parity.py)
MAX_NEW = 20
SEED = 11
SILENCE = [4299, 4299, 4299]  # chatterbox-tts 0.1.7's S3GEN_SIL, three times
# A paralinguistic tag and three sentences, within one chunk of the test engine (60 characters).
TEXT = "[laugh] Well, that was fun. How are you? Fine, thanks!"


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.fixture(scope="module")
def checkpoint(
    turbo_tiny_dir: Path, meanflow_s3gen_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny Turbo T3's files and the full meanflow S3Gen in one directory (links)."""
    directory = tmp_path_factory.mktemp("turbo-end-to-end")
    for source in [*turbo_tiny_dir.iterdir(), meanflow_s3gen_file]:
        (directory / source.name).symlink_to(source)
    return directory


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory: pytest.TempPathFactory, voice_recording: Any) -> dict[str, Path]:
    """44.1 kHz float WAVs (both sides resample them to 24 kHz on load): 7 s (Turbo needs more
    than 5 s), and 16.5 s, past both of Turbo's windows (S3Gen's 10 s, T3's prompt 15 s). Both
    lengths are where librosa's resampled length has one sample more than n * 24000 / 44100."""
    directory = tmp_path_factory.mktemp("turbo-voices")
    files = {}
    for name, seconds, seed in [("short", 7.0, 5), ("long", 16.5, 6)]:
        files[name] = directory / f"{name}.wav"
        samples = voice_recording(seconds, 44_100, seed).numpy()
        soundfile.write(files[name], samples, 44_100, subtype="FLOAT")
    return files


@pytest.fixture(scope="module")
def reference(checkpoint: Path, reference_tiny_gpt2: str) -> Any:
    from chatterbox import tts_turbo

    vocabulary = load_t3_config(checkpoint).text_tokens_dict_size

    class TinyTurboT3Config(tts_turbo.T3Config):
        """``from_local``'s ``T3Config(text_tokens_dict_size=50276)`` for the tiny checkpoint:
        its text vocabulary, and its backbone where ``from_local`` names ``GPT2_medium``."""

        def __init__(self, text_tokens_dict_size: int) -> None:
            super().__init__(text_tokens_dict_size=vocabulary)

        @property
        def llama_config_name(self) -> str:
            return reference_tiny_gpt2

        @llama_config_name.setter
        def llama_config_name(self, name: str) -> None:
            pass

    class NoWatermark:
        def apply_watermark(self, wav: Any, sample_rate: int) -> Any:
            return wav

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tts_turbo, "T3Config", TinyTurboT3Config)
        patch.setattr(tts_turbo.perth, "PerthImplicitWatermarker", NoWatermark)
        return tts_turbo.ChatterboxTurboTTS.from_local(checkpoint, "cpu")


@pytest.fixture(scope="module")
def ours(checkpoint: Path, turbo_model_cache: Path) -> Iterator[ChatterboxTTS]:
    """The product as a user loads it, without the watermark; the CPU test engine's settings,
    Turbo's own step count."""
    options = {k: v for k, v in CHATTERBOX_ENGINE.items() if k != "cfm_steps"}
    with ChatterboxTTS.from_local(checkpoint, device="cpu", watermark=False, **options) as tts:
        assert tts.model == "turbo"
        yield tts


@contextlib.contextmanager
def reference_numerics() -> Iterator[None]:
    """The reference's ``norm_loudness`` computes ``wav * 10 ** (gain_db / 20)`` with the loudness
    pyloudnorm returns (a numpy float64): under the numpy < 2 it pins (value-based casting) the
    float32 voice stays float32, under numpy 2 (NEP 50; ours) it becomes float64 and its S3
    tokenizer then fails on the dtype. The loudness as a Python float gives numpy 2 the pinned
    behaviour (a float32 product with the gain rounded to float32), which is what is compared."""
    import pyloudnorm

    class Meter(pyloudnorm.Meter):
        def integrated_loudness(self, data: Any) -> float:
            return float(super().integrated_loudness(data))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyloudnorm, "Meter", Meter)
        yield


def _reference_generate(reference: Any, text: str, voice: Path, capture: Any) -> Any:
    """``ChatterboxTurboTTS.generate`` greedy, with its S3Gen call captured."""

    def argmax(probs: torch.Tensor, num_samples: int = 1, **_: Any) -> torch.Tensor:
        return probs.argmax(dim=-1, keepdim=True)

    t3 = reference.t3
    with (
        capture(reference.s3gen, SEED) as captured,
        reference_numerics(),
        torch.inference_mode(),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(torch, "multinomial", argmax)
        # The reference samples one token before its loop of max_gen_len steps.
        patch.setattr(
            t3, "inference_turbo", functools.partial(t3.inference_turbo, max_gen_len=MAX_NEW - 1)
        )
        torch.manual_seed(SEED)
        wav = reference.generate(
            text,
            audio_prompt_path=str(voice),
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            repetition_penalty=1.2,
        )
    captured["wav"] = wav[0]
    return captured


def test_text_and_voice_to_audio_match_reference(
    ours: ChatterboxTTS,
    reference: Any,
    voice_files: dict[str, Path],
    reference_meanflow_capture: Any,
) -> None:
    text, voice = TEXT, voice_files["short"]
    expected = _reference_generate(reference, text, voice, reference_meanflow_capture)
    decoded: list[list[int]] = []
    s3gen = ours._s3gen
    synthesize = s3gen.synthesize

    def synthesize_spy(tokens: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.extend([int(t) for t in lane] for lane in tokens)
        return synthesize(tokens, *args, **kwargs)

    s3gen.flow_noise = expected["x0"]  # the reference's start state for this utterance
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3gen, "synthesize", synthesize_spy)
        result = ours.generate(
            text,
            voice=str(voice),
            temperature=0.0,
            repetition_penalty=1.2,
            max_new_tokens=MAX_NEW,
            seed=SEED,
        )

    assert len(result.chunks) == 1, "the product split the text: not the reference's one call"
    reference_tokens = [int(t) for t in expected["tokens"]]
    assert reference_tokens[-3:] == SILENCE and len(reference_tokens) == MAX_NEW + 3
    assert list(result.speech_tokens[0].token_ids) == reference_tokens[:-3]
    assert decoded == [reference_tokens]  # what S3Gen got: T3's tokens and the trailing silence
    assert result.waveform.shape == expected["wav"].shape
    error = _relative_error(result.waveform, expected["wav"])
    print(f"\n[parity] turbo end to end: {MAX_NEW}+3 tokens, wav rel err {error:.2e}")
    assert error < REL_TOL


def test_voice_preparation_matches_reference(
    ours: ChatterboxTTS, reference: Any, voice_files: dict[str, Path]
) -> None:
    """A 16.5 s voice: loaded at 24 kHz and loudness-normalised to -27 LUFS sample for sample as
    the reference; S3Gen's reference from the first 10 s, T3's prompt tokens from the first 15 s
    (at most 375), the speaker embedding over all of it, within float tolerance."""
    import librosa

    expected_wav, _ = librosa.load(voice_files["long"], sr=24_000)  # prepare_conditionals' load
    loaded = load_voice_audio(voice_files["long"])
    torch.testing.assert_close(loaded, torch.from_numpy(expected_wav), rtol=0, atol=0)
    with reference_numerics():
        expected_wav = reference.norm_loudness(expected_wav, 24_000)
    torch.testing.assert_close(
        normalize_loudness(loaded, -27.0), torch.from_numpy(expected_wav), rtol=0, atol=0
    )

    voice = ours.prepare_voice(voice_files["long"])
    with reference_numerics(), torch.inference_mode():
        reference.prepare_conditionals(str(voice_files["long"]))
    t3, gen = reference.conds.t3, reference.conds.gen
    ours_gen = voice.s3gen.to_conds_dict()

    assert voice.t3.prompt_tokens.tolist() == t3.cond_prompt_speech_tokens[0].tolist()
    assert len(voice.t3.prompt_tokens) == 375  # 15 s at 25 tokens/s
    torch.testing.assert_close(voice.t3.speaker_embedding, t3.speaker_emb[0], rtol=1e-5, atol=1e-6)
    assert ours_gen["prompt_token"].tolist() == gen["prompt_token"].tolist()
    assert gen["prompt_feat"].shape[1] == 500  # 10 s of 24 kHz mel frames
    for name in ("prompt_feat", "embedding"):
        torch.testing.assert_close(ours_gen[name], gen[name], rtol=1e-5, atol=1e-5)
