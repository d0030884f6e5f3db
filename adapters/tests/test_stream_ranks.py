"""Pipeline parallelism behind the stream loop (``pipe.stream(..., ranks=R)``, issue 22 item 4) on
the world's self-forcing model, ranks as real gloo processes:

- R ranks give what one process gives with the same schedule (``lanes=R``), within 1e-5, with step
  policies deciding on rank 0 (rows they serve cause no transfer), rolling-kv with a RoPE reset,
  slo-batch, motion-aware noise, text- and video-to-video, two streams, three ranks;
- one process with lanes keeps the stream invariants (every frame once, in order; the target
  commits exactly the emitted chunks);
- a rank that dies mid-stream ends the stream with a RankFailedError naming it, the frames emitted
  so far flushed;
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
import torch

from accelframe.errors import ConfigError, IncompatibleError
from accelframe.streaming import StreamLoop, VirtualClock
from accelframe.testing.invariants import CommitRecorder, check_stream_run

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ring_stream  # noqa: E402

ROLL = ["rolling-kv", {"window": 6, "sinks": 3, "tau": -1.0, "t_reset": 9}]  # a RoPE reset at frame 9
SCOPE = ["scope", {"tau_c": 1.0, "tau_p": 3.0}]  # aggressive: it predicts, so rows leave the batch


def launch(cfg: dict[str, Any], tmp: Path, ranks: int, timeout_s: float = 240.0) -> dict[str, Any]:
    """Run ``ring_stream.py`` on ``ranks`` processes (rank 0 saves); rank 0's document."""
    out = tmp / "rank0.pt"
    port = _port()
    procs = []
    for r in range(ranks):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(HERE / "ring_stream.py"),
                                       json.dumps({**cfg, "ranks": ranks}), str(out)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout_s)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0])
    assert out.exists(), "rank 0 saved nothing:\n" + "\n---\n".join(x[-2000:] for x in logs)
    return torch.load(out, weights_only=False)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reference(cfg: dict[str, Any], lanes: int) -> dict[str, Any]:
    """The same settings in this process, ``lanes`` lanes, one rank."""
    return ring_stream.run({**cfg, "ranks": 1, "lanes": lanes})


def assert_close(got: dict[str, Any], ref: dict[str, Any]) -> None:
    assert got["error"] is None, got["error"]
    assert got["calls"] == ref["calls"]
    assert got["kv"] == ref["kv"]
    for k, frames in ref["frames"].items():
        diff = (got["frames"][k] - frames).abs().max().item()
        assert diff <= 1e-5, f"stream {k}: ranks differ from one process by {diff}"


CASES = {
    "t2v scope rolling-kv slo-batch": {"frames": 45, "policies": [["slo-batch", {}], ROLL, SCOPE]},
    "v2v motion-noise rolling-kv scope": {"frames": 45, "v2v": True,
                                          "policies": [ROLL, ["motion-noise", {}], SCOPE]},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_equal_one_process_with_two_lanes(case, tmp_path):
    cfg = CASES[case]
    ref = reference(cfg, lanes=2)
    got = launch(cfg, tmp_path, ranks=2)
    assert_close(got, ref)
    assert any(e["rope_reset"] for e in ref["kv"]), "the run never reset RoPE: the case tests less than it says"
    assert any(e["evict"] for e in ref["kv"])
    if "scope" in case and not cfg.get("v2v"):
        assert ref["calls"]["predicted"] + ref["calls"]["cached"] > 0, "SCOPE served no call from its cache"


def test_three_ranks_with_a_partition_equal_one_process_with_three_lanes(tmp_path):
    cfg = {"frames": 45, "streams": 1, "policies": [ROLL, SCOPE]}
    ref = reference(cfg, lanes=3)
    layers = ring_stream.pipeline(cfg).adapter.dit.cfg.num_layers
    got = launch({**cfg, "partition": [0, 1, 2, layers]}, tmp_path, ranks=3)
    assert_close(got, ref)


def test_lanes_keep_the_stream_invariants():
    """Every frame once and in order, the target commits exactly the emitted chunks, with two lanes."""
    commits = CommitRecorder()
    cfg = {"frames": 45, "policies": [ROLL, SCOPE]}
    pipe = ring_stream.pipeline(cfg, commits)
    srcs = ring_stream.sources(cfg, pipe.adapter.pixel_size[0])
    loop = StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True, lanes=2)
    run = loop.run()
    check_stream_run(loop, run, commits)
    one = ring_stream.run({**cfg, "ranks": 1, "lanes": 1})
    assert sorted(one["frames"]) == sorted(k for k in run.outputs)


def test_a_rank_that_dies_mid_stream_is_named_and_the_frames_so_far_are_flushed(tmp_path):
    got = launch({"frames": 85, "streams": 1, "policies": [ROLL], "die_after": 40, "timeout_s": 20.0},
                 tmp_path, ranks=2)
    err = got["error"]
    assert err is not None and err["type"] == "RankFailedError" and err["rank"] == 1, err
    assert got["sink"]["closed"]
    assert 0 < got["sink"]["frames"].get("s0", 0) < 85, got["sink"]


# ---- refused before any model call ---------------------------------------------------------------


def _loop(cfg: dict[str, Any], **kw: Any) -> StreamLoop:
    pipe = ring_stream.pipeline(cfg)
    kw.setdefault("stream_batch", True)
    return StreamLoop(pipe, ring_stream.sources({"frames": 21, **cfg}, 64), clock=VirtualClock(), **kw)


@pytest.mark.parametrize("cfg,kw,words", [
    ({}, {"ranks": 2, "stream_batch": False}, "stream_batch=True"),
    ({"policies": [["rolling-kv", {}]]}, {"ranks": 2}, "rolling-kv"),
    ({}, {"ranks": 2, "lanes": 3}, "lanes"),
    ({}, {"ranks": 0}, "ranks"),
])
def test_what_the_ring_cannot_serve_is_refused_naming_it(cfg, kw, words):
    with pytest.raises((ConfigError, IncompatibleError)) as exc:
        _loop(cfg, **kw)
    assert words in str(exc.value) and ("ranks" in str(exc.value) or "lanes" in str(exc.value))


def test_a_model_call_wrapper_is_refused_on_ranks():
    pipe = ring_stream.pipeline({}, CommitRecorder())
    with pytest.raises(IncompatibleError, match="model-call wrapper"):
        StreamLoop(pipe, ring_stream.sources({"frames": 21}, 64), clock=VirtualClock(), stream_batch=True, ranks=2)


def test_a_drafter_is_refused_on_ranks():
    from accelframe.pipeline import Pipeline
    from accelframe.testing.fixtures import make_hooks
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_policies import plugin as policies_plugin

    pipe = Pipeline("self-forcing", hooks=make_hooks(adapters_plugin, policies_plugin),
                    adapter_kwargs={"size": "world"}, drafter="self-forcing",
                    drafter_kwargs={"size": "world-drafter"})
    with pytest.raises(IncompatibleError, match="drafter"):
        StreamLoop(pipe, ring_stream.sources({"frames": 21}, 64), clock=VirtualClock(), stream_batch=True, ranks=2)


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
