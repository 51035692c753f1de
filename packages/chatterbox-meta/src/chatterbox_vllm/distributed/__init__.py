"""Running Chatterbox on several GPUs or machines with Ray.

* :mod:`~chatterbox_vllm.distributed.placement`: which replica gets which chunks (pure policy);
* :mod:`~chatterbox_vllm.distributed.replica`: the Ray actor holding one ``ChatterboxTTS``;
* :mod:`~chatterbox_vllm.distributed.pool`: starting/replacing replicas;
* :mod:`~chatterbox_vllm.distributed.dispatch`: the driver loop of one call (placement, failures);
* :mod:`~chatterbox_vllm.distributed.bench`: the scaling benchmark.

* :mod:`~chatterbox_vllm.distributed.replicated`: :class:`ReplicatedChatterboxTTS`, the Ray executor
  (the user-facing class, also exported as ``chatterbox_vllm.ReplicatedChatterboxTTS``).
"""
