"""The object store every part reads and writes, and the ids that may name things in it.

    storage.py   `Store`: one root URI (folder, s3://, gs://), keys below it, atomic writes,
                 create-only-if-absent (what the registry and the audit log stand on)
    ids.py       `safe_id`: a voice, job, line or shard id that is safe as one path part

May import: no other room. Must not: know what is stored (voices, renders, ...): those rooms say.
"""
