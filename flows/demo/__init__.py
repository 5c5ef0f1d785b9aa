"""The demo, kept out of the production path: nothing in tasks/ imports it.

    voices.py          real, distinct TTS voices from pip packages (piper's joe, Kokoro's styles)
    enrollment.py      an enrollment set spoken by them: takes, transcripts, consent clip, consent.json
    script.py          a render script of short, varied English sentences
    training_rows.py   training rows spoken by a demo voice (tests, benchmarks)
    run.py             `voicefleet demo` step by step: upload, enroll, render
"""
