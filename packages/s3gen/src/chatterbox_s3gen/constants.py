"""Fixed facts of the Chatterbox S3Gen model (chatterbox-tts 0.1.2); not configurable."""

from __future__ import annotations

S3GEN_SAMPLE_RATE = 24_000
"""Output sample rate (Hz) of the vocoder and of the reference mel front end."""
S3_TOKENIZER_SAMPLE_RATE = 16_000
"""Input sample rate (Hz) of the S3 speech tokenizer and of the CAMPPlus speaker encoder."""
SPEECH_VOCAB_SIZE = 6561
"""S3 speech-token ids live in ``[0, SPEECH_VOCAB_SIZE)`` (3^8 FSQ codes)."""

SPEECH_TOKEN_RATE = 25
"""S3 tokens per second."""
TOKENIZER_HOP = 160
"""Hop (samples at 16 kHz) of the tokenizer's 128-bin log-mel (100 frames/s)."""
TOKENIZER_N_FFT = 400
TOKENIZER_N_MELS = 128
TOKENIZER_MEL_FRAMES_PER_TOKEN = 4

MEL_CHANNELS = 80
"""Bins of S3Gen's log-mel (flow output, vocoder input, reference prompt)."""
MEL_N_FFT = 1920
MEL_HOP = 480
"""Samples at 24 kHz per S3Gen mel frame (50 frames/s); also vocoder samples per frame."""
MEL_FMAX = 8000.0
TOKEN_MEL_RATIO = 2
"""Mel frames per speech token."""

SPEAKER_EMBEDDING_DIM = 192
"""CAMPPlus x-vector size."""
SPEAKER_FBANK_BINS = 80

TRIM_SAMPLES = S3GEN_SAMPLE_RATE // 50
"""The first ``TRIM_SAMPLES`` output samples are silenced and the next ``TRIM_SAMPLES`` faded in
(the reference's remedy for spill-over from the prompt)."""

CHECKPOINT_FILENAME = "s3gen.safetensors"
"""The English checkpoint's S3Gen weights (``ResembleAI/chatterbox``, chatterbox-tts 0.1.2)."""
TORCH_CHECKPOINT_FILENAME = "s3gen.pt"
"""The multilingual checkpoint's S3Gen weights: a ``torch.save`` state dict (read with
``torch.load(weights_only=True)``) holding the same 2490 tensors as :data:`CHECKPOINT_FILENAME`
(chatterbox-tts 0.1.7 loads it strictly into the same ``S3Gen()`` module tree)."""
MEANFLOW_CHECKPOINT_FILENAME = "s3gen_meanflow.safetensors"
"""Chatterbox Turbo's S3Gen weights (``ResembleAI/chatterbox-turbo``, chatterbox-tts 0.1.7's
``S3Gen(meanflow=True)``): the same tensors as :data:`CHECKPOINT_FILENAME` plus the estimator's
``time_embed_mixer.weight``. A checkpoint with this file runs the meanflow decoder."""
CHECKPOINT_FILENAMES = (
    CHECKPOINT_FILENAME,
    TORCH_CHECKPOINT_FILENAME,
    MEANFLOW_CHECKPOINT_FILENAME,
)
"""Weight files a checkpoint directory may hold, in the order they are looked for."""
CONFIG_FILENAME = "s3gen_config.json"
