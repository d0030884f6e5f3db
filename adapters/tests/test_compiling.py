"""``compile=True``: the compiled parts trace whole (no graph breaks), one graph serves every context
length, outputs equal eager ones (bit for bit when traced without code generation; within 1e-4 with
inductor, a slow test), and the Wan adapters' knob compiles the DiT and the decoder.

The fast tests trace with torch.compile's ``eager`` backend: dynamo captures the same graphs and
guards as with inductor, without the minute of C++ code generation."""

from __future__ import annotations

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe.types import KVWrite
from accelframe_adapters import compiling, plugin
from accelframe_adapters.wan.dit import KVCache, WanDiT, WanDiTConfig, forward_rows
from accelframe_adapters.wan.taehv import TinyDecoder, TinyDecoderConfig

PROMPT = "a red circle moves left on a blue background"
# what inductor may change: it reorders float32 sums (measured on the world: 5e-6 on frames in [-1, 1])
INDUCTOR_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _breaks() -> dict:
    return dict(torch._dynamo.utils.counters["graph_break"])


def _dit(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    m = WanDiT(WanDiTConfig.tiny()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _blocks(model: WanDiT, cross, x, t, cache: KVCache) -> list[torch.Tensor]:
    """A stream of 2-frame blocks (scratch and commit calls, the cache growing), then a batched rows
    pass of two rows, one with that cache and one with none."""
    outs = []
    f = x.shape[2]
    for s in range(0, f, 2):
        sl = slice(s, s + 2)
        outs.append(model(x[:, :, sl], t[:, sl], cross, frame_offset=s, cache=cache, kv_write=KVWrite.SCRATCH))
        outs.append(model(x[:, :, sl], t[:, sl], cross, frame_offset=s, cache=cache, kv_write=KVWrite.COMMIT))
    outs.append(forward_rows(model, x[:, :, f - 2:].repeat(2, 1, 1, 1, 1), t[:, f - 2:].repeat(2, 1), _cat(cross),
                             [f - 2, f - 2], [cache, None]))
    return outs


def _cat(cross):
    from accelframe_adapters.wan.dit import cat_cross

    return cat_cross([cross, cross])


def test_the_dit_traces_whole_and_longer_contexts_add_no_graphs_and_it_equals_eager():
    eager, comp = _dit(), _dit()
    n = compiling.compile_parts(comp, backend="eager")
    assert n == len(comp.blocks) + 1  # every block's compute and the head
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 12, 8, 8, generator=g), torch.rand(1, 12, generator=g) * 1000
    ctx = torch.randn(1, 8, 24, generator=g)
    graphs = []
    with torch.no_grad():
        for f in (6, 12):  # contexts of 2 and 4 frames, then of 6 to 10 frames: no new shape class
            fresh = KVCache(num_layers=2, tokens_per_frame=16)
            want = _blocks(eager, eager.cross_cache(ctx), x[:, :, :f], t[:, :f], fresh)
            cache = KVCache(num_layers=2, tokens_per_frame=16)
            got = _blocks(comp, comp.cross_cache(ctx), x[:, :, :f], t[:, :f], cache)
            assert cache.frames == tuple(range(f))
            for a, b in zip(got, want):
                assert torch.equal(a, b)
            graphs.append(_graphs())
    assert _breaks() == {}
    assert graphs[1] == graphs[0], torch._dynamo.utils.counters["stats"]
    assert graphs[0] <= compiling.RECOMPILE_LIMIT


def test_the_tiny_decoder_traces_whole_and_streams_as_eager():
    """(The Wan VAE's decoder: bench wan --compile's test, whose tiny model decodes with it.)"""
    torch.manual_seed(0)
    dec = TinyDecoder(TinyDecoderConfig(z_dim=8, widths=(8, 8, 4, 4), space_upscale=(False, True, True))).eval()
    lat = torch.randn(1, 8, 4, 4, 4)
    want_cache, got_cache = dec.new_decode_cache(), dec.new_decode_cache()
    want = [dec.decode_chunk(lat[:, :, :1], want_cache), dec.decode_chunk(lat[:, :, 1:], want_cache)]
    assert compiling.compile_parts(dec, backend="eager") == 1
    got = [dec.decode_chunk(lat[:, :, :1], got_cache), dec.decode_chunk(lat[:, :, 1:], got_cache)]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert _breaks() == {}


def test_the_compile_knob_compiles_dit_and_decoder_and_keeps_the_video(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    kw = {"size": "world", "decoder": "tiny"}
    runs = {}
    for c in (False, True):
        pipe = Pipeline("self-forcing", hooks=create_hooks(plugins=[plugin]), adapter_kwargs={**kw, "compile": c})
        res = pipe.generate(PROMPT, num_frames=6, seed=3)
        runs[c] = (res, pipe.engine().target)
    assert torch.equal(runs[True][0].frames, runs[False][0].frames)
    assert runs[False][1].compile_clock.compiles == 0
    clock = runs[True][1].compile_clock
    assert clock.compiles > 0 and clock.seconds > 0
    assert "compiled" not in "".join(runs[True][1].dit.state_dict())  # the weights keep their names


def test_compile_must_be_a_bool():
    with pytest.raises(ConfigError, match="compile"):
        Pipeline("self-forcing", hooks=create_hooks(plugins=[plugin]), adapter_kwargs={"compile": "yes"})


@pytest.mark.slow
def test_inductor_output_equals_eager_within_the_tolerance():
    kw = {"size": "world", "decoder": "tiny"}
    frames = {}
    for c in (False, True):
        pipe = Pipeline("self-forcing", hooks=create_hooks(plugins=[plugin]), adapter_kwargs={**kw, "compile": c})
        frames[c] = pipe.generate(PROMPT, num_frames=9, seed=3).frames
    diff = (frames[True] - frames[False]).abs().max().item()
    assert diff <= INDUCTOR_TOLERANCE


def test_magi_compile_knob_keeps_the_video(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    runs = {}
    for c in (False, True):
        kw = {"size": "world", "compile": c, "window_size": 2, "num_steps": 4}
        pipe = Pipeline("magi-1", hooks=create_hooks(plugins=[plugin]), adapter_kwargs=kw)
        # not decoded: the VAE decoder's compile is the Wan test's (tracing it takes seconds)
        runs[c] = (pipe.generate(PROMPT, num_frames=12, seed=3, decode=False), pipe.engine().target)
    assert torch.equal(runs[True][0].latents, runs[False][0].latents)
    assert runs[True][1].compile_clock.compiles > 0
    assert _breaks() == {}
