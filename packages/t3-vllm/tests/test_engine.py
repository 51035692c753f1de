"""T3 on the real vLLM V1 engine (CPU): batching, per-request CFG, chunked prefill, preemption,
prefix caching across voices, seeds, and input validation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatterbox_t3 import T3Engine, T3Output, T3Request, T3SamplingParams, T3Voice
from chatterbox_t3.checkpoint import T3_FILE
from chatterbox_t3.errors import (
    EmptyTextError,
    InvalidSamplingParameterError,
    InvalidVoiceError,
    MissingConditioningError,
    T3InputError,
    TextTooLongError,
    UnsupportedCharactersError,
)
from chatterbox_t3.sampling import valid_speech_tokens

GREEDY = T3SamplingParams(temperature=0.0, max_new_tokens=24)
LONG_TEXT = (
    "This sentence is long enough that its prompt cannot be prefilled in a single step of the "
    "constrained engine, so vLLM has to split it."
)
TEXTS = ["Hello world.", "How are you today?", "The weather is nice.", "See you soon!"]


@pytest.fixture(scope="module")
def constrained_engine(tiny_checkpoint: Path, tiny_engine_kwargs) -> Iterator[T3Engine]:
    """Tiny token budget (chunked prefill), tiny KV cache (preemption), no prefix caching."""
    kwargs = dict(tiny_engine_kwargs)
    kwargs.update(
        max_num_batched_tokens=40,  # >= 34: the conditioning item must fit one step
        num_gpu_blocks_override=13,  # (13 - 1 null block) x 16 = 192 token slots in all
        max_num_seqs=4,
        enable_prefix_caching=False,
        disable_log_stats=False,  # keeps vLLM's metrics (preemption counter)
    )
    engine = T3Engine.from_checkpoint(tiny_checkpoint, **kwargs)
    yield engine
    engine.shutdown()


def tokens(outputs: list[T3Output]) -> list[tuple[int, ...]]:
    return [o.raw_token_ids for o in outputs]


def preemptions(engine: T3Engine) -> int:
    return sum(int(m.value) for m in engine.vllm.get_metrics() if m.name == "vllm:num_preemptions")


def test_output_is_the_cleaned_up_raw_sequence(tiny_engine, make_voice) -> None:
    [out] = tiny_engine.generate_speech_tokens([T3Request("Hello world.", make_voice(0), GREEDY)])
    assert out.finished and out.finish_reason in ("stop", "length")
    assert 0 < len(out.raw_token_ids) <= 24
    if out.finish_reason == "length":
        assert len(out.raw_token_ids) == 24
    else:
        assert out.raw_token_ids[-1] == 6562
    assert out.token_ids == valid_speech_tokens(out.raw_token_ids, tiny_engine.config)
    assert all(0 <= t < 6561 for t in out.token_ids)
    # 34 conditioning + [START] + text + [STOP] + 2 BOS (CFG on by default)
    text_ids = tiny_engine.frontend.text_token_ids("Hello world.")
    assert out.num_prompt_tokens == 34 + len(text_ids) + 2


def test_a_batch_equals_its_requests_run_alone(tiny_engine, make_voice) -> None:
    requests = [
        T3Request(text, make_voice(i), T3SamplingParams(temperature=0.0, max_new_tokens=16))
        for i, text in enumerate(TEXTS)
    ]
    batched = tokens(tiny_engine.generate_speech_tokens(requests))
    alone = [tokens(tiny_engine.generate_speech_tokens([r]))[0] for r in requests]
    assert batched == alone
    assert len(set(batched)) == len(batched)


def test_cfg_weight_is_per_request(tiny_engine, make_voice) -> None:
    voice = make_voice(0)
    weights = [0.0, 0.5, 1.5]
    requests = [
        T3Request(
            LONG_TEXT, voice, T3SamplingParams(temperature=0.0, cfg_weight=w, max_new_tokens=24)
        )
        for w in weights
    ]
    batched = tiny_engine.generate_speech_tokens(requests)
    alone = [tiny_engine.generate_speech_tokens([r])[0] for r in requests]
    assert tokens(batched) == tokens(alone)
    # Different guidance gives different speech; no CFG uses a single start-of-speech token.
    assert len({o.raw_token_ids for o in batched}) == 3
    assert batched[0].num_prompt_tokens == batched[1].num_prompt_tokens - 1


def test_exaggeration_and_voice_steer_the_speech(tiny_engine, make_voice) -> None:
    voice = make_voice(2)
    text = "The quick brown fox jumps over the lazy dog."

    def run(voice, exaggeration: float) -> tuple[int, ...]:
        params = T3SamplingParams(temperature=0.0, exaggeration=exaggeration, max_new_tokens=16)
        [out] = tiny_engine.generate_speech_tokens([T3Request(text, voice, params)])
        return out.raw_token_ids

    assert run(voice, 0.3) != run(voice, 0.9)
    assert run(voice, 0.5) != run(make_voice(3), 0.5)


def test_prefix_caching_never_shares_blocks_between_voices(
    tiny_engine, constrained_engine, make_voice
) -> None:
    a, b = make_voice(10), make_voice(11)
    text = LONG_TEXT  # several full KV blocks of identical text after the conditioning
    requests = [T3Request(text, v, GREEDY) for v in (a, b)]
    expected = [tokens(constrained_engine.generate_speech_tokens([r]))[0] for r in requests]
    assert expected[0] != expected[1]
    # With prefix caching, A's cached blocks exist when B arrives (and vice versa).
    first = [tokens(tiny_engine.generate_speech_tokens([r]))[0] for r in requests]
    again = tokens(tiny_engine.generate_speech_tokens(requests[::-1]))[::-1]
    assert first == expected and again == expected


def test_chunked_prefill_gives_the_same_tokens(tiny_engine, constrained_engine, make_voice) -> None:
    request = T3Request(LONG_TEXT, make_voice(3), GREEDY)
    [chunked] = constrained_engine.generate_speech_tokens([request])
    assert chunked.num_prompt_tokens > 2 * 40  # at least three prefill steps
    assert chunked.raw_token_ids == tiny_engine.generate_speech_tokens([request])[0].raw_token_ids


def test_preempted_requests_recompute_to_the_same_tokens(
    tiny_engine, constrained_engine, make_voice
) -> None:
    params = T3SamplingParams(temperature=0.0, max_new_tokens=40)
    requests = [T3Request(t, make_voice(20 + i), params) for i, t in enumerate(TEXTS)]
    before = preemptions(constrained_engine)
    recomputed = tokens(constrained_engine.generate_speech_tokens(requests))
    assert preemptions(constrained_engine) > before  # 4 x ~85 tokens do not fit 192 slots
    assert recomputed == tokens(tiny_engine.generate_speech_tokens(requests))


def test_seeded_sampling_is_reproducible(tiny_engine, make_voice) -> None:
    voice = make_voice(5)

    def run(seed: int) -> tuple[int, ...]:
        params = T3SamplingParams(seed=seed, max_new_tokens=20)  # reference sampling defaults
        return tiny_engine.generate_speech_tokens([T3Request("Hello there.", voice, params)])[
            0
        ].raw_token_ids

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_seeded_prompts_beyond_vllms_cpu_step_budget(
    tiny_checkpoint, tiny_engine_kwargs, make_voice, monkeypatch
) -> None:
    """16 seeded ~290-token prompts at once: more than vLLM's own CPU step budget (4096 tokens for
    ``vllm.LLM``), which would split a prefill across steps, and vLLM 0.9.2's CPU worker cannot
    rewind a seeded generator after a partial prefill (the engine died). The engine's CPU default
    budget holds every sequence's full prompt, so all complete, as they do alone."""
    kwargs = {k: v for k, v in tiny_engine_kwargs.items() if k != "max_num_batched_tokens"}
    kwargs.update(max_num_seqs=16, num_gpu_blocks_override=16 * 320 // 16 + 1)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core here: no 9 s spawn
    engine = T3Engine.from_checkpoint(tiny_checkpoint, **kwargs)
    try:
        rng = random.Random(3)
        words = "apple river stone cloud maple dancer silver harbor window thunder".split()
        texts = [" ".join(rng.choice(words) for _ in range(55)) + "." for _ in range(16)]
        requests = [
            T3Request(
                text,
                make_voice(i, 40),
                T3SamplingParams(temperature=0.8, max_new_tokens=2, seed=i),
            )
            for i, text in enumerate(texts)
        ]
        batched = engine.generate_speech_tokens(requests)
        assert sum(o.num_prompt_tokens for o in batched) > 4096
        assert all(len(o.raw_token_ids) == 2 for o in batched)
        [alone] = engine.generate_speech_tokens(requests[:1])
        assert batched[0].raw_token_ids == alone.raw_token_ids
    finally:
        engine.shutdown()


# --------------------------------------------------------------------------------- bad input
def _bad_requests(voice: T3Voice) -> list[tuple[Any, type[Exception], str]]:
    long_text = "word " * 400  # ~800 text tokens: more than max_model_len=320 allows
    huge_text = "a b " * 1100  # > 2048 text tokens
    return [
        (T3Request("", voice), EmptyTextError, "empty"),
        (T3Request("  \n ", voice), EmptyTextError, "empty"),
        (T3Request(huge_text, voice), TextTooLongError, "at most 281 fit"),
        (T3Request(long_text, voice), TextTooLongError, "max_model_len=320 positions"),
        (T3Request("Costs 5€", voice), UnsupportedCharactersError, r"U\+20AC"),
        (T3Request("Hello.", None), MissingConditioningError, "no voice"),
        (T3Request("Hello.", "voice.wav"), InvalidVoiceError, "T3Voice"),  # type: ignore[arg-type]
        (
            T3Request("Hello.", T3Voice(torch.zeros(256), torch.zeros(200, dtype=torch.long))),
            InvalidVoiceError,
            "at most 150",
        ),
        (
            T3Request("Hello.", voice, T3SamplingParams(max_new_tokens=5000)),
            InvalidSamplingParameterError,
            "<= 4096",
        ),
        (
            T3Request("Hello.", voice, {"temperature": 0.5}),
            InvalidSamplingParameterError,
            "T3SamplingParams",
        ),  # type: ignore[arg-type]
        ("Hello.", T3InputError, "T3Request"),
    ]


def test_bad_input_is_rejected_and_the_engine_keeps_serving(tiny_engine, make_voice) -> None:
    voice = make_voice(0)
    good = T3Request("Hello world.", voice, GREEDY)
    [before] = tiny_engine.generate_speech_tokens([good])
    for request, error, message in _bad_requests(voice):
        with pytest.raises(error, match=message):
            tiny_engine.generate_speech_tokens([good, request])
    [after] = tiny_engine.generate_speech_tokens([good])
    assert after.raw_token_ids == before.raw_token_ids


def test_requests_are_limited_to_the_kv_cache(constrained_engine, make_voice) -> None:
    # 192 KV slots: a request may not outgrow them (vLLM would preempt it forever).
    voice = make_voice(1)
    params = T3SamplingParams(temperature=0.0, max_new_tokens=400)
    [out] = constrained_engine.generate_speech_tokens([T3Request(LONG_TEXT, voice, params)])
    assert out.finish_reason == "length"
    assert out.num_prompt_tokens + len(out.raw_token_ids) <= 192
    with pytest.raises(TextTooLongError, match="max_model_len=192 positions"):
        constrained_engine.generate_speech_tokens([T3Request(LONG_TEXT * 2, voice, params)])


def test_engine_owned_vllm_arguments_cannot_be_overridden(tiny_checkpoint) -> None:
    with pytest.raises(ValueError, match="worker_cls"):
        T3Engine.from_checkpoint(tiny_checkpoint, worker_cls="vllm.v1.worker.cpu_worker.CPUWorker")


# ------------------------------------------------------------------------------ stop token
STOP_STEP = 5


@pytest.fixture(scope="module")
def stopping_engine(
    tiny_checkpoint: Path, tiny_engine, tiny_engine_kwargs, make_voice, tmp_path_factory
) -> Iterator[tuple[T3Engine, T3Request]]:
    """The tiny model with the stop token's head row set to 1.01 x the row of the token it
    would pick at step 5: the guided logits are linear in that row, so the stop token wins
    exactly where that token would have (random weights never stop on their own)."""
    request = T3Request(
        "Hello world", make_voice(1), T3SamplingParams(temperature=0.0, max_new_tokens=30)
    )
    [plain] = tiny_engine.generate_speech_tokens([request])
    directory = tmp_path_factory.mktemp("t3-stopping")
    for path in tiny_checkpoint.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    state = load_file(directory / T3_FILE)
    head = state["speech_head.weight"]
    head[6562] = head[plain.raw_token_ids[STOP_STEP]] * 1.01
    save_file(state, str(directory / T3_FILE))
    engine = T3Engine.from_checkpoint(directory, **tiny_engine_kwargs)
    yield engine, request
    engine.shutdown()


def test_stop_token_ends_the_utterance(stopping_engine) -> None:
    engine, request = stopping_engine
    [out] = engine.generate_speech_tokens([request])
    assert out.finish_reason == "stop"
    assert len(out.raw_token_ids) == STOP_STEP + 1 and out.raw_token_ids[-1] == 6562
    assert 6562 not in out.token_ids
    assert out.token_ids == tuple(t for t in out.raw_token_ids[:-1] if t < 6561)
    # A budget that runs out first ends with "length" and no stop token.
    short = T3Request(
        request.text, request.voice, T3SamplingParams(temperature=0.0, max_new_tokens=3)
    )
    [cut] = engine.generate_speech_tokens([short])
    assert cut.finish_reason == "length" and cut.raw_token_ids == out.raw_token_ids[:3]


def test_start_up_timeline_covers_the_engine_process(tiny_engine) -> None:
    """The whole start, in order: this process's front end and vLLM client, the engine-core
    process's imports (a spawned process imports torch and vLLM again) and executor, the stages
    vLLM's worker timed there, and the wait until the engine was ready. ``vllm.LLM`` builds its
    configuration inside, so the synchronous engine has no ``vllm_config`` stage."""
    from chatterbox_t3.startup import ENGINE_START_STAGES

    timeline = tiny_engine.startup_timeline()
    assert list(timeline) == [stage for stage in ENGINE_START_STAGES if stage != "vllm_config"]
    assert all(seconds >= 0 for seconds in timeline.values())
    assert timeline["process_imports"] > 0 and timeline["executor"] > 0
    assert timeline["weights"] > 0 and timeline["graph_capture"] > 0
