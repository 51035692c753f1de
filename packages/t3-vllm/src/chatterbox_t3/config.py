"""T3's hyper-parameters and the single token-id space vLLM sees.

:class:`T3Config` mirrors chatterbox-tts 0.1.2's ``T3Config`` plus its ``Llama_520M`` backbone
settings. The real checkpoint has no config file, so :meth:`T3Config.from_checkpoint_dir` returns
the real values unless the directory holds a ``t3_config.json`` (written for the small random
``tiny`` checkpoints), whose keys override single fields. :class:`VoiceEncoderConfig` holds the
voice encoder's fixed settings (here rather than in :mod:`~chatterbox_t3.voice_encoder` because the
checkpoint layouts need them and the voice encoder needs the checkpoint loaders).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from chatterbox_t3.errors import (
    CheckpointError,
    ConfigurationError,
    MissingCheckpointFileError,
    TextTooLongError,
)

PROMPT_BOS_POSITIONS = 2
"""Start-of-speech tokens at the end of a prompt, at most: two with CFG (both reference models)."""

T3_CONFIG_FILE = "t3_config.json"
"""Optional file in a checkpoint directory that overrides :class:`T3Config` fields."""

ModelKind = Literal["english", "multilingual", "turbo"]
"""Which Chatterbox T3 a checkpoint holds: the English model (chatterbox-tts 0.1.2), Chatterbox
Multilingual or Chatterbox Turbo (both chatterbox-tts 0.1.7)."""

MULTILINGUAL_TEXT_TOKENS = 2454
"""Text vocabulary of Chatterbox Multilingual (the reference's ``T3Config.is_multilingual`` test)."""


@dataclass(frozen=True)
class CheckpointFiles:
    """The file names of one model kind's T3 side of a checkpoint directory."""

    kind: ModelKind
    t3: str
    voice_encoder: str
    tokenizer: str
    cangjie: str | None = None
    """Chinese Cangjie table (multilingual only)."""
    tokenizer_extra: tuple[str, ...] = ()
    """Further files the text tokenizer needs (Turbo's GPT-2 tokenizer is a directory of files)."""

    @property
    def required(self) -> tuple[str, ...]:
        return (self.t3, self.voice_encoder, self.tokenizer, *self.tokenizer_extra)


ENGLISH_FILES = CheckpointFiles("english", "t3_cfg.safetensors", "ve.safetensors", "tokenizer.json")
MULTILINGUAL_FILES = CheckpointFiles(
    "multilingual",
    "t3_mtl23ls_v2.safetensors",
    "ve.pt",
    "grapheme_mtl_merged_expanded_v1.json",
    cangjie="Cangjie5_TC.json",
)
TURBO_FILES = CheckpointFiles(
    "turbo",
    "t3_turbo_v1.safetensors",
    "ve.safetensors",
    # A Hugging Face GPT-2 tokenizer directory (chatterbox-tts 0.1.7 loads it with
    # AutoTokenizer.from_pretrained(ckpt_dir) after downloading "*.json" and "*.txt"): the
    # byte-level BPE vocabulary and merges, and the config naming the tokenizer class.
    "vocab.json",
    tokenizer_extra=("merges.txt", "tokenizer_config.json"),
)
TURBO_OPTIONAL_TOKENIZER_FILES = ("added_tokens.json", "special_tokens_map.json")
"""Tokenizer files of a GPT-2 directory that ``AutoTokenizer`` reads when present (the added
paralinguistic tokens may live here or in ``tokenizer_config.json``)."""
CHECKPOINT_FILES: Mapping[ModelKind, CheckpointFiles] = {
    "english": ENGLISH_FILES,
    "multilingual": MULTILINGUAL_FILES,
    "turbo": TURBO_FILES,
}


def detect_model_kind(directory: str | Path) -> ModelKind:
    """Which model a checkpoint directory holds, by its T3 weights file.

    Raises :class:`MissingCheckpointFileError` when it holds none (naming every T3 file), and
    :class:`CheckpointError` when it holds more than one (which T3 to load would be a guess).
    """
    directory = Path(directory)
    present = [files for files in CHECKPOINT_FILES.values() if (directory / files.t3).is_file()]
    if len(present) == 1:
        return present[0].kind
    names = " or ".join(files.t3 for files in CHECKPOINT_FILES.values())
    if not present:
        raise MissingCheckpointFileError(
            f"{directory} holds no T3 weights: expected {names} (English, multilingual or "
            "Turbo Chatterbox)"
        )
    found = " and ".join(files.t3 for files in present)
    quantity = "both" if len(present) == 2 else "all of"
    raise CheckpointError(
        f"{directory} holds {quantity} {found}; keep one model per checkpoint directory"
    )


def checkpoint_files(directory: str | Path) -> CheckpointFiles:
    """The file names of the model kind ``directory`` holds (see :func:`detect_model_kind`)."""
    return CHECKPOINT_FILES[detect_model_kind(directory)]


_Config = TypeVar("_Config", bound="SpeechIdSpace")


class SpeechIdSpace:
    """The one vocabulary vLLM sees, shared by every T3 configuration (a frozen dataclass with
    ``speech_tokens_dict_size``, ``text_tokens_dict_size`` and ``start_speech_token``): speech
    ids keep their value, text id ``t`` is ``t + text_id_offset``, and one placeholder id marks
    the conditioning rows. Also the dict round trip of the derived ``config.json``."""

    speech_tokens_dict_size: int
    text_tokens_dict_size: int
    start_speech_token: int

    @property
    def num_valid_speech_tokens(self) -> int:
        """Ids below the start-of-speech token are S3 codes the decoder understands."""
        return self.start_speech_token

    @property
    def text_id_offset(self) -> int:
        """vLLM id of text token ``t`` is ``t + text_id_offset`` (speech ids keep their value)."""
        return self.speech_tokens_dict_size

    @property
    def conditioning_placeholder_id(self) -> int:
        """vLLM id that marks the conditioning rows (expanded to the voice's row count)."""
        return self.text_id_offset + self.text_tokens_dict_size

    @property
    def vllm_vocab_size(self) -> int:
        """Size of the one vocabulary vLLM sees: speech ids, shifted text ids, the placeholder."""
        return self.conditioning_placeholder_id + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(
        cls: type[_Config], values: Mapping[str, Any], *, source: str | None = None
    ) -> _Config:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(
                f"{source or cls.__name__}: unknown {cls.__name__} fields {unknown}; known: "
                f"{sorted(known)}"
            )
        return cls(**dict(values))


@dataclass(frozen=True)
class T3Config(SpeechIdSpace):
    """Every constant T3 needs; defaults are the real checkpoint's values."""

    # Text vocabulary (tokenizer.json) and its start/stop ids.
    text_tokens_dict_size: int = 704
    start_text_token: int = 255
    stop_text_token: int = 0
    max_text_tokens: int = 2048

    # S3 speech vocabulary: 6561 codes plus start/stop and unused ids up to 8193.
    speech_tokens_dict_size: int = 8194
    start_speech_token: int = 6561
    stop_speech_token: int = 6562
    max_speech_tokens: int = 4096
    speech_cond_prompt_len: int = 150

    # Conditioning encoder (speaker projection, perceiver resampler, emotion scalar).
    speaker_embed_size: int = 256
    perceiver_queries: int = 32
    perceiver_heads: int = 4

    # Llama backbone (Llama_520M).
    hidden_size: int = 1024
    num_hidden_layers: int = 30
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    intermediate_size: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    backbone_max_position_embeddings: int = 131072
    """The reference LlamaConfig's value (RoPE itself is unbounded; the learned tables are not)."""
    unused_embed_tokens_rows: int = 8
    """``tfmr.embed_tokens.weight`` exists in the checkpoint ([8, hidden]) but is never used."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = (int,) if f.type == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigurationError(f"T3Config.{f.name} must be {f.type}, got {value!r}")
            # Every size/count/factor is positive; only the stop text id is legitimately 0.
            if f.name != "stop_text_token" and not value > 0:
                raise ConfigurationError(f"T3Config.{f.name} must be positive, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigurationError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_size % self.perceiver_heads:
            raise ConfigurationError(
                f"hidden_size ({self.hidden_size}) must divide into perceiver_heads "
                f"({self.perceiver_heads})"
            )
        for name in ("start_text_token", "stop_text_token"):
            if not 0 <= getattr(self, name) < self.text_tokens_dict_size:
                raise ConfigurationError(f"{name} must lie in [0, {self.text_tokens_dict_size})")
        for name in ("start_speech_token", "stop_speech_token"):
            if not 0 <= getattr(self, name) < self.speech_tokens_dict_size:
                raise ConfigurationError(f"{name} must lie in [0, {self.speech_tokens_dict_size})")

    # ----------------------------------------------------------------------------- derived sizes
    @property
    def is_multilingual(self) -> bool:
        """Chatterbox Multilingual (the reference decides by the text vocabulary size too)."""
        return self.text_tokens_dict_size == MULTILINGUAL_TEXT_TOKENS

    @property
    def model_kind(self) -> ModelKind:
        return "multilingual" if self.is_multilingual else "english"

    @property
    def text_position_rows(self) -> int:
        """Rows of ``text_pos_emb``: the text plus its start and stop tokens."""
        return self.max_text_tokens + 2

    @property
    def speech_position_rows(self) -> int:
        """Rows of ``speech_pos_emb`` (the reference reserves 4 beyond max_speech_tokens)."""
        return self.max_speech_tokens + 4

    @property
    def conditioning_len(self) -> int:
        """Conditioning positions in front of the text: speaker, perceiver queries, emotion."""
        return 1 + self.perceiver_queries + 1

    @property
    def max_model_len(self) -> int:
        """Longest sequence the learned position tables allow: conditioning, text, speech."""
        return self.conditioning_len + self.text_position_rows + self.speech_position_rows

    def text_capacity(self, max_model_len: int) -> int:
        """Text ids (start and stop included) one prompt can hold in an engine of
        ``max_model_len`` positions: the conditioning rows, up to two start-of-speech tokens
        (CFG; the multilingual model always) and one position to generate come first, and the
        text position table bounds it too. The one limit every text check uses."""
        reserved = self.conditioning_len + PROMPT_BOS_POSITIONS + 1
        return max(0, min(self.text_position_rows, max_model_len - reserved))

    def check_text_fits(self, num_text_ids: int, max_model_len: int) -> None:
        """Raises :class:`~chatterbox_t3.errors.TextTooLongError` when ``num_text_ids`` framed
        text ids exceed :meth:`text_capacity` (the engine checks every request with it; a front
        end can check before an engine exists, knowing the ``max_model_len`` it will load)."""
        capacity = self.text_capacity(max_model_len)
        if num_text_ids <= capacity:
            return
        bound = (
            f"T3's {self.max_text_tokens} text positions"
            if capacity == self.text_position_rows
            else f"max_model_len={max_model_len} positions, which also hold the voice "
            "conditioning and the speech"
        )
        raise TextTooLongError(
            f"text needs {num_text_ids - 2} tokens after normalisation, at most {capacity - 2} "
            f"fit ({bound}); split it into shorter pieces (one word this long has nowhere to be "
            "split)"
        )

    # ----------------------------------------------------------------------------------- I/O
    @classmethod
    def for_kind(cls, kind: ModelKind, **overrides: Any) -> T3Config:
        """The real configuration of ``kind`` (multilingual: the 2,454-token text vocabulary);
        Turbo's is :class:`TurboT3Config`."""
        if kind == "turbo":
            raise ConfigurationError("Chatterbox Turbo's T3 is configured by TurboT3Config")
        if kind == "multilingual":
            overrides = {"text_tokens_dict_size": MULTILINGUAL_TEXT_TOKENS, **overrides}
        return cls(**overrides)

    @classmethod
    def from_checkpoint_dir(cls, directory: str | Path) -> T3Config:
        """The real configuration of the model the directory holds (see
        :func:`detect_model_kind`), with the fields in ``t3_config.json`` overridden if present."""
        # A directory without T3 weights is reported by whoever loads them; its config is read
        # as the English model's.
        has_weights = any((Path(directory) / f.t3).is_file() for f in CHECKPOINT_FILES.values())
        kind = detect_model_kind(directory) if has_weights else "english"
        if kind == "turbo":
            raise ConfigurationError(
                f"{directory} holds Chatterbox Turbo, whose T3 is configured by TurboT3Config; "
                "use chatterbox_t3.config.load_t3_config"
            )
        path = Path(directory) / T3_CONFIG_FILE
        if not path.exists():
            return cls.for_kind(kind)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} must hold a JSON object of T3Config fields")
        try:
            cls.from_dict(values, source=str(path))  # names the file on an unknown field
            return cls.for_kind(kind, **values)
        except ConfigurationError as exc:
            # The file is part of the checkpoint: a bad value there is a checkpoint problem.
            raise CheckpointError(str(exc)) from exc


