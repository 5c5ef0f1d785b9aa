"""Units of work, runnable on Ray and testable without Prefect, in rooms by concern.

    render/   a script -> checked, authorized lines -> synthesis on a Ray Data actor pool -> loudness,
              QC, watermark -> WebDataset shards + Parquet index -> job report
    train/    fine-tune one voice from the base, evaluate it, schedule voices on trainer actors
    enroll/   an upload folder -> decoded, checked, sliced, transcribed utterances -> features
    voices/   the voice registry (owners, versions, grants), a version's model files, the shared base
    safety/   who acts (principal tokens), who may use a voice (access), consent, watermark,
              fingerprint, audit log
    measure/  the measuring tools every stage shares: audio I/O and levels, ASR, speaker embeddings
    store/    the object store (fsspec) and safe ids
    cluster/  the Ray runtime: start or join, resources, what crosses to workers

Arrows point down this list and never back up: render, train and enroll use voices, safety,
measure, store and cluster (train also uses enroll's prepared speakers); voices uses safety and
store; safety uses measure and store; measure, store and cluster use no other room. Nothing here
imports `voicefleet.flows`; `voicefleet.model` imports nothing from here.
tests/test_layout.py checks these arrows and that no module imports one that imports it back.
"""
