"""Chatterbox Turbo's T3 side: model-kind detection and checkpoint files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from chatterbox_t3.config import CHECKPOINT_FILES, TURBO_FILES, checkpoint_files, detect_model_kind
from chatterbox_t3.errors import (
    CheckpointError,
    MissingCheckpointFileError,
    UnsupportedLanguageError,
)


def _touch(directory: Path, names: tuple[str, ...]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"x")
    return directory


def test_turbo_is_detected_from_its_t3_file(tmp_path: Path) -> None:
    directory = _touch(tmp_path / "turbo", TURBO_FILES.required)
    assert detect_model_kind(directory) == "turbo"
    assert checkpoint_files(directory).t3 == "t3_turbo_v1.safetensors"
    # The reference loads the GPT-2 tokenizer directory with AutoTokenizer: BPE vocabulary,
    # merges and the tokenizer config are all needed.
    assert set(TURBO_FILES.required) == {
        "t3_turbo_v1.safetensors",
        "ve.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    }


def test_a_directory_with_two_t3_files_is_ambiguous(tmp_path: Path) -> None:
    directory = _touch(tmp_path, ("t3_cfg.safetensors", "t3_turbo_v1.safetensors"))
    with pytest.raises(CheckpointError, match="both t3_cfg.safetensors and t3_turbo_v1"):
        detect_model_kind(directory)


def test_no_t3_file_names_every_model_file(tmp_path: Path) -> None:
    with pytest.raises(MissingCheckpointFileError) as info:
        detect_model_kind(_touch(tmp_path, ("ve.safetensors",)))
    for files in CHECKPOINT_FILES.values():
        assert files.t3 in str(info.value)


# ------------------------------------------------------------------ random checkpoint and loaders
@pytest.fixture(scope="module")
def turbo_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint

    return write_random_t3_checkpoint(
        tmp_path_factory.mktemp("turbo-tiny"), "tiny", seed=3, model="turbo"
    )


def test_tiny_turbo_checkpoint_has_the_real_files_and_names(turbo_tiny: Path) -> None:
    from safetensors import safe_open

    from chatterbox_t3.config import TurboT3Config, load_t3_config

    assert detect_model_kind(turbo_tiny) == "turbo"
    for name in (*TURBO_FILES.required, "added_tokens.json", "special_tokens_map.json"):
        assert (turbo_tiny / name).is_file(), name
    config = load_t3_config(turbo_tiny)
    assert isinstance(config, TurboT3Config)
    assert (config.num_hidden_layers, config.hidden_size) == (2, 256)
    with safe_open(str(turbo_tiny / TURBO_FILES.t3), framework="pt") as handle:
        names = set(handle.keys())
        # GPT-2's Conv1D layout ([in, out]) and the speech head's bias, as the reference saves.
        assert tuple(handle.get_slice("tfmr.h.0.attn.c_attn.weight").get_shape()) == (256, 768)
        assert tuple(handle.get_slice("speech_head.bias").get_shape()) == (6563,)
    assert "tfmr.wte.weight" in names and "tfmr.wpe.weight" in names
    assert not any("perceiver" in n or "emotion" in n or "pos_emb" in n for n in names)


def test_turbo_tokenizer_keeps_tags_whole_and_adds_no_text_tokens(turbo_tiny: Path) -> None:
    import json

    from chatterbox_t3.config import load_t3_config
    from chatterbox_t3.turbo_text import TurboTokenizer, turbo_punc_norm

    config = load_t3_config(turbo_tiny)
    tokenizer = TurboTokenizer(turbo_tiny, text_vocab_size=config.text_tokens_dict_size)
    added = json.loads((turbo_tiny / "added_tokens.json").read_text())
    ids = tokenizer.encode_text("well [laugh] ok")
    assert added["[laugh]"] in ids
    assert tokenizer.decode(ids) == "Well [laugh] ok."
    # Turbo keeps "...", " - " and ";", which the English punc_norm rewrites.
    assert turbo_punc_norm("so... yes - no; fine") == "So... yes - no; fine."
    with pytest.raises(UnsupportedLanguageError, match="English only"):
        tokenizer.encode_text("bonjour", "fr")


def test_full_turbo_layout_matches_the_reference_sizes() -> None:
    from chatterbox_t3.checkpoint import turbo_t3_tensor_layout
    from chatterbox_t3.config import TurboT3Config
    from chatterbox_t3.turbo_text import turbo_tokenizer_size

    layout = turbo_t3_tensor_layout(TurboT3Config())
    assert turbo_tokenizer_size("full") == 50276
    assert layout["text_emb.weight"] == (50276, 1024)
    assert layout["tfmr.wpe.weight"] == (8196, 1024)
    assert layout["tfmr.h.23.mlp.c_fc.weight"] == (1024, 4096)
    # GPT-2 medium (24 blocks of 12 tensors, wte, wpe, ln_f) + spkr_enc + T3's 5 tables / heads.
    assert len(layout) == 24 * 12 + 4 + 2 + 5
    assert sum(math.prod(shape) for shape in layout.values()) > 450_000_000


def test_loader_errors_name_the_file(turbo_tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from chatterbox_t3.checkpoint import check_t3_checkpoint
    from chatterbox_t3.errors import MissingTensorError

    for path in turbo_tiny.iterdir():
        if path.is_file():
            (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(MissingCheckpointFileError, match="merges.txt"):
        check_t3_checkpoint(tmp_path)
    (tmp_path / "merges.txt").write_bytes((turbo_tiny / "merges.txt").read_bytes())
    state = load_file(tmp_path / TURBO_FILES.t3)
    del state["speech_head.bias"]
    save_file(state, str(tmp_path / TURBO_FILES.t3))
    with pytest.raises(MissingTensorError, match=r"t3_turbo_v1\.safetensors.*speech_head\.bias"):
        check_t3_checkpoint(tmp_path)


def test_sampling_defaults_and_top_k_reach_vllm(turbo_tiny: Path) -> None:
    from chatterbox_t3.config import load_t3_config
    from chatterbox_t3.errors import InvalidSamplingParameterError
    from chatterbox_t3.sampling import T3SamplingParams

    params = T3SamplingParams.for_model("turbo")
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty) == (
        0.8,
        1000,
        0.95,
        1.2,
    )
    vllm_params = params.to_vllm(load_t3_config(turbo_tiny), 50)
    assert vllm_params.top_k == 1000 and vllm_params.top_p == 0.95
    # Turbo has no CFG row and no min-p: nothing of either reaches vLLM.
    assert vllm_params.min_p == 0.0 and not vllm_params.extra_args
    with pytest.raises(InvalidSamplingParameterError, match="top_k"):
        T3SamplingParams(top_k=-1)


def test_tiny_turbo_checkpoint_through_the_engine(
    turbo_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatterbox_t3 import T3Engine, T3Request, T3SamplingParams
    from chatterbox_t3.errors import InvalidVoiceError
    from vllm_cpu_test_support.checkpoints import random_t3_voice
    from vllm_cpu_test_support.settings import T3_ENGINE

    monkeypatch.setenv("CHATTERBOX_VLLM_CACHE", str(tmp_path))
    engine = T3Engine.from_checkpoint(
        turbo_tiny, **{**T3_ENGINE, "max_model_len": 480, "max_num_batched_tokens": 480}
    )
    try:
        params = T3SamplingParams.for_model("turbo", max_new_tokens=6, seed=1)
        voices = [random_t3_voice(1, num_prompt_tokens=20), random_t3_voice(2, 375)]
        outputs = engine.generate_speech_tokens(
            [T3Request("Hi [laugh] there.", v, params) for v in voices]
        )
        for out, voice in zip(outputs, voices, strict=True):
            assert out.finish_reason == "length" and len(out.raw_token_ids) == 6
            assert all(0 <= t < 6561 for t in out.token_ids)
            # Conditioning (speaker row + every prompt token), the text, one start-of-speech.
            assert out.num_prompt_tokens > 1 + voice.prompt_tokens.numel() + 1
        too_long = random_t3_voice(3, num_prompt_tokens=376)
        with pytest.raises(InvalidVoiceError, match="at most 375"):
            engine.generate_speech_tokens([T3Request("Hi.", too_long, params)])
    finally:
        engine.shutdown()
