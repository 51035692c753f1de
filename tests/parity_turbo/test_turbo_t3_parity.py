"""Turbo T3 on vLLM vs chatterbox-tts 0.1.7's ``T3.inference_turbo`` on identical random weights.

The reference is built exactly as ``ChatterboxTurboTTS.from_local`` builds it (``GPT2_medium``
shrunk to the tiny checkpoint's 2 layers / 256 wide, ``load_state_dict`` strict, ``tfmr.wte``
deleted), in float32. Deterministic decoding: ours ``temperature=0`` (the argmax of the penalised
logits); the reference with ``top_k=0``, ``top_p=1``, ``temperature=1`` (no warpers, only its
repetition penalty) and ``torch.multinomial`` replaced by the argmax. The tokens must be identical;
the log-probabilities vLLM reports along our path must equal the reference's teacher-forced ones.

Run: ``nox -s parity_turbo``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from chatterbox_t3 import T3Engine, T3Request, T3SamplingParams
from chatterbox_t3.checkpoint import TURBO_T3_FILE
from chatterbox_t3.config import TurboT3Config, load_t3_config
from vllm_cpu_test_support.checkpoints import random_t3_voice as make_voice

logger = logging.getLogger(__name__)

STOP = 6562
MAX_NEW = 24
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 624, "seed": 0}
TEXTS = [
    "Hello there, how are you today?",
    "[laugh] That was funny... really; it was.",
    "Short.",
    "A somewhat longer sentence, so that the text part of the prompt is long enough to be split "
    "across prefill chunks - with a dash and a tag [chuckle] in it.",
]


def greedy(repetition_penalty: float = 1.2, max_new_tokens: int = MAX_NEW) -> T3SamplingParams:
    return T3SamplingParams.for_model(
        "turbo",
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens,
    )


class Reference:
    """chatterbox-tts 0.1.7's Turbo T3 on one of our checkpoints."""

    def __init__(
        self, checkpoint: Path, config: TurboT3Config, tokenizer: Any, backbone: str
    ) -> None:
        from chatterbox.models.t3 import T3
        from chatterbox.models.t3.modules.t3_config import T3Config as ReferenceT3Config

        # ChatterboxTurboTTS.from_local's hyper-parameters, on the tiny backbone.
        hp = ReferenceT3Config(text_tokens_dict_size=config.text_tokens_dict_size)
        hp.llama_config_name = backbone
        hp.speech_tokens_dict_size = 6563
        hp.input_pos_emb = None
        hp.speech_cond_prompt_len = 375
        hp.use_perceiver_resampler = False
        hp.emotion_adv = False
        self.t3 = T3(hp)
        self.t3.load_state_dict(load_file(checkpoint / TURBO_T3_FILE))  # strict: same layout
        del self.t3.tfmr.wte
        self.t3.eval()
        self.tokenizer = tokenizer

    def text_tokens(self, text: str) -> torch.Tensor:
        from chatterbox.tts_turbo import punc_norm

        ids = self.tokenizer(punc_norm(text), return_tensors="pt", padding=True, truncation=True)
        return ids.input_ids

    def cond(self, request: T3Request) -> Any:
        from chatterbox.models.t3.modules.cond_enc import T3Cond

        assert request.voice is not None
        return T3Cond(
            speaker_emb=request.voice.speaker_embedding[None].clone(),
            cond_prompt_speech_tokens=request.voice.prompt_tokens[None].clone(),
            emotion_adv=0.0 * torch.ones(1, 1, 1),
        )

    def generate(self, request: T3Request) -> list[int]:
        p = request.params

        def argmax(probs: torch.Tensor, num_samples: int = 1, **_: Any) -> torch.Tensor:
            return probs.argmax(dim=-1, keepdim=True)

        with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "multinomial", argmax)
            tokens = self.t3.inference_turbo(
                t3_cond=self.cond(request),
                text_tokens=self.text_tokens(request.text),
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                repetition_penalty=p.repetition_penalty,
                # The reference samples one token before its loop of max_gen_len steps.
                max_gen_len=p.max_new_tokens - 1,
            )
        return [int(t) for t in tokens[0]]

    def teacher_forced_logprobs(self, request: T3Request, speech: list[int]) -> torch.Tensor:
        """``[len(speech), 6563]`` log-probabilities of each step given the previous tokens."""
        start = torch.tensor([[self.t3.hp.start_speech_token, *speech[:-1]]])
        with torch.inference_mode():
            embeds, _ = self.t3.prepare_input_embeds(
                t3_cond=self.cond(request),
                text_tokens=self.text_tokens(request.text),
                speech_tokens=start,
                cfg_weight=0.0,
            )
            hidden = self.t3.tfmr(inputs_embeds=embeds)[0]
            logits = self.t3.speech_head(hidden[0, -len(speech) :])
        return torch.log_softmax(logits.float(), dim=-1)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def reference(
    turbo_tiny_dir: Path, reference_turbo_tokenizer: Any, reference_tiny_gpt2: str
) -> Reference:
    config = load_t3_config(turbo_tiny_dir)
    assert isinstance(config, TurboT3Config)
    return Reference(turbo_tiny_dir, config, reference_turbo_tokenizer, reference_tiny_gpt2)


