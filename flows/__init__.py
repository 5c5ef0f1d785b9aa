"""Prefect flows that compose tasks/, and the `voicefleet` command line.

    enroll.py    flow enroll_batch: uploads -> checked datasets -> fine-tuned, registered voices
    render.py    flow render_script: a script -> shards + Parquet index, as a principal
    credential.py  the credential reference a run starts with (a one-run Secret block, or an in-process
                 handoff), redeemed for the principal: never the token as a parameter
    progress.py  the hook the CLI's progress bars listen on
    cli.py       the `voicefleet` app, assembled from commands/ (one module per command group)
    demo/        the demo: pip-shipped TTS voices, its enrollment set and script (demo only)

May import: tasks/ and model/. Nothing in tasks/ or model/ imports from here.
"""
