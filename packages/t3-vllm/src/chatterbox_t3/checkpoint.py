"""T3's checkpoint files: expected tensor layout, strict loaders, and a random-weight writer.

A Chatterbox checkpoint directory holds, for T3: ``t3_cfg.safetensors`` (292 tensors, 532M params),
``ve.safetensors`` (the voice encoder, 16 tensors) and ``tokenizer.json``. The loaders compare file
contents with the layout :func:`t3_tensor_layout` derives from a :class:`T3Config` and raise a
specific :class:`~chatterbox_t3.errors.CheckpointError` naming the first problems found (a file
safetensors cannot parse, e.g. cut short by an interrupted download, is named as incomplete or
corrupt, with the advice to download it again).

:func:`write_random_t3_checkpoint` writes the same files with random weights (``full``: the real
names, shapes and dtypes; ``tiny``: the same names with a shallow backbone plus ``t3_config.json``)
for tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from chatterbox_t3.config import (
    CHECKPOINT_FILES,
    ENGLISH_FILES,
    MULTILINGUAL_FILES,
    T3_CONFIG_FILE,
    TINY_OVERRIDES_BY_KIND,
    TURBO_FILES,
    TURBO_TINY_OVERRIDES,
    AnyT3Config,
    CheckpointFiles,
    T3Config,
    TurboT3Config,
    VoiceEncoderConfig,
    load_t3_config,
)

# Re-exported: the checkpoint API is this module's.
from chatterbox_t3.config import ModelKind as ModelKind
from chatterbox_t3.config import checkpoint_files as checkpoint_files
from chatterbox_t3.config import detect_model_kind as detect_model_kind
from chatterbox_t3.errors import (
    ConfigurationError,
    CorruptCheckpointFileError,
    MissingCheckpointFileError,
    MissingTensorError,
    NotADirectoryCheckpointError,
    TensorShapeError,
    UnexpectedTensorError,
)
from chatterbox_t3.tokenizer_builder import (
    build_english_tokenizer,
    build_multilingual_tokenizer,
    write_cangjie_table,
)

logger = logging.getLogger(__name__)

T3_FILE = ENGLISH_FILES.t3
TOKENIZER_FILE = ENGLISH_FILES.tokenizer
MULTILINGUAL_T3_FILE = MULTILINGUAL_FILES.t3
MULTILINGUAL_TOKENIZER_FILE = MULTILINGUAL_FILES.tokenizer
CANGJIE_FILE = MULTILINGUAL_FILES.cangjie
TURBO_T3_FILE = TURBO_FILES.t3

TensorLayout = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------ layouts
def t3_tensor_layout(config: T3Config) -> TensorLayout:
    """Every tensor of ``t3_cfg.safetensors`` and its shape (all float32 in the real file)."""
    hidden, heads, kv_heads = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
    )
    q_size, kv_size = heads * config.head_dim, kv_heads * config.head_dim
    layout: TensorLayout = {"tfmr.embed_tokens.weight": (config.unused_embed_tokens_rows, hidden)}
    for i in range(config.num_hidden_layers):
        p = f"tfmr.layers.{i}."
        layout |= {
            p + "self_attn.q_proj.weight": (q_size, hidden),
            p + "self_attn.k_proj.weight": (kv_size, hidden),
            p + "self_attn.v_proj.weight": (kv_size, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_size),
            p + "mlp.gate_proj.weight": (config.intermediate_size, hidden),
            p + "mlp.up_proj.weight": (config.intermediate_size, hidden),
            p + "mlp.down_proj.weight": (hidden, config.intermediate_size),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    attn = "cond_enc.perceiver.attn."
    layout |= {
        "tfmr.norm.weight": (hidden,),
        "cond_enc.spkr_enc.weight": (hidden, config.speaker_embed_size),
        "cond_enc.spkr_enc.bias": (hidden,),
        "cond_enc.emotion_adv_fc.weight": (hidden, 1),
        "cond_enc.perceiver.pre_attention_query": (1, config.perceiver_queries, hidden),
        attn + "norm.weight": (hidden,),
        attn + "norm.bias": (hidden,),
    }
    for name in ("to_q", "to_k", "to_v", "proj_out"):
        layout |= {attn + f"{name}.weight": (hidden, hidden), attn + f"{name}.bias": (hidden,)}
    layout |= {
        "text_emb.weight": (config.text_tokens_dict_size, hidden),
        "speech_emb.weight": (config.speech_tokens_dict_size, hidden),
        "text_pos_emb.emb.weight": (config.text_position_rows, hidden),
        "speech_pos_emb.emb.weight": (config.speech_position_rows, hidden),
        "text_head.weight": (config.text_tokens_dict_size, hidden),
        "speech_head.weight": (config.speech_tokens_dict_size, hidden),
    }
    return layout


def turbo_t3_tensor_layout(config: TurboT3Config) -> TensorLayout:
    """Every tensor of ``t3_turbo_v1.safetensors`` and its shape (the reference ``T3`` built with
    ``GPT2_medium``: transformers' ``GPT2Model`` as ``tfmr``, whose ``Conv1D`` weights are stored
    ``[in, out]``; the speaker projection; text/speech embeddings and heads, the speech head with
    a bias)."""
    hidden, inner = config.hidden_size, config.intermediate_size
    layout: TensorLayout = {
        "tfmr.wte.weight": (config.backbone_vocab_size, hidden),
        "tfmr.wpe.weight": (config.max_position_embeddings, hidden),
    }
    for i in range(config.num_hidden_layers):
        p = f"tfmr.h.{i}."
        layout |= {
            p + "ln_1.weight": (hidden,),
            p + "ln_1.bias": (hidden,),
            p + "attn.c_attn.weight": (hidden, 3 * hidden),
            p + "attn.c_attn.bias": (3 * hidden,),
            p + "attn.c_proj.weight": (hidden, hidden),
            p + "attn.c_proj.bias": (hidden,),
            p + "ln_2.weight": (hidden,),
            p + "ln_2.bias": (hidden,),
            p + "mlp.c_fc.weight": (hidden, inner),
            p + "mlp.c_fc.bias": (inner,),
            p + "mlp.c_proj.weight": (inner, hidden),
            p + "mlp.c_proj.bias": (hidden,),
        }
    layout |= {
        "tfmr.ln_f.weight": (hidden,),
        "tfmr.ln_f.bias": (hidden,),
        "cond_enc.spkr_enc.weight": (hidden, config.speaker_embed_size),
        "cond_enc.spkr_enc.bias": (hidden,),
        "text_emb.weight": (config.text_tokens_dict_size, hidden),
        "speech_emb.weight": (config.speech_tokens_dict_size, hidden),
        "text_head.weight": (config.text_tokens_dict_size, hidden),
        "speech_head.weight": (config.speech_tokens_dict_size, hidden),
        "speech_head.bias": (config.speech_tokens_dict_size,),
    }
    return layout


def tensor_layout(config: AnyT3Config) -> TensorLayout:
    """The T3 weights file's layout for ``config``'s model kind."""
    if isinstance(config, TurboT3Config):
        return turbo_t3_tensor_layout(config)
    return t3_tensor_layout(config)


def voice_encoder_tensor_layout(config: VoiceEncoderConfig | None = None) -> TensorLayout:
    """Every tensor of ``ve.safetensors`` and its shape (float32)."""
    c = config or VoiceEncoderConfig()
    gates = 4 * c.hidden_size
    layout: TensorLayout = {"similarity_weight": (1,), "similarity_bias": (1,)}
    for layer in range(c.num_lstm_layers):
        inputs = c.num_mels if layer == 0 else c.hidden_size
        layout |= {
            f"lstm.weight_ih_l{layer}": (gates, inputs),
            f"lstm.weight_hh_l{layer}": (gates, c.hidden_size),
            f"lstm.bias_ih_l{layer}": (gates,),
            f"lstm.bias_hh_l{layer}": (gates,),
        }
    layout |= {
        "proj.weight": (c.speaker_embed_size, c.hidden_size),
        "proj.bias": (c.speaker_embed_size,),
    }
    return layout


# ------------------------------------------------------------------------------------ loaders
def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MissingCheckpointFileError(f"checkpoint file not found: {path}")


@contextmanager
def _open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open`` whose parse errors (also those raised while tensors are read) become
    :class:`CorruptCheckpointFileError` naming the file instead of a bare safetensors error."""
    _require_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except SafetensorError as error:
        raise CorruptCheckpointFileError(
            f"{path} is incomplete or corrupt ({error}); delete it and download the checkpoint "
            "again"
        ) from error


