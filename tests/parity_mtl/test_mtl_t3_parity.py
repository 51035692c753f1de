"""Multilingual T3 on vLLM vs the reference chatterbox-tts 0.1.7 on identical random weights.

The reference runs ``ChatterboxMultilingualTTS.generate``'s T3 part: its ``punc_norm`` and
``MTLTokenizer`` (language token, per-language step), two CFG rows, and ``T3.inference`` with its
``AlignmentStreamAnalyzer`` reading heads (12, 15), (13, 11), (9, 2) through eager attention. Ours
runs the engine with the analyzer inside the vLLM step. Both load the same tiny multilingual
checkpoint (14 layers, so the three heads exist) in float32 and decode deterministically: the
reference with ``min_p=1.0`` (only the most likely token survives its MinP warper), ours with
``min_p=1.0`` or ``temperature=0``. The raw tokens, stop token included, must be identical; random
weights make the analyzer force the stop token (token repetition, long tail, alignment
repetition), so where it does the step is the reference's.

Also here: the teacher-forced logits of both CFG rows, and the aligned text positions behind word
timings, against the reference's.

Run: ``nox -s parity_mtl``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatterbox_t3 import T3Config, T3Engine, T3Request, T3SamplingParams
from chatterbox_t3.checkpoint import MULTILINGUAL_T3_FILE, write_random_t3_checkpoint
from vllm_cpu_test_support.checkpoints import random_t3_voice as make_voice

logger = logging.getLogger(__name__)

# The logits test reads T3's speech-head rows inside the engine-core process through vLLM's
# collective_rpc, which ships a function there only with this set (before the engine starts).
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

SEED = 4321
TINY_LLAMA = "Llama_tiny_mtl_parity"
STOP = 6562
MAX_NEW = 80
CHUNK_BUDGET = 48
CASES = [
    ("fr", "Bonjour tout le monde, comment allez-vous aujourd'hui?"),
    ("de", "Guten Morgen! Wie geht es dir heute?"),
    ("ja", "今日はいい天気ですね。"),
    ("zh", "我们今天去学校学习中文。"),
    ("ar", "مرحبا بكم في بيتنا."),
    ("ko", "안녕하세요, 만나서 반갑습니다."),
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("es", "¿Dónde está la biblioteca?"),
]
ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 384,
    "max_num_seqs": 8,
    "seed": 0,
}


def deterministic(
    cfg_weight: float = 0.5,
    exaggeration: float = 0.5,
    *,
    greedy: bool = False,
    repetition_penalty: float = 2.0,
    max_new_tokens: int = MAX_NEW,
) -> T3SamplingParams:
    """The multilingual defaults (repetition penalty 2.0), collapsed to one token per step."""
    return T3SamplingParams(
        temperature=0.0 if greedy else 0.8,
        min_p=1.0,
        top_p=1.0,
        repetition_penalty=repetition_penalty,
        cfg_weight=cfg_weight,
        exaggeration=exaggeration,
        max_new_tokens=max_new_tokens,
    )


class Reference:
    """chatterbox-tts 0.1.7's multilingual T3 (with its analyzer) on one of our checkpoints."""

    def __init__(self, checkpoint: Path, config: T3Config, tokenizer: Any) -> None:
        from chatterbox.models.t3 import T3
        from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
        from chatterbox.models.t3.modules.t3_config import T3Config as ReferenceT3Config

        hp = ReferenceT3Config.multilingual()
        LLAMA_CONFIGS[TINY_LLAMA] = {
            **LLAMA_CONFIGS["Llama_520M"],
            "num_hidden_layers": config.num_hidden_layers,
            "intermediate_size": config.intermediate_size,
        }
        hp.llama_config_name = TINY_LLAMA
        self.t3 = T3(hp)
        self.t3.load_state_dict(load_file(checkpoint / MULTILINGUAL_T3_FILE))
        self.t3.eval()
        self.tokenizer = tokenizer

    def text_tokens(self, text: str, language: str) -> torch.Tensor:
        import torch.nn.functional as F
        from chatterbox.mtl_tts import punc_norm

        tokens = self.tokenizer.text_to_tokens(punc_norm(text), language_id=language)
        tokens = torch.cat([tokens, tokens], dim=0)  # the multilingual generate's two rows
        tokens = F.pad(tokens, (1, 0), value=self.t3.hp.start_text_token)
        return F.pad(tokens, (0, 1), value=self.t3.hp.stop_text_token)

    def generate(self, request: T3Request) -> list[int]:
        from chatterbox.models.t3.modules.cond_enc import T3Cond

        p = request.params
        assert request.voice is not None and request.language is not None
        cond = T3Cond(
            speaker_emb=request.voice.speaker_embedding[None].clone(),
            cond_prompt_speech_tokens=request.voice.prompt_tokens[None].clone(),
            emotion_adv=p.exaggeration * torch.ones(1, 1, 1),
        )
        with torch.inference_mode():
            tokens = self.t3.inference(
                t3_cond=cond,
                text_tokens=self.text_tokens(request.text, request.language),
                max_new_tokens=p.max_new_tokens,
                temperature=0.8,
                cfg_weight=p.cfg_weight,
                repetition_penalty=p.repetition_penalty,
                min_p=1.0,
                top_p=1.0,
            )
        return [int(t) for t in tokens[0]]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: Any) -> None:
    monkeypatch_module.setenv(
        "CHATTERBOX_VLLM_CACHE", str(tmp_path_factory.mktemp("vllm-model-cache"))
    )


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, pkuseg_home: Path) -> Path:
    return write_random_t3_checkpoint(
        tmp_path_factory.mktemp("t3-mtl-tiny"), "tiny", seed=SEED, model="multilingual"
    )


