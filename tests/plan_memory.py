"""The driver's peak memory planning a script of n lines (plan + work list, no rendering).

    from plan_memory import plan_memory
    peak_mib, base_mib, seconds = plan_memory(1_000_000, tmp_dir)

Runs in a fresh process; the peak is VmHWM above the interpreter's own after imports (ru_maxrss
would include the parent's memory from before exec). Used by tests/test_render_plan.py and
benchmarks/render_throughput.py.
"""
from __future__ import annotations

import subprocess
import sys

PLAN_CODE = """
import re, sys, time
from voicefleet.tasks.render.plan import plan_script, write_todo
from voicefleet.tasks.store.storage import Store
n, d = int(sys.argv[1]), sys.argv[2]
with open(f"{d}/p{n}.csv", "w") as f:
    f.write("line_id,voice_id,text,language\\n")
    for i in range(n):
        f.write(f"l{i},v{i % 50},Line number {i} of a long script. It has two sentences.,en\\n")
def hwm():  # peak RSS of this process in KiB (VmHWM; ru_maxrss would include the parent's before exec)
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
base = hwm()
t0 = time.perf_counter()
store = Store(f"{d}/plan-store-{n}")
plan = plan_script(f"{d}/p{n}.csv", store, "user:a")
todo = write_todo(plan, store, "j", 1)
print(n, todo.lines, (hwm() - base) / 1024, base / 1024,
      time.perf_counter() - t0)
plan.cleanup()  # the plan's local folder (the store and script are under the caller's folder)
"""


def plan_memory(n: int, tmp: str) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", PLAN_CODE, str(n), tmp], check=True, capture_output=True, text=True)
    _, lines, peak, base, seconds = out.stdout.split()
    assert int(lines) == n
    return float(peak), float(base), float(seconds)
