"""Server settings: binding, limits and the API key, each with one default (and its CLI flag)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chatterbox_vllm.errors import (
    InvalidParameterError,
    SettingTypes,
    check_setting_types,
    naming_the_flag,
)


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


_SETTING_TYPES: SettingTypes = {
    "host": ("a str", (str,), False),
    "api_key": ("a str", (str,), True),
    "voices_dir": ("a directory path (str or pathlib.Path)", (Path,), True),
    "max_queue_wait": ("a number of seconds", (int, float), False),
    "max_upload_seconds": ("a number of seconds", (int, float), False),
    "drain_seconds": ("a number of seconds", (int, float), False),
    "model_name": ("a str", (str,), False),
    "playground": ("a bool", (bool,), False),
}
"""The settings whose checks compare, strip or stat them: their types are checked first (the
positive ints and the seconds of the WebSocket limits are checked with their ranges)."""


@dataclass(frozen=True)
class ServerSettings:
    """What ``chatterbox-vllm serve`` binds to and what it accepts."""

    host: str = _setting("127.0.0.1", "address to bind; 0.0.0.0 serves other machines too")
    port: int = _setting(8000, "TCP port")
    api_key: str | None = _setting(
        None, "require 'Authorization: Bearer KEY' on every /v1 route (or set CHATTERBOX_API_KEY)"
    )
    voices_dir: Path | None = _setting(
        None, "where uploaded voices are kept across restarts (default: in memory only)"
    )
    max_input_chars: int = _setting(4096, "longest input text in characters (413 beyond)")
    max_upload_bytes: int = _setting(20_000_000, "largest voice upload (413 beyond)")
    max_upload_seconds: float = _setting(
        300.0,
        "longest voice upload in seconds of audio (413 beyond, before it is decoded: a few MB "
        "of FLAC can hold hours that decode to gigabytes); 5-10 s of speech make the best voice",
    )
    max_concurrent_streams: int = _setting(
        64, "hard cap on requests served at once, whatever the measured capacity"
    )
    capacity: str = _setting(
        "measured",
        "how many streams run at once: 'measured' (the engine's estimate from its own S3Gen "
        "and T3 rates, within --max-concurrent-streams) or 'cap' (--max-concurrent-streams)",
    )
    over_capacity: str = _setting(
        "queue",
        "past the measured capacity (or the cap): 'queue' (FIFO, see --max-queue-wait) or "
        "'reject' (429 with Retry-After)",
    )
    max_queue_wait: float = _setting(
        30.0, "seconds a queued request waits for a slot before a 503 with Retry-After"
    )
    max_queued_streams: int = _setting(256, "requests that may wait in the queue (429 beyond)")
    drain_seconds: float = _setting(120.0, "on SIGTERM, how long running streams may finish")
    stream_max_buffer_chars: int = _setting(
        2000, "WebSocket /v1/audio/speech/stream: most text buffered without a known end"
    )
    stream_max_session_seconds: float = _setting(
        3600.0, "WebSocket /v1/audio/speech/stream: longest session (then closed)"
    )
    stream_max_idle_seconds: float = _setting(
        300.0, "WebSocket /v1/audio/speech/stream: closed after this long without a message"
    )
    stream_commit_after_seconds: float = _setting(
        2.0,
        "WebSocket /v1/audio/speech/stream: buffered text is spoken after this long without a delta",
    )
    model_name: str = _setting("chatterbox", "the model id /v1/models lists")
    playground: bool = _setting(True, "serve the playground page at / (--no-playground: off)")

    def __post_init__(self) -> None:
        if isinstance(self.voices_dir, str | os.PathLike):
            object.__setattr__(self, "voices_dir", Path(self.voices_dir))
        check_setting_types(self, _SETTING_TYPES)
        for name in (
            "port",
            "max_input_chars",
            "max_upload_bytes",
            "max_concurrent_streams",
            "max_queued_streams",
            "stream_max_buffer_chars",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
        if not 0 < self.port < 65536:
            raise InvalidParameterError(f"port must be in [1, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidParameterError("api_key must not be empty (omit it to serve without one)")
        if self.api_key is not None:
            # A key read from a secret file keeps its trailing newline (CHATTERBOX_API_KEY); a
            # client's bearer token never carries one, so no request could match it.
            object.__setattr__(self, "api_key", self.api_key.strip())
        for name in (
            "stream_max_session_seconds",
            "stream_max_idle_seconds",
            "stream_commit_after_seconds",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < float("inf")
            ):
                raise InvalidParameterError(
                    f"{name} must be a number of seconds > 0, got {value!r}"
                )
        if not 0 <= self.drain_seconds < float("inf"):
            raise InvalidParameterError(
                f"drain_seconds must be a number of seconds >= 0, got {self.drain_seconds}"
            )
        if self.capacity not in ("measured", "cap"):
            raise InvalidParameterError(
                f"capacity must be 'measured' or 'cap', got {self.capacity!r}"
            )
        if self.over_capacity not in ("queue", "reject"):
            raise InvalidParameterError(
                f"over_capacity must be 'queue' or 'reject', got {self.over_capacity!r}"
            )
        if not 1 <= self.max_upload_seconds < float("inf"):
            raise InvalidParameterError(
                f"max_upload_seconds must be a number of seconds >= 1 (a voice needs at least "
                f"1 s), got {self.max_upload_seconds}"
            )
        if not 0 < self.max_queue_wait < float("inf"):
            raise InvalidParameterError(
                f"max_queue_wait must be a number of seconds > 0, got {self.max_queue_wait}"
            )
        if not self.model_name.strip():
            raise InvalidParameterError(
                "model_name must not be empty: clients send it as 'model' (default: chatterbox)"
            )
        if not self.host.strip():
            raise InvalidParameterError("host must not be empty (127.0.0.1, 0.0.0.0 or a name)")
        if (
            self.voices_dir is not None
            and self.voices_dir.exists()
            and not self.voices_dir.is_dir()
        ):
            raise InvalidParameterError(
                f"voices_dir {self.voices_dir} is a file; give a directory (it is created if "
                "missing)"
            )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    for setting in fields(ServerSettings):
        if setting.name == "playground":
            group.add_argument(
                "--no-playground",
                dest="playground",
                action="store_const",
                const=False,
                default=None,
                help="do not serve the playground page at / (the API is unchanged)",
            )
            continue
        kind = {"int": int, "float": float}.get(str(setting.type).split(" ")[0], str)
        if setting.name == "voices_dir":
            kind = Path
        choices = {"over_capacity": ("queue", "reject"), "capacity": ("measured", "cap")}.get(
            setting.name
        )
        group.add_argument(
            "--" + setting.name.replace("_", "-"),
            dest=setting.name,
            type=kind,
            choices=choices,
            default=None,
            help=f"{setting.metadata['help']} (default: {setting.default})",
        )


def settings_from_namespace(args: argparse.Namespace) -> ServerSettings:
    import os

    given = {
        s.name: getattr(args, s.name)
        for s in fields(ServerSettings)
        if getattr(args, s.name, None) is not None
    }
    flags = {name: "--" + name.replace("_", "-") for name in given}
    if "api_key" not in given and os.environ.get("CHATTERBOX_API_KEY"):
        given["api_key"] = os.environ["CHATTERBOX_API_KEY"]
        flags["api_key"] = "CHATTERBOX_API_KEY"
    try:
        return ServerSettings(**given)
    except InvalidParameterError as error:
        raise naming_the_flag(error, flags) from None