@pytest.fixture(scope="module")
def engine(turbo_tiny_dir: Path, turbo_model_cache: Path) -> Iterator[T3Engine]:
    """Prefix caching on; a step budget just above the largest conditioning (376 rows), so long
    prompts are prefilled in chunks; a KV cache of 40 blocks (624 positions), which one long
    request fits but the mixed batch does not, so vLLM preempts and recomputes requests there
    (one engine start for the whole module keeps the session's CI time down)."""
    engine = T3Engine.from_checkpoint(
        turbo_tiny_dir,
        **ENGINE,
        max_num_seqs=8,
        max_num_batched_tokens=400,
        num_gpu_blocks_override=40,
        disable_log_stats=False,
    )
    yield engine
    engine.shutdown()


def without_stop(tokens: list[int] | tuple[int, ...]) -> list[int]:
    tokens = list(tokens)
    return tokens[:-1] if tokens and tokens[-1] == STOP else tokens


def assert_same_tokens(ours: Any, expected: list[int], request: T3Request) -> None:
    logger.info("turbo parity %r: %s", request.text[:20], expected)
    assert without_stop(ours.raw_token_ids) == expected, (
        f"text={request.text!r} params={request.params}\n"
        f"ours={list(ours.raw_token_ids)}\nreference={expected}"
    )


# --------------------------------------------------------------------------------------- tests
def test_teacher_forced_logprobs(engine, reference) -> None:
    """vLLM's log-probabilities of the top tokens at every step of our greedy path equal the
    reference's, computed in one teacher-forced forward over the same tokens."""
    request = T3Request(TEXTS[0], make_voice(11, num_prompt_tokens=120), greedy())
    prepared = engine.frontend.prepare(request)
    prepared.sampling_params.logprobs = 5
    [output] = engine.vllm.generate([prepared.prompt], [prepared.sampling_params], use_tqdm=False)
    completion = output.outputs[0]
    speech = [int(t) for t in completion.token_ids]
    expected = reference.teacher_forced_logprobs(request, speech)
    compared = 0
    for step, top in enumerate(completion.logprobs):
        for token_id, logprob in top.items():
            assert token_id < 6563
            torch.testing.assert_close(
                torch.tensor(logprob.logprob),
                expected[step, token_id],
                rtol=1e-5,
                atol=1e-5,
                msg=lambda m, s=step, t=token_id: f"step {s}, token {t}: {m}",
            )
            compared += 1
    assert compared >= 5 * len(speech)


@pytest.mark.parametrize(
    ("voice_seed", "prompt_len", "text", "penalty"),
    [
        (1, 375, TEXTS[0], 1.2),
        (2, 40, TEXTS[1], 1.0),
        (3, 1, TEXTS[2], 2.0),
        (4, 200, TEXTS[3], 1.5),
    ],
    ids=["375-prompt-tokens", "tags-no-penalty", "one-prompt-token", "chunked-prefill"],
)
def test_greedy_tokens(engine, reference, voice_seed, prompt_len, text, penalty) -> None:
    request = T3Request(text, make_voice(voice_seed, num_prompt_tokens=prompt_len), greedy(penalty))
    [ours] = engine.generate_speech_tokens([request])
    assert_same_tokens(ours, reference.generate(request), request)


def preemptions(engine: T3Engine) -> int:
    metrics = engine.vllm.get_metrics()
    return sum(int(m.value) for m in metrics if m.name == "vllm:num_preemptions")


def test_batch_of_mixed_lengths_with_preemption(engine, reference) -> None:
    """Six requests at once: different voices, prompt lengths, texts, penalties, token budgets;
    two share a voice (and so prefix-cached conditioning blocks). Together they need more KV
    blocks than the engine has: preempted requests are recomputed and must not change."""
    before = preemptions(engine)
    penalties = [1.2, 1.0, 2.0, 1.3, 1.2, 1.7]
    budgets = [MAX_NEW, 8, 16, MAX_NEW, 12, 20]
    voices = [make_voice(30 + i % 5, num_prompt_tokens=25 + 60 * (i % 5)) for i in range(6)]
    requests = [
        T3Request(TEXTS[i % len(TEXTS)], voices[i], greedy(penalties[i], budgets[i]))
        for i in range(6)
    ]
    ours = engine.generate_speech_tokens(requests)
    assert preemptions(engine) > before, "the KV cache was large enough: nothing was preempted"
    for out, request in zip(ours, requests, strict=True):
        assert_same_tokens(out, reference.generate(request), request)
