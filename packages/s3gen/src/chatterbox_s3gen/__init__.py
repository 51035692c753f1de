"""Chatterbox S3Gen: speech tokens to 24 kHz audio."""
__version__ = "0.1.0"
