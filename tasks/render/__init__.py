"""Rendering: a script of lines -> audio shards and a Parquet index per job, resumable, checked
line by line, refused for voices the caller may not use.

    script.py, line_checks.py   the one reader of a script; per-line validation
    plan.py                     checked, authorized lines -> this run's work list (DuckDB)
    pipeline.py                 the Ray Data actor pool: synthesis, post-processing, QC, watermark
    checked_lines.py, line_qc.py, postprocess.py, fault_isolation.py
                                one voice's lines rendered, trimmed, loudness-normalised, checked,
                                retried; a bad line fails alone
    shards.py, index_schema.py, job_paths.py, index_read.py
                                output: tar shards + index parts, their schema, keys and readers
    job_index.py, job_report.py, out_of_core.py
                                a job as a whole, out of core: totals, compaction, orphans, the
                                HTML report (DuckDB under a memory ladder)
    job_lease.py, job_fence.py, process_identity.py, job_owner.py
                                one writer at a time: the lease, the fence every index part
                                passes, who a process is, who a job belongs to
    job_cleanup.py, scratch.py, metrics.py
                                work lists, fingerprints and temp folders nothing reads; metrics

May import: voices, safety, measure, store, cluster, voicefleet.model. Must not: import enroll or train.
"""
