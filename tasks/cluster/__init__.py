"""Where work runs: Ray started locally or joined (`RAY_ADDRESS`), resources per unit of work, and
the only environment that crosses to workers (never a secret).

    runtime.py   `ensure_ray`, `Resources`, `worker_env`, the store a cluster can reach

May import: no other room. Must not: start work itself: the rooms above submit their own tasks.
"""
