"""The pipeline-parallel stream batch (docs/pipeline-parallel.md): its schedule, the single-process
reference against accelframe's stream batch, gloo ranks against the reference (also across a
rebalance that moves blocks and their K/V either way), a killed rank, and bad configs.

Ranks run as local processes of one thread each; the reference runs here with one thread too, so
the comparisons are torch.equal (same ops, same shapes, same thread count: the same bits)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe_adapters.parallel import launch as pp
from accelframe_adapters.parallel.comm import Header, RankFailedError, pack, unpack
from accelframe_adapters.parallel.schedule import micro_step, micro_steps, schedule

# ------------------------------------------------------------------------------------------------
# the schedule
# ------------------------------------------------------------------------------------------------

GRID = list(itertools.product((1, 2, 5, 9), (1, 2, 4), (1, 2, 3)))  # chunks, steps, ranks
RUNNABLE = [g for g in GRID if g[0] >= g[2]]  # the runtime asks for a chunk per rank at least


@pytest.mark.parametrize("chunks,steps,ranks", GRID)
def test_every_chunk_runs_each_step_once_in_order_at_c_plus_s_r(chunks, steps, ranks):
    seen: dict[int, list[tuple[int, int]]] = {}
    plan = schedule(chunks, steps, ranks)
    assert len(plan) == micro_steps(chunks, steps, ranks)
    for ms in plan:
        assert ms.rows or chunks < ranks, f"micro-step {ms.index} has no rows"  # the runtime needs N >= R
        assert [c for c, _ in ms.rows] == sorted(c for c, _ in ms.rows), "rows: oldest chunk first"
        assert all(c % ranks == ms.slot == ms.index % ranks for c, _ in ms.rows), "one slot per micro-step"
        for c, s in ms.rows:
            seen.setdefault(c, []).append((s, ms.index))
    assert sorted(seen) == list(range(chunks))
    for c, runs in seen.items():
        assert [s for s, _ in runs] == list(range(steps))
        assert [m for _, m in runs] == [c + s * ranks for s in range(steps)]


@pytest.mark.parametrize("chunks,steps,ranks", GRID)
def test_commits_follow_the_last_step_and_precede_the_rows_that_read_them(chunks, steps, ranks):
    plan = schedule(chunks, steps, ranks)
    commits = {ms.commit: ms.index for ms in plan if ms.commit is not None}
    last_rows = max(ms.index for ms in plan)
    for c, m in commits.items():
        assert m == c + steps * ranks  # one ring turn after its last step, in its own slot
        assert plan[m - ranks].finishing == c  # it came back from the last rank as the finished row
    # every chunk some row could still read is committed; only the last R chunks are not
    assert sorted(commits) == [c for c in range(chunks) if c + steps * ranks <= last_rows]
    for ms in plan:  # the rows of micro-step m see exactly the chunks committed at micro-steps <= m
        visible = {c for c, m in commits.items() if m <= ms.index}
        assert visible == {c for c in range(chunks) if c + steps * ranks <= ms.index}


@pytest.mark.parametrize("chunks,steps,ranks", RUNNABLE)
def test_the_ring_hands_rank_0_exactly_the_rows_the_last_rank_sent_back(chunks, steps, ranks):
    for m in range(micro_steps(chunks, steps, ranks)):
        ms = micro_step(m, chunks=chunks, steps=steps, ranks=ranks)
        if m < ranks:
            assert ms.rows == ((m, 0),) and ms.commit is None
            continue
        prev = micro_step(m - ranks, chunks=chunks, steps=steps, ranks=ranks)
        advanced = {(c, s + 1) for c, s in prev.rows if s + 1 < steps}
        assert {r for r in ms.rows if r[1] > 0} == advanced
        assert ms.commit in (prev.finishing, None)


def test_one_rank_is_the_single_process_stream_batch():
    """R = 1: chunk c is at step m - c at micro-step m and visible from micro-step c + S."""
    for ms in schedule(6, 4, 1):
        assert ms.rows == tuple((c, ms.index - c) for c in range(6) if 0 <= ms.index - c < 4)
        assert ms.commit == (ms.index - 4 if 0 <= ms.index - 4 < 6 - 1 else None)


# ------------------------------------------------------------------------------------------------
# the single-process reference
# ------------------------------------------------------------------------------------------------


def test_lag_one_reference_equals_accelframes_stream_batch():
    """The single-process R = 1 schedule gives StreamLoop(stream_batch=True)'s latents, bit for bit
    (text-to-video, no rolling KV, no motion noise)."""
    from accelframe.pipeline import Pipeline
    from accelframe.streaming.source import StreamSource, VirtualClock
    from accelframe.testing.fixtures import make_hooks
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_policies import plugin as policies_plugin

    cfg = pp.PPConfig(frames=12, seed=5)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = Pipeline("self-forcing", hooks=make_hooks(adapters_plugin, policies_plugin),
                        adapter_kwargs={"size": "world"})
        ad = pipe.adapter
        decoded: list[torch.Tensor] = []
        decode = ad.decode

        def record(latents, state):
            decoded.append(latents.clone())
            return decode(latents, state)

        ad.decode = record
        src = StreamSource(id="s", prompt=cfg.prompt, num_frames=ad.pixel_frames(cfg.frames), fps=100.0,
                           seed=cfg.seed)
        # drain_when_idle=False: a chunk enters at every micro-step (no micro-steps while waiting)
        pipe.stream([src], clock=VirtualClock(), stream_batch=True, drain_when_idle=False)
        del ad.decode
        ref = pp.run_reference(cfg, lag=1, adapter=ad)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(torch.cat(decoded, dim=1), ref.latents)


# ------------------------------------------------------------------------------------------------
# ranks
# ------------------------------------------------------------------------------------------------


def _reference(cfg: pp.PPConfig, lag: int):
    return pp.run_reference(cfg, lag=lag)


@pytest.mark.parametrize("start,moved", [((0, 1, 4), "back"), ((0, 3, 4), "forward")])
def test_two_gloo_ranks_equal_the_reference_across_a_rebalance(start, moved):
    """Forced times (every block 1 s, no overhead) make the balancer move the start partition to
    (0, 2, 4): block 1 from rank 1 to rank 0, or block 2 from rank 0 to rank 1, with its K/V. The
    latents (and, decoded on the last rank, the frames) equal the one-process lag-2 run's."""
    decode = moved == "forward"
    cfg = pp.PPConfig(frames=36, seed=3, partition=start, block_times=(1.0,) * 4, overheads=(0.0, 0.0),
                      decode=decode, timeout_s=30.0)
    res = pp.launch(cfg, 2, deadline_s=120)
    ref = _reference(cfg, 2)
    lg = res.log
    assert lg["partition_before"] == list(start) and lg["partition_after"] == [0, 2, 4]
    assert lg["switch_at"] == lg["rebalance_at"] + 2 + 1
    assert all(r["partition_after"] == [0, 2, 4] for r in lg["per_rank"])
    decision = lg["per_rank"][0]["decision"]
    assert decision["moved"] and decision["stage_times_after_s"] == [2.0, 2.0]
    assert decision["stage_times_s"] == ([1.0, 3.0] if moved == "back" else [3.0, 1.0])
    assert res.latents.shape == (1, 36, 8, 16, 16)
    assert torch.equal(res.latents, ref.latents)
    if decode:
        assert res.frames is not None and torch.equal(res.frames, ref.frames)


