"""Tokens -> mel: token embedding, upsampling conformer encoder, and a conditional flow-matching
(CFM) decoder solved with 10 Euler steps on a cosine time schedule with classifier-free guidance.

Everything runs on right-padded batches with per-item lengths; see :meth:`CausalMaskedDiffWithXvec.inference`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import MEL_CHANNELS, SPEAKER_EMBEDDING_DIM, SPEECH_VOCAB_SIZE
from chatterbox_s3gen.encoder import UpsampleConformerEncoder
from chatterbox_s3gen.estimator import ConditionalDecoder
from chatterbox_s3gen.masks import length_mask


def cosine_time_steps(n_timesteps: int) -> torch.Tensor:
    """``t_k = 1 - cos(k / n * pi / 2)`` for ``k = 0..n`` (float32, as the reference computes it)."""
    t = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32)
    return 1 - torch.cos(t * 0.5 * torch.pi)


class ConditionalCFM(nn.Module):
    """Holds the estimator and the fixed initial noise (``noise``: ``[1, 80, frames]``, not part
    of the checkpoint: the reference draws it once at construction and slices it per call)."""

    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        self.cfg_rate = config.cfg_rate
        self.estimator = ConditionalDecoder(config)
        self.noise: torch.Tensor
        self.register_buffer(
            "noise", torch.zeros(1, MEL_CHANNELS, config.flow_noise_frames), persistent=False
        )

    @torch.inference_mode()
    def solve(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
    ) -> torch.Tensor:
        """Euler integration from the fixed noise to a mel. ``mu``/``cond``: ``[B, 80, T]``;
        ``mask``: ``[B, 1, T]``; ``spks``: ``[B, 80]``. The state stays float32 whatever dtype the
        estimator runs in; the guided and unguided rows run as one ``2B`` batch."""
        batch, _, frames = mu.shape
        est_dtype = next(self.estimator.parameters()).dtype
        x = self.noise[:, :, :frames].expand(batch, -1, -1).float() * mask.float()
        # Rows B.. are the unconditional half of classifier-free guidance: mu, speaker and prompt zeroed.
        mask_in = torch.cat([mask, mask]).to(est_dtype)
        mu_in = torch.cat([mu, torch.zeros_like(mu)]).to(est_dtype)
        spks_in = torch.cat([spks, torch.zeros_like(spks)]).to(est_dtype)
        cond_in = torch.cat([cond, torch.zeros_like(cond)]).to(est_dtype)
        t_span = cosine_time_steps(n_timesteps).to(mu.device)
        # The reference accumulates t and recomputes dt from it (not t_span differences): keep that.
        t = t_span[0:1]
        dt = t_span[1] - t_span[0]
        for step in range(1, n_timesteps + 1):
            x_in = torch.cat([x, x]).to(est_dtype)
            t_in = t.expand(2 * batch).to(est_dtype)
            velocity = self.estimator(x_in, mask_in, mu_in, t_in, spks_in, cond_in).float()
            guided, unguided = velocity[:batch], velocity[batch:]
            x = x + dt * ((1.0 + self.cfg_rate) * guided - self.cfg_rate * unguided)
            t = t + dt
            if step < n_timesteps:
                dt = t_span[step + 1] - t
        return x


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        self.input_embedding = nn.Embedding(SPEECH_VOCAB_SIZE, config.encoder_dim)
        self.spk_embed_affine_layer = nn.Linear(SPEAKER_EMBEDDING_DIM, MEL_CHANNELS)
        self.encoder = UpsampleConformerEncoder(config)
        self.encoder_proj = nn.Linear(config.encoder_dim, MEL_CHANNELS)
        self.decoder = ConditionalCFM(config)

    @torch.inference_mode()
    def inference(
        self,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        prompt_mel: torch.Tensor,
        prompt_mel_lengths: torch.Tensor,
        speaker_embedding: torch.Tensor,
        n_timesteps: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate mels for a padded batch.

        ``tokens``: ``[B, L]`` prompt tokens followed by new tokens, right-padded; ``token_lengths``:
        ``[B]`` (prompt + new). ``prompt_mel``: ``[B, P, 80]`` right-padded, ``prompt_mel_lengths``:
        ``[B]``. ``speaker_embedding``: ``[B, 192]``. Returns float32 mels ``[B, 80, G]`` of the new
        part only (left-aligned, zero-padded) and their lengths ``2 * L_i - P_i``."""
        dtype = self.input_embedding.weight.dtype
        batch = tokens.shape[0]
        spks = self.spk_embed_affine_layer(F.normalize(speaker_embedding.to(dtype), dim=1))

        token_mask = length_mask(token_lengths, tokens.shape[1]).unsqueeze(-1).to(dtype)
        embedded = self.input_embedding(torch.clamp(tokens, min=0)) * token_mask
        hidden, mel_lengths = self.encoder(embedded, token_lengths)
        mu = self.encoder_proj(hidden).transpose(1, 2)  # [B, 80, T]
        frames = mu.shape[2]

        mel_mask = length_mask(mel_lengths, frames).unsqueeze(1)
        prompt_frames = min(prompt_mel.shape[1], frames)
        prompt_mask = length_mask(prompt_mel_lengths, prompt_frames).unsqueeze(-1)
        cond = torch.zeros(batch, frames, MEL_CHANNELS, device=mu.device, dtype=dtype)
        cond[:, :prompt_frames] = (prompt_mel[:, :prompt_frames] * prompt_mask).to(dtype)
        cond = cond.transpose(1, 2)

        mel = self.decoder.solve(mu, mel_mask.to(dtype), spks, cond, n_timesteps)

        gen_lengths = mel_lengths - prompt_mel_lengths
        out = torch.zeros(batch, MEL_CHANNELS, int(gen_lengths.max()), device=mel.device)
        for i in range(batch):
            start, stop = int(prompt_mel_lengths[i]), int(mel_lengths[i])
            out[i, :, : stop - start] = mel[i, :, start:stop]
        return out, gen_lengths
