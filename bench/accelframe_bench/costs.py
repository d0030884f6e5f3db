"""What a run's decisions would cost at real scale: a cost table per component, and the price of a
run's counted work under it (issue 23 item 6).

A :class:`CostTable` gives, at one of the papers' configurations, the seconds of each component:
a target denoising call, a drafter call, a commit pass of each, the decode of one latent frame, the
score of one pixel frame. :class:`Counts` is what a run did, counted from its statistics; and
:func:`price` is the seconds that work costs under a table. The benches report, beside the speedup
measured on the world, the ratio of the baseline's price to a row's price: the speedup the same
decisions give at that configuration, "projected at <configuration>".

Two tables exist per configuration: :func:`table`, the FLOPs of random-weight models at real size
scaled by one H100 figure, and :func:`measured`, the components timed on a GPU by
``scripts/gpu_suite.py`` (:mod:`accelframe_bench.measured_costs`). A bench's ``--project NAME`` prices
with the measured table where there is one (``NAME:flops`` asks for the estimate); the document's
``projection`` keeps the table with its source.

Pricing is a sum: every call at its component's cost, nothing overlapped, no batching gain (at real
scale one 3-frame call of a 1.3B or 14B model already fills a GPU). A stream batch's batched forward
over R rows is priced as R calls.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs


@attrs.frozen(kw_only=True)
class CostTable:
    """Seconds per component at ``config``; ``source`` says where the numbers come from."""

    config: str
    target_call_s: float
    drafter_call_s: float
    target_commit_s: float
    drafter_commit_s: float
    decode_per_latent_frame_s: float
    score_per_pixel_frame_s: float
    source: str
    detail: dict[str, Any] = attrs.field(factory=dict)  # FLOPs and assumptions behind the numbers

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Counts:
    """The work one run did (per video, or summed over videos: pricing is linear)."""

    target_calls: int = 0
    drafter_calls: int = 0
    target_commits: int = 0
    drafter_commits: int = 0
    decoded_latent_frames: int = 0
    scored_pixel_frames: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                         for f in attrs.fields(Counts)})


def price(counts: Counts, table: CostTable) -> float:
    """Seconds ``counts`` cost under ``table``: every component at its cost, summed."""
    return (counts.target_calls * table.target_call_s + counts.drafter_calls * table.drafter_call_s
            + counts.target_commits * table.target_commit_s
            + counts.drafter_commits * table.drafter_commit_s
            + counts.decoded_latent_frames * table.decode_per_latent_frame_s
            + counts.scored_pixel_frames * table.score_per_pixel_frame_s)


def counts_of(stats: dict[str, Any], *, unit_latent_frames: int, unit_pixel_frames: int) -> Counts:
    """The work of a run from its ``stats.to_dict()``: computed calls and commit passes per model,
    the latent frames decoded (every emitted frame once, plus a unit for every wasted decode of a
    rejected draft), and the pixel frames scored (the frames of every block judged on its pixels:
    a verdict given before the decode, ``early_verdicts``, scores none)."""
    calls, blocks = stats.get("calls", {}), stats.get("blocks", {})
    target, drafter = calls.get("target", {}), calls.get("drafter", {})
    judged = (int(blocks.get("accepted", 0)) + int(blocks.get("regenerated", 0))
              - int(blocks.get("early_verdicts", 0)))
    return Counts(
        target_calls=int(target.get("computed", 0)), drafter_calls=int(drafter.get("computed", 0)),
        target_commits=int(target.get("commit", 0)), drafter_commits=int(drafter.get("commit", 0)),
        decoded_latent_frames=int(stats.get("frames", 0))
        + int(blocks.get("decodes_wasted", 0)) * unit_latent_frames,
        scored_pixel_frames=judged * unit_pixel_frames)




# ------------------------------------------------------------------------------------------------
# the tables: FLOPs at the papers' configurations, scaled by one measured H100 figure
# ------------------------------------------------------------------------------------------------

SOURCE = ("FLOPs estimate scaled by the H100 figure in docs/adapters.md: 78 ms per Self-Forcing 1.3B call, "
          "bfloat16")
H100_CALL_S = 0.078  # docs/adapters.md: Self-Forcing 1.3B, 480 x 832, bfloat16, random weights, one H100
# What that 78 ms averaged over: `accelframe bench wan --size 1.3B` runs 9 latent frames with the global
# cache, so its calls over 3 frames (4680 tokens) attend to 3, 6 and 9 frames: 6 on average, and the FLOPs
# are linear in the attended tokens.
CALIBRATION_TOKENS, CALIBRATION_KV_TOKENS = 3 * 1560, 6 * 1560
PROTOCOL_BLOCKS = 9  # the world benches' videos: 27 latent frames, 9 blocks of 3 (SDVG's protocol)
IMAGE_REWARD_TEXT_TOKENS = 35


def calibration_flops() -> float:
    """FLOPs of the call the 78 ms figure measured (see ``CALIBRATION_TOKENS``)."""
    from accelframe_adapters.wan.dit import WanDiTConfig

    return WanDiTConfig.wan_1_3b().flops(CALIBRATION_TOKENS, CALIBRATION_KV_TOKENS)


def throughput() -> float:
    """Effective FLOP/s of the H100 run: the calibration call's FLOPs over 78 ms."""
    return calibration_flops() / H100_CALL_S


