"""Checkpoint layout, strict loading and the random-checkpoint writer."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from chatterbox_s3gen import CheckpointError, S3Gen, S3GenConfig, write_random_s3gen_checkpoint
from chatterbox_s3gen.audio import slaney_mel_filterbank

MANIFEST = Path(__file__).parent / "data" / "s3gen.json"
SAFETENSORS_DTYPES = {"F32": "float32", "I64": "int64"}


@pytest.fixture
def copy_of(tiny_checkpoint: Path, tmp_path: Path):
    """``copy_of(edit)``: a tiny checkpoint dir whose state dict went through ``edit(state)``."""

    def make(edit) -> Path:
        state = load_file(str(tiny_checkpoint / "s3gen.safetensors"))
        edit(state)
        save_file(state, str(tmp_path / "s3gen.safetensors"))
        (tmp_path / "s3gen_config.json").write_text(
            (tiny_checkpoint / "s3gen_config.json").read_text()
        )
        return tmp_path

    return make


@pytest.mark.slow
def test_full_writer_matches_the_released_layout() -> None:
    """All 2490 names, shapes and dtypes of the real s3gen.safetensors, readable by safetensors."""
    manifest = json.loads(MANIFEST.read_text())
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="s3gen-full-", dir=shm) as directory:
        path = write_random_s3gen_checkpoint(directory, size="full", seed=3)
        assert path.name == "s3gen.safetensors"
        assert not (path.parent / "s3gen_config.json").exists()  # absent config = the real model
        with safe_open(str(path), framework="pt") as f:
            layout = {}
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                info = f.get_slice(name)
                layout[name] = {
                    "shape": list(info.get_shape()),
                    "dtype": SAFETENSORS_DTYPES[info.get_dtype()],
                }
            filters = f.get_tensor("tokenizer._mel_filters")
            running_var = f.get_tensor("speaker_encoder.head.bn1.running_var")
            tracked = f.get_tensor("speaker_encoder.head.bn1.num_batches_tracked")
            gain = f.get_tensor("mel2wav.conv_pre.parametrizations.weight.original0")
    assert len(layout) == len(manifest) == 2490
    assert layout == manifest
    assert np.array_equal(filters.numpy(), slaney_mel_filterbank(16_000, 400, 128))
    assert bool((running_var > 0).all()) and tracked.dtype == torch.int64 and tracked.dim() == 0
    assert bool(torch.isfinite(gain).all())


def test_tiny_checkpoint_has_the_released_names(tiny_checkpoint: Path) -> None:
    manifest = json.loads(MANIFEST.read_text())
    state = load_file(str(tiny_checkpoint / "s3gen.safetensors"))
    # Same naming scheme, fewer layers: every tiny name is a real name, every kind of tensor is there.
    assert set(state) <= set(manifest)

    def pattern(name: str) -> str:
        return re.sub(r"tdnnd\d+", "tdnndN", re.sub(r"\.\d+(?=\.)", ".N", name))

    assert {pattern(k) for k in state} == {pattern(k) for k in manifest}
    assert S3GenConfig.load(tiny_checkpoint / "s3gen_config.json") == S3GenConfig.tiny()


def test_writer_is_deterministic_in_the_seed(tmp_path: Path) -> None:
    a = load_file(str(write_random_s3gen_checkpoint(tmp_path / "a", "tiny", seed=5)))
    b = load_file(str(write_random_s3gen_checkpoint(tmp_path / "b", "tiny", seed=5)))
    c = load_file(str(write_random_s3gen_checkpoint(tmp_path / "c", "tiny", seed=6)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["flow.encoder_proj.weight"], c["flow.encoder_proj.weight"])


def test_loaded_weights_equal_the_file(s3gen: S3Gen, tiny_checkpoint: Path) -> None:
    state = load_file(str(tiny_checkpoint / "s3gen.safetensors"))
    ours = s3gen.state_dict()
    for name in (
        "flow.encoder.encoders.0.self_attn.pos_bias_u",
        "tokenizer.encoder.conv1.weight",
        "speaker_encoder.xvector.dense.nonlinear.batchnorm.running_var",
        "mel2wav.m_source.l_linear.weight",
    ):
        assert torch.equal(ours[name], state[name]), name
    # Weight norm is folded after loading: the effective weight is g * v / ||v||.
    g = state["mel2wav.conv_pre.parametrizations.weight.original0"]
    v = state["mel2wav.conv_pre.parametrizations.weight.original1"]
    expected = g * v / v.norm(dim=(1, 2), keepdim=True)
    assert torch.allclose(s3gen.mel2wav.conv_pre.weight, expected, atol=1e-6)


def test_mis_shaped_tensor_is_named(copy_of) -> None:
    def edit(state):
        state["flow.encoder_proj.bias"] = torch.zeros(81)

    with pytest.raises(
        CheckpointError, match=r"flow\.encoder_proj\.bias has shape \[81\], expected \[80\]"
    ):
        S3Gen.from_checkpoint(copy_of(edit))


def test_missing_tensor_is_named(copy_of) -> None:
    def edit(state):
        del state["mel2wav.conv_post.bias"]

    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): mel2wav\.conv_post\.bias"):
        S3Gen.from_checkpoint(copy_of(edit))


def test_unexpected_tensor_is_named(copy_of) -> None:
    def edit(state):
        state["flow.extra_head.weight"] = torch.zeros(3)

    with pytest.raises(
        CheckpointError, match=r"1 unexpected tensor\(s\): flow\.extra_head\.weight"
    ):
        S3Gen.from_checkpoint(copy_of(edit))


def test_integer_tensor_for_a_float_parameter_is_rejected(copy_of) -> None:
    def edit(state):
        state["flow.encoder_proj.bias"] = torch.zeros(80, dtype=torch.int64)

    with pytest.raises(CheckpointError, match=r"flow\.encoder_proj\.bias has dtype torch\.int64"):
        S3Gen.from_checkpoint(copy_of(edit))


def test_derived_tokenizer_buffers_may_be_absent(copy_of, s3gen: S3Gen, tone) -> None:
    def edit(state):
        del state["tokenizer._mel_filters"]
        del state["tokenizer.window"]

    model = S3Gen.from_checkpoint(copy_of(edit))
    assert torch.equal(model.tokenizer._mel_filters, s3gen.tokenizer._mel_filters)
    assert torch.equal(model.tokenizer.window, torch.hann_window(400))
    wav = tone(0.5, 16_000)
    assert torch.equal(model.tokenize(wav), s3gen.tokenize(wav))


def test_legacy_weight_norm_names_load(copy_of, s3gen: S3Gen, voice_a, tokens) -> None:
    def edit(state):
        for name in [k for k in state if k.endswith(".parametrizations.weight.original0")]:
            stem = name[: -len(".parametrizations.weight.original0")]
            state[f"{stem}.weight_g"] = state.pop(name)
            state[f"{stem}.weight_v"] = state.pop(f"{stem}.parametrizations.weight.original1")

    model = S3Gen.from_checkpoint(copy_of(edit))
    ids = tokens(10, 0)
    assert torch.equal(
        model.synthesize([ids], [voice_a], seeds=[3])[0],
        s3gen.synthesize([ids], [voice_a], seeds=[3])[0],
    )


def test_missing_checkpoint_and_bad_config(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no S3Gen checkpoint"):
        S3Gen.from_checkpoint(tmp_path)
    (tmp_path / "s3gen.safetensors").write_bytes(
        (tiny_checkpoint / "s3gen.safetensors").read_bytes()
    )
    (tmp_path / "s3gen_config.json").write_text(json.dumps({"encoder_dim": 64, "bogus": 1}))
    with pytest.raises(ValueError, match=r"unknown S3GenConfig fields \['bogus'\]"):
        S3Gen.from_checkpoint(tmp_path)


def test_safetensors_file_path_and_config_roundtrip(tiny_checkpoint: Path) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint / "s3gen.safetensors")
    assert model.config == S3GenConfig.tiny()
    assert S3GenConfig.from_dict(S3GenConfig.tiny().to_dict()) == S3GenConfig.tiny()


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="480 samples per mel frame"):
        S3GenConfig(hift_upsample_rates=(8, 5, 2))
    with pytest.raises(ValueError, match="must be 64"):
        S3GenConfig(tokenizer_state=128, tokenizer_heads=4)
