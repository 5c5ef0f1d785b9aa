"""Voice safety: who is acting, who may use a voice, the speaker's consent, and what marks and
records every use.

    principal.py        signed principal tokens (id, bounded lifetime); a plain name only in local mode
    revocation.py       revoked token ids, in the store, checked on every use of a token
    access.py           the sharing model and the rule: may this principal render with this voice?
    consent.py          consent.json: parsed, checked, its terms for the registry
    consent_verify.py   is the consent clip the enrolled speaker saying the phrase? (measured)
    consent_review.py   an admin's approval of a clip, or reinstatement after a withdrawal (audited)
    watermark.py        the neural mark on every rendered line, and its detector
    fingerprint.py      which job, voice version and line a file came from
    audit.py            the append-only audit log: records keyed with an HMAC, chained, under a signed head
    audit_key.py        the audit log's key: VOICEFLEET_AUDIT_KEY, refused without in a deployment
    secret_key.py       a key from the environment, decoded and checked for strength

May import: measure, store. Must not: import voices, enroll, train or render (the registry's
records reach access.py as a protocol, `VoiceTerms`, so the rule stays here and the records there).
"""