_DECODE_FLOPS: dict[tuple[int, int, int, int], float] = {}


def vae_decode_flops(latent_h: int, latent_w: int, *, frames: int = 3, base_dim: int = 96) -> float:
    """FLOPs of the Wan VAE decoding ``frames`` latent frames of ``latent_h x latent_w`` after a first
    chunk (the causal VAE's first latent frame gives one pixel frame, every later one four), counted by
    ``FlopCounterMode`` on the meta device (no memory, no compute). ``base_dim`` 96: the released VAE."""
    key = (latent_h, latent_w, frames, base_dim)
    if key not in _DECODE_FLOPS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig

        cfg = WanVAEConfig(base_dim=base_dim)
        with torch.device("meta"):
            vae = WanVAE(cfg).eval()
            cache = vae.new_decode_cache()
            vae.decode_chunk(torch.zeros(1, cfg.z_dim, 1, latent_h, latent_w), cache)  # the first frame
            with FlopCounterMode(display=False) as counter:
                vae.decode_chunk(torch.zeros(1, cfg.z_dim, frames, latent_h, latent_w), cache)
        _DECODE_FLOPS[key] = float(counter.get_total_flops())
    return _DECODE_FLOPS[key]


def vit_l16_flops() -> float:
    """FLOPs of BLIP's image encoder, a ViT-L/16 at 224 x 224: the patch embedding, then 24 layers of width
    1024 (MLP 4096) over 197 tokens (196 patches and the class token)."""
    n, d = 197, 1024
    layer = 2 * 4 * n * d * d + 2 * 2 * n * n * d + 2 * 2 * n * d * 4 * d  # projections, attention, MLP
    return float(24 * layer + 2 * 196 * 3 * 16 * 16 * d)


def bert_cross_flops(text_tokens: int = IMAGE_REWARD_TEXT_TOKENS) -> float:
    """FLOPs of ImageReward's text side: BERT-base (12 layers, width 768, MLP 3072) over ``text_tokens``
    tokens, cross-attending in every layer to the 197 image tokens of width 1024."""
    t, e, n, d = text_tokens, 768, 197, 1024
    layer = (2 * 4 * t * e * e + 2 * 2 * t * t * e  # self-attention
             + 2 * 2 * t * e * e + 2 * 2 * n * d * e + 2 * 2 * t * n * e  # cross-attention: q, o; k, v; scores
             + 2 * 2 * t * e * 4 * e)  # MLP
    return float(12 * layer)


def image_reward_flops(text_tokens: int = IMAGE_REWARD_TEXT_TOKENS) -> float:
    """ImageReward's FLOPs for one image, counted by hand from the published architectures (an estimate):
    :func:`vit_l16_flops` plus :func:`bert_cross_flops`; the reward head's small MLP is left out."""
    return vit_l16_flops() + bert_cross_flops(text_tokens)


