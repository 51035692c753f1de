"""``s3gen.pt``: the multilingual release's S3Gen weights, a ``torch.save`` state dict of the same
tensors as the English ``s3gen.safetensors``, loaded strictly with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatterbox_s3gen import CheckpointError, S3Gen, S3GenConfig, write_random_s3gen_checkpoint
from chatterbox_s3gen.errors import CorruptCheckpointFileError, MissingCheckpointFileError


def _pt_copy(tiny_checkpoint: Path, directory: Path, state: dict | None = None) -> Path:
    """A checkpoint directory holding ``s3gen.pt`` (``state``, or the tiny checkpoint's tensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = load_file(str(tiny_checkpoint / "s3gen.safetensors"))
    torch.save(state, directory / "s3gen.pt")
    shutil.copy(tiny_checkpoint / "s3gen_config.json", directory / "s3gen_config.json")
    return directory


def test_pt_state_dict_round_trip(tiny_checkpoint: Path, tmp_path: Path, s3gen: S3Gen) -> None:
    """A state dict saved with torch.save loads into the same weights as the safetensors file."""
    directory = _pt_copy(tiny_checkpoint, tmp_path / "pt")
    assert not (directory / "s3gen.safetensors").exists()
    model = S3Gen.from_checkpoint(directory)
    assert model.config == S3GenConfig.tiny()
    expected = s3gen.state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    # the file path itself works too
    assert S3Gen.from_checkpoint(directory / "s3gen.pt").config == S3GenConfig.tiny()


def test_writer_pt_format_equals_safetensors_format(tmp_path: Path) -> None:
    st = load_file(str(write_random_s3gen_checkpoint(tmp_path / "st", "tiny", seed=4)))
    pt_path = write_random_s3gen_checkpoint(tmp_path / "pt", "tiny", seed=4, file_format="pt")
    assert pt_path.name == "s3gen.pt"
    assert sorted(p.name for p in pt_path.parent.iterdir()) == ["s3gen.pt", "s3gen_config.json"]
    pt = torch.load(pt_path, weights_only=True)
    assert len(pt) == len(st) > 100
    assert all(torch.equal(pt[name], st[name]) for name in st)
    # writing the other format replaces the stale file instead of leaving two
    write_random_s3gen_checkpoint(tmp_path / "pt", "tiny", seed=4, file_format="safetensors")
    assert not (tmp_path / "pt" / "s3gen.pt").exists()


def test_unknown_file_format_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"file_format must be 'safetensors' .*'pt'.* or 'meanflow'.*'ckpt'"
    ):
        write_random_s3gen_checkpoint(tmp_path, "tiny", file_format="ckpt")


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0])
def test_truncated_pt_says_so_and_to_download_again(
    tiny_checkpoint: Path, tmp_path: Path, keep: float
) -> None:
    directory = _pt_copy(tiny_checkpoint, tmp_path)
    data = (directory / "s3gen.pt").read_bytes()
    (directory / "s3gen.pt").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointFileError) as info:
        S3Gen.from_checkpoint(directory)
    message = str(info.value)
    assert "s3gen.pt" in message and "incomplete or corrupt" in message
    assert "download" in message


def test_html_page_instead_of_pt(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _pt_copy(tiny_checkpoint, tmp_path)
    (directory / "s3gen.pt").write_bytes(b"<!DOCTYPE html><html><body>502 Bad Gateway</body>")
    with pytest.raises(CorruptCheckpointFileError, match=r"s3gen\.pt is incomplete or corrupt"):
        S3Gen.from_checkpoint(directory)


def test_pt_of_something_else_than_tensors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _pt_copy(tiny_checkpoint, tmp_path / "list", state=None)
    torch.save([torch.zeros(3)], directory / "s3gen.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict"):
        S3Gen.from_checkpoint(directory)
    torch.save({"flow.x": torch.zeros(1), "step": 3}, directory / "s3gen.pt")
    with pytest.raises(CheckpointError, match=r"entries that are not tensors: step"):
        S3Gen.from_checkpoint(directory)
    # weights_only=True refuses arbitrary objects instead of running their pickle code
    torch.save({"flow.x": collections.OrderedDict()}, directory / "s3gen.pt")
    with pytest.raises(CheckpointError):
        S3Gen.from_checkpoint(directory)


def test_wrong_tensor_in_pt_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_checkpoint / "s3gen.safetensors"))
    state["flow.encoder_proj.bias"] = torch.zeros(81)
    del state["mel2wav.conv_post.bias"]
    directory = _pt_copy(tiny_checkpoint, tmp_path, state)
    with pytest.raises(CheckpointError) as info:
        S3Gen.from_checkpoint(directory)
    message = str(info.value)
    assert "s3gen.pt does not match the S3Gen layout" in message
    assert "flow.encoder_proj.bias has shape [81], expected [80]" in message
    assert "1 missing tensor(s): mel2wav.conv_post.bias" in message


def test_directory_without_either_file_names_both(tmp_path: Path) -> None:
    with pytest.raises(
        MissingCheckpointFileError,
        match=r"s3gen\.safetensors, s3gen\.pt or s3gen_meanflow\.safetensors",
    ):
        S3Gen.from_checkpoint(tmp_path)
