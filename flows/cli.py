"""The `voicefleet` command line: the app, assembled from one module per command group.

    voicefleet enroll SRC            flows/commands/enroll.py
    voicefleet render SCRIPT         flows/commands/render.py
    voicefleet voices ...            flows/commands/voices.py   (list, show, rollback, grant, revoke, withdraw)
    voicefleet consent ...           flows/commands/consent.py  (approve, reinstate: an admin's decisions)
    voicefleet jobs ...              flows/commands/jobs.py     (show, compact, report)
    voicefleet audit | principal | watermark   flows/commands/safety.py
    voicefleet demo                  flows/commands/demo.py
    voicefleet pretrained pull       flows/commands/pretrained.py (official weights from the Hugging Face Hub)

Exit codes are decided in one place, flows/commands/exits.py (0 ok, 1 internal, 2 bad input,
3 not found, 4 partial or refused, 5 busy).
"""
from __future__ import annotations

import os

# quiet defaults before Prefect / Ray are imported; any of them can be overridden from the shell
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import typer  # noqa: E402

from .commands import consent, demo, enroll, jobs, pretrained, render, safety, voices  # noqa: E402

app = typer.Typer(help="voicefleet: voice cloning at scale (GPT-SoVITS v2 on Ray + Prefect).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(voices.app, name="voices")
app.add_typer(consent.app, name="consent")
app.add_typer(jobs.app, name="jobs")
app.add_typer(pretrained.app, name="pretrained")
app.command()(enroll.enroll)
app.command()(render.render)
app.command()(demo.demo)
app.add_typer(safety.principal_app, name="principal")
app.command("audit")(safety.audit_show)
app.add_typer(safety.watermark_app, name="watermark")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