def magi_pass_flops(cfg: Any, tokens_per_frame: int, chunk_width: int, kv_chunks: Sequence[int], *,
                    caption_tokens: int = 50) -> float:
    """FLOPs of one MAGI-1 DiT pass over ``len(kv_chunks)`` chunks, chunk j attending to ``kv_chunks[j]``
    chunks (itself included), with cross-attention to ``caption_tokens`` caption tokens: the q, qx, k, v
    and output projections, self- and cross-attention, the MLP, the patch embedding and the head. Norms,
    RoPE and the per-chunk modulation are left out (as :meth:`WanDiTConfig.flops` leaves them)."""
    ctn = chunk_width * tokens_per_frame
    s = len(kv_chunks) * ctn
    d, f = cfg.hidden_size, cfg.ffn_hidden_size
    hq, hkv = cfg.num_attention_heads * cfg.kv_channels, cfg.num_query_groups * cfg.kv_channels
    lin = 2 * s * d * (2 * hq + 2 * hkv) + 2 * s * 2 * hq * d + 2 * s * d * f * (2 if cfg.gated_linear_unit else 1)
    lin += 2 * s * f * d
    attn = sum(2 * 2 * ctn * (k * ctn) * hq for k in kv_chunks)
    cross = 2 * 2 * s * caption_tokens * hq + 2 * caption_tokens * d * 2 * hkv
    patch = cfg.in_channels * cfg.patch_size ** 2
    return float(cfg.num_layers * (lin + attn + cross) + 2 * s * patch * d * 2)


@attrs.frozen(kw_only=True)
class ScaleFlops:
    """FLOPs of each component at one configuration, with what they assume."""

    target_call: float
    drafter_call: float
    target_commit: float
    drafter_commit: float
    decode_per_latent_frame: float
    score_per_pixel_frame: float
    assumptions: dict[str, str]


