"""The learned-position rules, the CFG mix and the output clean-up, checked in isolation."""

from __future__ import annotations

import pytest
import torch

from chatterbox_t3 import T3Config
from chatterbox_t3.cfg import (
    CFG_WEIGHT_KEY,
    DEFAULT_CFG_WEIGHT,
    as_branch_rows,
    as_token_rows,
    branch_inputs,
    cfg_weight_from_extra_args,
    guided_logits,
)
from chatterbox_t3.sampling import T3SamplingParams, valid_speech_tokens
from chatterbox_t3.speech_positions import LearnedPositions, speech_position_index

CONFIG = T3Config(num_hidden_layers=1, intermediate_size=8)
SOT = CONFIG.start_text_token + CONFIG.text_id_offset
EOT = CONFIG.stop_text_token + CONFIG.text_id_offset
BOS = CONFIG.start_speech_token
PLACEHOLDER = CONFIG.conditioning_placeholder_id


@pytest.fixture(scope="module")
def positions() -> LearnedPositions:
    module = LearnedPositions(CONFIG)
    # Row r of each table holds the value r (text) or 10000 + r (speech): rows are readable.
    with torch.no_grad():
        module.text_pos_emb.weight.copy_(
            torch.arange(CONFIG.text_position_rows, dtype=torch.float)[:, None].expand(-1, 1024)
        )
        module.speech_pos_emb.weight.copy_(
            10000
            + torch.arange(CONFIG.speech_position_rows, dtype=torch.float)[:, None].expand(-1, 1024)
        )
    return module


def rows_for(module, token_ids: list[int], positions: list[int], prompt_len: int) -> list[float]:
    out = module(
        torch.tensor(positions),
        torch.tensor(token_ids),
        torch.full((len(token_ids),), prompt_len),
    )
    return out[:, 0].tolist()


@pytest.mark.parametrize("num_bos", [1, 2])
def test_prompt_and_generated_positions_follow_the_reference(positions, num_bos) -> None:
    text = [SOT, 8194 + 40, 8194 + 41, EOT]
    prompt = [PLACEHOLDER] * 34 + text + [BOS] * num_bos
    prompt_len = len(prompt)
    generated = [123, 0, 6000]  # 0 is an ordinary speech code
    ids = prompt + generated
    values = rows_for(positions, ids, list(range(len(ids))), prompt_len)
    assert values[:34] == [0.0] * 34  # conditioning: no position
    assert values[34:38] == [0.0, 1.0, 2.0, 3.0]  # text_pos_emb[0..3], SOT first
    assert values[38 : 38 + num_bos] == [10000.0] * num_bos  # every BOS at speech position 0
    # The i-th generated token (i from 1) at speech position i, however many BOS came before.
    assert values[38 + num_bos :] == [10001.0, 10002.0, 10003.0]


def test_rules_depend_only_on_position_so_chunks_and_recompute_agree(positions) -> None:
    ids = [PLACEHOLDER] * 34 + [SOT, 8194 + 50, EOT, BOS, BOS, 77, 78, 79]
    prompt_len = 39
    whole = rows_for(positions, ids, list(range(len(ids))), prompt_len)
    # Any split into steps (chunked prefill, decode, recompute after preemption) gives each
    # token the same row: the rule uses (absolute position, prompt length, id) only.
    pieces = [(0, 20), (20, 36), (36, 41), (41, 42), (42, 43)]
    split = []
    for start, end in pieces:
        split += rows_for(positions, ids[start:end], list(range(start, end)), prompt_len)
    assert split == whole
    assert speech_position_index(41, prompt_len) == 3 and speech_position_index(37, prompt_len) == 0