@pytest.fixture(scope="module")
def reference(tiny_dir: Path, reference_mtl_tokenizer: Any) -> Reference:
    return Reference(tiny_dir, T3Config.from_checkpoint_dir(tiny_dir), reference_mtl_tokenizer)


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> Iterator[T3Engine]:
    """Prefix caching on and a small step budget: long prompts are prefilled in chunks."""
    engine = T3Engine.from_checkpoint(
        tiny_dir, **ENGINE, max_num_batched_tokens=CHUNK_BUDGET, num_gpu_blocks_override=256
    )
    yield engine
    engine.shutdown()


def assert_same_tokens(ours: Any, expected: list[int], request: T3Request) -> None:
    logger.info("parity %s %r: %s", request.language, request.text[:20], expected)
    assert list(ours.raw_token_ids) == expected, (
        f"language={request.language} text={request.text!r} params={request.params}\n"
        f"ours={list(ours.raw_token_ids)}\nreference={expected}"
    )


def forced_stops(tokens: list[int], max_new: int) -> bool:
    """Random weights never pick the stop token on their own: a stop before ``max_new`` tokens
    is the analyzer's."""
    return tokens[-1] == STOP and len(tokens) < max_new


# --------------------------------------------------------------------------------------- tests
# Five languages, each decoded one way (the two ways alternate; the mixed batch below runs all
# eight languages again with min_p=1): CI time is bounded.
SINGLE_CASES = [(*case, i % 2 == 1) for i, case in enumerate(CASES[:5])]


@pytest.mark.parametrize(
    ("language", "text", "greedy"),
    SINGLE_CASES,
    ids=[f"{c[0]}-{'temperature=0' if c[2] else 'min_p=1'}" for c in SINGLE_CASES],
)
def test_languages_one_at_a_time(engine, reference, language, text, greedy) -> None:
    request = T3Request(text, make_voice(7), deterministic(greedy=greedy), language=language)
    [ours] = engine.generate_speech_tokens([request])
    assert_same_tokens(ours, reference.generate(request), request)


def test_mixed_languages_in_one_batch(engine, reference) -> None:
    """Every language of :data:`CASES` at once, with different CFG weights, exaggerations and
    penalties: the analyzer's state is per request."""
    cfg_weights = [0.5, 0.0, 0.3, 1.0, 0.5, 0.0, 0.7, 0.5]
    exaggerations = [0.5, 0.25, 0.9, 0.5, 1.2, 0.5, 0.4, 0.6]
    penalties = [2.0, 2.0, 1.2, 1.5, 2.0, 1.3, 2.0, 1.1]
    requests = [
        T3Request(
            text,
            make_voice(100 + i, num_prompt_tokens=150 - 15 * i),
            deterministic(cfg_weights[i], exaggerations[i], repetition_penalty=penalties[i]),
            language=language,
        )
        for i, (language, text) in enumerate(CASES)
    ]
    ours = engine.generate_speech_tokens(requests)
    expected = [reference.generate(request) for request in requests]
    for out, tokens, request in zip(ours, expected, requests, strict=True):
        assert_same_tokens(out, tokens, request)
    # The comparison covers the analyzer's forced stops, not only runs to the token limit.
    assert any(forced_stops(tokens, MAX_NEW) for tokens in expected)


