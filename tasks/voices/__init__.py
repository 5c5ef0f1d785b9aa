"""Voices: the registry of who owns which voice and its versions and grants, a version's model files,
and the shared base they are fine-tuned from.

    records.py      `VoiceRecord`, `VersionRecord`, `Grant`: the registry's records
    registry.py     `VoiceRegistry`: voices, versions and grants in the store
    revisions.py    a record as a chain of revision files, changed under optimistic concurrency
    errors.py       one exception type per registry failure a caller can act on
    manage.py       grant, revoke, withdraw (owner or admin, audited), rollback, describe
    pretrained_layout.py  which files make each model version's base (v2, v2Pro, v2ProPlus), which version a
                    --pretrained folder holds, and the base spec strings workers are given
    base_model.py   the base: official pretrained weights (checked strictly), or the tiny random one
    pretrained_pull.py  the official weights fetched from the Hugging Face Hub (pinned revision, sha256
                    checked against pretrained_manifest.json), and the default folder they land in
    base_store.py   the base published once to the store and read once per worker process
    artifacts.py    a version's files: full fine-tune or LoRA delta, written and loaded

May import: safety, store, and voicefleet.model. Must not: import enroll, train or render.
"""
