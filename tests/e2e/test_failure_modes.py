"""A new user's bad inputs and a dying engine, through the real CLI and API (issue #10).

Pre-load errors must come before the model loads: the CLI logs ``loading <dir>`` when it starts
loading, so each of those cases asserts that line never appears (and that no traceback does).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


@pytest.fixture(scope="module")
def broken_tokenizers(tiny_checkpoint_from_cli: Path, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints (links to the tiny one's files) whose tokenizer.json is not JSON, ``{}``, or
    another model's (ids past T3's 704 text tokens)."""
    real = json.loads((tiny_checkpoint_from_cli / "tokenizer.json").read_text())
    foreign = json.loads(json.dumps(real))
    foreign["model"]["vocab"]["zzz-foreign"] = 50_000
    contents = {"not-json": "this is not JSON", "empty": "{}", "foreign": json.dumps(foreign)}
    directories = {}
    for name, text in contents.items():
        directory = tmp_path_factory.mktemp(f"tokenizer-{name}")
        for file in tiny_checkpoint_from_cli.iterdir():
            if file.name != "tokenizer.json":
                (directory / file.name).symlink_to(file)
        (directory / "tokenizer.json").write_text(text)
        directories[name] = directory
    return directories


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("/proc/x.wav", "cannot write there (no file can be created in /proc)"),
        ("/etc/hostname/x.wav", "/etc/hostname is a file, not a directory"),
        (".", "is a directory"),
        ("x.xyz", "cannot write '.xyz' audio"),
        ("LOOP.wav", "it is a symbolic link that loops"),
        ("n" * 300 + ".wav", "the file name is 304 bytes long; this file system allows at most"),
    ],
)
def test_unwritable_outputs_fail_before_the_model_loads(
    cli, tiny_checkpoint_from_cli: Path, small_engine, out: str, message: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("LOOP.wav").symlink_to("LOOP.wav")
    result = cli(
        "speak", "Hello.", "--out", out, "--model-dir", str(tiny_checkpoint_from_cli), *small_engine
    )
    fails_before_loading(result, message)


def test_input_errors_fail_before_the_model_loads(
    cli,
    tiny_checkpoint_from_cli: Path,
    checkpoint_without_voice: Path,
    small_engine,
    broken_tokenizers: dict[str, Path],
    tmp_path: Path,
    monkeypatch,
) -> None:
    monkeypatch.chdir(tmp_path)
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
        (["make-random-checkpoint", ""], "DIRECTORY is ''; give the directory"),
        (["speak", "Hello.", *model, "--num-gpu-blocks", "0"],
         "--num-gpu-blocks) must be an int >= 10, got 0"),
        (["speak", "Hello.", *model, "--vocoder", "nope"], "--vocoder 'nope' is not available"),
        (["speak", "Hello.", "--model-dir", str(broken_tokenizers["not-json"]), *small_engine],
         "tokenizer.json is not a tokenizer file the tokenizers library can read"),
        (["speak", "Hello.", "--model-dir", str(broken_tokenizers["empty"]), *small_engine],
         "tokenizer.json is not a tokenizer file the tokenizers library can read"),
        (["speak", "Hello.", "--model-dir", str(broken_tokenizers["foreign"]), *small_engine],
         "tokenizer.json has token ids up to 50000, but T3 has 704 text tokens"),
    ]  # fmt: skip
    # Independent processes: two at a time (each mostly imports torch; CI has two cores).
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: cli(*case[0]), cases))
    for (_, message), result in zip(cases, results):
        fails_before_loading(result, message)
    assert not list(Path.cwd().glob("*.safetensors"))  # make-random-checkpoint '' wrote nothing


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
    # ...also by its header, though stdout is a pipe (no seeking back to fill in the length):
    # one RIFF header whose data size is the real one (or 0xFFFFFFFF, "unknown"), then PCM.
    wav = result.stdout
    assert wav.count(b"RIFF") == 1 and wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    data_at = wav.index(b"data")
    (declared,) = struct.unpack("<I", wav[data_at + 4 : data_at + 8])
    assert declared in (len(wav) - data_at - 8, 0xFFFFFFFF), (declared, len(wav))
    assert declared == 0xFFFFFFFF or declared == 2 * len(audio)
    assert "Traceback" not in stderr and "Illegal seek" not in stderr
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


def test_saving_to_a_path_that_cannot_be_written_names_the_path_and_the_reason(
    chatterbox_checkpoint: Path, tmp_path: Path
) -> None:
    import torch

    from chatterbox_vllm import OutputPathError, Voice, VoiceConditionals
    from chatterbox_vllm.results import GenerationResult

    result = GenerationResult(torch.zeros(2400), 24_000, "Hi.", ("Hi.",), (), (2400,), False)
    loop = tmp_path / "LOOP.wav"
    loop.symlink_to(loop)
    cases = [
        (tmp_path / "a\x00b.wav", "contains a NUL character"),
        (Path("/proc/x.wav"), "no file can be created in /proc"),
        (Path("/sys/x.wav"), "cannot write there"),
        (loop, "symbolic link that loops"),
        (tmp_path / ("n" * 300 + ".wav"), "the file name is 304 bytes long"),
    ]
    for path, words in cases:
        with pytest.raises(OutputPathError, match=words) as caught:
            result.save(path)
        assert path.name.split("\x00")[0][:20] in str(caught.value), caught.value
    assert not (tmp_path / "a").exists()  # libsndfile used to cut the name at the NUL
    voice = Voice.from_conditionals(VoiceConditionals.load(chatterbox_checkpoint / "conds.pt"))
    with pytest.raises(OutputPathError, match=r"voice file /tmp: .*it is a directory"):
        voice.save("/tmp")