def test_a_killed_rank_is_named_by_the_other_within_seconds():
    cfg = pp.PPConfig(frames=36, die_at=(1, 5), timeout_s=60.0)
    with pytest.raises(RankFailedError, match="pipeline rank 1 failed") as info:
        pp.launch(cfg, 2, deadline_s=90)
    err = info.value
    assert err.rank == 1 and err.seen_by == 0
    assert err.delay_s is not None and err.delay_s < 5.0, err.delay_s  # a closed connection, not the timeout


def test_a_silent_rank_is_named_at_the_deadline():
    """A rank that stops answering but keeps its connections open: the other's wait times out."""
    cfg = pp.PPConfig(frames=36, hang_at=(1, 5), timeout_s=2.0)
    with pytest.raises(RankFailedError, match="pipeline rank 1 failed") as info:
        pp.launch(cfg, 2, deadline_s=90)
    assert info.value.seen_by == 0 and "Timed out" in info.value.cause
    assert info.value.delay_s is not None and 1.5 < info.value.delay_s < 6.0, info.value.delay_s


@pytest.mark.slow
def test_three_ranks_equal_the_reference_with_a_middle_rank():
    cfg = pp.PPConfig(frames=36, seed=1, partition=(0, 1, 2, 4), block_times=(1.0, 1.0, 2.0, 0.5),
                      overheads=(0.0, 0.0, 0.0))
    res = pp.launch(cfg, 3, deadline_s=180)
    assert res.log["partition_after"] != [0, 1, 2, 4]
    assert torch.equal(res.latents, _reference(cfg, 3).latents)


# ------------------------------------------------------------------------------------------------
# configuration, messages, command line
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,ranks,field", [
    ({"frames": 10}, 2, "frames"),
    ({"frames": 0}, 2, "frames"),
    ({"frames": 2048}, 2, "frames"),
    ({"frames": 12}, 5, "ranks"),
    ({"frames": 12}, 0, "ranks"),
    ({"frames": 3}, 2, "frames"),
    ({"frames": 12, "partition": (0, 4, 4)}, 2, "partition"),
    ({"frames": 12, "partition": (0, 2, 3)}, 2, "partition"),
    ({"frames": 12, "block_times": (1.0, 1.0)}, 2, "block_times"),
    ({"frames": 12, "overheads": (0.0,)}, 2, "overheads"),
    ({"frames": 12, "size": "huge"}, 2, "size"),
    ({"frames": 12, "steps": (250, 500)}, 2, "denoising_step_list"),
    ({"frames": 12, "window": 3}, 2, "local_attn_size"),
    ({"frames": 12, "min_gain": 1.5}, 2, "min_gain"),
    ({"frames": 12, "threads": 0}, 2, "threads"),
    ({"frames": 12, "die_at": (7, 1)}, 2, "die_at"),
    ({"frames": 12, "hang_at": (2, 1)}, 2, "hang_at"),
])
def test_bad_configs_raise_config_error_before_any_model_runs(kwargs, ranks, field):
    with pytest.raises(ConfigError) as info:
        pp.launch(pp.PPConfig(**kwargs), ranks)  # fails in this process: nothing is spawned
    assert info.value.field == field and str(info.value.allowed)


