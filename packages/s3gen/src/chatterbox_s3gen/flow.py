"""Tokens -> mel: token embedding, upsampling conformer encoder, and a conditional flow-matching
(CFM) decoder solved with 10 Euler steps on a cosine time schedule with classifier-free guidance
(the standard decoder), or with 2 steps on a linear schedule, one row per item and the step's end
time as a second estimator input (the meanflow decoder of Chatterbox Turbo, ``config.meanflow``).

Everything runs on right-padded batches with per-item lengths; see :meth:`CausalMaskedDiffWithXvec.inference`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import MEL_CHANNELS, SPEAKER_EMBEDDING_DIM, SPEECH_VOCAB_SIZE
from chatterbox_s3gen.encoder import UpsampleConformerEncoder
from chatterbox_s3gen.estimator import ConditionalDecoder
from chatterbox_s3gen.graphs import ShapeGraphs, capture
from chatterbox_s3gen.masks import length_mask

logger = logging.getLogger(__name__)


def cosine_time_steps(n_timesteps: int) -> torch.Tensor:
    """``t_k = 1 - cos(k / n * pi / 2)`` for ``k = 0..n`` (float32, as the reference computes it)."""
    t = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32)
    return 1 - torch.cos(t * 0.5 * torch.pi)


def linear_time_steps(n_timesteps: int) -> torch.Tensor:
    """``t_k = k / n`` for ``k = 0..n`` (float32): the meanflow decoder's schedule."""
    return torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32)


