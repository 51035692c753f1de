"""The model directory vLLM loads, derived from a Chatterbox checkpoint into a cache.

vLLM needs ``config.json`` (architecture + sizes it plans memory with), weights and a tokenizer it
can initialise. None of these exist in a Chatterbox checkpoint in that form, so they are derived:

* ``config.json``: ``ChatterboxT3ForCausalLM`` with the *doubled* hidden size and heads of the CFG
  restack (so vLLM sizes activations and the KV cache for both branches), the whole
  :class:`~chatterbox_t3.config.T3Config` under ``t3_config``, and the id-space vocabulary size;
* ``model.safetensors``: a symbolic link to the checkpoint's ``t3_cfg.safetensors`` (no 2 GB copy;
  a copy only where links are impossible);
* ``tokenizer.json`` / ``tokenizer_config.json``: a word-level tokenizer naming every id of the
  id space (vLLM validates prompt ids against it and the multimodal processor encodes the
  placeholder with it; T3's text is tokenized by :class:`~chatterbox_t3.text.EnglishTokenizer`).

The directory lives under ``$CHATTERBOX_VLLM_CACHE``, else ``$XDG_CACHE_HOME/chatterbox-vllm``, else
``~/.cache/chatterbox-vllm``, named by a hash of the checkpoint file (resolved path, size,
modification time), the configuration and this package's version; it is written to a temporary
directory and renamed into place, so concurrent processes never see a partial one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from chatterbox_t3 import __version__
from chatterbox_t3.cfg import NUM_BRANCHES
from chatterbox_t3.checkpoint import check_t3_checkpoint, checkpoint_files
from chatterbox_t3.config import AnyT3Config, TurboT3Config
from chatterbox_t3.turbo_model import TURBO_ARCHITECTURE, TURBO_CONFIG_KEY
from chatterbox_t3.vllm_model import ARCHITECTURE, CONDITIONING_TOKEN

logger = logging.getLogger(__name__)

CACHE_ENV = "CHATTERBOX_VLLM_CACHE"
_LAYOUT_VERSION = 2  # bump when the derived files change shape


def cache_root() -> Path:
    """Where derived model directories are kept."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "chatterbox-vllm"
    return Path.home() / ".cache" / "chatterbox-vllm"


def vllm_config_dict(config: AnyT3Config) -> dict[str, object]:
    """The ``config.json`` vLLM reads (Llama-typed so transformers can parse it; Turbo: GPT-2)."""
    if isinstance(config, TurboT3Config):
        return turbo_vllm_config_dict(config)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        # vLLM plans activations and the KV cache from these: both CFG branches side by side.
        "hidden_size": NUM_BRANCHES * config.hidden_size,
        "num_attention_heads": NUM_BRANCHES * config.num_attention_heads,
        "num_key_value_heads": NUM_BRANCHES * config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": config.num_hidden_layers,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": config.rope_factor,
            "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_max_position_embeddings,
        },
        # The reference backbone's value; the learned position tables are the real limit and the
        # engine always passes max_model_len <= T3Config.max_model_len.
        "max_position_embeddings": config.backbone_max_position_embeddings,
        "vocab_size": config.vllm_vocab_size,
        "tie_word_embeddings": False,
        "bos_token_id": config.start_speech_token,
        "eos_token_id": config.stop_speech_token,
        "pad_token_id": None,
        "torch_dtype": "float32",
        "t3_config": config.to_dict(),
    }


def turbo_vllm_config_dict(config: TurboT3Config) -> dict[str, object]:
    """Turbo's ``config.json``: GPT-2 typed, one row per request (no CFG restack), the whole
    :class:`TurboT3Config` under ``t3_turbo_config`` and the id-space vocabulary size."""
    return {
        "architectures": [TURBO_ARCHITECTURE],
        "model_type": "gpt2",
        "n_embd": config.hidden_size,
        "n_head": config.num_attention_heads,
        "n_layer": config.num_hidden_layers,
        "n_inner": None,
        "n_positions": config.max_position_embeddings,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "vocab_size": config.vllm_vocab_size,
        "tie_word_embeddings": False,
        "bos_token_id": config.start_speech_token,
        "eos_token_id": config.stop_speech_token,
        "pad_token_id": None,
        "torch_dtype": "float32",
        TURBO_CONFIG_KEY: config.to_dict(),
    }


def id_space_token_names(config: AnyT3Config) -> list[str]:
    """A readable name for every vLLM id, in id order."""
    names = [f"<speech_{i}>" for i in range(config.speech_tokens_dict_size)]
    names += [f"<text_{i}>" for i in range(config.text_tokens_dict_size)]
    names.append(CONDITIONING_TOKEN)
    assert len(names) == config.vllm_vocab_size
    return names


def build_id_space_tokenizer(config: AnyT3Config) -> Tokenizer:
    names = id_space_token_names(config)
    tokenizer = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(CONDITIONING_TOKEN, special=True, normalized=False)])
    return tokenizer


def _checkpoint_key(checkpoint_dir: Path, config: AnyT3Config) -> str:
    weights = (checkpoint_dir / checkpoint_files(checkpoint_dir).t3).resolve()
    stat = weights.stat()
    identity = {
        "layout": _LAYOUT_VERSION,
        "package": __version__,
        "weights": str(weights),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "config": config.to_dict(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _write_model_dir(target: Path, checkpoint_dir: Path, config: AnyT3Config) -> None:
    (target / "config.json").write_text(json.dumps(vllm_config_dict(config), indent=2) + "\n")
    weights = (checkpoint_dir / checkpoint_files(checkpoint_dir).t3).resolve()
    try:
        (target / "model.safetensors").symlink_to(weights)
    except OSError:
        logger.warning("cannot link %s; copying it into the vLLM model directory", weights)
        shutil.copyfile(weights, target / "model.safetensors")
    build_id_space_tokenizer(config).save(str(target / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_model_len,
        "additional_special_tokens": [CONDITIONING_TOKEN],
    }
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def prepare_vllm_model_dir(
    checkpoint_dir: str | Path,
    config: AnyT3Config | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """Validate the checkpoint and return the (cached) directory to pass to vLLM as ``model``."""
    checkpoint_dir = Path(checkpoint_dir)
    config = check_t3_checkpoint(checkpoint_dir, config)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"t3-{_checkpoint_key(checkpoint_dir, config)}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".t3-partial-", dir=root))
    try:
        _write_model_dir(staging, checkpoint_dir, config)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same directory first; theirs is equivalent.
            if not (target / "config.json").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("prepared the vLLM model directory %s for %s", target, checkpoint_dir)
    return target
