"""``chatterbox-vllm serve``: load the engine, then serve the app with uvicorn until SIGTERM/SIGINT
(running streams are given ``drain_seconds`` to finish; new connections are refused meanwhile)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import time
from collections.abc import Iterator
from typing import Any

from chatterbox_vllm.errors import ChatterboxError

logger = logging.getLogger(__name__)


def _draining_server(config: Any) -> Any:
    """A uvicorn server for which SIGTERM/SIGINT only start the graceful drain. uvicorn itself
    re-raises the signal once it has drained, which would kill this process before the T3 engine
    (a child process) is shut down; here ``run()`` returns and the caller stops the engine."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    received = getattr(self, "_captured_signals", None)
                    if received:
                        logger.info("drained after signal(s) %s; stopping", received)
                        received.clear()

    return DrainingServer(config)


def check_bind(host: str, port: int) -> None:
    """Binds ``host:port`` once and lets it go, so a port in use or a host that is not this
    machine's is reported before the engine loads (a minute), not after."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise ChatterboxError(
            f"--host {host!r} is not an address or a name this machine resolves ({error}); use "
            "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # uvicorn sets SO_REUSEADDR too: a port left in TIME_WAIT is usable, one in use is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise ChatterboxError(
                f"cannot listen on {host}:{port} ({error.strerror or error}): "
                + (
                    "another process uses that port; pick another --port"
                    if error.errno == errno.EADDRINUSE
                    else "the address is not one of this machine's; check --host"
                )
            ) from None


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from chatterbox_t3.startup import process_started_at
    from chatterbox_vllm.commands import engine_config, load, replicated
    from chatterbox_vllm.paths import ensure_directory
    from chatterbox_vllm.preflight import check_checkpoint, check_device, check_vocoder
    from chatterbox_vllm.server.routes import create_app
    from chatterbox_vllm.server.settings import settings_from_namespace

    settings = settings_from_namespace(args)
    if replicated(args):
        raise ChatterboxError(
            "serve runs one engine per process; for several GPUs run one server per GPU "
            "(CUDA_VISIBLE_DEVICES=N, its own --port) behind a load balancer"
        )
    config = engine_config(args, streams=True)
    config = config.with_overrides({"device": check_device(config.device)})
    check_vocoder(config.vocoder)
    if args.model_dir is not None:
        check_checkpoint(args.model_dir, needs_default_voice=False)
    check_bind(settings.host, settings.port)
    if settings.voices_dir is not None:
        # Created now, as the voice store would once the engine is loaded (a minute later).
        ensure_directory(settings.voices_dir, "--voices-dir")
    tts = load(args, config)
    try:
        app = create_app(tts, settings)
        server = _draining_server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level="warning" if args.verbose == 0 else "info",
                timeout_graceful_shutdown=int(settings.drain_seconds),
                access_log=args.verbose > 0,
            )
        )
        started = process_started_at()
        logger.info(
            "serving the %s model on http://%s:%d (OpenAI /v1/audio/speech)%s",
            tts.model,
            settings.host,
            settings.port,
            ""
            if started is None
            else f", {time.time() - started:.1f} s after this process started",
        )
        server.run()
    finally:
        tts.close()
    return 0
