"""CLI parsing and the errors raised before any model is loaded (subprocess, like a user)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatterbox_vllm.cli import build_parser


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatterbox_vllm.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("speak", "make-random-checkpoint", "bench"):
        assert command in result.stdout
    speak_help = run_cli("speak", "--help").stdout
    for option in (
        "--voice",
        "--out",
        "--model-dir",
        "--exaggeration",
        "--cfg-weight",
        "--temperature",
        "--seed",
        "--gpu-memory-utilization",
        "--vocoder",
        "--cfm-steps",
        "--no-watermark",
    ):
        assert option in speak_help
    assert "--max-tokens-per-expected-second" in run_cli("bench", "--help").stdout


def test_parser_maps_options() -> None:
    args = build_parser().parse_args(
        [
            "speak",
            "Hi.",
            "--voice",
            "v.wav",
            "--out",
            "o.flac",
            "--cfg-weight",
            "0.3",
            "--max-num-seqs",
            "4",
            "--num-gpu-blocks",
            "64",
            "--model-dir",
            "ckpt",
        ]
    )
    assert (args.text, args.voice, args.out, args.cfg_weight) == (
        "Hi.",
        Path("v.wav"),
        "o.flac",
        0.3,
    )
    assert (args.max_num_seqs, args.num_gpu_blocks_override, args.model_dir) == (
        4,
        64,
        Path("ckpt"),
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["speak", "--model-dir", "nowhere"], "", "text is empty"),
        (["speak", "...", "--model-dir", "nowhere"], "", "no letters or digits"),
        (
            ["speak", "Hello.", "--temperature", "6", "--model-dir", "nowhere"],
            "",
            "temperature must be in",
        ),
        (
            ["speak", "Hello.", "--out", "x.xyz", "--model-dir", "nowhere"],
            "",
            "cannot write '.xyz' audio",
        ),
        (
            ["speak", "Hello.", "--model-dir", "nowhere"],
            "",
            "checkpoint directory nowhere does " "not exist",
        ),
        (["speak", "--file", "missing.txt", "--model-dir", "nowhere"], "", "does not exist"),
        (
            ["speak", "Hello.", "--replicas", "0", "--model-dir", "nowhere"],
            "",
            "--replicas must be >= 1",
        ),
    ],
)
def test_bad_input_exits_1_with_a_message(args: list[str], stdin: str, message: str) -> None:
    result = run_cli(*args, stdin=stdin)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_checks_its_json_path_before_the_benchmark(tmp_path: Path) -> None:
    # A --json path that cannot be written was found only after the whole benchmark had run.
    text = tmp_path / "chapter.txt"
    text.write_text("Hello there.")
    result = run_cli(
        "bench", "--text-file", str(text), "--json", str(tmp_path), "--model-dir", "nowhere"
    )
    assert result.returncode == 1, result.stderr
    assert f"--json {tmp_path} is a directory; give a file name such as" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_random_checkpoint_names_a_directory_it_cannot_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatterbox_vllm.cli import main

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ("/proc/x", "DIRECTORY /proc/x: cannot create the directory (no directory can be created "
         "in /proc)"),
        (str(a_file / "sub"), f"DIRECTORY {a_file / 'sub'}: cannot create the directory ({a_file} "
         "is a file, not a directory)"),
    ]  # fmt: skip
    for directory, message in cases:
        assert main(["make-random-checkpoint", directory]) == 1
        stderr = capsys.readouterr().err
        assert message in stderr and "Errno" not in stderr, stderr


def test_standard_input_that_is_not_utf8_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from chatterbox_vllm.cli import main

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Grüße".encode("latin-1"))))
    assert main(["speak", "--model-dir", "nowhere"]) == 1
    stderr = capsys.readouterr().err
    assert "standard input is not UTF-8 text" in stderr and "surrogate" not in stderr, stderr


def test_a_bad_setting_is_named_by_the_flag_that_set_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Engine knobs, server settings and controls word their errors with their Python names
    ('port must be in [1, 65535]'); a command's error starts with the flag the user typed."""
    from chatterbox_vllm.cli import main

    cases = [
        (["serve", "--port", "99999"], "--port: port must be in [1, 65535], got 99999"),
        (["serve", "--max-queue-wait", "0"], "--max-queue-wait: max_queue_wait must be"),
        (["speak", "Hi.", "--max-chunk-chars", "0"], "--max-chunk-chars: max_chunk_chars must"),
        (["speak", "Hi.", "--temperature", "9"], "--temperature: temperature must be in [0, 5]"),
    ]
    for argv, message in cases:
        assert main([*argv, "--model-dir", "nowhere"]) == 1
        stderr = capsys.readouterr().err
        assert message in stderr, stderr
    monkeypatch.setenv("CHATTERBOX_API_KEY", "  ")  # not given as a flag: named as itself
    assert main(["serve", "--model-dir", "nowhere"]) == 1
    assert "CHATTERBOX_API_KEY: api_key must not be empty" in capsys.readouterr().err


