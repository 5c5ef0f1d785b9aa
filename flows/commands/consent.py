"""`voicefleet consent approve|reinstate`: an admin's consent decisions (tasks/safety/consent_review.py decides).

Both read the speaker's upload folder as enrollment does (consent.json checked, the clip decoded) and
bind the decision to that clip: a clip swapped afterwards is not approved, and is not the reinstated one.
"""
from __future__ import annotations

from typing import Optional

import typer

from .console import console
from .exits import EXIT_BAD_INPUT, CLIError, handled
from .options import LocalOpt, StoreOpt, TokenOpt, acting, store_of

app = typer.Typer(help="Consent decisions only an admin makes: approve a consent clip, reinstate after a withdrawal.",
                  no_args_is_help=True)

SpeakerArg = typer.Argument(..., help="The speaker's upload folder under --src (as `voicefleet enroll` reads it).")
SrcOpt = typer.Option(..., "--src", help="Enrollment root that holds the speaker's folder: a folder or URL.")
AsOpt = typer.Option(None, "--as", help="The admin acting, by name: only in local mode.")


def _upload(src: str, speaker: str):
    """(voice id, consent, identity of its clip) of one upload folder; a bad upload exits 2."""
    from voicefleet.tasks.enroll.ingest import read_consent
    from voicefleet.tasks.enroll.voice_ids import voice_id_for
    from voicefleet.tasks.measure.audio import load_audio
    from voicefleet.tasks.safety.consent import CLIP_SAMPLE_RATE, ConsentError
    from voicefleet.tasks.safety.consent_review import ClipIdentity

    source = store_of(src)
    voice_id = voice_id_for(speaker)
    try:
        consent = read_consent(source, speaker, voice_id)
    except ConsentError as e:
        raise CLIError(f"{speaker}: {e.reason}", EXIT_BAD_INPUT) from None
    data = source.read_bytes(f"{speaker}/{consent.consent_clip}")
    audio = load_audio(data, CLIP_SAMPLE_RATE, name=consent.consent_clip)
    return voice_id, consent, ClipIdentity.of(data, audio, CLIP_SAMPLE_RATE)


@app.command("approve")
def consent_approve(speaker: str = SpeakerArg, src: str = SrcOpt, principal: Optional[str] = AsOpt,
                    token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Record that you, an admin, listened to SPEAKER's consent clip and heard its consent phrase (audited).

    Needed where no ASR model exists for the speaker's language; the speaker check still runs at enrollment.
    """
    with handled():
        actor = acting(token, principal, local, store)
        from voicefleet.tasks.safety.consent_review import approve

        voice_id, consent, clip = _upload(src, speaker)
        approve(store_of(store), voice_id, consent, clip, actor)
        console.print(f"consent clip {consent.consent_clip} of voice {voice_id} (sha256 {clip.sha256}) approved by "
                      f"{actor} for the phrase {consent.consent_phrase!r}; enroll the speaker again", highlight=False)


@app.command("reinstate")
def consent_reinstate(speaker: str = SpeakerArg, src: str = SrcOpt, principal: Optional[str] = AsOpt,
                      token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Lift a withdrawal for SPEAKER's new consent clip (admin only, audited); enrolling again verifies that clip.

    Refused unless consent.json was granted after the withdrawal and the clip is none of the voice's
    earlier consent clips (same file, or the same recording re-encoded, cut, time-stretched or pitch-shifted).
    """
    with handled():
        actor = acting(token, principal, local, store)
        from voicefleet.tasks.safety.consent_review import reinstate
        from voicefleet.tasks.voices.registry import VoiceRegistry

        voice_id, consent, clip = _upload(src, speaker)
        s = store_of(store)
        registry = VoiceRegistry(s)
        record = registry.get(voice_id)
        earlier = {f"version {n}": registry.version(voice_id, n).consent_check for n in record.versions}
        reinstate(s, voice_id, record.withdrawn_at, consent, clip, earlier, actor)
        console.print(f"voice {voice_id}: the withdrawal at {record.withdrawn_at.isoformat()} is lifted for "
                      f"consent clip {consent.consent_clip} (sha256 {clip.sha256}) by {actor}, once enrolling "
                      f"{speaker} again verifies that clip", highlight=False)
