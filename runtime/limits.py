"""Which files count as audio, and bounds on the work one audio input may cause (checked from the file header
before anything is decoded)."""
from __future__ import annotations

DEFAULT_MAX_SECONDS = 300.0  # longest audio accepted by default (`--max-seconds`): 5 minutes
MIN_SAMPLE_RATE = 4000       # below this a file cannot hold speech (telephony is 8 kHz)
MAX_SAMPLE_RATE = 768000     # the highest rate audio interfaces record
MAX_CHANNELS = 64            # more channels than any recording of speech: a corrupt or hostile header
SAMPLES_PER_SECOND = 96000   # decoding budget per second of the cap: 48 kHz stereo (a header cannot claim more)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif", ".au", ".webm", ".sph"}
