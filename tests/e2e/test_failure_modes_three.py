"""Failure modes, round three (issue #24), through the real CLI: a word too long for the engine
the flags describe is refused before the model loads, and ``make-random-checkpoint`` never
replaces another model's checkpoint without ``--force``."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatterbox_vllm.errors import CheckpointError

LOADING = "chatterbox_vllm.tts: loading"


def test_a_word_too_long_for_the_engine_fails_before_loading(
    cli, tiny_checkpoint_from_cli: Path, small_engine, tmp_path: Path
) -> None:
    # --max-new-tokens 40 and --max-chunk-chars 60 derive max_model_len=144: far fewer text
    # positions than T3's 2,048, and a word has nowhere to be split.
    result = cli(
        "speak", "a" * 3000, "--out", str(tmp_path / "x.wav"),
        "--model-dir", str(tiny_checkpoint_from_cli), *small_engine,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "text needs 3001 tokens after normalisation, at most" in result.stderr
    assert "max_model_len=144 positions" in result.stderr
    assert LOADING not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.wav").exists()


def _english_lookalike(directory: Path) -> dict[str, bytes]:
    directory.mkdir()
    files = {"t3_cfg.safetensors": b"english T3", "s3gen.safetensors": b"english S3Gen"}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def test_make_random_checkpoint_keeps_another_models_files(tmp_path: Path) -> None:
    from chatterbox_vllm.checkpoint import make_random_checkpoint

    directory = tmp_path / "english"
    files = _english_lookalike(directory)
    message = r"holds another model's checkpoint files \(t3_cfg.safetensors, s3gen.safetensors\)"
    with pytest.raises(CheckpointError, match=message):
        make_random_checkpoint(directory, model="multilingual")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files  # nothing touched


def _linked(checkpoint: Path, directory: Path, *, without: str = "") -> Path:
    directory.mkdir()
    for file in checkpoint.iterdir():
        if file.name != without:
            (directory / file.name).symlink_to(file)
    return directory


def test_checkpoint_problems_are_named_before_loading(
    chatterbox_checkpoint: Path, tmp_path: Path
) -> None:
    from chatterbox_vllm.preflight import check_checkpoint

    both = _linked(chatterbox_checkpoint, tmp_path / "both")
    (both / "t3_mtl23ls_v2.safetensors").write_bytes(b"another model")
    with pytest.raises(CheckpointError, match="holds both t3_cfg.safetensors and t3_mtl23ls_v2"):
        check_checkpoint(both, needs_default_voice=False)
    unconfigured = _linked(chatterbox_checkpoint, tmp_path / "tiny", without="t3_config.json")
    with pytest.raises(CheckpointError, match="has no t3_config.json, and its T3 weights do not"):
        check_checkpoint(unconfigured, needs_default_voice=False)


def test_a_corrupt_torch_file_is_described_in_our_words(tmp_path: Path) -> None:
    from chatterbox_t3.checkpoint import load_voice_encoder_state_dict
    from chatterbox_t3.errors import CorruptCheckpointFileError

    ve = tmp_path / "ve.pt"  # a pickle that would run os.system: torch's weights-only refusal
    ve.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01cos\nsystem\nq\x02s.")
    with pytest.raises(CorruptCheckpointFileError) as error:
        load_voice_encoder_state_dict(ve)
    message = str(error.value)
    assert "ve.pt is incomplete or corrupt: torch cannot read it" in message
    assert "GLOBAL os.system" in message
    assert "weights_only" not in message and "Please file" not in message
