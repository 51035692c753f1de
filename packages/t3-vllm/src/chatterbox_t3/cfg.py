"""Classifier-free guidance as a doubled hidden state ("restack").

The reference runs CFG as a batch of two rows per request: a conditional row and an unconditional
row whose *text token embeddings are zeroed* (text positions are still added, conditioning and
speech tokens are identical), then mixes the two rows' logits:
``logits = cond + w * (cond - uncond)``.

Inside vLLM one request must be one sequence, so both rows travel together in a hidden state of
twice the width, ``[tokens, 2 * hidden] = [cond | uncond]``:

* every sub-layer views it as ``[2 * tokens, hidden]`` and applies the real 1024-wide weights to
  both halves (:mod:`chatterbox_t3.backbone`);
* attention folds the branch axis into the head axis (``2 x 16`` heads of 64), so a single vLLM
  ``Attention(num_heads=32, num_kv_heads=32)`` call runs two independent attentions with the same
  positions and block table: both branches' keys/values are cached, prefix caching and
  preemption treat them as one sequence, and the KV memory vLLM plans for is the true cost
  (2 branches x layers x 16 heads x 64 per token);
* :func:`guided_logits` mixes the two halves' speech-head logits with each request's own weight
  (``SamplingParams.extra_args["cfg_weight"]``, :data:`DEFAULT_CFG_WEIGHT` if absent).

A weight of 0 gives exactly the conditional logits (the reference without CFG); the unconditional
half is still computed for such requests, which costs compute but keeps one code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

NUM_BRANCHES = 2
"""Conditional and unconditional."""
COND, UNCOND = 0, 1

DEFAULT_CFG_WEIGHT = 0.5
"""``ChatterboxTTS.generate``'s default."""
CFG_WEIGHT_KEY = "cfg_weight"
"""Key of the guidance weight in ``SamplingParams.extra_args``."""


def cfg_weight_from_extra_args(extra_args: Mapping[str, Any] | None) -> float:
    """The guidance weight a request carries (the default when it carries none)."""
    if not extra_args or CFG_WEIGHT_KEY not in extra_args:
        return DEFAULT_CFG_WEIGHT
    return float(extra_args[CFG_WEIGHT_KEY])


def branch_inputs(token_rows: torch.Tensor, is_text: torch.Tensor) -> torch.Tensor:
    """``[n, 2 * hidden]`` inputs: token embeddings, then the same with text rows zeroed."""
    uncond = torch.where(is_text[:, None], torch.zeros_like(token_rows), token_rows)
    return torch.cat([token_rows, uncond], dim=-1)


def as_branch_rows(hidden: torch.Tensor, branch_width: int) -> torch.Tensor:
    """``[n, 2 * w]`` -> ``[2n, w]`` (row ``2i`` conditional, ``2i + 1`` unconditional)."""
    return hidden.reshape(-1, branch_width)


def as_token_rows(hidden: torch.Tensor) -> torch.Tensor:
    """``[2n, w]`` -> ``[n, 2 * w]``; inverse of :func:`as_branch_rows`."""
    return hidden.reshape(-1, NUM_BRANCHES * hidden.shape[-1])


def guided_logits(branch_logits: torch.Tensor, cfg_weights: torch.Tensor) -> torch.Tensor:
    """``[r, 2, vocab]`` branch logits -> ``[r, vocab]`` float32 guided logits."""
    cond = branch_logits[:, COND].float()
    uncond = branch_logits[:, UNCOND].float()
    return cond + cfg_weights[:, None] * (cond - uncond)
