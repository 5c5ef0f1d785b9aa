"""Voice safety: who is acting, who may use a voice, the speaker's consent, and what marks and
records every use.

    principal.py        signed principal tokens; a plain name only in local mode
    access.py           the sharing model and the rule: may this principal render with this voice?
    consent.py          consent.json: parsed, checked, its terms for the registry
    consent_verify.py   is the consent clip the enrolled speaker saying the phrase? (measured)
    watermark.py        the neural mark on every rendered line, and its detector
    fingerprint.py      which job, voice version and line a file came from
    audit.py            the append-only, hash-chained audit log

May import: measure, store. Must not: import voices, enroll, train or render (the registry's
records reach access.py as a protocol, `VoiceTerms`, so the rule stays here and the records there).
"""
