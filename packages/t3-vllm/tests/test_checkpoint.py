"""Checkpoint layout: the writer reproduces the real file layout; loaders reject anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from chatterbox_t3.checkpoint import (
    T3_FILE,
    TOKENIZER_FILE,
    check_t3_checkpoint,
    load_t3_state_dict,
    load_voice_encoder_state_dict,
    t3_tensor_layout,
    voice_encoder_tensor_layout,
    write_random_t3_checkpoint,
)
from chatterbox_t3.config import T3_CONFIG_FILE, TINY_OVERRIDES, T3Config
from chatterbox_t3.errors import (
    MissingCheckpointFileError,
    MissingTensorError,
    TensorShapeError,
    UnexpectedTensorError,
)
from chatterbox_t3.voice_encoder import VE_FILE, VoiceEncoder

DATA = Path(__file__).parent / "data"


def manifest(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    entries = json.loads((DATA / f"{name}.json").read_text())
    return {key: (tuple(value["shape"]), value["dtype"]) for key, value in entries.items()}


def file_layout(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(str(path), framework="pt") as handle:
        layout = {}
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            tensor = handle.get_slice(key)
            layout[key] = (tuple(tensor.get_shape()), str(handle.get_tensor(key).dtype))
    return {k: (shape, dtype.removeprefix("torch.")) for k, (shape, dtype) in layout.items()}


def test_expected_layouts_equal_the_real_manifests() -> None:
    t3 = manifest("t3_cfg")
    assert len(t3) == 292
    assert {k: shape for k, (shape, _) in t3.items()} == t3_tensor_layout(T3Config())
    ve = manifest("ve")
    assert len(ve) == 16
    assert {k: shape for k, (shape, _) in ve.items()} == voice_encoder_tensor_layout()


@pytest.mark.slow
def test_full_checkpoint_matches_the_manifests_exactly(tmp_path: Path) -> None:
    directory = write_random_t3_checkpoint(tmp_path, "full", seed=0)
    assert file_layout(directory / T3_FILE) == manifest("t3_cfg")
    assert file_layout(directory / VE_FILE) == manifest("ve")
    assert not (directory / T3_CONFIG_FILE).exists()
    assert T3Config.from_checkpoint_dir(directory) == T3Config()
    check_t3_checkpoint(directory)


def test_tiny_checkpoint_keeps_names_and_records_its_config(tiny_checkpoint: Path) -> None:
    real = manifest("t3_cfg")
    tiny = file_layout(tiny_checkpoint / T3_FILE)
    config = T3Config.from_checkpoint_dir(tiny_checkpoint)
    assert config == T3Config(**TINY_OVERRIDES)
    # Same names as the real file for the layers it has, every tensor float32.
    kept_layers = {f"tfmr.layers.{i}." for i in range(config.num_hidden_layers)}
    real_names = {
        k for k in real if not k.startswith("tfmr.layers.") or k.startswith(tuple(kept_layers))
    }
    assert set(tiny) == real_names
    assert {dtype for _, dtype in tiny.values()} == {"float32"}
    # Only the MLP width differs among the tensors both have.
    different = {k for k in tiny if tiny[k][0] != real[k][0]}
    assert different and all(".mlp." in k for k in different)
    assert file_layout(tiny_checkpoint / VE_FILE) == manifest("ve")


def test_writer_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = load_file(write_random_t3_checkpoint(tmp_path / "a", "tiny", seed=3) / T3_FILE)
    again = load_file(write_random_t3_checkpoint(tmp_path / "b", "tiny", seed=3) / T3_FILE)
    other = load_file(write_random_t3_checkpoint(tmp_path / "c", "tiny", seed=4) / T3_FILE)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["speech_head.weight"], other["speech_head.weight"])


def test_written_tokenizer_encodes_english(tiny_checkpoint: Path) -> None:
    from chatterbox_t3.text import EnglishTokenizer

    tokenizer = EnglishTokenizer(tiny_checkpoint / TOKENIZER_FILE)
    ids = tokenizer.encode("Hello world, how are you?")
    assert tokenizer.unknown_id not in ids
    assert ids.count(tokenizer.space_id) == 4
    assert tokenizer.decode(ids) == "Hello world, how are you?"


def test_written_weights_load_into_the_voice_encoder(tiny_checkpoint: Path) -> None:
    encoder = VoiceEncoder.from_checkpoint_dir(tiny_checkpoint)
    state = load_file(tiny_checkpoint / VE_FILE)
    assert torch.equal(encoder.proj.weight, state["proj.weight"])


# ----------------------------------------------------------------------------- loader errors
@pytest.fixture
def tiny_state(tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(tiny_checkpoint / T3_FILE)


def _broken_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path, state: dict[str, torch.Tensor]
) -> Path:
    for name in (TOKENIZER_FILE, T3_CONFIG_FILE, VE_FILE):
        (tmp_path / name).write_bytes((tiny_checkpoint / name).read_bytes())
    save_file(state, str(tmp_path / T3_FILE))
    return tmp_path


def test_missing_tensor_is_named(tiny_checkpoint, tiny_state, tmp_path) -> None:
    del tiny_state["speech_pos_emb.emb.weight"]
    directory = _broken_checkpoint(tiny_checkpoint, tmp_path, tiny_state)
    with pytest.raises(MissingTensorError, match=r"speech_pos_emb\.emb\.weight.*\[4100, 1024\]"):
        check_t3_checkpoint(directory)


def test_unexpected_tensor_is_named(tiny_checkpoint, tiny_state, tmp_path) -> None:
    tiny_state["tfmr.layers.7.mlp.up_proj.weight"] = torch.zeros(2, 2)
    directory = _broken_checkpoint(tiny_checkpoint, tmp_path, tiny_state)
    with pytest.raises(UnexpectedTensorError, match=r"tfmr\.layers\.7\.mlp\.up_proj\.weight"):
        check_t3_checkpoint(directory)


def test_misshaped_tensor_is_named_with_both_shapes(tiny_checkpoint, tiny_state, tmp_path) -> None:
    tiny_state["text_emb.weight"] = torch.zeros(700, 1024)
    directory = _broken_checkpoint(tiny_checkpoint, tmp_path, tiny_state)
    with pytest.raises(TensorShapeError, match=r"text_emb\.weight.*\[700, 1024\].*\[704, 1024\]"):
        load_t3_state_dict(directory / T3_FILE, T3Config.from_checkpoint_dir(directory))


def test_missing_files_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingCheckpointFileError, match="ve.safetensors"):
        load_voice_encoder_state_dict(tmp_path / VE_FILE)
    with pytest.raises(MissingCheckpointFileError, match="checkpoint directory"):
        check_t3_checkpoint(tmp_path / "absent")
    (tmp_path / T3_FILE).write_bytes((tiny_checkpoint / T3_FILE).read_bytes())
    (tmp_path / T3_CONFIG_FILE).write_bytes((tiny_checkpoint / T3_CONFIG_FILE).read_bytes())
    with pytest.raises(MissingCheckpointFileError, match="tokenizer.json"):
        check_t3_checkpoint(tmp_path)


def test_tiny_config_with_unknown_field_is_rejected(tmp_path: Path) -> None:
    (tmp_path / T3_CONFIG_FILE).write_text(json.dumps({"num_hidden_layer": 2}))
    with pytest.raises(ValueError, match="num_hidden_layer"):
        T3Config.from_checkpoint_dir(tmp_path)


def test_full_weights_with_tiny_config_are_reported_as_misshaped(tiny_checkpoint, tmp_path) -> None:
    # A tiny t3_config.json left next to other weights must not load silently.
    state = load_file(tiny_checkpoint / T3_FILE)
    state["tfmr.layers.0.mlp.gate_proj.weight"] = torch.zeros(4096, 1024)
    directory = _broken_checkpoint(tiny_checkpoint, tmp_path, state)
    with pytest.raises(TensorShapeError, match=r"gate_proj.*\[4096, 1024\].*\[512, 1024\]"):
        check_t3_checkpoint(directory)
