"""Enrollment: one speaker's upload folder -> checked, sliced, transcribed utterances and the
features a voice is trained on, or a rejection naming every reason.

    prepare.py             the unit of work per speaker (Ray task): ingest, checks, features
    ingest.py              the upload folder -> utterances, in order:
    decode.py, vad.py,       decode by content, voice activity, per-file checks (SNR, clipping,
    speech_checks.py,        music, telephone band, one speaker), cuts in pauses,
    slicing.py,              given transcripts or ASR
    transcribe.py
    features.py            phones and 25 Hz semantic tokens, one Parquet dataset
    voice_ids.py           a voice id from a real folder name
    upload_fingerprint.py  what decides whether an upload must be prepared again
    ingest_report.py       the enrollment report and the memory of rejected uploads

May import: voices (the base model), safety (consent, watermark), measure, store, cluster,
voicefleet.model. Must not: import train or render.
"""
