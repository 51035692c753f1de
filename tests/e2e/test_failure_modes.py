"""A new user's bad inputs and a dying engine, through the real CLI and API (issue #10).

Pre-load errors must come before the model loads: the CLI logs ``loading <dir>`` when it starts
loading, so each of those cases asserts that line never appears (and that no traceback does).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import soundfile

LOADING = "chatterbox_vllm.tts: loading"


def fails_before_loading(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert LOADING not in result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module")
def checkpoint_without_voice(tiny_checkpoint_from_cli: Path, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("no-conds") / "checkpoint"
    shutil.copytree(tiny_checkpoint_from_cli, directory)
    (directory / "conds.pt").unlink()
    return directory


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("/proc/x.wav", "cannot write there"),
        ("/etc/hostname/x.wav", "/etc/hostname is a file, not a directory"),
        (".", "is a directory"),
        ("x.xyz", "cannot write '.xyz' audio"),
    ],
)
def test_unwritable_outputs_fail_before_the_model_loads(
    cli, tiny_checkpoint_from_cli: Path, small_engine, out: str, message: str
) -> None:
    result = cli(
        "speak", "Hello.", "--out", out, "--model-dir", str(tiny_checkpoint_from_cli), *small_engine
    )
    fails_before_loading(result, message)


def test_input_errors_fail_before_the_model_loads(
    cli,
    tiny_checkpoint_from_cli: Path,
    checkpoint_without_voice: Path,
    small_engine,
    tmp_path: Path,
) -> None:
    model = ["--model-dir", str(tiny_checkpoint_from_cli), *small_engine]
    corrupt = tmp_path / "voice.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    cases = [
        (["speak", "Hello.", "--voice", str(corrupt), *model], "voice.wav"),
        (["speak", "Hello.", "--voice", str(tmp_path / "missing.wav"), *model], "missing.wav"),
        (["speak", "Hello 你好.", *model], "characters the tokenizer cannot represent"),
        (["speak", "Hello \udcff there.", *model], "unpaired surrogate U+DCFF at position 6"),
        (["speak", "--file", str(tmp_path), *model], "is a directory; give a UTF-8 text file"),
        (
            ["speak", "Hello.", "--model-dir", str(checkpoint_without_voice), *small_engine],
            "has no conds.pt",
        ),
        (["speak", "Hello.", "--model-dir", str(corrupt), *small_engine], "is not a directory"),
        (["speak", "Hello.", *model, "--device", "tpu"], "device must be cuda, cuda:N or cpu"),
        (
            ["speak", "Hello.", *model, "--device", "cuda"],
            "no NVIDIA GPU with a working CUDA driver",
        ),
        (["make-random-checkpoint", str(corrupt)], "exists and is a file"),
    ]
    for args, message in cases:
        fails_before_loading(cli(*args), message)


def test_speak_writes_wav_to_stdout_from_a_saved_voice_and_logs_only_to_stderr(
    cli, tiny_checkpoint_from_cli: Path, small_engine, tmp_path: Path
) -> None:
    from chatterbox_vllm import Voice, VoiceConditionals

    saved = tmp_path / "me.pt"
    Voice.from_conditionals(VoiceConditionals.load(tiny_checkpoint_from_cli / "conds.pt")).save(
        saved
    )
    result = subprocess.run(
        [
            *cli.argv_prefix,
            "speak",
            "Hello there.",
            "--voice",
            str(saved),
            "--out",
            "-",
            "--model-dir",
            str(tiny_checkpoint_from_cli),
            *small_engine,
        ],
        capture_output=True,
        timeout=600,
        env=cli.environment,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    audio, rate = soundfile.read(io.BytesIO(result.stdout))  # stdout is exactly one WAV file
    assert rate == 24_000 and audio.ndim == 1 and len(audio) > 0
    assert LOADING in stderr and "T3 engine started in" in stderr  # load stages with times
    assert "T3 speech tokens" in stderr and "S3Gen chunks" in stderr  # progress, on stderr


def test_a_killed_engine_is_an_error_for_the_running_and_every_later_call(
    chatterbox_checkpoint: Path, chatterbox_engine_options
) -> None:
    import os
    import signal

    from chatterbox_vllm import ChatterboxTTS, EngineDeadError

    options = {**chatterbox_engine_options, "max_new_tokens": 200}
    with ChatterboxTTS.from_local(
        chatterbox_checkpoint, watermark=False, device="cpu", **options
    ) as tts:
        assert tts.generate("Fine.", max_new_tokens=4, progress=False).duration_s > 0
        (process,) = tts._t3._engine.engine_core.resources.engine_manager.processes
        outcome: list[BaseException | object] = []

        def speak() -> None:
            try:
                outcome.append(
                    tts.generate("A long sentence to keep the engine busy. " * 3, progress=False)
                )
            except BaseException as error:
                outcome.append(error)

        worker = threading.Thread(target=speak)
        worker.start()
        threading.Event().wait(2.0)
        os.kill(process.pid, signal.SIGKILL)
        worker.join(timeout=60)
        assert not worker.is_alive(), "generate hung after the engine was killed"
        assert isinstance(outcome[0], EngineDeadError), outcome
        assert "killed by signal 9" in str(outcome[0])
        with pytest.raises(EngineDeadError, match="load a new one"):
            tts.generate("Again.", progress=False)


def test_an_engine_killed_between_calls_fails_the_next_call_at_once(
    chatterbox_checkpoint: Path, chatterbox_engine_options
) -> None:
    import os
    import signal
    import time

    from chatterbox_vllm import ChatterboxTTS, EngineDeadError

    with ChatterboxTTS.from_local(
        chatterbox_checkpoint, watermark=False, device="cpu", **chatterbox_engine_options
    ) as tts:
        assert tts.generate("Fine.", max_new_tokens=4, progress=False).duration_s > 0
        (process,) = tts._t3._engine.engine_core.resources.engine_manager.processes
        os.kill(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the process group
        process.join(timeout=30)
        start = time.perf_counter()
        with pytest.raises(EngineDeadError, match="engine is dead.*load a new one"):
            tts.generate("Next call.", progress=False)
        assert time.perf_counter() - start < 5
        with pytest.raises(EngineDeadError):  # and every later one
            tts.generate("And the next.", progress=False)
