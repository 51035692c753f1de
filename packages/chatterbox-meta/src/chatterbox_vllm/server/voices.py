"""Named voices of the server: prepared once from an upload, kept in memory and (with a voices
directory) saved as ``NAME.pt`` so they survive a restart. ``default`` is the checkpoint's."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from chatterbox_vllm.errors import ChatterboxError, InvalidParameterError, OutputPathError
from chatterbox_vllm.paths import ensure_directory
from chatterbox_vllm.voices import Voice

if TYPE_CHECKING:
    from chatterbox_vllm.tts import ChatterboxTTS

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "default"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A whole name (``fullmatch``: ``$`` would let a trailing newline through)."""


class UnknownVoiceError(ChatterboxError, KeyError):
    """A request named a voice the server does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class VoiceStore:
    """Thread-safe name -> :class:`Voice` map, persisted in ``directory`` when one is given."""

    def __init__(self, tts: ChatterboxTTS, directory: Path | None) -> None:
        self._tts = tts
        self._directory = directory
        self._voices: dict[str, Voice] = {}
        self._lock = threading.Lock()
        # Held across a change's file and map updates (not by readers): two uploads or an
        # upload and a delete of one name leave the file and the map agreeing.
        self._change_lock = threading.Lock()
        if directory is not None:
            ensure_directory(directory, "voices directory")
            for path in sorted(directory.glob("*.pt")):
                self._load_file(path)
            logger.info("loaded %d voice(s) from %s", len(self._voices), directory)

    def _load_file(self, path: Path) -> None:
        """Loads ``NAME.pt`` under the rules an upload's name follows: a file the API could not
        have written (``default.pt`` would shadow the built-in voice and could never be deleted;
        ``bad name.pt``, ``.hidden.pt``) is skipped with a warning naming it."""
        try:
            self.check_name(path.stem)
        except InvalidParameterError as error:
            logger.warning("skipping voice file %s: %s", path, error)
            return
        try:
            self._voices[path.stem] = Voice.load(path)
        except ChatterboxError as error:
            logger.warning("skipping voice file %s: %s", path, error)

    def names(self) -> list[str]:
        with self._lock:
            names = sorted(self._voices)
        return ([DEFAULT_VOICE] if self._tts.default_voice is not None else []) + names

    def get(self, name: str) -> Voice:
        if name == DEFAULT_VOICE and self._tts.default_voice is not None:
            return self._tts.default_voice
        with self._lock:
            voice = self._voices.get(name)
        if voice is None:
            raise UnknownVoiceError(
                f"unknown voice {name!r}; known voices: {', '.join(self.names()) or '(none)'}"
                " (upload one with POST /v1/voices)"
            )
        return voice

    @staticmethod
    def check_name(name: str) -> None:
        if name == DEFAULT_VOICE:
            raise InvalidParameterError(
                "the name 'default' is the checkpoint's voice; pick another"
            )
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidParameterError(
                f"voice name {name!r} is not accepted: 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )

    def add(self, name: str, voice: Voice) -> bool:
        """Stores a prepared voice; True when it replaced one of the same name."""
        self.check_name(name)
        with self._change_lock:
            if self._directory is not None:
                voice.save(self._directory / f"{name}.pt")  # whole or not at all
            with self._lock:
                replaced = name in self._voices
                self._voices[name] = voice
        return replaced

    def delete(self, name: str) -> None:
        self.get(name)  # unknown -> UnknownVoiceError
        if name == DEFAULT_VOICE:
            raise InvalidParameterError("the checkpoint's default voice cannot be deleted")
        with self._change_lock:
            if self._directory is not None:
                # The file first: a voice whose file stays would come back at the next start.
                path = self._directory / f"{name}.pt"
                try:
                    path.unlink(missing_ok=True)
                except OSError as error:
                    raise OutputPathError(
                        f"voice file {path}: cannot remove it ({error.strerror or error}); the "
                        f"voice {name!r} is still served"
                    ) from None
            with self._lock:
                self._voices.pop(name, None)
