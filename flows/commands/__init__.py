"""The `voicefleet` command line, one module per command group; flows/cli.py assembles them.

    enroll.py   voicefleet enroll SRC             render.py   voicefleet render SCRIPT
    voices.py   voicefleet voices list|show|rollback|grant|revoke|withdraw
    consent.py  voicefleet consent approve|reinstate (an admin's consent decisions)
    jobs.py     voicefleet jobs show|compact|report
    safety.py   voicefleet audit, principal token, watermark detect
    demo.py     voicefleet demo

A command parses its options, calls one function of flows/ or tasks/ (where the decisions live),
and prints. Shared by all: exits.py (exit codes: the one place an exception becomes one),
console.py (output, progress bars), options.py (options every group takes).
May import: flows/ and tasks/ (lazily, inside a command, so `--help` stays fast). Imported by: flows/cli.py.
"""