def test_api_inputs_of_the_wrong_kind_say_what_is_accepted(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from chatterbox_vllm import InvalidAudioError, InvalidParameterError
    from chatterbox_vllm.audio import load_voice_audio
    from chatterbox_vllm.checkpoint import make_random_checkpoint
    from chatterbox_vllm.config import EngineConfig
    from chatterbox_vllm.front import SpeechFront

    class NoEngine(SpeechFront):  # the front alone: its checks run before any executor work
        def _resolve_voices(self, requests):
            raise AssertionError("reached the executor")

        def _execute(self, plan, voices, stats, progress):
            raise AssertionError("reached the executor")

        def close(self) -> None:
            pass

    front = NoEngine(EngineConfig(), None)
    with pytest.raises(InvalidParameterError, match=r"requests\[0\] is a str; .*TTSRequest"):
        front.generate_requests(["Hi."])  # type: ignore[list-item]
    tone = np.sin(np.arange(48_000) / 10).astype(np.complex64)
    for waveform in (tone, torch.from_numpy(tone)):
        with pytest.raises(InvalidAudioError, match="real-valued samples, got complex"):
            load_voice_audio((waveform, 24_000))
    with pytest.raises(InvalidAudioError, match="peaks at 1e\\+20; samples are expected in"):
        load_voice_audio((tone.real * 1e20, 24_000))
    with pytest.raises(ValueError, match="directory must name a directory, got ''"):
        make_random_checkpoint("")


def test_voices_dir_files_follow_the_name_rules(chatterbox_checkpoint: Path, tmp_path, caplog):
    from types import SimpleNamespace

    from chatterbox_vllm import InvalidParameterError, Voice, VoiceConditionals
    from chatterbox_vllm.server.voices import VoiceStore

    voice = Voice.from_conditionals(VoiceConditionals.load(chatterbox_checkpoint / "conds.pt"))
    for name in ("default", "bad name", ".hidden", "fine"):
        voice.save(tmp_path / f"{name}.pt")
    store = VoiceStore(SimpleNamespace(default_voice=voice), tmp_path)  # type: ignore[arg-type]
    assert store.names() == ["default", "fine"]
    for name in ("default.pt", "bad name.pt", ".hidden.pt"):
        assert f"skipping voice file {tmp_path / name}" in caplog.text
    with pytest.raises(InvalidParameterError, match="not accepted"):
        store.add("nl\n", voice)


def test_vllms_memory_profiling_assertion_becomes_a_clear_error(
    chatterbox_checkpoint: Path, chatterbox_engine_options, monkeypatch
) -> None:
    import chatterbox_t3
    from chatterbox_vllm import ChatterboxTTS, EngineStartError

    def profiling_failed(*args, **kwargs):
        raise AssertionError(
            "Error in memory profiling. Initial free memory 10.0 GiB, current free memory "
            "12.0 GiB. This happens when other processes sharing the same container release GPU "
            "memory while vLLM is profiling during initialization."
        )

    monkeypatch.setattr(chatterbox_t3.AsyncT3Engine, "from_checkpoint", profiling_failed)
    with pytest.raises(EngineStartError, match="Load again, and do not start or stop other GPU"):
        ChatterboxTTS.from_local(
            chatterbox_checkpoint, watermark=False, device="cpu", **chatterbox_engine_options
        )


def test_closing_the_engine_during_calls_stops_them_saying_so(
    chatterbox_checkpoint: Path, chatterbox_engine_options
) -> None:
    """close() from another thread (an application shutting down) while a generate and a
    stream run: each ends at once with an error saying the object was closed; they said 'the T3
    engine died ... (vLLM reported its engine core dead)', as if it had crashed."""
    from chatterbox_vllm import ChatterboxError, ChatterboxTTS, EngineDeadError

    options = {**chatterbox_engine_options, "max_new_tokens": 200}
    tts = ChatterboxTTS.from_local(chatterbox_checkpoint, watermark=False, device="cpu", **options)
    outcome: dict[str, BaseException | object] = {}

    def run(name: str, call) -> None:
        try:
            outcome[name] = call()
        except BaseException as error:
            outcome[name] = error

    text = "A long sentence to keep the engine busy for a while. " * 4
    workers = [
        threading.Thread(target=run, args=("generate", lambda: tts.generate(text))),
        threading.Thread(target=run, args=("stream", lambda: list(tts.stream(text)))),
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while not tts._t3.num_unfinished_requests():
        assert time.monotonic() < deadline, "the calls did not start"
        time.sleep(0.05)
    tts.close()
    for worker in workers:
        worker.join(timeout=60)
        assert not worker.is_alive(), "a call hung after close()"
    for name in ("generate", "stream"):
        error = outcome[name]
        assert isinstance(error, ChatterboxError) and not isinstance(error, EngineDeadError), (
            name,
            error,
        )
        assert "was closed while the call ran" in str(error), (name, error)
