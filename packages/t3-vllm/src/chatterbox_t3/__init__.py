"""Chatterbox T3 on vLLM 0.9.2."""
__version__ = "0.1.0"