TINY_OVERRIDES: Mapping[str, Any] = {
    # The reference perceiver hard-codes 1024 channels, so the tiny layout keeps hidden_size and
    # the vocabularies and shrinks depth and the MLP; that keeps it loadable by the reference T3.
    "num_hidden_layers": 2,
    "intermediate_size": 512,
}
"""Fields that differ between the real layout and the ``tiny`` random test checkpoints."""

MULTILINGUAL_TINY_OVERRIDES: Mapping[str, Any] = {
    # The alignment heads of the multilingual stop rule sit in layers 9, 12 and 13, so the tiny
    # multilingual layout keeps 14 layers (and all 16 heads), with the small MLP.
    "num_hidden_layers": 14,
    "intermediate_size": 256,
}
"""``tiny`` overrides of multilingual random checkpoints."""

TINY_OVERRIDES_BY_KIND: Mapping[ModelKind, Mapping[str, Any]] = {
    "english": TINY_OVERRIDES,
    "multilingual": MULTILINGUAL_TINY_OVERRIDES,
}


@dataclass(frozen=True)
class TurboT3Config(SpeechIdSpace):
    """Chatterbox Turbo's T3 (chatterbox-tts 0.1.7 ``ChatterboxTurboTTS``): a GPT-2 medium
    backbone fed embeddings only, one row per request (no CFG), with the defaults of the real
    checkpoint. ``t3_config.json`` overrides fields as for :class:`T3Config`.

    The sequence is ``[speaker row, prompt speech embeddings (1..375)] + text + [start-of-speech]
    + generated speech``, and GPT-2's own learned position table (``wpe``) covers all of it, so
    the conditioning length varies with the voice prompt and the whole sequence is bounded by
    ``max_position_embeddings``.
    """

    text_tokens_dict_size: int = 50276
    """The GPT-2 tokenizer's 50,257 entries plus the added (paralinguistic) tokens."""
    max_text_tokens: int = 1024
    """GPT-2's ``model_max_length``: the reference truncates longer text to it (we refuse it)."""
    speech_tokens_dict_size: int = 6563
    start_speech_token: int = 6561
    stop_speech_token: int = 6562
    speech_cond_prompt_len: int = 375
    speaker_embed_size: int = 256

    # GPT-2 medium (llama_configs.GPT2_MEDIUM_CONFIG).
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    layer_norm_epsilon: float = 1e-5
    max_position_embeddings: int = 8196
    backbone_vocab_size: int = 50276
    """Rows of the backbone's own token embedding ``tfmr.wte`` (in the file, never used)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = (int,) if f.type == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
                raise ConfigurationError(
                    f"TurboT3Config.{f.name} must be a positive {f.type}, got {value!r}"
                )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigurationError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for name in ("start_speech_token", "stop_speech_token"):
            if not 0 <= getattr(self, name) < self.speech_tokens_dict_size:
                raise ConfigurationError(f"{name} must lie in [0, {self.speech_tokens_dict_size})")

    @property
    def is_multilingual(self) -> bool:
        return False

    @property
    def model_kind(self) -> ModelKind:
        return "turbo"

    @property
    def intermediate_size(self) -> int:
        """GPT-2's MLP width (``n_inner`` unset: four times the hidden size)."""
        return 4 * self.hidden_size

    @property
    def max_conditioning_len(self) -> int:
        """The speaker row plus the longest voice prompt."""
        return 1 + self.speech_cond_prompt_len

    @property
    def conditioning_len(self) -> int:
        """The most conditioning rows one request can have (a multimodal item's largest size)."""
        return self.max_conditioning_len

    @property
    def max_speech_tokens(self) -> int:
        """Generated tokens are bounded only by the shared position table."""
        return self.max_position_embeddings

    @property
    def max_model_len(self) -> int:
        return self.max_position_embeddings

    def check_text_fits(
        self, num_text_ids: int, max_model_len: int | None = None, prompt_tokens: int | None = None
    ) -> None:
        """Raises :class:`~chatterbox_t3.errors.TextTooLongError` when ``num_text_ids`` text ids
        (Turbo has no start/stop text tokens) exceed GPT-2's text positions or, with
        ``max_model_len`` and the voice's ``prompt_tokens``, when the whole prompt (speaker row,
        voice prompt, text, start-of-speech) leaves no position to generate. The engine checks
        each request with it; a front end can check before an engine exists, knowing the
        ``max_model_len`` it will load and the voice (or the shortest prompt a voice can have)."""
        if num_text_ids > self.max_text_tokens:
            raise TextTooLongError(
                f"text needs {num_text_ids} tokens after normalisation, at most "
                f"{self.max_text_tokens} fit T3's text positions; split it into shorter pieces "
                "(one word this long has nowhere to be split)"
            )
        if max_model_len is None or prompt_tokens is None:
            return
        conditioning_len = 1 + prompt_tokens  # the speaker row and the voice prompt
        num_prompt_tokens = conditioning_len + num_text_ids + 1  # + start-of-speech
        if max_model_len - num_prompt_tokens < 1:
            raise TextTooLongError(
                f"the prompt needs {num_prompt_tokens} positions ({num_text_ids} text tokens "
                f"after normalisation, the voice's {conditioning_len} conditioning positions "
                f"and start-of-speech) plus one to generate, but at most {max_model_len} fit "
                "(max_model_len, or the KV cache when num_gpu_blocks_override is set); split "
                "the text into shorter pieces (one word this long has nowhere to be split) or "
                "allow longer sequences"
            )