def test_requests_recomputed_after_preemption(tiny_dir, reference) -> None:
    """Preempted requests are recomputed; the analyzer resumes with the state it had."""
    engine = T3Engine.from_checkpoint(
        tiny_dir,
        **{**ENGINE, "max_num_seqs": 4},
        num_gpu_blocks_override=16,
        enable_prefix_caching=False,
        disable_log_stats=False,
    )
    try:
        requests = [
            T3Request(text, make_voice(200 + i), deterministic(0.5), language=language)
            for i, (language, text) in enumerate(CASES[:4])
        ]
        ours = engine.generate_speech_tokens(requests)
        metrics = engine.vllm.get_metrics()
        preempted = sum(int(m.value) for m in metrics if m.name == "vllm:num_preemptions")
        assert preempted > 0, "the KV cache was large enough: nothing was preempted"
    finally:
        engine.shutdown()
    for out, request in zip(ours, requests, strict=True):
        assert_same_tokens(out, reference.generate(request), request)


def test_stop_suppressed_until_the_text_is_spoken(
    tiny_dir, reference, reference_mtl_tokenizer, tmp_path
) -> None:
    """The stop token's head row becomes 1.01 x the row of the reference's first token (guided
    logits are linear in the row), so without the analyzer both would stop at the first step;
    the reference suppresses the stop while the aligned position is before the end of the text,
    and we must go on and stop exactly as it does."""
    request = T3Request(CASES[0][1], make_voice(3), deterministic(), language="fr")
    plain = reference.generate(request)
    for path in tiny_dir.iterdir():
        if path.is_file():
            (tmp_path / path.name).write_bytes(path.read_bytes())
    state = load_file(tmp_path / MULTILINGUAL_T3_FILE)
    state["speech_head.weight"][STOP] = state["speech_head.weight"][plain[0]] * 1.01
    save_file(state, str(tmp_path / MULTILINGUAL_T3_FILE))
    edited = Reference(tmp_path, T3Config.from_checkpoint_dir(tmp_path), reference_mtl_tokenizer)
    expected = edited.generate(request)
    assert len(expected) > 1, "the stop token was not suppressed at the first step"
    engine = T3Engine.from_checkpoint(tmp_path, **ENGINE)
    try:
        [ours] = engine.generate_speech_tokens([request])
    finally:
        engine.shutdown()
    assert_same_tokens(ours, expected, request)


# --------------------------------------------------------------------- logits and word timings
LOGITS_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
"""float32 on both sides; the attention kernels differ (vLLM's CPU attention vs eager)."""


def test_teacher_forced_logits_of_both_cfg_rows(engine, reference) -> None:
    """The conditional and unconditional speech-head rows of every step, ours and the
    reference's, on the same tokens (the reference's decode, which ours reproduces exactly, is
    the teacher): the rows before CFG, the analyzer, the penalty and the sampler."""

    def record(worker: Any) -> None:
        model = worker.model_runner.model
        model._parity_rows = []
        model._parity_hook = model.speech_head.register_forward_hook(
            lambda module, inputs, output: model._parity_rows.append(output.detach().cpu())
        )

    def collect(worker: Any) -> tuple[bytes, tuple[int, ...]]:
        model = worker.model_runner.model
        model._parity_hook.remove()
        rows = torch.cat(model._parity_rows).float()
        del model._parity_rows, model._parity_hook
        return rows.numpy().tobytes(), tuple(rows.shape)  # exact float32 through the RPC

    reference_rows: list[torch.Tensor] = []
    hook = reference.t3.speech_head.register_forward_hook(
        lambda module, inputs, output: reference_rows.append(output[:, -1].detach().clone())
    )
    request = T3Request(CASES[1][1], make_voice(11), deterministic(0.5), language="de")
    try:
        expected = reference.generate(request)
    finally:
        hook.remove()
    engine.vllm.collective_rpc(record)
    try:
        [ours] = engine.generate_speech_tokens([request])
    finally:
        [(data, shape)] = engine.vllm.collective_rpc(collect)
    assert_same_tokens(ours, expected, request)
    steps = len(expected)
    # One call per step on both sides ([1 row, 2 branches, vocab] here); ours also computes a
    # discarded row for each partial prefill chunk, which comes first.
    rows = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)
    ours_by_step = rows[-steps:]
    theirs_by_step = torch.stack(reference_rows[:steps])
    assert ours_by_step.shape == theirs_by_step.shape == (steps, 2, ours_by_step.shape[-1])
    for branch, name in enumerate(("conditional", "unconditional")):
        difference = (ours_by_step[:, branch] - theirs_by_step[:, branch]).abs().max().item()
        logger.info("teacher-forced %s row: max |ours - reference| = %.3g", name, difference)
        torch.testing.assert_close(
            ours_by_step[:, branch], theirs_by_step[:, branch], **LOGITS_TOLERANCE
        )
    # The two rows differ (the unconditional one has no text): both were really compared.
    assert not torch.allclose(theirs_by_step[:, 0], theirs_by_step[:, 1])


