"""``ChatterboxTTS``: the local executor. Text (any length) + voice -> 24 kHz speech on one GPU,
T3 on vLLM and S3Gen pipelined (:mod:`chatterbox_vllm.pipeline`).

Loading (:meth:`ChatterboxTTS.from_local` / :meth:`~ChatterboxTTS.from_pretrained`) builds the two
components from one :class:`~chatterbox_vllm.config.EngineConfig`; a call is planned by
:mod:`chatterbox_vllm.planner` (see :class:`~chatterbox_vllm.front.SpeechFront`) and executed here:
each plan item's text is checked by T3's front end, then all items go to T3 as one vLLM batch and
to S3Gen in batches as they finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import Unpack

from chatterbox_vllm.audio import AudioInput
from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.config import EngineConfig
from chatterbox_vllm.controls import ControlKwargs, GenerationParams
from chatterbox_vllm.errors import (
    ChatterboxError,
    ChunkInputError,
    EngineDeadError,
    GenerationInterrupted,
    InvalidParameterError,
    InvalidTextError,
    from_component_error,
    from_engine_start_error,
)
from chatterbox_vllm.front import SpeechFront
from chatterbox_vllm.hub import (
    DEFAULT_REPO_ID,
    DEFAULT_REVISION,
    describe_model,
    download_checkpoint,
    inspect_checkpoint_dir,
)
from chatterbox_vllm.interfaces import SpeechDecoder, StreamingSpeechTokenGenerator
from chatterbox_vllm.models import TRAILING_SPEECH_TOKENS, ModelKind
from chatterbox_vllm.pipeline import ChunkJob, EventLoopThread, run_pipeline
from chatterbox_vllm.planner import IncrementalPlanner, Plan, PlanItem, plan_requests
from chatterbox_vllm.results import (
    ChunkAudio,
    GenerationResult,
    GenerationStats,
    PipelineTimings,
    TTSRequest,
    VoiceLike,
)
from chatterbox_vllm.scheduler import Listener, S3GenScheduler, WindowTimeline
from chatterbox_vllm.streaming import (
    AudioChunk,
    StreamEvents,
    StreamItem,
    StreamSession,
    TextStream,
    aiterate_stream,
    aiterate_text_stream,
    iterate_stream,
    iterate_text_stream,
)
from chatterbox_vllm.voices import Voice, VoiceCache
from chatterbox_vllm.watermark import Watermarker, resolve_watermarker

if TYPE_CHECKING:
    from chatterbox_s3gen.streaming import StreamingConfig
    from chatterbox_t3 import AsyncT3Engine, VoiceEncoder

logger = logging.getLogger(__name__)

__all__ = ["ChatterboxTTS", "EngineConfig", "GenerationResult", "TTSRequest", "VoiceLike"]


def _stop_when_built(future: Any) -> None:
    """Waits for an engine that is being built and stops it (its loader failed elsewhere)."""
    try:
        future.result().shutdown()
    except Exception as error:  # it failed to build too: nothing to stop
        logger.debug("T3 engine did not start either: %s", error)


VLLM_ERRORS_ONLY_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "level": "ERROR",
            "formatter": "plain",
        }
    },
    "loggers": {"vllm": {"handlers": ["stderr"], "level": "ERROR", "propagate": False}},
}
"""vLLM's logging in a program that configured none: its errors on stderr, nothing else (its
start-up warnings are about the platform, not the caller's work)."""


def _vllm_logging_variables() -> dict[str, str]:
    """How vLLM (and its engine-core process, which inherits the variables) logs. vLLM's own
    handler writes INFO lines to *standard output* (a script's output, e.g. ``--out -`` audio or a
    pipe), so it is never used: in a program with a logging configuration, vLLM's records go to
    it; in one without, only vLLM's errors are printed (on stderr), so a script that configures
    nothing prints nothing unless something fails."""
    if "VLLM_CONFIGURE_LOGGING" in os.environ or "VLLM_LOGGING_CONFIG_PATH" in os.environ:
        return {}  # the caller chose
    if logging.getLogger().handlers:
        return {"VLLM_CONFIGURE_LOGGING": "0"}
    path = Path(tempfile.gettempdir()) / f"chatterbox-vllm-logging-{os.getuid()}.json"
    text = json.dumps(VLLM_ERRORS_ONLY_LOGGING)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return {"VLLM_CONFIGURE_LOGGING": "1", "VLLM_LOGGING_CONFIG_PATH": str(path)}