def _wan_tokens(height: int, width: int) -> int:
    """Tokens per latent frame of a Wan DiT: the VAE's 8x spatial latents, patch (1, 2, 2)."""
    assert height % 16 == 0 and width % 16 == 0, f"{height} x {width} is not a multiple of 16"
    return (height // 16) * (width // 16)


def _decode_and_score(latent_h: int, latent_w: int) -> tuple[float, float]:
    """FLOPs of the Wan VAE's decode per latent frame at ``latent_h x latent_w``, and of ImageReward per
    pixel frame, in that order."""
    return vae_decode_flops(latent_h, latent_w) / 3, image_reward_flops()


_COMMON = {
    "throughput": "one effective FLOP/s for everything: the calibration call's FLOPs over 78 ms; the VAE's "
                  "convolutions and the reward's ViT are assumed to run at the DiT's throughput (an assumption)",
    "score": f"ImageReward per pixel frame, counted by hand (BLIP ViT-L/16 at 224 x 224 + BERT-base with "
             f"cross-attention, {IMAGE_REWARD_TEXT_TOKENS} text tokens): an estimate",
    "decode": "the Wan VAE decoder per latent frame after the first (4 pixel frames each), counted by "
              "FlopCounterMode on the meta device over 3 latent frames",
    "dit": "WanDiTConfig.flops: projections, attention, cross-attention on 512 text tokens, FFN; norms, "
           "RoPE and modulation left out (a profile puts much of a real call in them: scaling by one "
           "measured call folds them in only at the calibration call's shape)",
    "pricing": "every component at its cost, nothing overlapped, batch 1",
}


def _self_forcing_kv_frames(cache_frames: int = 21) -> float:
    """Mean frames a Self-Forcing call attends to over the protocol's 9 blocks of 3: every earlier frame up to
    the release's cache of 21 frames (kv_cache_size 32760 tokens at 1560 a frame), its own block included."""
    return sum(min(3 * b, cache_frames) for b in range(1, PROTOCOL_BLOCKS + 1)) / PROTOCOL_BLOCKS


def _self_forcing_1_3b() -> ScaleFlops:
    from accelframe_adapters.wan.dit import WanDiTConfig

    tok = _wan_tokens(480, 832)
    kv = round(_self_forcing_kv_frames() * tok)
    call = WanDiTConfig.wan_1_3b().flops(3 * tok, kv)
    decode, score = _decode_and_score(60, 104)
    return ScaleFlops(
        target_call=call, drafter_call=call, target_commit=call, drafter_commit=call,
        decode_per_latent_frame=decode, score_per_pixel_frame=score,
        assumptions={**_COMMON,
                     "config": "Self-Forcing (Wan 2.1 1.3B, DMD-distilled) at 480 x 832: a call denoises a block "
                               f"of 3 latent frames ({3 * tok} tokens), one pass (no guidance)",
                     "context": f"global cache of the release, capped at 21 frames: over the protocol's 27 latent "
                                f"frames a call attends to {_self_forcing_kv_frames():.0f} frames on average "
                                f"({kv} tokens)",
                     "commit": "one pass over the block at the context noise (t = 0), same context",
                     "drafter": "no smaller Self-Forcing model is released: the drafter is the same 1.3B model"})


def _krea_14b() -> ScaleFlops:
    from accelframe_adapters.wan.dit import WanDiTConfig

    tok = _wan_tokens(480, 832)
    big, small = WanDiTConfig.wan_14b(), WanDiTConfig.wan_1_3b()
    # Krea's cache is rebuilt from kv_cache_num_frames = 3 frames: a call attends to them and its own
    # block (the first block to its own only)
    krea_kv = (3 + (PROTOCOL_BLOCKS - 1) * 6) / PROTOCOL_BLOCKS
    sf_kv = _self_forcing_kv_frames()
    draft = small.flops(3 * tok, round(sf_kv * tok))
    decode, score = _decode_and_score(60, 104)
    return ScaleFlops(
        target_call=big.flops(3 * tok, round(krea_kv * tok)), drafter_call=draft,
        target_commit=big.flops(3 * tok, 3 * tok), drafter_commit=draft,
        decode_per_latent_frame=decode, score_per_pixel_frame=score,
        assumptions={**_COMMON,
                     "config": "SDVG's setting: Krea Realtime 14B (Wan 2.1 14B, distilled) target and "
                               "Self-Forcing 1.3B drafter at 480 x 832; blocks of 3 latent frames, one pass "
                               "(no guidance)",
                     "context": f"Krea's cache rebuilt from kv_cache_num_frames = 3 frames: a target call attends "
                                f"to {krea_kv:.2f} frames on average over 9 blocks; the drafter as Self-Forcing "
                                f"(release cache of 21 frames: {sf_kv:.0f} on average)",
                     "commit": "the target's commit is Krea's cache rebuild: one pass over the 3 context frames "
                               "(block-causal, t = 0); the anchor frame's VAE encode is left out; the drafter's: "
                               "one pass over its block at t = 0",
                     "drafter": "Self-Forcing 1.3B with its own cache"})


def _skyreels_14b() -> ScaleFlops:
    from accelframe_adapters.wan.dit import WanDiTConfig

    tok = _wan_tokens(544, 960)
    window = 25  # base_num_frames = 97 pixel frames
    n = window * tok
    decode, score = _decode_and_score(68, 120)
    return ScaleFlops(
        target_call=2 * WanDiTConfig.wan_14b().flops(n, n), drafter_call=2 * WanDiTConfig.wan_1_3b().flops(n, n),
        target_commit=0.0, drafter_commit=0.0,
        decode_per_latent_frame=decode, score_per_pixel_frame=score,
        assumptions={**_COMMON,
                     "config": "SkyReels-V2 diffusion forcing 14B at 540P (544 x 960), the release's defaults: "
                               f"a call forwards the whole window of base_num_frames = 97 pixel frames ({window} "
                               f"latent frames, {n} tokens), attending to all of it (dense; the block-causal mask "
                               "does not lower the estimate), two passes (guidance_scale 6.0)",
                     "unit": f"a call advances every frame of the window one step: per latent frame it is "
                             f"1/{window} of the call; a 3-frame block loop's call is not the same unit",
                     "commit": "none: diffusion forcing keeps no KV cache (0 s)",
                     "drafter": "SkyReels-V2-DF-1.3B-540P, the same call"})


def _magi_4_5b() -> ScaleFlops:
    from accelframe_adapters.magi.dit import MagiDiTConfig

    cfg = MagiDiTConfig.magi_4_5b()
    tok = (720 // 16) * (720 // 16)  # 8x spatial latents, patch 2
    w = 6
    window = (5, 4, 3, 2)  # noise2clean_kvrange: the window's 4 chunks, noisiest first
    ctx = magi_pass_flops(cfg, tok, w, window)
    alone = magi_pass_flops(cfg, tok, w, (1,) * 4)
    commit = magi_pass_flops(cfg, tok, w, (1,))
    decode, score = _decode_and_score(90, 90)
    return ScaleFlops(
        target_call=2 * ctx + alone, drafter_call=ctx + magi_pass_flops(cfg, tok, w, (1,)),
        target_commit=commit, drafter_commit=commit,
        decode_per_latent_frame=decode, score_per_pixel_frame=score,
        assumptions={**_COMMON,
                     "config": "MAGI-1 4.5B (base) at the release example's 720 x 720, chunks of 6 latent frames "
                               f"({w * tok} tokens), window of 4 chunks",
                     "call": "the steady state of the staged window: 4 live chunks attending to 5, 4, 3 and 2 "
                             "chunks (noise2clean_kvrange); three passes (captions with context, null caption "
                             "with context, each chunk alone), which run while the noisiest chunk is below "
                             "t = 0.3, always true in the steady state; a ramp-up or ramp-down call forwards "
                             "fewer chunks",
                     "commit": "the finished chunk at clean_t, attending to itself (one chunk, one pass)",
                     "drafter": "no smaller MAGI-1 is released: the drafter is the 4.5B-distill model, one pass "
                                "per call plus its nearly-clean pass of the oldest chunk alone",
                     "caption": "50 caption tokens (the null caption's valid count; a real caption's T5 length "
                                "is assumed the same)",
                     "decode": "MAGI-1's own ViT VAE is not implemented: the Wan VAE decoder (8x spatial, 4x "
                               "temporal, as MAGI's) at the same latent size stands in, counted by "
                               "FlopCounterMode on the meta device; MAGI's transformer VAE will differ "
                               "(uncertain)"})


def cross_checks() -> dict[str, dict[str, float]]:
    """The same throughput against the other H100 figures of docs/adapters.md (1.3B, 480 x 832, bfloat16):
    the estimate and the measurement, in milliseconds."""
    from accelframe_adapters.wan.dit import WanDiTConfig

    c, rate, tok = WanDiTConfig.wan_1_3b(), throughput(), 1560
    decode = vae_decode_flops(60, 104) / 3 / rate
    # bench wan's Self-Forcing run: 9 latent frames, 12 calls and 3 commits (context 6 frames on average)
    per_frame = (15 * calibration_flops() / rate + 9 * decode) / 9
    return {
        "krea 1.3B call (3 frames attending to 5 on average)": {
            "estimate_ms": 1000 * c.flops(3 * tok, 5 * tok) / rate, "measured_ms": 75.0},
        "skyreels 1.3B call (the 9-frame window, one pass)": {
            "estimate_ms": 1000 * c.flops(9 * tok, 9 * tok) / rate, "measured_ms": 229.0},
        "self-forcing 1.3B per latent frame (calls, commits, decode)": {
            "estimate_ms": 1000 * per_frame, "measured_ms": 278.0},
    }


CONFIGS: dict[str, Callable[[], ScaleFlops]] = {
    "self-forcing-1.3B@832x480": _self_forcing_1_3b,
    "krea-14B@832x480": _krea_14b,
    "skyreels-v2-14B@540P": _skyreels_14b,
    "magi-1-4.5B": _magi_4_5b,
}


def table(name: str) -> CostTable:
    """The cost table at configuration ``name`` (one of :data:`CONFIGS`): FLOPs over the H100's effective
    throughput. Raises :class:`ConfigError` for an unknown name."""
    from accelframe.errors import ConfigError

    if name not in CONFIGS:
        raise ConfigError("bench costs", "config", name, "one of " + ", ".join(CONFIGS))
    fl = CONFIGS[name]()
    rate = throughput()
    flops = {f.name: getattr(fl, f.name) for f in attrs.fields(ScaleFlops) if f.name != "assumptions"}
    sec = {k: v / rate for k, v in flops.items()}
    return CostTable(
        config=name, target_call_s=sec["target_call"], drafter_call_s=sec["drafter_call"],
        target_commit_s=sec["target_commit"], drafter_commit_s=sec["drafter_commit"],
        decode_per_latent_frame_s=sec["decode_per_latent_frame"],
        score_per_pixel_frame_s=sec["score_per_pixel_frame"], source=SOURCE,
        detail={"flops": flops, "throughput_flops_per_s": rate,
                "calibration": {"seconds": H100_CALL_S, "tokens": CALIBRATION_TOKENS,
                                "kv_tokens": CALIBRATION_KV_TOKENS, "flops": calibration_flops()},
                "assumptions": dict(fl.assumptions), "cross_checks": cross_checks()})


# ------------------------------------------------------------------------------------------------
# pricing a bench's runs
# ------------------------------------------------------------------------------------------------

DEFAULT_PROJECT = "krea-14B@832x480"  # the SDVG paper's pair: the 14B Krea target, the 1.3B drafter
NO_PROJECTION = "none"


FLOPS_SUFFIX, MEASURED_SUFFIX = ":flops", ":measured"


def measured(name: str) -> CostTable | None:
    """The cost table at ``name`` measured on a GPU (:mod:`accelframe_bench.measured_costs`), or None
    where none was measured. Its score per pixel frame is the FLOPs table's."""
    from accelframe_bench import measured_costs as mc

    if name not in mc.SECONDS:
        return None
    score = image_reward_flops() / throughput()  # the FLOPs table's score (the same at every configuration)
    return CostTable(config=name, **mc.SECONDS[name], score_per_pixel_frame_s=score,
                     source=mc.SOURCE, detail={"passes_s": dict(mc.PASSES), "decode_s": mc.DECODE})


def project_names() -> list[str]:
    """What a bench's ``--project`` takes: each configuration, with ``:flops`` or ``:measured`` to pick
    its table, and ``none``."""
    from accelframe_bench.measured_costs import SECONDS

    return [*CONFIGS, *(c + FLOPS_SUFFIX for c in CONFIGS), *(c + MEASURED_SUFFIX for c in CONFIGS if c in SECONDS),
            NO_PROJECTION]


PROJECT_HELP = ("the measured table where one was measured on a GPU, else the FLOPs estimate; NAME:flops "
                "or NAME:measured picks one")


def cost_table(name: str | None, owner: str) -> CostTable | None:
    """The cost table of ``name`` for a bench's ``--project``: a configuration's measured table where
    there is one, else its FLOPs estimate (``NAME:flops`` and ``NAME:measured`` pick); None for
    ``"none"`` or None. An unknown name is a :class:`ConfigError` of ``owner``'s ``--project``, before
    any model."""
    from accelframe.errors import ConfigError

    if name is None or name.strip().lower() == NO_PROJECTION:
        return None
    if name not in project_names():
        raise ConfigError(owner, "--project", name, "one of " + ", ".join(project_names()))
    if name.endswith(FLOPS_SUFFIX):
        return table(name.removesuffix(FLOPS_SUFFIX))
    return measured(name.removesuffix(MEASURED_SUFFIX)) or table(name)


def work(stats: dict[str, Any], adapter: Any, *, as_drafter: bool = False,
         decoded: bool = True) -> Counts:
    """One run's work from its ``stats.to_dict()``, for pricing: :func:`~accelframe_bench.costs.counts_of`
    with a unit of ``adapter`` (``unit_frames`` latent frames; the pixel frames of a unit after the
    first, through the VAE's frame map: a judged block is never block 0, which SDVG and random
    routing decide before its decode), corrected where the runs differ from its rules:

    - ``as_drafter``: the run's only model is the drafter, run as a pipeline's target (draft-only),
      so its calls and commits are priced as the drafter's;
    - ``decoded=False``: a run timed without decoding (the step bench) has no decode to price."""
    from accelframe.adapter import pixel_frames

    unit = int(adapter.unit_frames)
    unit_px = pixel_frames(adapter, 2 * unit) - pixel_frames(adapter, unit)  # a unit after the first
    c = counts_of(stats, unit_latent_frames=unit, unit_pixel_frames=unit_px)
    if as_drafter:
        c = attrs.evolve(c, target_calls=0, target_commits=0, drafter_calls=c.drafter_calls + c.target_calls,
                         drafter_commits=c.drafter_commits + c.target_commits)
    if not decoded:
        c = attrs.evolve(c, decoded_latent_frames=0, scored_pixel_frames=0)
    return c


def projected_speedup(base: Counts | None, counts: Counts | None, table: CostTable | None) -> float | None:
    """The baseline's price over ``counts``' under ``table``; None without a table or counts."""
    if table is None or base is None or counts is None:
        return None
    cost = price(counts, table)
    return price(base, table) / cost if cost > 0 else None


# ------------------------------------------------------------------------------------------------
# the command: accelframe bench costs
# ------------------------------------------------------------------------------------------------

_COLUMNS = (("target call", "target_call_s"), ("drafter call", "drafter_call_s"),
            ("target commit", "target_commit_s"), ("drafter commit", "drafter_commit_s"),
            ("decode / latent frame", "decode_per_latent_frame_s"),
            ("score / pixel frame", "score_per_pixel_frame_s"))


def configure(p: Any) -> None:
    p.add_argument("--config", choices=list(CONFIGS), default=None,
                   help="one configuration (default: all of them)")
    p.add_argument("--source", choices=("flops", "measured"), default="flops",
                   help="flops: the FLOPs estimates scaled by the H100 figure (default); measured: the tables "
                        "measured on a GPU by scripts/gpu_suite.py (the benches' --project prices with these "
                        "where they exist)")
    p.add_argument("--json", action="store_true", help="print the tables as JSON")


def _ms(seconds: float) -> str:
    ms = 1000 * seconds
    return f"{ms:.1f}" if ms >= 10 or ms == 0 else f"{ms:.2f}"


def format_tables(tables: Sequence[CostTable]) -> str:
    """A markdown table in milliseconds, one row per configuration, and the source under it."""
    lines = ["| configuration | " + " | ".join(h for h, _ in _COLUMNS) + " |",
             "|---|" + "---|" * len(_COLUMNS)]
    for t in tables:
        lines.append(f"| {t.config} | " + " | ".join(_ms(getattr(t, k)) for _, k in _COLUMNS) + " |")
    lines += ["", "milliseconds; " + (tables[0].source if tables else SOURCE)]
    return "\n".join(lines)


def run(args: Any, hooks: Any = None) -> int:
    """``hooks`` is not used: the tables come from FLOPs or from the measured file, nothing runs a model."""
    import json

    names = [args.config] if args.config else list(CONFIGS)
    pick = measured if getattr(args, "source", "flops") == "measured" else table
    tables = [t for t in (pick(n) for n in names) if t is not None]
    print(json.dumps({t.config: t.to_dict() for t in tables}, indent=2) if args.json else format_tables(tables))
    return 0


__all__ = ["CONFIGS", "DEFAULT_PROJECT", "FLOPS_SUFFIX", "MEASURED_SUFFIX", "NO_PROJECTION", "PROJECT_HELP",
           "CostTable", "Counts", "ScaleFlops", "bert_cross_flops", "cost_table", "counts_of", "cross_checks",
           "image_reward_flops", "magi_pass_flops", "measured", "price", "project_names", "projected_speedup",
           "table", "throughput", "vae_decode_flops", "vit_l16_flops", "work"]
