"""T3 on vLLM vs the reference chatterbox-tts 0.1.2 on identical random weights.

Both sides load the same ``t3_cfg.safetensors`` (the reference with ``load_state_dict``), run in
float32, and decode deterministically: the reference with ``min_p=1.0`` (only the most likely token
survives its MinP warper; facts §6), ours with ``min_p=1.0`` through vLLM's random-sampling path or
with ``temperature=0`` (greedy). Every reference call gets a fresh ``T3Cond``. The speech tokens
must be identical, including with CFG on/off, different exaggerations, a prompt split by chunked
prefill, a batch of 8 mixed requests in one call, requests recomputed after preemption, and the
full-size (real layout) model.

Run: ``/work/main/.nox/parity/bin/python -m pytest tests/parity/test_t3_parity.py`` (or
``nox -s parity``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest.importorskip("chatterbox", reason="the reference chatterbox-tts 0.1.2 is not installed")

from safetensors.torch import load_file, save_file  # noqa: E402

from chatterbox_t3 import (  # noqa: E402
    T3Config,
    T3Engine,
    T3Request,
    T3SamplingParams,
    T3Voice,
    write_random_t3_checkpoint,
)
from chatterbox_t3.checkpoint import T3_FILE, TOKENIZER_FILE  # noqa: E402
from chatterbox_t3.conditioning import ConditioningEncoder  # noqa: E402
from chatterbox_t3.text import EnglishTokenizer, normalize_text  # noqa: E402
from chatterbox_t3.voice_encoder import VE_FILE, VoiceEncoder  # noqa: E402
from vllm_cpu_test_support.checkpoints import random_t3_voice as make_voice  # noqa: E402

logger = logging.getLogger(__name__)

SEED = 1234
TINY_LLAMA = "Llama_tiny_parity"
MAX_NEW = 30
TEXTS = [
    "Hello world",
    "how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "Wait... what did you say; really?",
    "It's a “quoted” phrase — with dashes.",
    "Numbers like 42 and 7 are fine!",
    "she said that he had been working on the station for years",
    "See you soon.",
]
LONG_TEXT = (
    "This is a much longer sentence, written so that its prompt needs more positions than one "
    "scheduler step of the chunked engine allows, which forces vLLM to split the prefill."
)
CHUNK_BUDGET = 48


def deterministic(
    cfg_weight: float = 0.5,
    exaggeration: float = 0.5,
    *,
    greedy: bool = False,
    repetition_penalty: float = 1.2,
    max_new_tokens: int = MAX_NEW,
) -> T3SamplingParams:
    """Our side: greedy, or the reference's sampling path collapsed by min_p=1.0."""
    return T3SamplingParams(
        temperature=0.0 if greedy else 0.8,
        min_p=1.0,
        top_p=1.0,
        repetition_penalty=repetition_penalty,
        cfg_weight=cfg_weight,
        exaggeration=exaggeration,
        max_new_tokens=max_new_tokens,
    )


