"""One error root: everything chatterbox_t3 raises on purpose is a T3Error, sorted into input,
checkpoint and configuration errors; broken files and malformed text get a message, not a
library traceback."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import chatterbox_t3
from chatterbox_t3 import errors
from chatterbox_t3.checkpoint import T3_FILE, TOKENIZER_FILE, check_t3_checkpoint
from chatterbox_t3.conditioning import ConditioningCache
from chatterbox_t3.config import T3_CONFIG_FILE, VE_FILE, T3Config
from chatterbox_t3.errors import (
    CheckpointError,
    ConfigurationError,
    CorruptCheckpointFileError,
    MalformedTextError,
    NotADirectoryCheckpointError,
    T3Error,
    T3InputError,
)
from chatterbox_t3.model_dir import prepare_vllm_model_dir
from chatterbox_t3.text import EnglishTokenizer, normalize_text
from chatterbox_t3.voice_encoder import VoiceEncoder


def test_every_error_class_has_the_one_root_and_a_builtin_base() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, T3Error), cls
        if cls is not T3Error:
            # Code written against the built-ins (except ValueError) keeps working.
            assert issubclass(cls, ValueError), cls
    families = (T3InputError, CheckpointError, ConfigurationError)
    assert all(issubclass(c, families) for c in classes if c is not T3Error)
    for name in ("T3Error", "T3InputError", "CheckpointError", "ConfigurationError"):
        assert getattr(chatterbox_t3, name) is getattr(errors, name)


def _copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in (T3_FILE, VE_FILE, TOKENIZER_FILE, T3_CONFIG_FILE):
        (target / name).write_bytes((source / name).read_bytes())
    return target


@pytest.mark.parametrize("keep", [0.5, 0.999, 6])
def test_truncated_t3_weights_are_named_as_incomplete(tiny_checkpoint, tmp_path, keep) -> None:
    directory = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    data = (directory / T3_FILE).read_bytes()
    (directory / T3_FILE).write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CorruptCheckpointFileError) as caught:
        prepare_vllm_model_dir(directory, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert str(directory / T3_FILE) in message
    assert "incomplete or corrupt" in message and "download" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_truncated_or_foreign_voice_encoder_file_is_named(tiny_checkpoint, tmp_path) -> None:
    directory = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    data = (directory / VE_FILE).read_bytes()
    (directory / VE_FILE).write_bytes(data[: len(data) - 100])
    with pytest.raises(
        CorruptCheckpointFileError, match=r"ve\.safetensors is incomplete or corrupt"
    ):
        VoiceEncoder.from_checkpoint_dir(directory)
    (directory / VE_FILE).write_text("<html>404 Not Found</html>")
    with pytest.raises(CorruptCheckpointFileError, match="download the checkpoint again"):
        VoiceEncoder.from_checkpoint_dir(directory)


def test_a_file_given_as_the_checkpoint_directory_is_not_a_directory(
    tiny_checkpoint, tmp_path
) -> None:
    with pytest.raises(NotADirectoryCheckpointError, match="is not a directory"):
        check_t3_checkpoint(tiny_checkpoint / T3_FILE)
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        prepare_vllm_model_dir(tiny_checkpoint / TOKENIZER_FILE, cache_dir=tmp_path)


def test_bad_config_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / T3_CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        T3Config.from_checkpoint_dir(tmp_path)
    (tmp_path / T3_CONFIG_FILE).write_text(json.dumps({"hidden_size": -1}))
    with pytest.raises(CheckpointError, match="hidden_size must be positive"):
        T3Config.from_checkpoint_dir(tmp_path)
    with pytest.raises(ConfigurationError, match="hidden_size"):
        T3Config(hidden_size=0)


@pytest.mark.parametrize(
    ("text", "position", "code_point"),
    [("Hello \ud800 there.", 6, 0xD800), ("\udfff", 0, 0xDFFF), ("ok.  \udc80", 5, 0xDC80)],
)
def test_lone_surrogate_is_named_with_position_and_code_point(
    tiny_checkpoint, text, position, code_point
) -> None:
    tokenizer = EnglishTokenizer(tiny_checkpoint / TOKENIZER_FILE)
    for front_end in (normalize_text, tokenizer.encode):
        with pytest.raises(MalformedTextError) as caught:
            front_end(text)
        assert (caught.value.position, caught.value.code_point) == (position, code_point)
        assert f"U+{code_point:04X} at position {position}" in str(caught.value)
        assert isinstance(caught.value, T3InputError)
    # Characters outside the BMP are one code point in Python, not a surrogate pair.
    assert normalize_text("Smile \U0001f600") == "Smile \U0001f600."


def test_conditioning_cache_size_zero_keeps_nothing_and_bad_sizes_fail() -> None:
    calls = []

    class Encoder:
        def __call__(self, voice, exaggeration):
            import torch

            calls.append(exaggeration)
            return torch.zeros(2, 2)

    class Voice:
        content_hash = "v"

    cache = ConditioningCache(Encoder(), max_entries=0)  # type: ignore[arg-type]
    cache.get(Voice(), 0.5)  # type: ignore[arg-type]
    cache.get(Voice(), 0.5)  # type: ignore[arg-type]
    assert (len(calls), len(cache), cache.misses, cache.hits) == (2, 0, 2, 0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigurationError, match="max_entries"):
            ConditioningCache(Encoder(), max_entries=bad)  # type: ignore[arg-type]