def test_verbosity_before_or_after_the_command() -> None:
    """A script that starts ``serve`` appends its flags after the command (bench/server_load.py):
    ``-v`` is accepted there as before it."""
    parser = build_parser()
    assert parser.parse_args(["-v", "serve", "--model-dir", "ck"]).verbose == 1
    assert parser.parse_args(["serve", "--model-dir", "ck", "-vv"]).verbose == 2
    assert parser.parse_args(["bench", "--text-file", "t.txt", "-v"]).verbose == 1
    assert parser.parse_args(["speak", "Hi."]).verbose == 0


def test_bad_command_line_exits_2() -> None:
    result = run_cli("speak", "Hi", "--temperature", "warm")
    assert result.returncode == 2 and "invalid float value" in result.stderr
    assert run_cli().returncode == 2


def test_logs_go_to_the_stderr_of_the_moment(monkeypatch) -> None:
    """The CLI's log handler follows sys.stderr: a caller that swapped it (a notebook, a test
    harness running main() in-process) and closed the old stream gets the next records, not a
    '--- Logging error ---' traceback from writing to the closed one."""
    import io
    import logging

    from chatterbox_vllm.cli import configure_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        configure_logging(1, False)
        logging.getLogger("chatterbox_vllm.test").info("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("chatterbox_vllm.test").info("two")
    finally:
        root.handlers[:] = handlers  # the root logger as it was
        root.setLevel(level)
    assert second.getvalue() == "INFO chatterbox_vllm.test: two\n"


def test_out_may_not_be_the_voice_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import soundfile

    from chatterbox_vllm.cli import main

    voice = tmp_path / "me.wav"
    soundfile.write(voice, 0.3 * np.sin(np.arange(48_000) / 8), 24_000)
    recording = voice.read_bytes()
    (tmp_path / "link.wav").symlink_to(voice)
    (tmp_path / "text.txt").write_text("Hello.")
    # The same file however it is spelled; checked before the model loads.
    for out in (voice, tmp_path / "." / "me.wav", tmp_path / "link.wav"):
        for command in ("speak", "bench"):
            text = ["Hello."] if command == "speak" else ["--text-file", str(tmp_path / "text.txt")]
            args = [command, *text, "--voice", str(voice), "--out", str(out)]
            assert main([*args, "--model-dir", "nowhere"]) == 1
            stderr = capsys.readouterr().err
            assert f"--out {out} is the --voice recording: the speech would replace it" in stderr
    assert voice.read_bytes() == recording


def test_out_dash_on_a_terminal_is_refused_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from chatterbox_vllm.cli import main

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert main(["speak", "Hello.", "--out", "-", "--model-dir", "nowhere"]) == 1
    stderr = capsys.readouterr().err
    assert "--out - writes WAV audio to standard output, which is a terminal here" in stderr
    assert terminal.getvalue() == ""
    # A pipe or a file takes it: the next check (the checkpoint) is reached.
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert main(["speak", "Hello.", "--out", "-", "--model-dir", "nowhere"]) == 1
    assert "checkpoint directory nowhere does not exist" in capsys.readouterr().err


def test_bench_out_dash_is_refused_since_its_report_is_on_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatterbox_vllm.cli import main

    text = tmp_path / "chapter.txt"
    text.write_text("Hello there.")
    # The WAV, then the report's table, on one pipe: neither would be usable.
    assert main(["bench", "--text-file", str(text), "--out", "-", "--model-dir", "nowhere"]) == 1
    captured = capsys.readouterr()
    assert "--out -: bench prints its report on standard output" in captured.err
    assert captured.out == ""