def test_cli_reports_a_bad_config_and_documents_torchrun(capsys):
    assert pp.main(["--latent-frames", "10"]) == 2
    assert "ConfigError" in capsys.readouterr().err
    text = pp.parser().format_help()
    assert "torchrun --nproc-per-node 2 -m accelframe_adapters.parallel" in text and "--out" in text


@pytest.mark.parametrize("ranks", ["0", "-2"])
def test_cli_refuses_zero_or_negative_ranks_before_any_rank_runs(monkeypatch, capsys, ranks):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(pp, "run_rank", lambda *a, **k: pytest.fail("a rank ran"))
    monkeypatch.setattr(pp, "launch", lambda *a, **k: pytest.fail("ranks were launched"))
    assert pp.main(["--ranks", ranks, "--latent-frames", "12"]) == 2
    assert f"pipeline.ranks = {int(ranks)}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--die-at", "--hang-at"])
@pytest.mark.parametrize("text", ["x", "1", "1:2:3", "1,2", "1:-1", "-1:2", "1:"])
def test_cli_die_and_hang_at_take_rank_colon_micro_step_only(flag, text):
    with pytest.raises(ConfigError) as info:
        pp.config_from_args(pp.parser().parse_args(["--latent-frames", "12", f"{flag}={text}"]))
    assert info.value.field == flag and "RANK:M" in info.value.allowed and "comma" not in info.value.allowed
    assert pp.config_from_args(pp.parser().parse_args(["--latent-frames", "12", flag, "1:5"])) \
        == pp.PPConfig(frames=12, **{flag[2:].replace("-", "_"): (1, 5)})


@pytest.mark.parametrize("at", [(1,), (1, 2, 3), (1, -1), (-1, 2), (1.0, 2), [1, 2, 3]])
def test_config_die_and_hang_at_are_a_rank_micro_step_pair(at):
    for name in ("die_at", "hang_at"):
        with pytest.raises(ConfigError) as info:
            pp.PPConfig(frames=12, **{name: at})
        assert info.value.field == name
    assert pp.PPConfig.from_json('{"frames": 12, "die_at": [1, 5]}').die_at == (1, 5)


def test_cli_latent_frames_is_the_frame_count_and_frames_warns(recwarn):
    new = pp.config_from_args(pp.parser().parse_args(["--latent-frames", "12"]))
    assert new.frames == 12 and not [w for w in recwarn if w.category is FutureWarning]
    with pytest.warns(FutureWarning, match="--frames counts latent frames.*--latent-frames"):
        old = pp.config_from_args(pp.parser().parse_args(["--frames", "12"]))
    assert old == new
    assert pp.config_from_args(pp.parser().parse_args([])).frames == 24
    with pytest.raises(SystemExit):
        pp.parser().parse_args(["--frames", "12", "--latent-frames", "12"])


def test_cli_help_states_the_defaults_of_size_and_steps():
    text = " ".join(pp.parser().format_help().split())
    assert "--latent-frames N" in text
    size = text.split("--size {")[-1].split("--steps")[0]
    steps = text.split("--steps LIST")[-1].split("--window")[0]
    assert "(default: world)" in size and "(default: 1000,750,500,250" in steps


def test_messages_pack_into_one_buffer_and_back():
    parts = [torch.arange(5, dtype=torch.float64), torch.randn(7), torch.randn(3).to(torch.bfloat16)]
    back = unpack(pack(parts), [(t.numel(), t.dtype) for t in parts])
    assert all(torch.equal(a, b) for a, b in zip(parts, back))


def test_header_round_trips_measurements_and_decisions():
    h = Header(m=7, ranks=2, layers=4, switch_at=12, bounds=(0, 3, 4), block_times=[0.1, 0.2, math.nan, 0.4],
               overheads=[0.01, math.nan])
    back = Header.from_tensor(h.to_tensor(torch.device("cpu")), 2, 4)
    assert (back.m, back.switch_at, back.bounds) == (7, 12, (0, 3, 4))
    assert back.block_times[:2] == [0.1, 0.2] and math.isnan(back.block_times[2])
    assert Header.from_tensor(Header(m=1, ranks=2, layers=4).to_tensor(torch.device("cpu")), 2, 4).bounds == ()


def test_rank_failed_error_names_the_rank():
    err = RankFailedError(2, seen_by=1, during="waiting for micro-step 4", cause="Connection closed by peer")
    assert "pipeline rank 2" in str(err) and "rank 1" in str(err)
