"""A live stream's prompt switch on the Wan block loop (PromptSwitch): the recache rebuilds the
cached context exactly as it was made when the prompt stays, and a stream that switches draws
what it drew before the switch, then the new prompt."""

from __future__ import annotations

import pytest
import torch

from accelframe import adapter as caps
from accelframe.pipeline import Pipeline
from accelframe.streaming.live import LiveSource
from accelframe.streaming.loop import StreamLoop
from accelframe.streaming.source import VirtualClock
from accelframe.testing.fixtures import make_hooks
from accelframe.types import KVWrite, Request
from accelframe_adapters import plugin as adapters_plugin
from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

SMALL = {"size": "tiny", "height": 32, "width": 32, "num_frame_per_block": 2}


def test_recache_under_the_same_prompt_rebuilds_the_same_kv():
    torch.manual_seed(0)
    ad = SelfForcingAdapter(**SMALL)
    req = Request(prompts=("a red circle",), num_frames=4, seed=0)
    cond = ad.encode_prompt(["a red circle"])
    state = ad.init_state(req, cond)
    x0 = torch.randn(1, 4, ad.dit.cfg.in_dim, 4, 4)  # [B, F, C, H, W]: two committed blocks
    ad.commit(x0[:, :2], (0, 2), state)
    ad.commit(x0[:, 2:], (2, 4), state)
    before = [t.clone() for t in state.kv.k], [t.clone() for t in state.kv.v]
    assert set(state.family["context"]) == {0, 1, 2, 3}
    assert isinstance(ad, caps.PromptSwitch)
    assert ad.switch_prompt(state, ad.encode_prompt(["a red circle"])) == 1
    assert state.kv.frames == (0, 1, 2, 3) and state.kv.rope_offset == 0
    for old, new in zip(before[0] + before[1], state.kv.k + state.kv.v):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-5)
    # another prompt changes the context's K/V (the cross-attention reaches them), and the cross
    other = ad.encode_prompt(["a blue square"])
    ad.switch_prompt(state, other)
    assert state.cross is other
    assert max(float((a - b).abs().max()) for a, b in zip(before[0], state.kv.k)) > 1e-4
    # the rebuilt cache serves the next block at the position after the cached frames
    x = torch.randn(1, 2, ad.dit.cfg.in_dim, 4, 4)
    ad.dit(ad.to_model(x), torch.full((1, 2), 500.0), state.cross, frame_offset=4, cache=state.kv,
           kv_write=KVWrite.NONE)


def _run(switch_after: int | None, adapter: str = "self-forcing", to: str = "a blue square",
         kw: dict | None = None) -> tuple[torch.Tensor, list]:
    pipe = Pipeline(adapter, hooks=make_hooks(adapters_plugin), adapter_kwargs=kw or SMALL)
    src = LiveSource("a", "a red circle", seed=3, max_frames=1 + 4 * 7, fps=16.0)
    got: list[torch.Tensor] = []
    batches = [0]
    loop = StreamLoop(pipe, [src], live=True, clock=VirtualClock(batch_cost_s=0.01),
                      on_frames=lambda s, f: got.append(f), on_end=lambda s, summary: loop.stop())

    def on_batch(record):
        batches[0] += 1
        if batches[0] == switch_after:
            src.set_prompt(to)
    loop.on_batch = on_batch
    run = loop.run()
    return got, run.trace.of("prompt")


def test_a_switch_changes_only_the_chunks_after_it():
    plain, none = _run(None)
    switched, events = _run(2)
    assert none == [] and len(events) == 1 and events[0]["calls"] == {"target": 1}
    assert len(plain) == len(switched) >= 3
    for k in range(2):  # the chunks made before the switch
        torch.testing.assert_close(switched[k], plain[k], rtol=0, atol=0)
    assert all(not torch.equal(a, b) for a, b in zip(switched[2:], plain[2:]))


KREA = {"size": "tiny", "height": 32, "width": 32, "num_frame_per_block": 2, "kv_cache_num_frames": 3}


@pytest.mark.parametrize("adapter,kw", [("self-forcing", SMALL), ("krea-realtime", KREA)])
def test_switching_to_the_same_prompt_changes_nothing(adapter, kw):
    """The recache under the prompt the stream has rebuilds its cache: the frames stay."""
    plain, _ = _run(None, adapter, kw=kw)
    same, events = _run(2, adapter, to="a red circle", kw=kw)
    assert len(events) == 1 and events[0]["calls"] == {"target": 1}
    for a, b in zip(same, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)
    other, _ = _run(2, adapter, kw=kw)
    assert not torch.equal(other[-1], plain[-1])