def _describe(names: Iterable[str], layout: Mapping[str, tuple[int, ...]] | None = None) -> str:
    names = sorted(names)
    shown = [f"{n!r} {list(layout[n])}" if layout else repr(n) for n in names[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(shown) + more


def _names(handle: Any) -> list[str]:
    # safe_open handles are not iterable; keys() is the API.
    return list(handle.keys())


def check_tensor_layout(path: str | Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise if the safetensors file's names or shapes differ from ``expected`` (header only)."""
    path = Path(path)
    with _open_safetensors(path) as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in _names(handle)}
    check_state_layout(path, shapes, expected)


def check_state_layout(
    path: Path, shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Raise if a file's tensor names or shapes (``shapes``) differ from ``expected``."""
    missing = expected.keys() - shapes.keys()
    if missing:
        raise MissingTensorError(
            f"{path.name} is missing {len(missing)} tensor(s) the model needs: "
            f"{_describe(missing, expected)}"
        )
    unexpected = shapes.keys() - expected.keys()
    if unexpected:
        raise UnexpectedTensorError(
            f"{path.name} has {len(unexpected)} tensor(s) the model does not know: "
            f"{_describe(unexpected)} (is this the right file / configuration?)"
        )
    wrong = [name for name in sorted(expected) if shapes[name] != tuple(expected[name])]
    if wrong:
        details = "; ".join(
            f"{name!r} is {list(shapes[name])}, expected {list(expected[name])}"
            for name in wrong[:5]
        )
        raise TensorShapeError(
            f"{path.name}: {len(wrong)} tensor(s) with the wrong shape: {details}"
        )


def load_t3_state_dict(
    path: str | Path, config: AnyT3Config, *, only_prefixes: tuple[str, ...] | None = None
) -> dict[str, torch.Tensor]:
    """The T3 tensors (validated against ``config``), optionally only names with given prefixes."""
    check_tensor_layout(path, tensor_layout(config))
    state: dict[str, torch.Tensor] = {}
    with _open_safetensors(Path(path)) as handle:
        for name in _names(handle):
            if only_prefixes is None or name.startswith(only_prefixes):
                state[name] = handle.get_tensor(name)
    return state


def load_voice_encoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The voice-encoder tensors of ``ve.safetensors`` or the multilingual ``ve.pt`` (a torch
    state dict of the same module, loaded with ``weights_only=True``), validated."""
    path = Path(path)
    if path.suffix != ".pt":
        check_tensor_layout(path, voice_encoder_tensor_layout())
        with _open_safetensors(path) as handle:
            return {name: handle.get_tensor(name) for name in _names(handle)}
    state = load_torch_state_dict(path)
    check_state_layout(
        path, {n: tuple(t.shape) for n, t in state.items()}, voice_encoder_tensor_layout()
    )
    return state


def load_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, read with ``weights_only=True`` (no code runs); a file torch
    cannot read (cut short, not a checkpoint) is named as incomplete or corrupt."""
    _require_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CorruptCheckpointFileError(
            f"{path} is incomplete or corrupt: torch cannot read it as a state dict of tensors "
            f"({torch_load_reason(error)}); delete it and download the checkpoint again"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CorruptCheckpointFileError(
            f"{path} does not hold a state dict (names -> tensors); is it the right file?"
        )
    return state


def torch_load_reason(error: BaseException) -> str:
    """What ``torch.load`` found wrong, without its advice to users of ``weights_only`` (e.g.
    "Please file an issue..."), which is about torch's own loader, not this file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # Its first line is advice about weights_only; the next says what the file holds.
        lines = lines[1:2] or ["it holds objects other than tensors"]
    reason = lines[0] if lines else type(error).__name__
    reason = reason.split("WeightsUnpickler error:", 1)[-1].strip()
    return reason.split(" Please file an issue", 1)[0][:160]


def check_t3_checkpoint(directory: str | Path, config: AnyT3Config | None = None) -> AnyT3Config:
    """Validate the T3 files of a checkpoint directory; returns its configuration."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryCheckpointError(
            f"checkpoint directory {directory} is not a directory (expected a directory holding "
            f"{', '.join(ENGLISH_FILES.required)}, or the multilingual "
            f"{', '.join(MULTILINGUAL_FILES.required)})"
        )
    if not directory.is_dir():
        raise MissingCheckpointFileError(f"checkpoint directory not found: {directory}")
    files = checkpoint_files(directory)
    configured = config is not None or (directory / T3_CONFIG_FILE).is_file()
    config = config or load_t3_config(directory)
    try:
        check_tensor_layout(directory / files.t3, tensor_layout(config))
    except (MissingTensorError, TensorShapeError) as error:
        if configured:
            raise
        # The usual cause: a checkpoint of other dimensions (a tiny random one) without the
        # t3_config.json that describes them, read with the real model's configuration.
        raise type(error)(
            f"{directory} has no {T3_CONFIG_FILE}, and its T3 weights do not have the real "
            f"model's dimensions: a checkpoint of other dimensions (e.g. a tiny random one) needs "
            f"the {T3_CONFIG_FILE} written with it ({error})"
        ) from None
    for name in (files.tokenizer, *files.tokenizer_extra):
        _require_file(directory / name)
    return config


# ------------------------------------------------------------------------------------ writer
RESIDUAL_WRITER_STD = 0.4
"""Std of the random ``o_proj`` / ``down_proj`` weights (HF's init would be 0.02)."""


def _random_t3_tensor(
    name: str, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    # Mostly the reference's initialisation (HF Llama: N(0, 0.02) linears, unit norms; torch
    # defaults for T3's own embeddings and heads). The projections that write into the residual
    # stream are drawn larger: with 0.02 an untrained model's residual is dominated by the current
    # token's N(0, 1) embedding, so conditioning, exaggeration and text barely steer its tokens and
    # tests could not tell whether they are used.
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return torch.randn(shape, generator=generator) * RESIDUAL_WRITER_STD
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape) if "perceiver" in name else _uniform(shape, shape[0], generator)
    if name in ("text_emb.weight", "speech_emb.weight"):
        return torch.randn(shape, generator=generator)
    if name.startswith(("text_head", "speech_head", "cond_enc.")):
        if name == "cond_enc.perceiver.pre_attention_query":
            bound = math.sqrt(3.0) * math.sqrt(2.0 / (2 * shape[1]))
            return (torch.rand(shape, generator=generator) * 2 - 1) * bound
        return _uniform(shape, shape[-1], generator)
    return torch.randn(shape, generator=generator) * 0.02


def _random_turbo_tensor(
    name: str, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    # HF GPT-2's initialisation (N(0, 0.02) weights, zero biases, unit layer norms) for the
    # backbone, except the projections writing into the residual stream, drawn larger for the
    # reason given in _random_t3_tensor; biases get small random values so a test would notice
    # one that is not loaded. T3's own embeddings and heads: torch's defaults.
    if name.startswith("tfmr.") and ".ln_" in name:
        if name.endswith(".weight"):
            return 1.0 + 0.1 * torch.randn(shape, generator=generator)
        return 0.1 * torch.randn(shape, generator=generator)
    if name.endswith("c_proj.weight"):
        return torch.randn(shape, generator=generator) * RESIDUAL_WRITER_STD / 4
    if name.startswith("tfmr.") and name.endswith(".bias"):
        return 0.05 * torch.randn(shape, generator=generator)
    if name in ("text_emb.weight", "speech_emb.weight", "tfmr.wte.weight"):
        return torch.randn(shape, generator=generator)
    if name == "tfmr.wpe.weight":
        return torch.randn(shape, generator=generator) * 0.1
    if name.startswith(("text_head", "speech_head", "cond_enc.")):
        fan_in = shape[-1] if name.endswith(".weight") else shape[0]
        return _uniform(shape, fan_in, generator)
    return torch.randn(shape, generator=generator) * 0.02


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def _random_voice_encoder_tensor(
    name: str, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    if name == "similarity_weight":
        return torch.tensor([10.0])
    if name == "similarity_bias":
        return torch.tensor([-5.0])
    return _uniform(shape, VoiceEncoderConfig().hidden_size, generator)


def write_random_t3_checkpoint(
    directory: str | Path,
    size: Literal["tiny", "full"] = "tiny",
    seed: int = 0,
    model: ModelKind = "english",
) -> Path:
    """Write T3's checkpoint files with random weights; returns the directory.

    ``full``: exactly the real names/shapes/dtypes (~2.1 GB of float32); ``tiny``: the same names,
    a shallow backbone with a small MLP (see :data:`~chatterbox_t3.config.TINY_OVERRIDES_BY_KIND`)
    and a ``t3_config.json`` recording that. ``model="english"`` writes ``t3_cfg.safetensors``,
    ``ve.safetensors`` and ``tokenizer.json``; ``"multilingual"`` the multilingual layout:
    ``t3_mtl23ls_v2.safetensors`` (2,454 text tokens), ``ve.pt`` (a torch state dict), the grapheme
    tokenizer and ``Cangjie5_TC.json``, each in the real file's structure; ``"turbo"``
    ``t3_turbo_v1.safetensors`` (GPT-2 backbone), ``ve.safetensors`` and a generated GPT-2 BPE
    tokenizer directory (full: 50,276 entries; tiny: 976, with a 2-layer 256-wide backbone).
    """
    if size not in ("tiny", "full"):
        raise ConfigurationError(f"size must be 'tiny' or 'full', got {size!r}")
    if model not in CHECKPOINT_FILES:
        raise ConfigurationError(f"model must be one of {sorted(CHECKPOINT_FILES)}, got {model!r}")
    files = CHECKPOINT_FILES[model]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for other in CHECKPOINT_FILES.values():  # one model per directory (detect_model_kind)
        if other.kind != model and (directory / other.t3).exists():
            (directory / other.t3).unlink()
    generator = torch.Generator().manual_seed(seed)
    logger.info("writing a random %s %s T3 checkpoint to %s", size, model, directory)
    config: AnyT3Config
    if model == "turbo":
        from chatterbox_t3.turbo_text import write_turbo_tokenizer

        vocab = write_turbo_tokenizer(directory, size)
        overrides = (
            {**TURBO_TINY_OVERRIDES, "text_tokens_dict_size": vocab, "backbone_vocab_size": vocab}
            if size == "tiny"
            else {}
        )
        config = TurboT3Config(**overrides)
        random_tensor = _random_turbo_tensor
    else:
        overrides = dict(TINY_OVERRIDES_BY_KIND[model]) if size == "tiny" else {}
        config = T3Config.for_kind(model, **overrides)
        random_tensor = _random_t3_tensor

    layout = tensor_layout(config)
    progress = tqdm(layout.items(), desc=f"random {size} T3 tensors", disable=size == "tiny")
    t3 = {name: random_tensor(name, shape, generator).contiguous() for name, shape in progress}
    save_file(t3, str(directory / files.t3))
    del t3
    ve = {
        name: _random_voice_encoder_tensor(name, shape, generator).contiguous()
        for name, shape in voice_encoder_tensor_layout().items()
    }
    if files.voice_encoder.endswith(".pt"):
        torch.save(ve, directory / files.voice_encoder)
    else:
        save_file(ve, str(directory / files.voice_encoder))

    _write_tokenizer_files(directory, files)
    config_path = directory / T3_CONFIG_FILE
    if size == "tiny":
        config_path.write_text(json.dumps(overrides, indent=2) + "\n")
    elif config_path.exists():
        config_path.unlink()  # a stale tiny config would make the loaders expect tiny shapes
    return directory


def _write_tokenizer_files(directory: Path, files: CheckpointFiles) -> None:
    if files.kind == "turbo":
        return  # written first: the tiny configuration takes its vocabulary size
    if files.kind == "english":
        build_english_tokenizer().save(str(directory / files.tokenizer))
        return
    assert files.cangjie is not None
    build_multilingual_tokenizer().save(str(directory / files.tokenizer))
    write_cangjie_table(directory / files.cangjie)
