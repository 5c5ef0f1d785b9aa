"""Scratch folders of killed processes are swept; live ones and folders named otherwise are kept."""
from __future__ import annotations

import os
import subprocess
import sys

from voicefleet.tasks.render.scratch import scratch_dir, sweep


def test_a_killed_process_folder_is_swept_and_live_ones_kept(tmp_path):
    code = ("import sys; from voicefleet.tasks.render.scratch import scratch_dir; "
            f"print(scratch_dir('vf-plan-', {str(tmp_path)!r}))")
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    mine = scratch_dir("vf-plan-", str(tmp_path))   # sweeps the exited child's folder
    (tmp_path / "vf-plan-named-by-someone-else").mkdir()
    assert not os.path.exists(dead) and os.path.isdir(mine)
    assert sweep("vf-plan-", str(tmp_path)) == []
    assert (tmp_path / "vf-plan-named-by-someone-else").is_dir()
