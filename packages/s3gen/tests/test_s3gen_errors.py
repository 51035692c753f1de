"""One error root: everything chatterbox_s3gen raises on purpose is an S3GenError (input,
checkpoint or configuration), still catchable as the built-in it used to be; broken checkpoint
files are named as such instead of surfacing as a safetensors traceback."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import chatterbox_s3gen
from chatterbox_s3gen import S3Gen, errors, get_vocoder
from chatterbox_s3gen.checkpoint import load_hift
from chatterbox_s3gen.errors import (
    CheckpointError,
    ConfigurationError,
    CorruptCheckpointFileError,
    MissingCheckpointFileError,
    NotADirectoryCheckpointError,
    S3GenError,
    S3GenInputError,
    S3GenInputKeyError,
    S3GenInputTypeError,
)
from chatterbox_s3gen.vocoders import VocoderContext


def test_every_error_class_has_the_one_root_and_a_builtin_base() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert len(classes) >= 8
    for cls in classes:
        assert issubclass(cls, S3GenError), cls
        if cls is not S3GenError:
            assert issubclass(cls, ValueError), cls
            assert issubclass(cls, S3GenInputError | CheckpointError | ConfigurationError), cls
    assert issubclass(S3GenInputTypeError, TypeError)
    assert issubclass(S3GenInputKeyError, KeyError)
    assert issubclass(MissingCheckpointFileError, FileNotFoundError)
    for name in ("S3GenError", "S3GenInputError", "CheckpointError", "ConfigurationError"):
        assert getattr(chatterbox_s3gen, name) is getattr(errors, name)


@pytest.mark.parametrize(
    ("tokens", "error"),
    [("abc", S3GenInputTypeError), ([], S3GenInputError), ([7000], S3GenInputError)],
)
def test_bad_inputs_are_s3gen_input_errors(s3gen: S3Gen, voice_a, tokens, error) -> None:
    with pytest.raises(error):
        s3gen.synthesize([tokens], [voice_a])
    with pytest.raises(S3GenInputError, match="sample_rate"):
        s3gen.embed_ref(torch.zeros(24_000), 0)


def _truncated_copy(tiny_checkpoint: Path, directory: Path, keep: float) -> Path:
    directory.mkdir()
    for source in tiny_checkpoint.iterdir():
        (directory / source.name).write_bytes(source.read_bytes())
    weights = directory / "s3gen.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    return weights


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.9999])
def test_truncated_weights_are_named_as_incomplete(tiny_checkpoint, tmp_path, keep) -> None:
    weights = _truncated_copy(tiny_checkpoint, tmp_path / "ckpt", keep)
    for load in (
        lambda: S3Gen.from_checkpoint(weights.parent),
        lambda: load_hift(weights.parent),
        lambda: get_vocoder("hift-torch", VocoderContext(), checkpoint=weights.parent),
    ):
        with pytest.raises(CorruptCheckpointFileError) as caught:
            load()
        message = str(caught.value)
        assert str(weights) in message
        assert "incomplete or corrupt" in message and "download" in message


def test_a_file_that_is_not_safetensors_is_not_a_directory(tmp_path: Path) -> None:
    notes = tmp_path / "model-dir"
    notes.write_text("not a checkpoint")
    with pytest.raises(NotADirectoryCheckpointError, match="is not a directory"):
        S3Gen.from_checkpoint(notes)
    with pytest.raises(NotADirectoryError):
        load_hift(notes)
    with pytest.raises(MissingCheckpointFileError, match="no S3Gen checkpoint"):
        S3Gen.from_checkpoint(tmp_path / "absent")


def test_bad_config_file_is_a_checkpoint_error(tmp_path: Path, tiny_checkpoint: Path) -> None:
    (tmp_path / "s3gen.safetensors").write_bytes(
        (tiny_checkpoint / "s3gen.safetensors").read_bytes()
    )
    (tmp_path / "s3gen_config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"s3gen_config\.json.*not valid JSON"):
        S3Gen.from_checkpoint(tmp_path)
    with pytest.raises(ConfigurationError, match="must be 64"):
        chatterbox_s3gen.S3GenConfig(tokenizer_state=128, tokenizer_heads=4)


def test_the_command_line_names_what_it_cannot_use_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatterbox_s3gen.cli import main

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["export-onnx", str(tmp_path / "nowhere"), str(tmp_path / "out")],
         f"chatterbox-s3gen export-onnx: error: no S3Gen checkpoint at {tmp_path / 'nowhere'}"),
        (["write-random-checkpoint", str(a_file / "sub")],
         f"chatterbox-s3gen write-random-checkpoint: error: cannot write {a_file / 'sub'}: Not a "
         "directory"),
        (["write-random-checkpoint", "/proc/x"],
         "chatterbox-s3gen write-random-checkpoint: error: cannot write /proc/x: No such file"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 1, argv
        captured = capsys.readouterr()
        assert captured.err.startswith(message), captured.err
        assert "Traceback" not in captured.err and captured.out == "", argv


def test_a_device_this_machine_lacks_is_named_before_the_weights_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No checkpoint at all: the device (and noise seed) errors come first, not torch's
    # 'Found no NVIDIA driver' RuntimeError once a gigabyte of weights was read.
    nowhere = tmp_path / "nowhere"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(S3GenInputError, match="device='cuda', but torch sees no CUDA GPU"):
        S3Gen.from_checkpoint(nowhere, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(S3GenInputError, match=r"'cuda:2', but torch sees 1 CUDA GPU\(s\) here"):
        S3Gen.from_checkpoint(nowhere, device="cuda:2")
    with pytest.raises(S3GenInputError, match="device must be a torch.device or a name .*'tpu'"):
        S3Gen.from_checkpoint(nowhere, device="tpu")
    with pytest.raises(S3GenInputTypeError, match="noise_seed must be an int or a CPU torch"):
        S3Gen.from_checkpoint(nowhere, noise_seed="42")  # type: ignore[arg-type]
    with pytest.raises(MissingCheckpointFileError):
        S3Gen.from_checkpoint(nowhere, device="cpu")
