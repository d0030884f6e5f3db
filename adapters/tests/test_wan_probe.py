"""The Wan DiT's cheap probe and its embedding memos: the same numbers as the reference path."""

from __future__ import annotations

import pytest
import torch

from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig, sinusoidal


def _model(**kw) -> WanDiT:
    torch.manual_seed(0)
    m = WanDiT(WanDiTConfig.tiny(**kw)).eval()
    with torch.no_grad():
        for p in m.parameters():  # default init leaves biases small: make every path matter
            p.add_(0.1 * torch.randn_like(p))
    return m


def _inputs(b: int = 1, f: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 8, 8, generator=g)  # [B, C, F, H, W]
    t = (torch.rand(b, f, generator=g) * 1000).round()  # per-frame timesteps
    return x, t


def _reference_probe(m: WanDiT, x: torch.Tensor, t: torch.Tensor, fps: int | None = None) -> torch.Tensor:
    """Block 0's modulated input from the full time embedding, nothing memoised."""
    tokens, _ = m._embed(x)
    _, e0 = m._time_embed(t, fps)  # all six rows
    return m.blocks[0].modulated_input(tokens, e0)


@pytest.mark.parametrize("kw", [{}, {"inject_sample_info": True}, {"spatial_grid": (4, 4)}])
@pytest.mark.parametrize("b,f", [(1, 1), (1, 3), (2, 5)])
def test_probe_equals_the_reference_bit_for_bit(kw, b, f):
    # the probe computes 2 of the 6 modulation rows; measured bit-identical (the Wan adapters'
    # step policies compare it against thresholds, so any drift could flip a decision)
    m = _model(**kw)
    x, t = _inputs(b, f)
    fps = 1 if kw.get("inject_sample_info") else None
    with torch.no_grad():
        assert torch.equal(m.probe(x, t, fps), _reference_probe(m, x, t, fps))
    assert torch.equal(m.probe(x, t, fps).detach(), _reference_probe(m, x, t, fps).detach())  # with autograd


def test_time_embedding_memo_returns_what_recomputing_gives():
    m = _model()
    x, t = _inputs(f=4)
    with torch.no_grad():
        e, e0 = m.time_embed(t)
        again = m.time_embed(t.clone())  # equal values, another tensor: a hit
        assert again[0] is e and again[1] is e0
        fresh = m._time_embed(t, None)
        assert torch.equal(e, fresh[0]) and torch.equal(e0, fresh[1])
        other = m.time_embed(t + 1)  # other values: recomputed
        assert torch.equal(other[1], m._time_embed(t + 1, None)[1])
        m.time_projection[1].bias.add_(1.0)  # weights changed in place: the memo is stale
        assert torch.equal(m.time_embed(t + 1)[1], m._time_embed(t + 1, None)[1])
    with torch.inference_mode():
        assert torch.equal(m.time_embed(t)[1], m._time_embed(t, None)[1])
    e1, _ = m.time_embed(t)
    assert e1 is not m.time_embed(t)[0]  # with autograd: never memoised


def test_memo_sees_loaded_and_converted_weights():
    m, other = _model(), WanDiT(WanDiTConfig.tiny()).eval()
    x, t = _inputs(f=2)
    with torch.no_grad():
        m.time_embed(t), m.embed(x)
        m.load_state_dict(other.state_dict())  # copied in place
        assert torch.equal(m.time_embed(t)[1], other.time_embed(t)[1])
        assert torch.equal(m.embed(x)[0], other.embed(x)[0])
        m.double()  # new storage for every weight
        assert torch.equal(m.time_embed(t)[1], m._time_embed(t, None)[1])  # float64 weights' numbers
        assert m.embed(x.double())[0].dtype == torch.float64


def test_patch_embedding_memo_returns_what_recomputing_gives():
    m = _model(spatial_grid=(4, 4))
    x, _ = _inputs(f=2)
    with torch.no_grad():
        tokens, grid = m.embed(x)
        assert m.embed(x.clone())[0] is tokens  # the forward after a probe of the same call
        assert torch.equal(tokens, m._embed(x)[0]) and grid == (2, 4, 4)
        x.mul_(2.0)  # the caller changed its latent in place: recomputed
        assert torch.equal(m.embed(x)[0], m._embed(x)[0])
        m.spatial_embedding.add_(1.0)
        assert torch.equal(m.embed(x)[0], m._embed(x)[0])


def test_memoised_frequencies_are_the_formula():
    t = torch.tensor([[0.0, 1.5, 999.0]])
    half = 8
    w = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    arg = t.to(torch.float64).unsqueeze(-1) * w
    want = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).float()
    assert torch.equal(sinusoidal(t, 16), want) and torch.equal(sinusoidal(t, 16), want)
