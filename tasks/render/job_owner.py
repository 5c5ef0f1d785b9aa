"""Who may write a render job: the principal that started it; an admin may take it over, audited.

A job id is a name in a shared store. Without this rule anyone who knows (or guesses) another
team's job id could pass it as `--job` and write lines into that job, which then names them as its
principal. The job record's `principal` is the owner; a run as anyone else is refused before it
takes the lease or writes anything, unless the caller is an admin (`VOICEFLEET_ADMINS`), whose
takeover is written to the audit log with the previous owner.
"""
from __future__ import annotations

from voicefleet.tasks.safety.access import NotPermitted, admins


class JobOwnedByOther(NotPermitted):
    """A run of someone else's render job by a principal who is not an admin."""


def check_job_owner(job: dict | None, job_id: str, principal: str) -> str | None:
    """None when `principal` may write the job (new, or theirs); the previous owner when an admin
    takes it over (the caller audits it); raises `JobOwnedByOther` otherwise."""
    owner = (job or {}).get("principal")
    if not owner or owner == principal:
        return None
    if principal in admins():
        return owner
    raise JobOwnedByOther(f"render job {job_id} belongs to {owner}; {principal} may not write into it "
                          "(use another --job, or ask an admin to take it over)")