# ------------------------------------------------------------------------------ the reference
class Reference:
    """chatterbox-tts 0.1.2's T3 + text front end, loaded from one of our checkpoints."""

    def __init__(self, checkpoint: Path, config: T3Config) -> None:
        from chatterbox.models.t3 import T3
        from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
        from chatterbox.models.t3.modules.t3_config import T3Config as ReferenceT3Config
        from chatterbox.models.tokenizers import EnTokenizer

        hp = ReferenceT3Config()
        if config.num_hidden_layers != 30 or config.intermediate_size != 4096:
            # The reference builds its backbone from LLAMA_CONFIGS[hp.llama_config_name].
            LLAMA_CONFIGS[TINY_LLAMA] = {
                **LLAMA_CONFIGS["Llama_520M"],
                "num_hidden_layers": config.num_hidden_layers,
                "intermediate_size": config.intermediate_size,
            }
            hp.llama_config_name = TINY_LLAMA
        torch.manual_seed(SEED)
        self.t3 = T3(hp)
        self.t3.load_state_dict(load_file(checkpoint / T3_FILE))
        self.t3.eval()
        self.tokenizer = EnTokenizer(str(checkpoint / TOKENIZER_FILE))

    def text_tokens(self, text: str, cfg_weight: float) -> torch.Tensor:
        import torch.nn.functional as F
        from chatterbox.tts import punc_norm

        tokens = self.tokenizer.text_to_tokens(punc_norm(text))
        if cfg_weight > 0.0:
            tokens = torch.cat([tokens, tokens], dim=0)
        tokens = F.pad(tokens, (1, 0), value=self.t3.hp.start_text_token)
        return F.pad(tokens, (0, 1), value=self.t3.hp.stop_text_token)

    def cond(self, voice: T3Voice, exaggeration: float) -> Any:
        from chatterbox.models.t3.modules.cond_enc import T3Cond

        return T3Cond(
            speaker_emb=voice.speaker_embedding[None].clone(),
            cond_prompt_speech_tokens=voice.prompt_tokens[None].clone(),
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        )

    def generate(self, request: T3Request) -> list[int]:
        """``ChatterboxTTS.generate``'s T3 call with min_p=1.0 (raw tokens, EOS included)."""
        p = request.params
        with torch.inference_mode():
            tokens = self.t3.inference(
                t3_cond=self.cond(request.voice, p.exaggeration),  # fresh T3Cond every call
                text_tokens=self.text_tokens(request.text, p.cfg_weight),
                max_new_tokens=p.max_new_tokens,
                temperature=0.8,
                cfg_weight=p.cfg_weight,
                repetition_penalty=p.repetition_penalty,
                min_p=1.0,
                top_p=1.0,
            )
        return tokens[0].tolist()


# ------------------------------------------------------------------------------------ fixtures
ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 512,
    "max_num_seqs": 8,
    "seed": 0,
}


@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ["CHATTERBOX_VLLM_CACHE"] = str(tmp_path_factory.mktemp("vllm-model-cache"))
    yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_t3_checkpoint(tmp_path_factory.mktemp("t3-tiny"), "tiny", seed=SEED)


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> Reference:
    return Reference(tiny_dir, T3Config.from_checkpoint_dir(tiny_dir))


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> Iterator[T3Engine]:
    """Prefix caching on and a small step budget: long prompts are prefilled in chunks."""
    engine = T3Engine.from_checkpoint(
        tiny_dir, **ENGINE, max_num_batched_tokens=CHUNK_BUDGET, num_gpu_blocks_override=256
    )
    yield engine
    engine.shutdown()


def assert_same_tokens(ours: Any, expected: list[int], request: T3Request) -> None:
    logger.info("parity %r cfg=%s: %s", request.text[:30], request.params.cfg_weight, expected)
    assert list(ours.raw_token_ids) == expected, (
        f"text={request.text!r} params={request.params}\nours={list(ours.raw_token_ids)}\n"
        f"reference={expected}"
    )


# --------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("greedy", [False, True], ids=["min_p=1", "temperature=0"])
@pytest.mark.parametrize("cfg_weight", [0.5, 0.0])
def test_cfg_on_and_off(engine, reference, cfg_weight, greedy) -> None:
    request = T3Request("Hello world", make_voice(1), deterministic(cfg_weight, greedy=greedy))
    [ours] = engine.generate_speech_tokens([request])
    assert_same_tokens(ours, reference.generate(request), request)


def test_exaggeration(engine, reference) -> None:
    requests = [
        T3Request("Hello world", make_voice(1), deterministic(0.5, exaggeration))
        for exaggeration in (0.3, 0.9)
    ]
    ours = engine.generate_speech_tokens(requests)
    # Random weights make exaggeration a weak input (one row, rescaled away by the first RMSNorm);
    # this text/voice is one where it changes the tokens, so the test can tell it is used.
    assert ours[0].raw_token_ids != ours[1].raw_token_ids
    for out, request in zip(ours, requests, strict=True):
        assert_same_tokens(out, reference.generate(request), request)