@contextlib.contextmanager
def _v1_engine_requested() -> Iterator[None]:
    """vLLM builds its V0 engine when an engine is created outside the main thread unless V1 is
    requested explicitly; T3 needs V1 and our loop thread is not main. Unless the caller chose
    otherwise, vLLM's logging is set up by :func:`_vllm_logging_variables`. The variables are set
    only while the engine is built (vLLM reads them on import, and its engine-core process
    inherits them) and restored afterwards, so importing or loading this package changes nothing
    else in the caller's environment."""
    wanted = {"VLLM_USE_V1": "1", **_vllm_logging_variables()}
    previous = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


S3GEN_KERNEL_GRAPHS = False
"""Whether the server also captures S3Gen's flow encoder and HiFT as CUDA graphs at start-up
(``prepare_stream_graphs(kernel_graphs=...)``); off, each of their shapes is only run once. Off
until measured: on an H100 (80 GB) the captures, made while T3's engine process profiled its
memory, counted against T3's share and its engine failed to start ("No available memory for the
cache blocks"), and their effect on round times is not measured yet (the GPU tests show they
give the eager parts' results)."""


def _prepare_s3gen_graphs(s3gen: Any, config: EngineConfig) -> float:
    """Captures S3Gen's CUDA graphs for every streamed-window shape (and seals the set: nothing
    is captured while serving); returns the seconds it took. Off the GPU, or without
    ``stream_graphs``, S3Gen runs eagerly: a graph per whole-chunk shape costs more to capture
    than it saves in a long ``generate``."""
    if not (config.stream_graphs and str(config.device).startswith("cuda")):
        return 0.0
    from chatterbox_s3gen.streaming import StreamingConfig, prepare_stream_graphs

    report = prepare_stream_graphs(
        s3gen,
        StreamingConfig(),
        max_rows=config.s3gen_batch_size or 1,
        n_timesteps=config.cfm_steps,
        kernel_graphs=S3GEN_KERNEL_GRAPHS,
    )
    return float(report.seconds)


def _t3_engine_stages(loop: EventLoopThread, t3: Any, engine_seconds: float) -> dict[str, float]:
    """The T3 engine's start-up stages (``t3_engine.<stage>``, those of
    :data:`chatterbox_t3.startup.ENGINE_START_STAGES`, measured in this process and in the
    engine's), plus ``t3_engine.other``: the rest of ``engine_seconds`` (gaps between the
    worker's stages, the event loop's turn, and waiting for S3Gen's weights if they took longer
    than the engine)."""
    stages = loop.submit(t3.startup_timeline()).result()
    timeline = {f"t3_engine.{stage}": seconds for stage, seconds in stages.items()}
    timeline["t3_engine.other"] = max(0.0, engine_seconds - sum(stages.values()))
    return timeline


def _check_before_loading(config: EngineConfig) -> None:
    """What :meth:`ChatterboxTTS.from_local` and ``from_pretrained`` check before anything is
    downloaded or loaded: the machine can run T3 on the config's device (a missing GPU was
    torch's "Found no NVIDIA driver" RuntimeError) and the vocoder is registered (an unknown one
    was found once the T3 engine had started, as an audio error)."""
    from chatterbox_vllm.preflight import check_device, check_vocoder

    check_vocoder(config.vocoder, "vocoder")
    check_device(config.device)


def _check_streaming(streaming: object) -> None:
    """A stream's window sizes are checked where it opens: S3Gen reads them only as each lane
    opens (a text stream's first one after its first sentence), and with its own error."""
    from chatterbox_s3gen.streaming import StreamingConfig

    if streaming is not None and not isinstance(streaming, StreamingConfig):
        raise InvalidParameterError(
            "streaming must be a chatterbox_s3gen.StreamingConfig (the stream's window sizes) "
            f"or None for the defaults, got {type(streaming).__name__}"
        )


