"""``chatterbox-vllm serve``: load the engine, then serve the app with uvicorn until SIGTERM/SIGINT
(running streams are given ``drain_seconds`` to finish; new connections are refused meanwhile)."""

from __future__ import annotations

import argparse
import contextlib
import logging
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


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from chatterbox_vllm.commands import engine_config, load, replicated
    from chatterbox_vllm.preflight import check_checkpoint, check_device
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
    if args.model_dir is not None:
        check_checkpoint(args.model_dir, needs_default_voice=False)
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
        logger.info(
            "serving on http://%s:%d (OpenAI /v1/audio/speech)", settings.host, settings.port
        )
        server.run()
    finally:
        tts.close()
    return 0