def test_prompt_split_by_chunked_prefill(engine, reference) -> None:
    request = T3Request(LONG_TEXT, make_voice(3), deterministic(0.5))
    [ours] = engine.generate_speech_tokens([request])
    assert ours.num_prompt_tokens > 2 * CHUNK_BUDGET
    assert_same_tokens(ours, reference.generate(request), request)


def test_batch_of_eight_mixed_requests(engine, reference) -> None:
    cfg_weights = [0.5, 0.0, 0.3, 1.0, 0.5, 0.0, 0.7, 0.5]
    exaggerations = [0.5, 0.25, 0.9, 0.5, 1.2, 0.5, 0.4, 0.6]
    penalties = [1.2, 1.2, 1.0, 1.5, 1.2, 1.3, 1.2, 1.1]
    requests = [
        T3Request(
            text,
            make_voice(100 + i, num_prompt_tokens=150 - 15 * i),
            deterministic(cfg_weights[i], exaggerations[i], repetition_penalty=penalties[i]),
        )
        for i, text in enumerate(TEXTS)
    ]
    ours = engine.generate_speech_tokens(requests)
    for out, request in zip(ours, requests, strict=True):
        assert_same_tokens(out, reference.generate(request), request)


def test_requests_recomputed_after_preemption(tiny_dir, reference) -> None:
    engine = T3Engine.from_checkpoint(
        tiny_dir,
        **{**ENGINE, "max_num_seqs": 4},
        num_gpu_blocks_override=14,  # 13 usable x 16 = 208 slots; 4 requests need ~4 x 90
        enable_prefix_caching=False,
        disable_log_stats=False,
    )
    try:
        requests = [
            T3Request(text, make_voice(200 + i), deterministic(0.5, max_new_tokens=40))
            for i, text in enumerate(TEXTS[:4])
        ]
        ours = engine.generate_speech_tokens(requests)
        metrics = engine.vllm.get_metrics()
        preempted = sum(int(m.value) for m in metrics if m.name == "vllm:num_preemptions")
        assert preempted > 0, "the KV cache was large enough: nothing was preempted"
    finally:
        engine.shutdown()
    for out, request in zip(ours, requests, strict=True):
        assert_same_tokens(out, reference.generate(request), request)


def test_stop_token(tiny_dir, reference, tmp_path) -> None:
    """Random weights never sample the stop token, so the checkpoint is edited: the stop token's
    head row becomes 1.01 x the row of the token the reference picks at step 5 (guided logits
    are linear in the row), and both implementations must stop at the same step."""
    request = T3Request("Hello world", make_voice(1), deterministic(0.5))
    plain = reference.generate(request)
    for path in tiny_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    state = load_file(tmp_path / T3_FILE)
    state["speech_head.weight"][6562] = state["speech_head.weight"][plain[5]] * 1.01
    save_file(state, str(tmp_path / T3_FILE))
    engine = T3Engine.from_checkpoint(tmp_path, **ENGINE)
    try:
        [ours] = engine.generate_speech_tokens([request])
    finally:
        engine.shutdown()
    expected = Reference(tmp_path, T3Config.from_checkpoint_dir(tmp_path)).generate(request)
    assert expected[-1] == 6562 and len(expected) < MAX_NEW  # the reference stopped too
    assert ours.finish_reason == "stop"
    assert_same_tokens(ours, expected, request)