def _reference_positions(reference: Reference, request: T3Request) -> tuple[list[int], list[int]]:
    """The reference's tokens and its analyzer's ``text_position`` after every step (the
    position each token was sampled at)."""
    from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer

    positions: list[int] = []
    original = AlignmentStreamAnalyzer.step

    def step(self: Any, logits: torch.Tensor, next_token: Any = None) -> torch.Tensor:
        out = original(self, logits, next_token=next_token)
        positions.append(int(self.text_position))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentStreamAnalyzer, "step", step)
        tokens = reference.generate(request)
    assert len(positions) == len(tokens)
    return tokens, positions


def _expected_words(
    text_ids: list[int], space_id: int, positions: list[int]
) -> list[tuple[int, int]]:
    """Frames of each word by brute force: a word is a run of ids between [SPACE] (after the
    start and language tokens, before the stop token); it starts at the first frame whose
    highest position so far reaches its first token and ends at the first frame that has
    passed its last token."""
    words, current = [], []
    for index in range(2, len(text_ids) - 1):
        if text_ids[index] == space_id:
            if current:
                words.append((current[0], current[-1]))
            current = []
        else:
            current.append(index)
    if current:
        words.append((current[0], current[-1]))
    highest = [max(positions[: k + 1]) for k in range(len(positions))]

    def first(threshold: int) -> int:
        return next((k for k, h in enumerate(highest) if h >= threshold), len(positions))

    return [(first(a), first(b + 1)) for a, b in words]


def test_word_timings_follow_the_reference_analyzer(engine, reference) -> None:
    """Ours returns, per speech token, the text position the reference's analyzer aligned it
    to; the words' frames follow from those positions, monotonic, inside the audio, one per word
    of the text. (Random weights: this checks the plumbing, not how well speech aligns.)"""
    cases = [CASES[0], CASES[7]]  # two in one batch: CI time is bounded
    requests = [
        T3Request(
            text, make_voice(40 + i), deterministic(0.5), language=language, word_timings=True
        )
        for i, (language, text) in enumerate(cases)
    ]
    outputs = engine.generate_speech_tokens(requests)
    space_id = reference.tokenizer.tokenizer.token_to_id("[SPACE]")
    for request, ours in zip(requests, outputs, strict=True):
        tokens, positions = _reference_positions(reference, request)
        assert_same_tokens(ours, tokens, request)
        end = tokens.index(STOP) if STOP in tokens else len(tokens)
        kept = [i for i in range(end) if tokens[i] < 6561]
        expected_positions = [positions[i] for i in kept]
        assert list(ours.text_positions) == expected_positions
        text_ids = reference.text_tokens(request.text, request.language)[0].tolist()
        expected = _expected_words(text_ids, space_id, expected_positions)
        assert [(w.start, w.end) for w in ours.words] == expected
        assert [w.text for w in ours.words] == request.text.split()
        frames = [f for w in ours.words for f in (w.start, w.end)]
        assert frames == sorted(frames) and frames[-1] <= len(ours.token_ids)
        # Random weights still move the alignment through the text: not all words are empty.
        assert sum(w.end > w.start for w in ours.words) >= len(ours.words) // 2