def test_branch_inputs_zero_text_rows_only_in_the_uncond_half() -> None:
    rows = torch.arange(12, dtype=torch.float).view(3, 4) + 1
    is_text = torch.tensor([False, True, False])
    both = branch_inputs(rows, is_text)
    assert torch.equal(both[:, :4], rows)
    assert torch.equal(both[:, 4:], torch.stack([rows[0], torch.zeros(4), rows[2]]))
    assert torch.equal(as_token_rows(as_branch_rows(both, 4)), both)
    assert torch.equal(as_branch_rows(both, 4)[1], both[0, 4:])  # token 0, uncond branch


def test_guided_logits_use_each_rows_weight() -> None:
    cond = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    uncond = torch.tensor([[0.5, 2.5], [1.0, 1.0]])
    out = guided_logits(torch.stack([cond, uncond], dim=1), torch.tensor([0.0, 0.5]))
    assert torch.equal(out[0], cond[0])  # weight 0: exactly the conditional logits
    assert torch.equal(out[1], torch.tensor([3.0 + 0.5 * 2.0, -1.0 + 0.5 * -2.0]))


def test_cfg_weight_default_and_override() -> None:
    assert cfg_weight_from_extra_args(None) == DEFAULT_CFG_WEIGHT == 0.5
    assert cfg_weight_from_extra_args({CFG_WEIGHT_KEY: 0}) == 0.0


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        ([5, 6, 6562], (5, 6)),  # stop token and everything after it dropped
        ([5, 6, 7], (5, 6, 7)),  # budget ran out
        ([5, 6561, 7, 8, 6562], (7, 8)),  # start-of-speech: everything before it dropped
        ([5, 6561, 7, 6561, 8, 6562], (8,)),  # twice (the reference crashes): after the last
        ([5, 7000, 6, 8193], (5, 6)),  # unused ids >= 6563 never reach the decoder
        ([6562], ()),
    ],
)
def test_valid_speech_tokens(raw, valid) -> None:
    assert valid_speech_tokens(raw, CONFIG) == valid


def test_sampling_defaults_are_the_reference_generate_defaults() -> None:
    params = T3SamplingParams()
    assert (params.temperature, params.top_p, params.min_p, params.repetition_penalty) == (
        0.8,
        1.0,
        0.05,
        1.2,
    )
    assert (params.cfg_weight, params.exaggeration, params.max_new_tokens, params.seed) == (
        0.5,
        0.5,
        1000,
        None,
    )
    vllm_params = params.to_vllm(CONFIG, 10)
    assert vllm_params.stop_token_ids == [6562] and vllm_params.ignore_eos
    assert vllm_params.extra_args == {CFG_WEIGHT_KEY: 0.5} and not vllm_params.detokenize


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -0.1, r"temperature must lie in \[0, 5\]"),
        ("temperature", 5.5, r"temperature must lie in \[0, 5\]"),
        ("temperature", float("nan"), "temperature must be finite"),
        ("top_p", 0.0, r"top_p must lie in \(0, 1\]"),
        ("top_p", 1.5, "top_p"),
        ("min_p", -0.01, "min_p"),
        ("min_p", 1.01, "min_p"),
        ("repetition_penalty", 0.9, "repetition_penalty"),
        ("cfg_weight", 3.5, "cfg_weight"),
        ("exaggeration", 2.5, "exaggeration"),
        ("cfg_weight", -0.5, "cfg_weight"),
        ("cfg_weight", "0.5", "cfg_weight must be a number"),
        ("exaggeration", -1.0, "exaggeration"),
        ("exaggeration", float("inf"), "exaggeration must be finite"),
        ("max_new_tokens", 0, "max_new_tokens must be >= 1"),
        ("max_new_tokens", 10.0, "max_new_tokens must be an int"),
        ("seed", 1.5, "seed must be an int"),
    ],
)
def test_out_of_range_sampling_settings_are_rejected(field, value, message) -> None:
    from chatterbox_t3.errors import InvalidSamplingParameterError

    with pytest.raises(InvalidSamplingParameterError, match=message):
        T3SamplingParams(**{field: value})