@pytest.mark.slow
def test_full_size_model(tmp_path_factory) -> None:
    """The real layout (30 layers, 2.1 GB float32) on both sides."""
    full_dir = write_random_t3_checkpoint(tmp_path_factory.mktemp("t3-full"), "full", seed=SEED)
    requests = [
        T3Request("Hello world", make_voice(1), deterministic(0.5, max_new_tokens=20)),
        T3Request("See you soon.", make_voice(2), deterministic(0.0, max_new_tokens=12)),
    ]
    engine = T3Engine.from_checkpoint(full_dir, **{**ENGINE, "max_model_len": 256})
    try:
        ours = engine.generate_speech_tokens(requests)
    finally:
        engine.shutdown()
    reference = Reference(full_dir, T3Config())
    for out, request in zip(ours, requests, strict=True):
        assert_same_tokens(out, reference.generate(request), request)


# ------------------------------------------------------------------- components, one at a time
def test_text_front_end(tiny_dir) -> None:
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.tts import punc_norm

    ours = EnglishTokenizer(tiny_dir / TOKENIZER_FILE)
    theirs = EnTokenizer(str(tiny_dir / TOKENIZER_FILE))
    for text in [*TEXTS, LONG_TEXT, "", " leading space", "a - b ... c; d: e…", "“x” ‘y’ —z–"]:
        assert normalize_text(text) == punc_norm(text)
        normalised = punc_norm(text)
        assert ours.encode(normalised) == theirs.encode(normalised)


def test_conditioning(tiny_dir, reference) -> None:
    ours = ConditioningEncoder.from_checkpoint_dir(tiny_dir)
    for seed, exaggeration, length in [(1, 0.5, 150), (2, 0.9, 37), (3, 0.3, 1)]:
        voice = make_voice(seed, num_prompt_tokens=length)
        with torch.inference_mode():
            expected = reference.t3.prepare_conditioning(reference.cond(voice, exaggeration))[0]
        torch.testing.assert_close(ours(voice, exaggeration), expected, rtol=1e-6, atol=1e-6)


def _voice_sample(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / 16000) * (np.sin(2 * np.pi * 3 * t) > -0.3)
    wav = voiced + 0.01 * rng.standard_normal(t.shape)
    # Silence around the speech exercises the trim.
    return np.concatenate([np.zeros(8000), wav, np.zeros(6000)]).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.3, 2.0, 7.5])
def test_voice_encoder(tiny_dir, seconds) -> None:
    import librosa
    from chatterbox.models.voice_encoder import VoiceEncoder as ReferenceVoiceEncoder
    from chatterbox.models.voice_encoder.melspec import melspectrogram

    wav = _voice_sample(seconds, seed=int(seconds * 10))
    theirs = ReferenceVoiceEncoder()
    theirs.load_state_dict(load_file(tiny_dir / VE_FILE))
    theirs.eval()
    ours = VoiceEncoder.from_checkpoint_dir(tiny_dir)

    from chatterbox_t3.voice_encoder import mel_spectrogram, trim_silence

    trimmed = librosa.effects.trim(wav, top_db=20)[0]
    assert np.array_equal(trim_silence(wav, ours.config), trimmed)
    np.testing.assert_allclose(
        mel_spectrogram(trimmed, ours.config),
        melspectrogram(trimmed, theirs.hp).T,
        rtol=1e-5,
        atol=1e-7,
    )
    expected = torch.from_numpy(theirs.embeds_from_wavs([wav], sample_rate=16000)).mean(0)
    torch.testing.assert_close(ours.embed(wav), expected, rtol=1e-5, atol=1e-6)


def test_sampling_params_mirror_the_reference_defaults() -> None:
    import inspect

    from chatterbox.tts import ChatterboxTTS

    defaults = {
        name: p.default for name, p in inspect.signature(ChatterboxTTS.generate).parameters.items()
    }
    ours = T3SamplingParams()
    for name in (
        "repetition_penalty",
        "min_p",
        "top_p",
        "exaggeration",
        "cfg_weight",
        "temperature",
    ):
        assert getattr(ours, name) == defaults[name], name
    assert replace(ours, seed=1).seed == 1