AnyT3Config = T3Config | TurboT3Config
"""The configuration of any T3 model kind."""


def load_t3_config(directory: str | Path) -> AnyT3Config:
    """The configuration of the T3 a checkpoint directory holds (see :func:`detect_model_kind`),
    with the fields of its ``t3_config.json`` overridden: :class:`TurboT3Config` for Turbo,
    :class:`T3Config` otherwise."""
    directory = Path(directory)
    if (directory / TURBO_FILES.t3).is_file() and detect_model_kind(directory) == "turbo":
        return _turbo_config_from_dir(directory)
    return T3Config.from_checkpoint_dir(directory)


def _turbo_config_from_dir(directory: Path) -> TurboT3Config:
    path = directory / T3_CONFIG_FILE
    if not path.exists():
        return TurboT3Config()
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object of TurboT3Config fields")
    try:
        return TurboT3Config.from_dict(values, source=str(path))
    except ConfigurationError as exc:
        raise CheckpointError(str(exc)) from exc


TURBO_TINY_OVERRIDES: Mapping[str, Any] = {
    # Two narrow GPT-2 layers and a small generated tokenizer (its size is written by the
    # random-checkpoint writer, which knows it): the structure of the real model, a few MB.
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
"""``tiny`` overrides of Turbo random checkpoints (plus the tiny tokenizer's vocabulary size)."""


VE_FILE = ENGLISH_FILES.voice_encoder
"""The English checkpoint's voice-encoder weights (multilingual: ``ve.pt``, same tensors)."""


@dataclass(frozen=True)
class VoiceEncoderConfig:
    """``VoiceEncConfig`` of the reference (only the fields inference reads)."""

    sample_rate: int = 16000
    num_mels: int = 40
    n_fft: int = 400
    hop_size: int = 160
    win_size: int = 400
    fmin: float = 0.0
    fmax: float = 8000.0
    hidden_size: int = 256
    speaker_embed_size: int = 256
    num_lstm_layers: int = 3
    partial_frames: int = 160
    trim_top_db: float = 20.0
    trim_frame_length: int = 2048
    trim_hop_length: int = 512
    partial_rate: float = 1.3
    """Partials per second of audio the reference asks for (``rate=1.3``)."""
    min_coverage: float = 0.8
    batch_size: int = 32

    @property
    def frame_step(self) -> int:
        """Mel frames between two partials: round((16000 / 1.3) / 160) = 77."""
        return int(np.round((self.sample_rate / self.partial_rate) / self.partial_frames))
