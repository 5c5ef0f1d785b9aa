"""DuckDB connections that bound the driver's memory, and the ladder of limits a query climbs.

A render job is handled whole in a few places: the plan's work list, compaction of the index, its
totals, worst lines and report, orphaned tars. Each runs its queries on a fresh connection under a
small memory limit, on one thread (each thread sorts and aggregates its own share), without
keeping rows in insertion order, spilling joins, aggregates and sorts to `tmpdir`. A query that
still runs out of memory is run again, from the start, under the next limit of the ladder, so
only a job that needs more memory gets it:

    with_memory((64, 256, 1024), tmpdir, lambda con: con.execute(query).fetchall())

`fn` must be safe to run twice: write results to local files and publish them after it returns.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import duckdb

T = TypeVar("T")
MEMORY_MB = (64, 256, 1024)


def connect(tmpdir: str, memory_mb: int) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection limited to `memory_mb`, one thread, spilling to `tmpdir`."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{int(memory_mb)}MB'")
    con.execute("SET threads=1")
    con.execute("SET temp_directory=?", [os.path.join(tmpdir, "duckdb-tmp")])
    con.execute("SET preserve_insertion_order=false")
    con.execute("SET enable_progress_bar=false")
    con.execute("SET allocator_flush_threshold='4MB'")
    return con


def with_memory(limits: tuple[int, ...], tmpdir: str, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`fn(con)` on a fresh connection under the first memory limit (MB) of `limits` that suffices;
    `duckdb.OutOfMemoryException` from the last one propagates."""
    for memory_mb in limits:
        con = connect(tmpdir, memory_mb)
        try:
            return fn(con)
        except duckdb.OutOfMemoryException:
            if memory_mb == limits[-1]:
                raise
        finally:
            con.close()
    raise ValueError("with_memory needs at least one memory limit")
