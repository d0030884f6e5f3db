"""Pipeline parallelism behind the stream loop (``pipe.stream(..., ranks=R)``, issue 22 item 4) on
the world's self-forcing model, ranks as real gloo processes (``accelframe_adapters.parallel.trial``):

- R ranks give what one process gives with the same schedule (``lanes=R``), within 1e-5, with step
  policies deciding on rank 0 (rows they serve cause no transfer), rolling-kv with a RoPE reset,
  slo-batch, motion-aware noise, text- and video-to-video, two streams decoded on two ranks, three
  ranks;
- one process with lanes keeps the stream invariants (every frame once, in order; the target
  commits exactly the emitted chunks);
- a rank that dies mid-stream, or stops answering, ends the stream with a RankFailedError naming
  it, the frames emitted so far flushed;
- what the ring cannot serve is refused before any model call, naming the runtime and what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from accelframe.errors import ConfigError, IncompatibleError
from accelframe.streaming import StreamLoop, VirtualClock
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.invariants import CommitRecorder, check_stream_run
from accelframe_adapters import plugin as adapters_plugin
from accelframe_adapters.parallel import trial
from accelframe_policies import plugin as policies_plugin

ROLL = ["rolling-kv", {"window": 6, "sinks": 3, "tau": -1.0, "t_reset": 9}]  # a RoPE reset at frame 9
SCOPE = ["scope", {"tau_c": 1.0, "tau_p": 3.0}]  # aggressive: it predicts, so rows leave the batch
PROMPTS = ("a red circle moves right on a blue background", "a green square moves up on a black background")


def streams(n: int, frames: int = 45, **kw: Any) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "prompt": PROMPTS[i % 2], "seed": i, "frames": frames, **kw} for i in range(n)]


def pipeline(cfg: dict[str, Any], *plugins: Any) -> Any:
    """The description's pipeline in this process, on a manager of the adapters, the policies and ``plugins``."""
    return trial.pipeline(cfg, hooks=make_hooks(adapters_plugin, policies_plugin, *plugins))


def launch(cfg: dict[str, Any], tmp: Path, ranks: int, grace_s: float = 15.0) -> dict[str, Any]:
    """The description on ``ranks`` gloo processes; rank 0's document."""
    return trial.launch(cfg, ranks, tmp / "rank0.pt", timeout_s=240.0, grace_s=grace_s)[0]


def reference(cfg: dict[str, Any], lanes: int) -> dict[str, Any]:
    """The same description in this process, ``lanes`` lanes, one rank."""
    return trial.run({**cfg, "ranks": 1, "lanes": lanes}, pipe=pipeline(cfg))


def assert_close(got: dict[str, Any], ref: dict[str, Any]) -> None:
    assert got["error"] is None, got["error"]
    assert got["stats"]["calls"] == ref["stats"]["calls"]
    assert got["kv"] == ref["kv"]
    for k, frames in ref["frames"].items():
        diff = (got["frames"][k] - frames).abs().max().item()
        assert diff <= 1e-5, f"stream {k}: ranks differ from one process by {diff}"


REFRESH = ["rolling-kv", {"window": 6, "sinks": 3, "tau": 0.9, "t_reset": 9}]  # sinks refreshed often

CASES = {
    "t2v rolling-kv sink refresh": {"streams": streams(2), "policies": [REFRESH]},
    "t2v scope rolling-kv slo-batch": {"streams": streams(2), "policies": [["slo-batch", {}], ROLL, SCOPE]},
    "v2v motion-noise rolling-kv scope": {"streams": streams(2, v2v=True),
                                          "policies": [ROLL, ["motion-noise", {}], SCOPE]},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_equal_one_process_with_two_lanes(case, tmp_path):
    cfg = CASES[case]
    ref = reference(cfg, lanes=2)
    got = launch(cfg, tmp_path, ranks=2)
    assert_close(got, ref)
    assert any(e["rope_reset"] for e in ref["kv"]), "the run never reset RoPE: the case tests less than it says"
    if "refresh" in case:  # a sink replaced by a newer frame: the every-layer comparison ran on the ranks
        assert any(set(e["sinks"] or ()) - {0, 1, 2} for e in ref["kv"]), "no sink was ever refreshed"
    assert any(e["evict"] for e in ref["kv"])
    calls = ref["stats"]["calls"]["target"]
    if case.startswith("t2v scope"):
        assert calls["predicted"] + calls["cached"] > 0, "SCOPE served no call from its cache"


def test_three_ranks_with_a_partition_equal_one_process_with_three_lanes(tmp_path):
    cfg = {"streams": streams(1), "policies": [ROLL, SCOPE]}
    ref = reference(cfg, lanes=3)
    layers = pipeline(cfg).adapter.dit.cfg.num_layers
    got = launch({**cfg, "partition": [0, 1, 2, layers]}, tmp_path, ranks=3)
    assert_close(got, ref)


def test_lanes_keep_the_stream_invariants():
    """Every frame once and in order, the target commits exactly the emitted chunks, with two lanes."""
    commits = CommitRecorder()
    cfg = {"streams": streams(2), "policies": [ROLL, SCOPE]}
    pipe = pipeline(cfg, commits)
    srcs = trial.sources(cfg, pipe.adapter.pixel_size[0])
    loop = StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True, lanes=2)
    check_stream_run(loop, loop.run(), commits)


def test_a_rank_that_dies_mid_stream_is_named_and_the_frames_so_far_are_flushed(tmp_path):
    got = launch({"streams": streams(1, 85), "policies": [ROLL], "die_after": 40, "timeout_s": 20.0},
                 tmp_path, ranks=2)
    err = got["error"]
    assert err is not None and err["type"] == "RankFailedError" and err["rank"] == 1, err
    assert got["sink"]["closed"]
    assert 0 < got["sink"]["frames"].get("s0", 0) < 85, got["sink"]


