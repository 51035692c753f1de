"""The vLLM model directory derived from a checkpoint (cached, linked, complete)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chatterbox_t3 import T3Config
from chatterbox_t3.checkpoint import T3_FILE, TOKENIZER_FILE
from chatterbox_t3.errors import MissingCheckpointFileError
from chatterbox_t3.model_dir import CACHE_ENV, cache_root, prepare_vllm_model_dir
from chatterbox_t3.vllm_model import ARCHITECTURE, CONDITIONING_TOKEN


def test_derived_directory_describes_both_cfg_branches(tiny_checkpoint: Path, tmp_path) -> None:
    model_dir = prepare_vllm_model_dir(tiny_checkpoint, cache_dir=tmp_path)
    assert model_dir.parent == tmp_path
    config = json.loads((model_dir / "config.json").read_text())
    t3 = T3Config.from_checkpoint_dir(tiny_checkpoint)
    assert config["architectures"] == [ARCHITECTURE]
    assert config["hidden_size"] == 2 * t3.hidden_size
    assert config["num_attention_heads"] == config["num_key_value_heads"] == 32
    assert config["head_dim"] == 64 and config["num_hidden_layers"] == 2
    assert config["vocab_size"] == 8194 + 704 + 1
    assert T3Config.from_dict(config["t3_config"]) == t3
    # The weights are referenced, not copied.
    weights = model_dir / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (tiny_checkpoint / T3_FILE).resolve()


def test_derived_tokenizer_covers_every_id(tiny_checkpoint: Path, tmp_path) -> None:
    from transformers import AutoTokenizer

    model_dir = prepare_vllm_model_dir(tiny_checkpoint, cache_dir=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer) == 8899
    assert max(tokenizer.get_vocab().values()) == 8898
    assert tokenizer.encode(CONDITIONING_TOKEN * 2, add_special_tokens=False) == [8898, 8898]


def test_directory_is_reused_until_the_checkpoint_changes(tiny_checkpoint, tmp_path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for name in (T3_FILE, TOKENIZER_FILE, "t3_config.json"):
        (checkpoint / name).write_bytes((tiny_checkpoint / name).read_bytes())
    cache = tmp_path / "cache"
    first = prepare_vllm_model_dir(checkpoint, cache_dir=cache)
    assert prepare_vllm_model_dir(checkpoint, cache_dir=cache) == first
    stat = (checkpoint / T3_FILE).stat()
    os.utime(checkpoint / T3_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert prepare_vllm_model_dir(checkpoint, cache_dir=cache) != first
    # Nothing half-written is left behind.
    assert all(not p.name.startswith(".t3-partial") for p in cache.iterdir())


def test_cache_location_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "chatterbox-vllm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "chatterbox-vllm"


def test_broken_checkpoints_fail_before_anything_is_written(tmp_path) -> None:
    with pytest.raises(MissingCheckpointFileError):
        prepare_vllm_model_dir(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
