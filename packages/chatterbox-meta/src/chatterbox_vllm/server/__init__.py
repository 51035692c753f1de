"""``chatterbox-vllm serve``: an OpenAI-compatible speech server over one engine.

* :mod:`~chatterbox_vllm.server.settings`: limits, binding, API key (CLI flags from one place);
* :mod:`~chatterbox_vllm.server.schema`: the request schema, generated from the controls contract;
* :mod:`~chatterbox_vllm.server.voices`: named voices, prepared once and persisted;
* :mod:`~chatterbox_vllm.server.metrics`: Prometheus metrics;
* :mod:`~chatterbox_vllm.server.routes`: the FastAPI app (``/v1/audio/speech``, voices, health,
  models, metrics);
* :mod:`~chatterbox_vllm.server.run`: loading the engine and running uvicorn.

Every request streams through ``ChatterboxTTS.astream``: one async T3 engine (vLLM's continuous
batching) and one S3Gen batcher shared by all requests.
"""

from chatterbox_vllm.server.routes import create_app
from chatterbox_vllm.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