class ConditionalCFM(nn.Module):
    """Holds the estimator and the fixed initial noise (``noise``: ``[1, 80, frames]``, not part
    of the checkpoint: the reference draws it once at construction and slices it per call)."""

    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        self.cfg_rate = config.cfg_rate
        self.meanflow = config.meanflow
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
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Euler integration from the fixed noise to a mel. ``mu``/``cond``: ``[B, 80, T]``;
        ``mask``: ``[B, 1, T]``; ``spks``: ``[B, 80]``. The state stays float32 whatever dtype the
        estimator runs in; the standard decoder runs the guided and unguided rows as one ``2B``
        batch, the meanflow decoder one row per item (see :meth:`time_steps`). ``x0``
        (``[B, 80, T]`` float32, default: the first ``T`` columns of :attr:`noise` for every row)
        is the start state, e.g. :meth:`noise_columns` of a window that starts mid-utterance.

        On CUDA with :attr:`graphs` set, the whole loop is replayed from a captured CUDA graph
        (:class:`EulerGraphs`): same kernels, no per-launch CPU cost."""
        if self.graphs is not None and (mu.is_cuda or not self.graphs.capture):
            return self.graphs.solve(self, mu, mask, spks, cond, n_timesteps, x0)
        return self._solve_eager(mu, mask, spks, cond, n_timesteps, x0=x0)

    def noise_columns(self, columns: torch.Tensor) -> torch.Tensor:
        """Start state ``[B, 80, T]`` whose frame ``(i, j)`` is column ``columns[i, j]`` of the
        fixed noise: a window of an utterance starts each frame from the column the whole
        utterance's synthesis starts that frame from."""
        batch, frames = columns.shape
        flat = columns.to(self.noise.device, torch.int64).reshape(-1)
        picked = self.noise[0].index_select(1, flat).view(MEL_CHANNELS, batch, frames)
        return picked.transpose(0, 1)

    def time_steps(self, n_timesteps: int) -> torch.Tensor:
        """The step boundaries ``t_0 = 0 .. t_n = 1``: cosine for the standard decoder, linear
        for the meanflow decoder (as the reference)."""
        return linear_time_steps(n_timesteps) if self.meanflow else cosine_time_steps(n_timesteps)

    def _solve_eager(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
        t_span: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, _, frames = mu.shape
        est_dtype = next(self.estimator.parameters()).dtype
        if x0 is None:
            x0 = self.noise[:, :, :frames].expand(batch, -1, -1)
        x = x0.float() * mask.float()
        if t_span is None:
            t_span = self.time_steps(n_timesteps).to(mu.device)
        if self.meanflow:
            return self._solve_meanflow(x, mask, mu, spks, cond, n_timesteps, t_span, est_dtype)
        # Rows B.. are the unconditional half of classifier-free guidance: mu, speaker and prompt zeroed.
        mask_in = torch.cat([mask, mask]).to(est_dtype)
        mu_in = torch.cat([mu, torch.zeros_like(mu)]).to(est_dtype)
        spks_in = torch.cat([spks, torch.zeros_like(spks)]).to(est_dtype)
        cond_in = torch.cat([cond, torch.zeros_like(cond)]).to(est_dtype)
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

    def _solve_meanflow(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
        t_span: torch.Tensor,
        est_dtype: torch.dtype,
    ) -> torch.Tensor:
        """One estimator row per item (the decoder was distilled from guided outputs); step ``k``
        gives the estimator its start ``t_k`` and end ``t_{k+1}`` and moves ``x`` by
        ``(t_{k+1} - t_k) * velocity``, as the reference's ``basic_euler``."""
        batch = x.shape[0]
        mask_in, mu_in = mask.to(est_dtype), mu.to(est_dtype)
        spks_in, cond_in = spks.to(est_dtype), cond.to(est_dtype)
        for step in range(n_timesteps):
            start, end = t_span[step : step + 1], t_span[step + 1 : step + 2]
            velocity = self.estimator(
                x.to(est_dtype),
                mask_in,
                mu_in,
                start.expand(batch).to(est_dtype),
                spks_in,
                cond_in,
                end.expand(batch).to(est_dtype),
            ).float()
            x = x + (end - start) * velocity
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


@dataclass(frozen=True)
class GraphPreparation:
    """What :meth:`S3Gen.prepare_graphs` did: the ``(rows, frames)`` shapes it prepared
    for ``n_timesteps`` steps, how many graphs it captured (static buffer sets with
    ``capture=False``) and how long that took."""

    shapes: tuple[tuple[int, int], ...]
    n_timesteps: int
    captures: int
    seconds: float
    warmed: int = 0
    """Flow encoder and HiFT shapes prepared at start-up as well (a streaming
    server's: :func:`chatterbox_s3gen.streaming.prepare_stream_kernels`); their time is in
    ``seconds``."""


GraphKey = tuple[int, int, int, torch.dtype]
"""(rows, frames, n_timesteps, estimator dtype) of one captured Euler loop."""


class EulerGraphs:
    """CUDA graphs of :meth:`ConditionalCFM._solve_eager`, one per (rows, frames, steps, dtype).

    A batch is padded to :func:`row_bucket` rows (copies of its last item, discarded after) and
    :func:`frame_bucket` frames (masked, so its valid frames are what the unpadded batch gives:
    causal convs, key-masked attention and per-frame norms never look at padded frames). The
    first batch of a new shape is run eagerly once on a side stream (cuDNN/cuBLAS choose their
    kernels), then captured; later batches of that shape replay it. All graphs share one memory
    pool, which is safe because replays are sequential on one stream and each graph's output is
    copied out before the next replay. At most ``max_graphs`` are kept (least recently used go).

    **Sealed** (:meth:`prepare` with ``seal=True``, what a server does at start-up): the shapes
    are fixed. A batch runs on the smallest prepared shape that holds it (rows >= its rows,
    frames >= its frames, same steps and dtype); a batch no prepared shape holds runs eagerly
    and is counted in :attr:`eager_after_seal`, never captured on the request path.
    :attr:`captures_after_seal` counts re-captures of prepared shapes after the weights or the
    noise were replaced (the only captures a sealed set makes).

    A graph replays fixed addresses: if the estimator's parameters or the CFM noise are replaced
    (``S3Gen.to``, a new ``flow_noise``), every graph is dropped and recaptured on next use.
    ``capture=False`` keeps the bucketing, sealing and static buffers but runs them eagerly (any
    device): the CPU tests use it to check everything around the capture.
    """

    def __init__(self, max_graphs: int = 32, *, capture: bool = True) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self.capture = capture
        self._graphs: dict[GraphKey, _CapturedSolve] = {}
        self._pool: object | None = None
        self._fingerprint: tuple[int, ...] = ()
        self._failed: set[GraphKey] = set()
        self._sealed: list[GraphKey] | None = None
        self.captures = 0
        """Graphs captured (or, with ``capture=False``, static buffer sets made) so far."""
        self.eager_after_seal = 0
        """Solves that no sealed shape could hold (run eagerly)."""
        self.captures_after_seal = 0
        """Captures made after :meth:`prepare` sealed the set (re-captures after new weights)."""

    @property
    def sealed(self) -> bool:
        return self._sealed is not None

    @property
    def max_sealed_rows(self) -> int | None:
        """Most rows any sealed shape holds (callers split larger batches); None if unsealed."""
        return max((key[0] for key in self._sealed), default=0) if self._sealed else None

    @torch.inference_mode()
    def prepare(
        self,
        cfm: ConditionalCFM,
        shapes: Sequence[tuple[int, int]],
        n_timesteps: int,
        *,
        seal: bool = True,
    ) -> int:
        """Capture the Euler loop of every ``(rows, frames)`` in ``shapes`` now (start-up, not on
        the request path); with ``seal`` only these shapes are used from now on. Returns the
        number of graphs captured (shapes already held are not captured again).

        Runs in inference mode, as :meth:`ConditionalCFM.solve` does: a capture with autograd on
        keeps every step's activations alive (seen on an H200: 24 shapes took 88 GiB)."""
        self._check_fingerprint(cfm)
        dtype = next(cfm.estimator.parameters()).dtype
        keys = sorted({(rows, frames, n_timesteps, dtype) for rows, frames in shapes})
        self.max_graphs = max(self.max_graphs, len(keys) + len(self._graphs))
        made = 0
        for key in keys:
            if key not in self._graphs and key not in self._failed:
                made += self._build(cfm, key, cfm.noise.device) is not None
        if seal:
            self._sealed = [k for k in keys if k in self._graphs]
            self.eager_after_seal = self.captures_after_seal = 0
        return made

    def _check_fingerprint(self, cfm: ConditionalCFM) -> None:
        fingerprint = (cfm.noise.data_ptr(), *(p.data_ptr() for p in cfm.estimator.parameters()))
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint

    def _key_for(
        self, rows: int, frames: int, n_timesteps: int, dtype: torch.dtype
    ) -> GraphKey | None:
        if self._sealed is None:
            return (row_bucket(rows), frame_bucket(frames), n_timesteps, dtype)
        fits: list[GraphKey] = [
            k
            for k in self._sealed
            if k[0] >= rows and k[1] >= frames and k[2] == n_timesteps and k[3] == dtype
        ]
        if not fits:
            return None
        # The least padded work (rows x frames) among the shapes that hold the batch.
        return min(fits, key=lambda k: (k[0] * k[1], k[1]))

    def _build(
        self, cfm: ConditionalCFM, key: GraphKey, device: torch.device
    ) -> _CapturedSolve | None:
        rows, frames, n_timesteps, _ = key
        try:
            if self.capture and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = _CapturedSolve(
                cfm, rows, frames, n_timesteps, device, self._pool if self.capture else None
            )
        except Exception as error:  # whatever broke the capture
            # A failed capture (no CUDA device, out of memory, an op that cannot be captured)
            # must cost speed, not the request: this shape runs eagerly from now on.
            self._failed.add(key)
            logger.warning(
                "S3Gen: no CUDA graph for %d rows x %d frames (%s); running it eagerly",
                rows,
                frames,
                error,
            )
            return None
        self.captures += 1
        if self._sealed is not None:
            self.captures_after_seal += 1
        while len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = graph
        return graph

    def solve(
        self,
        cfm: ConditionalCFM,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, _, frames = mu.shape
        self._check_fingerprint(cfm)
        dtype = next(cfm.estimator.parameters()).dtype
        key = self._key_for(batch, frames, n_timesteps, dtype)
        if key is not None and key[1] > cfm.noise.shape[2]:
            key = None  # never pad past the fixed noise (unsealed buckets are clipped below)
        if key is None and self._sealed is None:
            key = (row_bucket(batch), cfm.noise.shape[2], n_timesteps, dtype)
        if key is None or key in self._failed:
            if self._sealed is not None:
                self.eager_after_seal += 1
            return cfm._solve_eager(mu, mask, spks, cond, n_timesteps, x0=x0)
        graph = self._graphs.pop(key, None)
        if graph is None:
            graph = self._build(cfm, key, mu.device)
            if graph is None:
                return cfm._solve_eager(mu, mask, spks, cond, n_timesteps, x0=x0)
        self._graphs[key] = graph  # most recently used last
        return graph.run(mu, mask, spks, cond, x0)[:batch, :, :frames].clone()

    def clear(self) -> None:
        """Drop every graph (their memory returns to the allocator); a sealed shape set stays
        sealed and its graphs are captured again on next use (see :attr:`captures_after_seal`)."""
        self._graphs.clear()
        self._failed.clear()
        self._pool = None
        self._fingerprint = ()

    def stats(self) -> dict[str, int | bool]:
        """Counters for logs and metrics."""
        return {
            "graphs": len(self._graphs),
            "captures": self.captures,
            "sealed": self.sealed,
            "eager_after_seal": self.eager_after_seal,
            "captures_after_seal": self.captures_after_seal,
        }


class _CapturedSolve:
    def __init__(
        self,
        cfm: ConditionalCFM,
        rows: int,
        frames: int,
        n_timesteps: int,
        device: torch.device,
        pool: object | None,
    ) -> None:
        """``pool=None``: no capture; :meth:`run` solves the static buffers eagerly."""
        self.rows, self.frames = rows, frames
        self.cfm = cfm
        self.noise = cfm.noise  # the default start state is copied from it: keep it alive
        dtype = next(cfm.estimator.parameters()).dtype
        channels = MEL_CHANNELS
        # Static inputs (outside the graph pool: they outlive every replay).
        self.mu = torch.zeros(rows, channels, frames, device=device, dtype=dtype)
        self.mask = torch.zeros(rows, 1, frames, device=device, dtype=dtype)
        self.spks = torch.zeros(rows, channels, device=device, dtype=dtype)
        self.cond = torch.zeros(rows, channels, frames, device=device, dtype=dtype)
        self.x0 = torch.zeros(rows, channels, frames, device=device, dtype=torch.float32)
        self.mask[:, :, :1] = 1  # a valid first frame while warming up (no fully masked rows)
        # Made before capture: a host-to-device copy cannot happen inside one.
        self.t_span = cfm.time_steps(n_timesteps).to(device)
        self.n_timesteps = n_timesteps
        self.graph: torch.cuda.CUDAGraph | None = None
        if pool is None:
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            # One eager solve makes every lazy choice (cuDNN plans, cuBLAS workspaces, allocator
            # blocks) before capture; a second only repeated it (each shape's start-up cost).
            self._eager()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.out = capture(self.graph, pool, device, self._eager)

    def _eager(self) -> torch.Tensor:
        return self.cfm._solve_eager(
            self.mu, self.mask, self.spks, self.cond, self.n_timesteps, self.t_span, x0=self.x0
        )

    def run(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, _, frames = mu.shape
        if x0 is None:
            x0 = self.noise[:, :, :frames].expand(batch, -1, -1)
        for static, value in ((self.mu, mu), (self.cond, cond), (self.x0, x0)):
            static[:batch, :, :frames].copy_(value)
            static[:batch, :, frames:].zero_()
            static[batch:] = static[batch - 1 : batch]
        self.mask[:batch, :, :frames].copy_(mask)
        self.mask[:batch, :, frames:].zero_()
        self.mask[batch:] = self.mask[batch - 1 : batch]
        self.spks[:batch].copy_(spks)
        self.spks[batch:] = self.spks[batch - 1 : batch]
        if self.graph is None:
            return self._eager()
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
        self.encoder_graphs: ShapeGraphs | None = None
        """:meth:`encode` captured at a streaming server's fixed window shapes
        (:func:`chatterbox_s3gen.streaming.prepare_stream_kernels`); None: always eager."""

    def encoder_parameters_fingerprint(self) -> tuple[int, ...]:
        """Addresses of every weight :meth:`encode` reads (a captured encode replays them)."""
        modules = (self.input_embedding, self.encoder, self.encoder_proj)
        return tuple(p.data_ptr() for m in modules for p in m.parameters())

    def encode_eager(
        self, tokens: torch.Tensor, token_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, L]`` (right-padded, on the device) and their lengths ``[B]`` (on the
        device) -> ``mu`` ``[B, 80, 2L]`` in the flow's dtype and its mel lengths ``[B]``."""
        dtype = self.input_embedding.weight.dtype
        token_mask = length_mask(token_lengths, tokens.shape[1]).unsqueeze(-1).to(dtype)
        embedded = self.input_embedding(torch.clamp(tokens, min=0)) * token_mask
        hidden, mel_lengths = self.encoder(embedded, token_lengths)
        return self.encoder_proj(hidden).transpose(1, 2), mel_lengths

    def encode(
        self, tokens: torch.Tensor, token_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_eager`, replayed from :attr:`encoder_graphs` at a prepared shape (the
        outputs are then the graph's buffers: used before the next call of that shape)."""
        if self.encoder_graphs is not None:
            return self.encoder_graphs.run(tokens, token_lengths)
        return self.encode_eager(tokens, token_lengths)

    @torch.inference_mode()
    def inference(
        self,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        prompt_mel: torch.Tensor,
        prompt_mel_lengths: torch.Tensor,
        speaker_embedding: torch.Tensor,
        n_timesteps: int,
        *,
        keep_frames: torch.Tensor | None = None,
        noise_columns: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate mels for a padded batch.

        ``tokens``: ``[B, L]`` prompt tokens followed by new tokens, right-padded; ``token_lengths``:
        ``[B]`` (prompt + new). ``prompt_mel``: ``[B, P, 80]`` right-padded, ``prompt_mel_lengths``:
        ``[B]``. ``speaker_embedding``: ``[B, 192]``. Returns float32 mels ``[B, 80, G]`` of the new
        part only (left-aligned, zero-padded) and their lengths ``K_i - P_i`` (a CPU tensor).

        ``keep_frames`` (``[B]``, host; default ``2 * L_i``): mel frames (prompt included) that the
        CFM decodes per item; tokens past them reach the encoder only (a streamed window's
        look-ahead). ``noise_columns`` (``[B, >= max K_i]`` int64; default ``0, 1, 2, ...``): the
        column of the fixed CFM noise each frame starts from, so a window starts every frame from
        the column the whole utterance's synthesis uses for it.

        Lengths may be CPU tensors while everything else is on the GPU: then nothing here waits
        for the GPU (the output size is known on the host) and the next batch can be queued while
        this one runs."""
        dtype = self.input_embedding.weight.dtype
        device = tokens.device
        batch = tokens.shape[0]
        spks = self.spk_embed_affine_layer(F.normalize(speaker_embedding.to(dtype), dim=1))

        # Decoded mel lengths on the host (one sync only if given on GPU).
        host_tokens = token_lengths.to("cpu", torch.int64)
        host_prompt = prompt_mel_lengths.to("cpu", torch.int64)
        host_keep = (
            host_tokens * self.encoder.up_layer.stride
            if keep_frames is None
            else keep_frames.to("cpu", torch.int64)
        )
        host_gen = host_keep - host_prompt
        token_lengths = token_lengths.to(device, non_blocking=True)
        prompt_mel_lengths = prompt_mel_lengths.to(device, non_blocking=True)

        mu, mel_lengths = self.encode(tokens, token_lengths)  # [B, 80, T], [B]
        if keep_frames is not None:
            # Columns past every kept length are never decoded: the CFM runs on fewer frames.
            mel_lengths = host_keep.to(device, non_blocking=True)
            mu = mu[:, :, : int(host_keep.max())]
        frames = mu.shape[2]

        mel_mask = length_mask(mel_lengths, frames).unsqueeze(1)
        if keep_frames is not None:
            mu = mu * mel_mask.to(mu.dtype)
        prompt_frames = min(prompt_mel.shape[1], frames)
        prompt_mask = length_mask(prompt_mel_lengths, prompt_frames).unsqueeze(-1)
        cond = torch.zeros(batch, frames, MEL_CHANNELS, device=mu.device, dtype=dtype)
        cond[:, :prompt_frames] = (prompt_mel[:, :prompt_frames] * prompt_mask).to(dtype)
        cond = cond.transpose(1, 2)

        if noise_columns is None:
            mel = self.decoder.solve(mu, mel_mask.to(dtype), spks, cond, n_timesteps)
        else:
            x0 = self.decoder.noise_columns(noise_columns[:, :frames])
            mel = self.decoder.solve(mu, mel_mask.to(dtype), spks, cond, n_timesteps, x0=x0)

        # out[i, :, j] = mel[i, :, P_i + j] for j < G_i, else 0: one gather, no per-item indexing.
        width = int(host_gen.max())
        offsets = torch.arange(width, device=device).unsqueeze(0)
        index = (prompt_mel_lengths.unsqueeze(1) + offsets).clamp(max=frames - 1)
        gathered = mel.gather(2, index.unsqueeze(1).expand(-1, mel.shape[1], -1))
        keep = offsets < (mel_lengths - prompt_mel_lengths).unsqueeze(1)
        out = torch.where(keep.unsqueeze(1), gathered, torch.zeros((), device=device))
        return out, host_gen
