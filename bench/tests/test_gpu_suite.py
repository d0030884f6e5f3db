"""``scripts/gpu_suite.py`` at tiny sizes on the CPU (``--smoke``): the suite a session with a GPU runs
once must not have rotted by then. The compile and bench-stack sections are left out here (minutes
on 2 cores); the stack section prices a results file written by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_suite.py"


def test_the_gpu_suite_smoke_run_writes_every_section(tmp_path):
    work = {"target_calls": 36, "drafter_calls": 0, "target_commits": 9, "drafter_commits": 0,
            "decoded_latent_frames": 27, "scored_pixel_frames": 0}
    fast = dict(work, target_calls=24)
    stack = {"config": {"prompts": 1, "quick": True, "decoder": "tiny", "decode_worker": False},
             "baseline": {"work": work},
             "rows": [{"name": "step", "speedup": 1.4, "work": fast}, {"name": "ranks", "speedup": 1.1, "work": None}]}
    (tmp_path / "stack.json").write_text(json.dumps(stack))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--only",
                           "equality,costs,stack,train", "--stack-results", str(tmp_path / "stack.json")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "gpu_suite.json").read_text())
    assert doc["smoke"] and set(doc["sections_s"]) == {"equality", "costs", "stack", "train"}
    for name in ("self-forcing", "krea-realtime", "skyreels-v2-df", "magi-1"):
        assert doc["equality"][name]["device_vs_cpu_rel"] == 0.0  # the CPU against itself
    tables = doc["costs"]["tables"]
    assert set(tables) == {"self-forcing-1.3B@832x480", "krea-14B@832x480", "skyreels-v2-14B@540P", "magi-1-4.5B"}
    assert set(doc["costs"]["decode_per_latent_frame_s"]["832x480"]) == {"float32", "float32_tf32", "bfloat16"}
    priced = doc["stack"]["priced_with_measured_table"]
    assert set(priced) == {"krea-14B@832x480", "self-forcing-1.3B@832x480"}
    assert list(priced["krea-14B@832x480"]) == ["step"]  # the unpriced row (no work) left out
    k = tables["krea-14B@832x480"]
    rest = 9 * k["target_commit_s"] + 27 * k["decode_per_latent_frame_s"]
    want = (36 * k["target_call_s"] + rest) / (24 * k["target_call_s"] + rest)
    assert abs(priced["krea-14B@832x480"]["step"] - want) < 1e-9
    t = doc["train"]
    assert t["loss_max_relative_difference"] == 0.0 and len(t["runs"]["cpu"]["loss"]) == t["steps"]
    assert t["encode_max_relative_difference"] == 0.0  # the smoke run's "device" is the CPU