def test_a_rank_that_stops_answering_is_named_at_the_deadline(tmp_path):
    got = launch({"streams": streams(1, 85), "policies": [ROLL], "hang_after": 40, "timeout_s": 2.0},
                 tmp_path, ranks=2, grace_s=1.0)  # then the silent rank is killed
    err = got["error"]
    assert err is not None and err["type"] == "RankFailedError" and err["rank"] == 1, err
    assert got["sink"]["closed"] and got["wall_s"] < 60


# ---- refused before any model call ---------------------------------------------------------------


def _loop(cfg: dict[str, Any], *plugins: Any, **kw: Any) -> StreamLoop:
    pipe = pipeline(cfg, *plugins)
    kw.setdefault("stream_batch", True)
    return StreamLoop(pipe, trial.sources({"streams": streams(1, 21)}, 64), clock=VirtualClock(), **kw)


@pytest.mark.parametrize("cfg,kw,words", [
    ({}, {"ranks": 2, "stream_batch": False}, "stream_batch=True"),
    ({}, {"ranks": 2, "lanes": 3}, "lanes"),
    ({}, {"ranks": 0}, "ranks"),
    ({}, {"ranks": 2, "decode_rank": 2}, "decode_rank"),
])
def test_what_the_ring_cannot_serve_is_refused_naming_it(cfg, kw, words):
    with pytest.raises((ConfigError, IncompatibleError)) as exc:
        _loop(cfg, **kw)
    assert words in str(exc.value) and ("ranks" in str(exc.value) or "lanes" in str(exc.value))


def test_a_model_call_wrapper_is_refused_on_ranks():
    with pytest.raises(IncompatibleError, match="model-call wrapper"):
        _loop({}, CommitRecorder(), ranks=2)


def test_a_drafter_is_refused_on_ranks():
    from accelframe.pipeline import Pipeline

    pipe = Pipeline("self-forcing", hooks=make_hooks(adapters_plugin, policies_plugin),
                    adapter_kwargs={"size": "world"}, drafter="self-forcing",
                    drafter_kwargs={"size": "world-drafter"})
    with pytest.raises(IncompatibleError, match="drafter"):
        StreamLoop(pipe, trial.sources({"streams": streams(1, 21)}, 64), clock=VirtualClock(), stream_batch=True,
                   ranks=2)


def test_ranks_outside_a_launch_is_a_config_error_before_any_model_call(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    loop = _loop({}, ranks=2)
    calls = []
    monkeypatch.setattr(loop.adapter, "denoise_rows", lambda *a, **k: calls.append(1))
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node 2"):
        loop.run()
    assert not calls


def test_the_stream_command_refuses_ranks_without_the_stream_batch(capsys):
    from accelframe.cli import main

    assert main(["stream", "--ranks", "2", "--source", "none"]) != 0
    assert "--ranks" in capsys.readouterr().err


def test_the_stream_command_starts_its_peer_ranks_and_writes_the_video(tmp_path):
    out = tmp_path / "s.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(k, None)  # the command loads the installed plugins, as a user's does
    got = subprocess.run([sys.executable, "-m", "accelframe", "stream", "--source", "none", "--stream-batch",
                          "--ranks", "2", "--frames", "21", "--out", str(out), "--json"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert got.returncode == 0, got.stderr[-2000:]
    doc = json.loads(got.stdout)
    assert doc["ranks"] == 2 and doc["streams"]["s0"]["frames"] == 21
    assert out.exists() and out.stat().st_size > 0


@pytest.mark.parametrize("start,moved", [([0, 1, 4], "back"), ([0, 3, 4], "forward")])
def test_a_rebalance_moves_blocks_and_their_kv_and_changes_no_number(start, moved, tmp_path):
    """Forced times (every block 1 s, no overhead) make the balancer move to (0, 2, 4): block 1 from
    rank 1 back to rank 0, or block 2 forward to rank 1, with both streams' K/V; the frames stay
    what one process with two lanes gives."""
    cfg = {"streams": streams(2), "policies": [ROLL]}
    ref = reference(cfg, lanes=2)
    got = launch({**cfg, "partition": start, "rebalance": {"at": 6, "measure": 3, "block_times": [1.0] * 4,
                                                           "overheads": [0.0, 0.0]}}, tmp_path, ranks=2)
    assert_close(got, ref)
    rb = got["rebalance"]
    assert rb["moved"] and rb["partition_before"] == start and rb["proposed"] == [0, 2, 4]
    assert [m["blocks"] for m in rb["measured"]] == [start[1], 4 - start[1]]
    assert all(m["stage_s"] > 0 and m["busy_s"] >= m["stage_s"] * 0.5 for m in rb["measured"])


def test_the_rebalance_measures_the_ranks_and_keeps_a_partition_it_cannot_better(tmp_path):
    cfg = {"streams": streams(2), "policies": [ROLL], "partition": [0, 2, 4],
           "rebalance": {"at": 6, "measure": 3, "block_times": [1.0] * 4, "overheads": [0.0, 0.0]}}
    got = launch(cfg, tmp_path, ranks=2)
    assert got["error"] is None and got["rebalance"]["moved"] is False
    assert got["rebalance"]["stage_times_s"] == [2.0, 2.0]


@pytest.mark.parametrize("rebalance", [{"at": 2, "measure": 3}, {"when": 3}, {"overheads": [1.0]}, "yes"])
def test_a_bad_rebalance_is_a_config_error(rebalance):
    from accelframe_adapters.parallel.ring import check_rebalance

    with pytest.raises(ConfigError) as exc:
        check_rebalance(rebalance, 4, 2)
    assert exc.value.field == "rebalance"