def _default_voice(path: Path) -> Voice | None:
    """The checkpoint's built-in voice (``conds.pt``), if it has one."""
    if (path / "conds.pt").is_file():
        return Voice.from_conditionals(VoiceConditionals.load(path / "conds.pt"))
    logger.info("%s has no conds.pt: every request must name a voice", path)
    return None


def describe_load_timings(timings: dict[str, float]) -> str:
    """One line of the start-up timeline, e.g. ``imports 4.1 s, T3 engine 45.5 s (frontend 0.4 s,
    ..., weights 3.0 s, ...), S3Gen graphs 31.3 s``; the T3 engine's stages in brackets after it."""

    def name(stage: str) -> str:
        for ours, shown in (("t3_engine", "T3 engine"), ("s3gen", "S3Gen"), ("vllm", "vLLM")):
            stage = stage.replace(ours, shown)
        return stage.replace("_", " ")

    parts: list[str] = []
    for stage, seconds in timings.items():
        if stage.startswith("t3_engine."):
            continue
        part = f"{name(stage)} {seconds:.1f} s"
        inner = [
            f"{name(sub.split('.', 1)[1])} {value:.1f} s"
            for sub, value in timings.items()
            if sub.startswith(f"{stage}.")
        ]
        parts.append(f"{part} ({', '.join(inner)})" if inner else part)
    return ", ".join(parts)


