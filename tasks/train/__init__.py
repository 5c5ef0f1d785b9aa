"""Training: fine-tune one voice from the shared base, evaluate it, and schedule many voices on a
pool of Ray trainer actors.

    scheduler.py    trainer actors, one voice at a time each; a dead worker's voice resumes elsewhere
    unit.py         one voice: rows -> finetune -> files -> evaluation -> result
    finetune.py     the recipe: SoVITS then GPT epochs, resumable, full or LoRA
    checkpoint.py   per-epoch training state in the store
    rows.py         training rows from a voice's stored dataset
    evaluate.py     evaluation sentences and the quality gate

May import: enroll (prepared speakers, datasets), voices, measure, store, cluster, voicefleet.model.
Must not: import render; never a TTS engine (demo rows live in flows/demo/).
"""
