"""Tokens -> mel: token embedding, upsampling conformer encoder, and a conditional flow-matching
(CFM) decoder solved with 10 Euler steps on a cosine time schedule with classifier-free guidance.

Everything runs on right-padded batches with per-item lengths; see :meth:`CausalMaskedDiffWithXvec.inference`."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import MEL_CHANNELS, SPEAKER_EMBEDDING_DIM, SPEECH_VOCAB_SIZE
from chatterbox_s3gen.encoder import UpsampleConformerEncoder
from chatterbox_s3gen.estimator import ConditionalDecoder
from chatterbox_s3gen.masks import length_mask

logger = logging.getLogger(__name__)


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
        self.graphs: EulerGraphs | None = None
        """Set to an :class:`EulerGraphs` to replay the Euler loop from CUDA graphs on CUDA."""
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
        estimator runs in; the guided and unguided rows run as one ``2B`` batch.

        On CUDA with :attr:`graphs` set, the whole loop is replayed from a captured CUDA graph
        (:class:`EulerGraphs`): same kernels, no per-launch CPU cost."""
        if self.graphs is not None and (mu.is_cuda or not self.graphs.capture):
            return self.graphs.solve(self, mu, mask, spks, cond, n_timesteps)
        return self._solve_eager(mu, mask, spks, cond, n_timesteps)

    def _solve_eager(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
        t_span: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, _, frames = mu.shape
        est_dtype = next(self.estimator.parameters()).dtype
        x = self.noise[:, :, :frames].expand(batch, -1, -1).float() * mask.float()
        # Rows B.. are the unconditional half of classifier-free guidance: mu, speaker and prompt zeroed.
        mask_in = torch.cat([mask, mask]).to(est_dtype)
        mu_in = torch.cat([mu, torch.zeros_like(mu)]).to(est_dtype)
        spks_in = torch.cat([spks, torch.zeros_like(spks)]).to(est_dtype)
        cond_in = torch.cat([cond, torch.zeros_like(cond)]).to(est_dtype)
        if t_span is None:
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


def frame_bucket(frames: int) -> int:
    """Padded frame count of a captured solve: multiples of 64 frames (1.28 s) up to 1024, of 128
    beyond. Coarser buckets mean fewer graphs to capture, finer ones less padded compute."""
    step = 64 if frames <= 1024 else 128
    return -(-frames // step) * step


def row_bucket(rows: int) -> int:
    """Padded batch size of a captured solve: 1, 2, 4, 8, then multiples of 8."""
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    return -(-rows // 8) * 8


class EulerGraphs:
    """CUDA graphs of :meth:`ConditionalCFM._solve_eager`, one per (rows, frames, steps, dtype).

    A batch is padded to :func:`row_bucket` rows (copies of its last item, discarded after) and
    :func:`frame_bucket` frames (masked, so its valid frames are what the unpadded batch gives:
    causal convs, key-masked attention and per-frame norms never look at padded frames). The
    first batch of a new shape is run eagerly twice on a side stream (cuDNN/cuBLAS choose their
    kernels), then captured; later batches of that shape replay it. All graphs share one memory
    pool, which is safe because replays are sequential on one stream and each graph's output is
    copied out before the next replay. At most ``max_graphs`` are kept (least recently used go).

    A graph replays fixed addresses: if the estimator's parameters or the CFM noise are replaced
    (``S3Gen.to``, a new ``flow_noise``), every graph is dropped and recaptured on next use.
    ``capture=False`` keeps the bucketing and static buffers but runs them eagerly (any device):
    the CPU tests use it to check everything around the capture.
    """

    def __init__(self, max_graphs: int = 32, *, capture: bool = True) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self.capture = capture
        self._graphs: dict[tuple[int, int, int, torch.dtype], _CapturedSolve] = {}
        self._pool: object | None = None
        self._fingerprint: tuple[int, ...] = ()
        self._failed: set[tuple[int, int, int, torch.dtype]] = set()
        self.captures = 0
        """Graphs captured (or, with ``capture=False``, static buffer sets made) so far."""

    def solve(
        self,
        cfm: ConditionalCFM,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
    ) -> torch.Tensor:
        batch, channels, frames = mu.shape
        # Never pad past the fixed noise (callers already keep frames within it).
        rows, padded = row_bucket(batch), min(frame_bucket(frames), cfm.noise.shape[2])
        fingerprint = (cfm.noise.data_ptr(), *(p.data_ptr() for p in cfm.estimator.parameters()))
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint
        dtype = next(cfm.estimator.parameters()).dtype
        key = (rows, padded, n_timesteps, dtype)
        if key in self._failed:
            return cfm._solve_eager(mu, mask, spks, cond, n_timesteps)
        graph = self._graphs.pop(key, None)
        if graph is None:
            try:
                if self.capture and self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                graph = _CapturedSolve(
                    cfm,
                    rows,
                    padded,
                    channels,
                    spks.shape[1],
                    n_timesteps,
                    mu.device,
                    self._pool if self.capture else None,
                )
            except Exception as error:  # whatever broke the capture
                # A failed capture (no CUDA device, out of memory, an op that cannot be captured)
                # must cost speed, not the request: this shape runs eagerly from now on.
                self._failed.add(key)
                logger.warning(
                    "S3Gen: no CUDA graph for %d rows x %d frames (%s); running it eagerly",
                    rows,
                    padded,
                    error,
                )
                return cfm._solve_eager(mu, mask, spks, cond, n_timesteps)
            self.captures += 1
            while len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = graph  # most recently used last
        return graph.run(mu, mask, spks, cond)[:batch, :, :frames].clone()

    def clear(self) -> None:
        """Drop every graph (their memory returns to the allocator)."""
        self._graphs.clear()
        self._failed.clear()
        self._pool = None
        self._fingerprint = ()


class _CapturedSolve:
    def __init__(
        self,
        cfm: ConditionalCFM,
        rows: int,
        frames: int,
        channels: int,
        spk_channels: int,
        n_timesteps: int,
        device: torch.device,
        pool: object | None,
    ) -> None:
        """``pool=None``: no capture; :meth:`run` solves the static buffers eagerly."""
        self.rows, self.frames = rows, frames
        self.cfm = cfm
        self.noise = cfm.noise  # the graph reads this tensor's memory: keep it alive
        dtype = next(cfm.estimator.parameters()).dtype
        # Static inputs (outside the graph pool: they outlive every replay).
        self.mu = torch.zeros(rows, channels, frames, device=device, dtype=dtype)
        self.mask = torch.zeros(rows, 1, frames, device=device, dtype=dtype)
        self.spks = torch.zeros(rows, spk_channels, device=device, dtype=dtype)
        self.cond = torch.zeros(rows, channels, frames, device=device, dtype=dtype)
        self.mask[:, :, :1] = 1  # a valid first frame while warming up (no fully masked rows)
        # Made before capture: a host-to-device copy cannot happen inside one.
        self.t_span = cosine_time_steps(n_timesteps).to(device)
        args = (self.mu, self.mask, self.spks, self.cond, n_timesteps, self.t_span)
        self.args = args
        self.graph: torch.cuda.CUDAGraph | None = None
        if pool is None:
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                cfm._solve_eager(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread of the process (T3 conditioning, a pipeline's main loop)
        # may use CUDA while this one captures; only this thread's calls are restricted.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.out = cfm._solve_eager(*args)

    def run(
        self, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        batch, _, frames = mu.shape
        for static, value in ((self.mu, mu), (self.cond, cond)):
            static[:batch, :, :frames].copy_(value)
            static[:batch, :, frames:].zero_()
            static[batch:] = static[batch - 1 : batch]
        self.mask[:batch, :, :frames].copy_(mask)
        self.mask[:batch, :, frames:].zero_()
        self.mask[batch:] = self.mask[batch - 1 : batch]
        self.spks[:batch].copy_(spks)
        self.spks[batch:] = self.spks[batch - 1 : batch]
        if self.graph is None:
            return self.cfm._solve_eager(*self.args)
        self.graph.replay()
        return self.out


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
        part only (left-aligned, zero-padded) and their lengths ``2 * L_i - P_i`` (a CPU tensor).

        Lengths may be CPU tensors while everything else is on the GPU: then nothing here waits
        for the GPU (the output size is known on the host) and the next batch can be queued while
        this one runs."""
        dtype = self.input_embedding.weight.dtype
        device = tokens.device
        batch = tokens.shape[0]
        spks = self.spk_embed_affine_layer(F.normalize(speaker_embedding.to(dtype), dim=1))

        # Upsampled mel lengths and generated lengths on the host (one sync only if given on GPU).
        host_tokens = token_lengths.to("cpu", torch.int64)
        host_prompt = prompt_mel_lengths.to("cpu", torch.int64)
        host_gen = host_tokens * self.encoder.up_layer.stride - host_prompt
        token_lengths = token_lengths.to(device, non_blocking=True)
        prompt_mel_lengths = prompt_mel_lengths.to(device, non_blocking=True)

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

        # out[i, :, j] = mel[i, :, P_i + j] for j < G_i, else 0: one gather, no per-item indexing.
        width = int(host_gen.max())
        offsets = torch.arange(width, device=device).unsqueeze(0)
        index = (prompt_mel_lengths.unsqueeze(1) + offsets).clamp(max=frames - 1)
        gathered = mel.gather(2, index.unsqueeze(1).expand(-1, mel.shape[1], -1))
        keep = offsets < (mel_lengths - prompt_mel_lengths).unsqueeze(1)
        out = torch.where(keep.unsqueeze(1), gathered, torch.zeros((), device=device))
        return out, host_gen
