"""bench serve's clients, rows and report against a server on the analytic adapter (seconds, not
the world); the world run is the command itself (docs/serve.md)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from accelframe.errors import ConfigError  # noqa: E402
from accelframe.pipeline import Pipeline  # noqa: E402
from accelframe.serve.app import ServerThread  # noqa: E402
from accelframe.serve.hub import Hub  # noqa: E402
from accelframe.testing.fixtures import make_hooks  # noqa: E402
from accelframe_bench import serve as bench  # noqa: E402


def hub(max_sessions: int) -> Hub:
    pipe = Pipeline("analytic", hooks=make_hooks(), adapter_kwargs={"plan": "block", "unit_frames": 2, "steps": 2,
                                                                    "height": 8, "width": 8})
    return Hub(pipe, max_sessions=max_sessions, fps=30.0, deadline_s=2.0)


def test_clients_over_real_sockets_give_a_row_per_load():
    with ServerThread(hub(max_sessions=2)) as server:
        sessions = asyncio.run(bench.load(server.port, 3, ["a red circle", "a blue square"], 1.5, None, 30.0))
    r = bench.row(3, "text", sessions)
    assert r["admitted"] == 2 and r["refused"] == 1 and "--max-sessions 2" in r["refusals"][0]
    assert r["fps_per_session"] > 5 and r["ttff_s"] < 1.5 and r["dropped_frames"] == 0
    assert all(s["close"] == 1000 for s in sessions if not s["refused"])
    assert [s["close"] for s in sessions if s["refused"]] == [4003]


def test_targets_and_markdown_of_a_document():
    loads = [{"sessions": n, "mode": "text", "admitted": min(n, 2), "refused": max(n - 2, 0),
              "fps_per_session": 16.2, "ttff_s": 0.3, "latency_p95_ms": 800.0, "deadline_miss_rate": 0.0,
              "dropped_frames": 0, "refusals": []} for n in (2, 3)]
    switch = [{"recache": True, "extra_calls": 1, "calls_per_chunk": 5.0, "chunk_latency_after_ms": 200.0,
               "chunk_latency_median_ms": 190.0, "visible_after_chunks": 2, "most_frames_after_chunks": 3,
               "presence": []}]
    doc = {"setup": {"fps": 16.0, "deadline_s": 1.0, "seconds": 120.0, "stream_batch": False, "policies": [], "stack": None,
                     "threads": 1}, "loads": loads, "switch": switch}
    t = bench.targets(doc)
    assert t["two_sessions_16fps"]["met"] and t["third_refused_if_it_breaks"]["met"]
    assert t["switch_within_2_chunks"]["met"] and t["switch_at_most_one_chunk_of_calls"]["met"]
    doc["setup"]["seconds"] = 12.0
    assert not bench.targets(doc)["two_sessions_16fps"]["met"]  # the target asks for 2 minutes
    doc["targets"] = t
    text = bench.markdown(doc)
    assert "| 3 | text | 2 | 1 |" in text and "| recache | 1 |" in text


@pytest.mark.parametrize("loads", ["0", "a,b", "17"])
def test_bad_loads_are_refused_before_any_model(loads, tmp_path):
    args = argparse.Namespace(loads=loads, quick=False, seconds=5.0, mode="text", fps=16.0, deadline=1.0,
                              stream_batch=False, policy=[], stack=None, seed=0, out=str(tmp_path / "o"), force=False,
                              json=True)
    with pytest.raises(ConfigError, match="--loads"):
        bench.run(args)
