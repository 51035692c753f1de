"""Length masks for padded batches (exportable to ONNX: only arange/compare ops)."""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, max_len: int | torch.Tensor) -> torch.Tensor:
    """``[batch, max_len]`` bool, True where the position is inside the item's length."""
    positions = torch.arange(max_len, device=lengths.device)  # type: ignore[arg-type]
    return positions.unsqueeze(0) < lengths.unsqueeze(1)