class ChatterboxTTS(SpeechFront[Voice]):
    """Chatterbox text-to-speech on vLLM, on one GPU (or the CPU test path).

    Build with :meth:`from_pretrained` (Hub) or :meth:`from_local` (a checkpoint directory), call
    :meth:`generate`, and :meth:`close` (or use ``with``) to stop the vLLM engine. One object can
    serve many calls; errors in one call (bad text, bad audio, out-of-range controls) leave it
    usable. If the engine process dies (killed, out of memory) the running call and every later
    one raise :class:`~chatterbox_vllm.errors.EngineDeadError`. Calls are serialised (one at a
    time); inside a call all chunks of all texts are decoded as one vLLM batch.
    """

    def __init__(
        self,
        *,
        t3: StreamingSpeechTokenGenerator[Any],
        s3gen: SpeechDecoder[Any],
        voice_encoder: VoiceEncoder,
        config: EngineConfig,
        default_voice: Voice | None = None,
        watermarker: Watermarker | None = None,
        loop: EventLoopThread | None = None,
        model: ModelKind = "english",
    ) -> None:
        super().__init__(config, watermarker, model)
        self._t3 = t3
        self._s3gen = s3gen
        self._voice_encoder = voice_encoder
        self.default_voice = default_voice
        self._loop = loop or EventLoopThread()
        self._voices = VoiceCache(config.voice_cache_size, model=model)
        self._engine_failure: str | None = None
        self._scheduler: S3GenScheduler | None = None
        self._scheduler_lock = threading.Lock()
        self.load_timings: dict[str, float] = {}
        """Seconds of each load stage, in order: ``imports`` (torch, vLLM, both components);
        ``config``, the engine configuration for this machine (on a GPU this initialises CUDA
        to read the card's memory); ``s3gen_weights`` and ``t3_engine``, concurrently, from
        then until vLLM's engine answered; ``t3_engine`` split into ``t3_engine.<stage>`` for
        each stage of :data:`chatterbox_t3.startup.ENGINE_START_STAGES` (this process:
        ``.frontend``, ``.vllm_config``, ``.vllm_client``; the engine process:
        ``.process_imports``, ``.executor``, its worker's ``.device`` / ``.weights`` /
        ``.compile`` / ``.kv_profile`` / ``.kv_cache`` / ``.graph_capture``, then ``.ready``)
        and ``.other`` (the rest);
        ``s3gen_graphs``, after both, or after S3Gen's weights while the engine starts where
        :attr:`EngineConfig.s3gen_graphs_during_t3_start`; ``voices``, the default voice and
        the voice encoder.
        Logged as one line at INFO."""
        self.on_stream_done: Callable[[Listener], None] | None = None
        """Called with each finished stream's playback clock (the server's buffer metrics)."""
        self.on_window: Callable[[WindowTimeline], None] | None = None
        """Called with each streamed window's timeline (the server's deadline metrics)."""

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str = DEFAULT_REPO_ID,
        revision: str | None = DEFAULT_REVISION,
        *,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        model: ModelKind = "english",
        **config_overrides: Any,
    ) -> ChatterboxTTS:
        """Downloads (or reuses from the Hugging Face cache) the checkpoint files of ``model``
        (``english``: the five files of chatterbox-tts 0.1.2 at the pinned ``revision``;
        ``multilingual``: the six of 0.1.7's multilingual model, see
        :data:`~chatterbox_vllm.models.MODEL_FILES`) from ``repo_id``, then loads them like
        :meth:`from_local`. ``HF_HUB_OFFLINE=1`` uses the cache only."""
        config = (config or EngineConfig()).with_overrides(config_overrides)
        _check_before_loading(config)  # before a download too
        directory = download_checkpoint(
            repo_id,
            revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            model=model,
        )
        return cls.from_local(directory, config=config, watermark=watermark)

    @classmethod
    def from_local(
        cls,
        directory: str | os.PathLike,
        *,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        **config_overrides: Any,
    ) -> ChatterboxTTS:
        """Loads a checkpoint directory (``ve.safetensors``, ``t3_cfg.safetensors``,
        ``s3gen.safetensors``, ``tokenizer.json`` and optionally ``conds.pt``, the default voice;
        or the multilingual model's ``ve.pt``, ``t3_mtl23ls_v2.safetensors``, ``s3gen.pt``,
        ``grapheme_mtl_merged_expanded_v1.json``, ``Cangjie5_TC.json`` [, ``conds.pt``]). Which
        model the directory holds is detected from its T3 file, logged, and kept in :attr:`model`.

        Engine knobs come from ``config`` or keyword overrides of :class:`EngineConfig` fields,
        e.g. ``from_local(d, gpu_memory_utilization=0.5, vocoder="hift-onnx")``.
        """
        config = (config or EngineConfig()).with_overrides(config_overrides)
        _check_before_loading(config)
        path, model = inspect_checkpoint_dir(directory)
        logger.info("checkpoint %s holds the %s model", path, describe_model(model))
        watermarker = resolve_watermarker(watermark)
        timings: dict[str, float] = {}
        begin = time.perf_counter()
        from chatterbox_s3gen import S3Gen

        with _v1_engine_requested():  # vLLM reads its variables when it is first imported
            from chatterbox_t3 import AsyncT3Engine
        timings["imports"] = time.perf_counter() - begin

        begin = time.perf_counter()
        if model == "turbo":
            config = config.for_turbo()
        config = config.resolve_here()  # on a GPU, initialises CUDA here to read its memory
        timings["config"] = time.perf_counter() - begin
        logger.info("loading %s: %s", path, config.describe())
        assert config.device is not None
        loop = EventLoopThread()
        engine_kwargs = dict(
            dtype=config.dtype,
            max_num_seqs=config.max_num_seqs,
            max_model_len=config.model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            cuda_graphs=config.cuda_graphs,
            num_gpu_blocks_override=config.num_gpu_blocks_override,
            conditioning_device=config.device,
            in_process=config.t3_process == "in-process",
            missing_language_dependency=config.missing_language_dependency,
            # Loading is logged with its time; vLLM's weight-loading bar would print regardless.
            **{"use_tqdm_on_load": False, **config.engine_kwargs},
        )

        async def start_engine() -> AsyncT3Engine:
            # Built on the loop that will drive it: vLLM binds its output handler there.
            return AsyncT3Engine.from_checkpoint(path, **engine_kwargs)

        try:
            begin = time.perf_counter()
            with _v1_engine_requested():
                # T3's engine (its own process: weights, memory profile, graph capture) and
                # S3Gen's weights load at the same time, and where the config allows it
                # (EngineConfig.s3gen_graphs_during_t3_start) S3Gen's CUDA graphs too. S3Gen
                # only allocates GPU memory meanwhile (it frees nothing: vLLM's profiler fails
                # if another process on the GPU releases memory during its profile).
                t3_future = loop.submit(start_engine())
                try:
                    s3gen = S3Gen.from_checkpoint(
                        path,
                        device=config.device,
                        dtype=getattr(torch, config.s3gen_dtype),
                        vocoder_dtype=getattr(torch, config.s3gen_dtype),
                        vocoder=config.vocoder,
                        cuda_graphs=False,
                    )
                    if config.cfm_steps is None:  # the model's own step count (Turbo: 2)
                        config = dataclasses.replace(config, cfm_steps=s3gen.flow_steps)
                    timings["s3gen_weights"] = time.perf_counter() - begin
                    logger.info("S3Gen loaded in %.1f s", timings["s3gen_weights"])
                    if config.s3gen_graphs_during_t3_start:
                        timings["s3gen_graphs"] = _prepare_s3gen_graphs(s3gen, config)
                except BaseException:
                    _stop_when_built(t3_future)
                    raise
                t3 = t3_future.result()
            timings["t3_engine"] = time.perf_counter() - begin
            logger.info("T3 engine started in %.1f s", timings["t3_engine"])
            try:
                timings.update(_t3_engine_stages(loop, t3, timings["t3_engine"]))
                if "s3gen_graphs" not in timings:
                    timings["s3gen_graphs"] = _prepare_s3gen_graphs(s3gen, config)
                begin = time.perf_counter()
                default_voice = _default_voice(path)
                voice_encoder = t3.voice_encoder  # loaded on first use
                timings["voices"] = time.perf_counter() - begin
            except BaseException:
                t3.shutdown()
                raise
        except BaseException as error:
            loop.stop()
            translated = from_component_error(error) or from_engine_start_error(error)
            if translated is not None and translated is not error:
                raise translated from error
            raise
        tts = cls(
            t3=t3,
            s3gen=s3gen,
            voice_encoder=voice_encoder,
            config=config,
            default_voice=default_voice,
            watermarker=watermarker,
            loop=loop,
            model=model,
        )
        tts.load_timings = timings
        logger.info("start-up timeline: %s", describe_load_timings(timings))
        return tts

    def close(self) -> None:
        """Stops the vLLM engine and the event loop thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.close()
        shutdown = getattr(self._t3, "shutdown", None)
        try:
            if callable(shutdown):
                shutdown()
        finally:
            self._loop.stop()
            # Drop the engine now: vLLM's finaliser would otherwise run again at interpreter
            # exit, when the modules it needs are already torn down.
            self._t3 = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ voices

    def prepare_voice(self, audio: AudioInput) -> Voice:
        """Prepares (or fetches from the cache) a voice from reference audio: a file path or
        ``(waveform, sample_rate)``. Any sample rate and channel count is accepted (averaged to
        mono, resampled); at least 1 s is needed and 5-10 s of clean speech works best. A ``.pt``
        path is a voice saved by :meth:`Voice.save`. Raises a specific
        :class:`~chatterbox_vllm.errors.AudioError` for unusable audio."""
        if isinstance(audio, str | os.PathLike) and Path(audio).suffix.lower() == ".pt":
            return Voice.load(audio)
        return self._voices.get_or_prepare(audio, self._voice_encoder, self._s3gen)  # type: ignore[arg-type]

    @property
    def voice_cache(self) -> VoiceCache:
        return self._voices

    def _resolve_voice(self, voice: VoiceLike) -> Voice:
        if voice is None:
            if self.default_voice is None:
                raise ChatterboxError(
                    "no voice given and the checkpoint has no conds.pt default voice; "
                    "pass voice=<audio path | saved voice .pt | (waveform, sample_rate) | Voice>"
                )
            return self.default_voice
        if isinstance(voice, Voice):
            return voice
        return self.prepare_voice(voice)

    def _resolve_voices(self, requests: Sequence[TTSRequest]) -> list[Voice]:
        return [self._resolve_voice(request.voice) for request in requests]

    # ------------------------------------------------------------------ streaming

    @property
    def scheduler(self) -> S3GenScheduler:
        """The S3Gen scheduler every call of this engine shares: ``generate``'s chunks, every
        stream's windows (started on first use)."""
        with self._scheduler_lock:
            if self._scheduler is None:
                self._scheduler = S3GenScheduler(
                    self._s3gen,
                    max_batch=self.config.s3gen_batch_size or 1,  # resolved at load
                    n_timesteps=self.config.cfm_steps,
                    overlap_generate=self.config.generate_schedule == "overlap",
                    on_stream_done=self._stream_done,
                    on_window=self._window_done,
                    trailing_tokens=TRAILING_SPEECH_TOKENS[self.model],
                    own_cuda_stream=self.config.t3_process == "in-process",
                )
            return self._scheduler

    def s3gen_graph_stats(self) -> dict[str, Any] | None:
        """S3Gen's CUDA-graph bookkeeping (captures and eager solves after start-up), if the
        decoder keeps any."""
        probe = getattr(self._s3gen, "graph_stats", None)
        return probe() if callable(probe) else None

    def _stream_done(self, listener: Listener) -> None:
        if self.on_stream_done is not None:
            self.on_stream_done(listener)

    def _window_done(self, timeline: WindowTimeline) -> None:
        if self.on_window is not None:
            self.on_window(timeline)

    def open_stream(
        self,
        text: str,
        voice: VoiceLike = None,
        *,
        params: GenerationParams | None = None,
        streaming: StreamingConfig | None = None,
    ) -> StreamSession:
        """Validates, plans and starts one stream; read it with :func:`iterate_stream` /
        :func:`aiterate_stream` (what :meth:`stream` / :meth:`astream` do) and ``close()`` it.
        Streams run concurrently with each other (and share S3Gen batches); all checks happen
        here, before anything is queued."""
        self._check_open()
        _check_streaming(streaming)
        params = params or GenerationParams.for_model(self.model)
        plan = plan_requests([text], [params], self.config, self.model)
        voice_value = self._resolve_voice(voice)
        session = self._open_session(
            voice_value, streaming, list(plan.items), sealed=True, speed=params.speed
        )
        try:
            session.start()
        except BaseException:
            session.close()  # its lanes are dropped
            raise
        return session

    def _open_session(
        self,
        voice: Voice,
        streaming: StreamingConfig | None,
        plan_items: list[PlanItem],
        *,
        sealed: bool,
        speed: float,
    ) -> StreamSession:
        """A stream session over ``plan_items`` (each with its T3 request and streamed lane);
        unsealed, it takes more items as they are planned."""
        scheduler = self.scheduler
        events = StreamEvents()
        listener = Listener()

        def open_lane(item: PlanItem, request: Any) -> StreamItem:
            lane_id = scheduler.open_stream(
                voice.s3gen,
                seed=item.seed,
                config=streaming,
                listener=listener,
                order=item.order,
                deliver=functools.partial(events.put, item.order),
            )
            return StreamItem(item.order, request, lane_id)

        def request_of(item: PlanItem) -> Any:
            try:
                return self._t3_request(item, voice)
            except ChunkInputError as error:
                # A stream speaks one text: its chunk's error is the text's (InvalidTextError,
                # a ValueError...), as generate raises it for one text.
                raise error.cause from None

        def open_item(item: PlanItem) -> StreamItem:
            return open_lane(item, request_of(item))

        # Every chunk's text is checked before any S3Gen lane opens: a chunk the front end
        # refuses must not leave the lanes of the chunks before it open.
        requests = [request_of(item) for item in plan_items]
        items: list[StreamItem] = []
        try:
            for item, request in zip(plan_items, requests, strict=True):
                items.append(open_lane(item, request))
            return StreamSession(
                items,
                t3_stream=self._t3.stream_speech_tokens,
                loop=self._loop,
                scheduler=scheduler,
                events=events,
                crossfade_samples=round(self.config.crossfade_seconds * self.sample_rate),
                engine_failure=self._t3_failure,
                speed=speed,
                open_item=open_item,
                sealed=sealed,
            )
        except BaseException:
            for opened in items:
                scheduler.cancel(opened.lane_id)
            raise

    def open_text_stream(
        self,
        voice: VoiceLike = None,
        *,
        params: GenerationParams | None = None,
        streaming: StreamingConfig | None = None,
    ) -> TextStream:
        """A stream of speech for text that is still being written (an LLM's tokens): append
        deltas to the returned :class:`~chatterbox_vllm.streaming.TextStream`, then commit; read
        its session's audio meanwhile (what :meth:`stream_text` / :meth:`astream_text` and the
        WebSocket route do). Voice and controls are checked here, before anything is queued."""
        self._check_open()
        _check_streaming(streaming)
        params = params or GenerationParams.for_model(self.model)
        planner = IncrementalPlanner(params, self.config, self.model)
        session = self._open_session(
            self._resolve_voice(voice), streaming, [], sealed=False, speed=params.speed
        )
        session.start()
        return TextStream(planner, session)

    def stream(
        self,
        text: str,
        voice: VoiceLike = None,
        *,
        streaming: StreamingConfig | None = None,
        **controls: Unpack[ControlKwargs],
    ) -> Iterator[AudioChunk]:
        """Speaks ``text`` as a stream of :class:`AudioChunk` (float32, 24 kHz) that starts as
        soon as T3 has the first window's tokens; long text streams chunk after chunk in order.
        Same voices and controls as :meth:`generate`; ``streaming`` sets the window sizes
        (``chatterbox_s3gen.StreamingConfig``). Closing the iterator early stops the work."""
        params = self.params(**controls)
        session = self.open_stream(text, voice, params=params, streaming=streaming)
        return iterate_stream(session)

    def stream_text(
        self,
        deltas: Iterable[str],
        voice: VoiceLike = None,
        *,
        streaming: StreamingConfig | None = None,
        **controls: Unpack[ControlKwargs],
    ) -> Iterator[AudioChunk]:
        """Speaks text while it is still being written: ``deltas`` (any iterable of str, e.g. an
        LLM's tokens) are split into sentences as they arrive (the first clause on its own when
        it is long enough), each goes to T3 as soon as its end is known, and the audio comes as
        :class:`AudioChunk` in order, joined by the crossfade; one voice and one seed sequence
        (``seed``, ``seed + 1``, ... per chunk, as :meth:`stream`). Audio that is ready is
        yielded between two deltas; after the last one, the rest as it is made. Closing the
        iterator stops the work. For an async iterable, use :meth:`astream_text`."""
        if isinstance(deltas, str) or not isinstance(deltas, Iterable):
            raise InvalidParameterError(
                f"deltas must be an iterable of str (pieces of the text), got {type(deltas).__name__}"
                + (
                    "; use astream_text for an async iterable"
                    if isinstance(deltas, AsyncIterable)
                    else ""
                )
                + ("; for a whole text use stream" if isinstance(deltas, str) else "")
            )
        params = self.params(**controls)
        stream = self.open_text_stream(voice, params=params, streaming=streaming)
        return iterate_text_stream(stream, deltas)

    async def astream_text(
        self,
        deltas: AsyncIterable[str] | Iterable[str],
        voice: VoiceLike = None,
        *,
        streaming: StreamingConfig | None = None,
        **controls: Unpack[ControlKwargs],
    ) -> AsyncIterator[AudioChunk]:
        """:meth:`stream_text` for asyncio code: ``deltas`` may be an async iterable (read by a
        task while audio is yielded as soon as it is ready) or a plain one."""
        import asyncio

        if isinstance(deltas, str) or not isinstance(deltas, AsyncIterable | Iterable):
            raise InvalidParameterError(
                f"deltas must be an (async) iterable of str, got {type(deltas).__name__}"
            )
        params = self.params(**controls)
        stream = await asyncio.to_thread(
            self.open_text_stream, voice, params=params, streaming=streaming
        )
        async for chunk in aiterate_text_stream(stream, deltas):
            yield chunk

    async def astream(
        self,
        text: str,
        voice: VoiceLike = None,
        *,
        streaming: StreamingConfig | None = None,
        **controls: Unpack[ControlKwargs],
    ) -> AsyncIterator[AudioChunk]:
        """:meth:`stream` for asyncio code (the calling loop is never blocked)."""
        import asyncio

        params = self.params(**controls)
        session = await asyncio.to_thread(
            self.open_stream, text, voice, params=params, streaming=streaming
        )
        async for chunk in aiterate_stream(session):
            yield chunk

    # ------------------------------------------------------------------ execution

    def _check_open(self) -> None:
        super()._check_open()
        if self._engine_failure is None and self._t3 is not None:
            self._engine_failure = self._t3_failure()
        if self._engine_failure is not None:
            raise EngineDeadError.for_reason(self._engine_failure)

    def _t3_failure(self) -> str | None:
        """Why T3 cannot serve (``None`` while it can), polled by running calls: one that is
        running when this object is closed (from another thread) ends with a ChatterboxError
        saying so, not as the engine's death (vLLM takes its shutdown for one)."""
        if self._closed:
            raise self._closed_while_running()
        probe = getattr(self._t3, "engine_failure", None)
        return probe() if callable(probe) else None

    def _closed_while_running(self) -> ChatterboxError:
        return ChatterboxError(
            f"this {type(self).__name__} was closed while the call ran (close() from another "
            "thread, or the end of its with block): the call was stopped; load a new one to "
            "speak again"
        )

    def _execute(
        self, plan: Plan, voices: list[Voice], stats: GenerationStats, progress: bool
    ) -> dict[int, ChunkAudio]:
        item_voices = [voices[item.request_index] for item in plan.items]
        audio, stats.timings = self.execute_items(plan.items, item_voices, progress=progress)
        return audio

    def execute_items(
        self, items: Sequence[PlanItem], voices: Sequence[Voice], *, progress: bool = False
    ) -> tuple[dict[int, ChunkAudio], PipelineTimings]:
        """Runs plan items (each with its voice) through T3 and S3Gen: the local executor, also
        what a Ray replica runs for the items it is sent. Returns audio by item ``order``."""
        jobs = [
            ChunkJob(item=item, t3_request=self._t3_request(item, voice), reference=voice.s3gen)
            for item, voice in zip(items, voices, strict=True)
        ]
        try:
            timings = run_pipeline(
                jobs,
                stream_tokens=self._final_tokens,
                loop=self._loop,
                scheduler=self.scheduler,
                engine_failure=self._t3_failure,
                progress=progress,
            )
        except EngineDeadError as error:
            if self._closed:
                raise self._closed_while_running() from None
            self._engine_failure = str(error)
            raise
        except KeyboardInterrupt:
            # Ctrl-C: the chunks whose audio is complete are kept (the front joins them).
            finished = {
                job.item.order: ChunkAudio(job.item.order, job.tokens, job.waveform)
                for job in jobs
                if job.tokens is not None and job.waveform is not None
            }
            raise GenerationInterrupted(finished=finished) from None
        audio = {}
        for job in jobs:
            assert job.tokens is not None and job.waveform is not None
            audio[job.item.order] = ChunkAudio(job.item.order, job.tokens, job.waveform)
        return audio, timings

    def _t3_request(self, item: PlanItem, voice: Voice) -> Any:
        """T3's request for one plan item (its text checked and tokenised once, here)."""
        from chatterbox_t3 import T3Request

        return T3Request(
            text=item.text,
            voice=voice.t3,
            params=item.t3_sampling(),
            text_token_ids=self._check_text(item, voice),
            # Word timings come from the multilingual analyzer; the English T3 has none.
            word_timings=self.model == "multilingual",
            **self._language_of(item),
        )

    def _language_of(self, item: PlanItem) -> dict[str, str]:
        """The ``language`` keyword for T3 (the multilingual model only: the English T3 has no
        language tokens, and ``en`` or unset is all it accepts)."""
        if self.model == "multilingual" and item.params.language is not None:
            return {"language": item.params.language}
        return {}

    def _final_tokens(self, request: Any, on_tokens: Callable[[int], Any] | None) -> Any:
        # Only the final output is read: no intermediate outputs are built.
        return self._t3.stream_speech_tokens(request, final_only=True, on_tokens=on_tokens)

    def _check_text(self, item: PlanItem, voice: Voice) -> tuple[int, ...] | None:
        """T3's text front end on one item before anything is queued, so a chunk it rejects
        (e.g. characters without a token, or a prompt too long with this voice's conditioning)
        fails the call before any decoding starts. Returns the text ids for the request
        (tokenised once)."""
        try:
            return tuple(self._t3.check_text(item.text, voice=voice.t3, **self._language_of(item)))
        except ValueError as error:
            translated = from_component_error(error) or InvalidTextError(str(error))
            raise ChunkInputError(item.order, translated) from error
