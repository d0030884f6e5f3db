"""The GPU suite: everything a session with a GPU should measure, in one run of under 8 minutes.

    bash scripts/gpu_suite.sh OUT_DIR          # on a machine with one CUDA GPU
    python scripts/gpu_suite.py --smoke --out DIR   # the same code on the CPU at tiny sizes (a check)

Sections, each under its own time budget (a section that would overrun is skipped and says so):

1. ``equality``: the four families (self-forcing, krea-realtime, skyreels-v2-df, magi-1) generate the
   same request on the CPU and on CUDA in float32 (TF32 off): relative error of the latents.
2. ``costs``: every cost table of ``accelframe bench costs`` measured instead of projected
   (``self-forcing-1.3B@832x480``, ``krea-14B@832x480``, ``skyreels-v2-14B@540P``, ``magi-1-4.5B``): the
   target's and the drafter's calls and commits with random weights at the contexts the FLOPs tables
   assume, composed as their assumptions say (guidance passes, MAGI's three passes), and the Wan VAE's
   decode per latent frame at each size in float32 (TF32 off and on) and bfloat16; the tables take
   the bfloat16 decode. The reward score is not measured (ImageReward's weights cannot be loaded
   here): the FLOPs estimate's figure is kept and labelled.
3. ``stack``: the decision traces of ``accelframe bench stack`` on the world, every row's counted work
   priced with the measured tables: the speedup its decisions give at real scale, priced with
   measured component times (a sum, nothing overlapped: the pricing rule of
   ``accelframe_bench.costs``). ``--stack-results FILE`` prices a ``results.json`` that a full run
   wrote elsewhere (the device's time then goes to the GPU's work); without it the suite runs
   ``bench stack --quick`` on the machine's CPU first.
4. ``train``: the world target's trainer (``accelframe world train target --device``) on the CPU and
   on CUDA from the same seed and clips, full 27-frame clips at the shipped batch: the losses of the
   two runs step by step (the same batches and noise: every draw is made on the CPU) and the steps
   per second of each, with what the shipped recipe's steps would take on the device; and the
   clips' latents encoded on the device against the CPU's (a run on the device encodes there).
5. ``timing`` (last: its compiles take the longest, and a run cut short keeps the sections above):
   the Wan DiT at 1.3B and 14B, 480 x 832, bfloat16, random weights: one call (a block of 3 latent
   frames attending to 6 cached frames) and one Self-Forcing block (4 calls and the commit pass),
   eager and with ``compile=True`` (the same compiled parts as the adapters' knob), with the compile
   time. Each size's row is saved as soon as it is measured.

Writes ``gpu_suite.json`` (and the stack bench's files) to ``--out``; prints a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

PROMPT = "a red circle moves left on a blue background"
# each section's budget (an upper bound, 10 min together); on an H200 the whole suite took 3 min
BUDGET_S = {"equality": 60, "costs": 150, "stack": 120, "train": 60, "timing": 210}
SECTIONS = tuple(BUDGET_S)
BLOCK_CONFIGS = ("krea-14B@832x480", "self-forcing-1.3B@832x480")  # where the world's block traces are priced


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ---- 1: equality -----------------------------------------------------------------------------


def equality(device: torch.device, smoke: bool) -> dict[str, Any]:
    from accelframe.pipeline import Pipeline
    from accelframe.plugins import create_hooks
    from accelframe_adapters import plugin

    hooks = lambda: create_hooks(autoload=False, disabled=(), plugins=(plugin,))  # noqa: E731
    fams = {"self-forcing": ({}, 6), "krea-realtime": ({"num_denoising_steps": 3}, 6),
            "skyreels-v2-df": ({"num_inference_steps": 4, "ar_step": 1}, 6),
            "magi-1": ({"num_steps": 8, "window_size": 2}, 12)}
    out = {}
    for name, (kw, frames) in fams.items():
        common = {**kw, "size": "tiny", "height": 32, "width": 32}
        lat = {}
        for dev in ("cpu", str(device)):
            pipe = Pipeline(name, hooks=hooks(), adapter_kwargs={**common, "device": dev})
            lat[dev] = pipe.generate(PROMPT, num_frames=frames, seed=1, decode=False).latents
        out[name] = {"device_vs_cpu_rel": _rel(lat[str(device)], lat["cpu"])}
    return out


# ---- 2: timing -------------------------------------------------------------------------------


def _built(make: Callable[[], Any], device: torch.device, dtype: torch.dtype) -> Any:
    """``make()`` built on ``device`` in ``dtype`` from seed 0, in eval mode (built in the target dtype:
    a 14B float32 copy would need 56 GB)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            return make().eval()
    finally:
        torch.set_default_dtype(old)


def _random_dit(size: str, device: torch.device, dtype: torch.dtype):
    from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig

    cfg = {"tiny": WanDiTConfig.tiny, "1.3B": WanDiTConfig.wan_1_3b, "14B": WanDiTConfig.wan_14b}[size]()
    return _built(lambda: WanDiT(cfg), device, dtype)


class DiTBench:
    """Calls of one random DiT at a frame size: a block of 3 latent frames attending to ``context``
    cached frames (the cache filled by one committed forward)."""

    def __init__(self, dit: Any, device: torch.device, dtype: torch.dtype, latent_hw: tuple[int, int]) -> None:
        self.dit, self.device, self.dtype = dit, device, dtype
        c = dit.cfg
        self.latent = (c.in_dim, *latent_hw)
        self.tokens_per_frame = (latent_hw[0] // c.patch_size[1]) * (latent_hw[1] // c.patch_size[2])
        g = torch.Generator(device="cpu").manual_seed(1)
        self.text = torch.randn(1, c.text_len, c.text_dim, generator=g).to(device, dtype)
        with torch.no_grad():
            self.cross = dit.cross_cache(self.text)

    def _x(self, frames: int) -> torch.Tensor:
        return torch.randn(1, self.latent[0], frames, *self.latent[1:], device=self.device, dtype=self.dtype)

    def cache(self, context: int):
        from accelframe.types import KVWrite
        from accelframe_adapters.wan.dit import KVCache

        kv = KVCache(num_layers=self.dit.cfg.num_layers, tokens_per_frame=self.tokens_per_frame)
        if context:
            with torch.no_grad():
                self.dit(self._x(context), torch.zeros(1, context, device=self.device), self.cross, frame_offset=0,
                         cache=kv, kv_write=KVWrite.COMMIT)
        return kv

    def call(self, context: int, frames: int = 3) -> Callable[[], Any]:
        from accelframe.types import KVWrite

        kv = self.cache(context) if context else None
        x, t = self._x(frames), torch.full((1, frames), 500.0, device=self.device)

        def run() -> Any:
            with torch.no_grad():
                return self.dit(x, t, self.cross, frame_offset=context, cache=kv, kv_write=KVWrite.NONE)
        return run

    def block(self, context: int, steps: int = 4) -> Callable[[], Any]:
        """A Self-Forcing block: ``steps`` calls, then the commit pass (written as scratch, so the cache
        does not grow between repeats)."""
        from accelframe.types import KVWrite

        kv = self.cache(context)
        x = self._x(3)

        def run() -> Any:
            with torch.no_grad():
                for s in range(steps):
                    t = torch.full((1, 3), 1000.0 * (steps - s) / steps, device=self.device)
                    self.dit(x, t, self.cross, frame_offset=context, cache=kv, kv_write=KVWrite.NONE)
                return self.dit(x, torch.zeros(1, 3, device=self.device), self.cross, frame_offset=context,
                                cache=kv, kv_write=KVWrite.SCRATCH)
        return run


def timing(device: torch.device, smoke: bool, deadline: float,
           save: Callable[[dict[str, Any]], None] = lambda out: None) -> dict[str, Any]:
    """Eager and compiled times of each size; ``save`` is called with the rows so far after each one."""
    from accelframe_adapters.compiling import CompileClock, compile_parts

    dtype = torch.float32 if smoke else torch.bfloat16
    sizes = ("tiny",) if smoke else ("1.3B", "14B")
    hw = (4, 4) if smoke else (60, 104)
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "latent_hw": list(hw), "context_frames": 6}
    for size in sizes:
        if time.perf_counter() > deadline:
            out[size] = {"skipped": "the section's time budget ran out"}
            continue
        dit = _random_dit(size, device, dtype)
        b = DiTBench(dit, device, dtype, hw)
        row = {"eager": {"call_ms": 1000 * _time(b.call(6), device, 5),
                         "block_ms": 1000 * _time(b.block(6), device, 3)}}
        clock = CompileClock()
        compile_parts(dit, clock)
        t0 = time.perf_counter()
        b.call(6)()  # compiles: no context, then context
        b.call(0)()
        _sync(device)
        first = time.perf_counter() - t0
        row["compiled"] = {"call_ms": 1000 * _time(b.call(6), device, 5),
                           "block_ms": 1000 * _time(b.block(6), device, 3)}
        row["compile_s"], row["compile_first_calls_s"], row["graphs"] = clock.seconds, first, clock.compiles
        row["call_speedup"] = row["eager"]["call_ms"] / row["compiled"]["call_ms"]
        row["block_speedup"] = row["eager"]["block_ms"] / row["compiled"]["block_ms"]
        out[size] = row
        save(out)
        del dit, b
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ---- 3: costs --------------------------------------------------------------------------------


def _vae(device: torch.device, dtype: torch.dtype, smoke: bool):
    from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig

    return _built(lambda: WanVAE(WanVAEConfig.tiny() if smoke else WanVAEConfig()), device, dtype)


def _vae_decode_s(vae: Any, device: torch.device, latent_hw: tuple[int, int]) -> float:
    """Best of 3: the decode of one latent frame after a stream's first (4 pixel frames)."""
    dtype = next(vae.parameters()).dtype
    z = torch.randn(1, vae.config.z_dim, 2, *latent_hw, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        with torch.no_grad():
            cache = vae.new_decode_cache()
            vae.decode_chunk(z[:, :, :1], cache)  # the stream's first frame: 1 pixel frame, not timed
            _sync(device)
            t0 = time.perf_counter()
            vae.decode_chunk(z[:, :, 1:], cache)
            _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _decodes(device: torch.device, smoke: bool, sizes: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    """The Wan VAE's decode per latent frame at each latent size: float32 (TF32 off, as the equality
    checks run), float32 with TF32 allowed, and bfloat16 (as the releases run it)."""
    out: dict[str, dict[str, float]] = {name: {} for name in sizes}
    for label, dtype, tf32 in (("float32", torch.float32, False), ("float32_tf32", torch.float32, True),
                               ("bfloat16", torch.bfloat16, False)):
        vae = _vae(device, dtype, smoke)
        was = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            for name, hw in sizes.items():
                out[name][label] = _vae_decode_s(vae, device, hw)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was
        del vae
    return out


def _magi_passes(device: torch.device, dtype: torch.dtype, smoke: bool) -> dict[str, float]:
    """MAGI-1 passes at 720 x 720 (90 x 90 latents), random weights: ``window`` is the staged window's
    4 live chunks attending to 2, 3, 4 and 5 chunks (14 in all, as noise2clean_kvrange), ``alone`` the same
    4 chunks each attending to itself, ``one`` a single chunk attending to itself (the commit)."""
    from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig

    cfg = MagiDiTConfig.tiny() if smoke else MagiDiTConfig.magi_4_5b()
    hw = (8, 8) if smoke else (90, 90)
    model = _built(lambda: MagiDiT(cfg), device, dtype)
    cw, length = cfg.chunk_width, cfg.caption_max_length
    caption = torch.randn(1, length, cfg.caption_channels, device=device, dtype=dtype)
    mask = torch.zeros(1, length, dtype=torch.bool, device=device)
    mask[:, :min(50, length)] = True  # 50 caption tokens, as the FLOPs estimate assumes

    def x(chunks: int) -> torch.Tensor:
        return torch.randn(1, cfg.latent_channels, chunks * cw, *hw, device=device, dtype=dtype)

    cache = model.new_cache(*hw)
    with torch.no_grad():  # chunk 3 cached: the window's oldest chunk reads it
        model(x(1), torch.full((1, 1), 0.9, device=device), caption, mask, first_chunk=3, kv_ranges=[(3, 4)],
              cache=cache, write=True)
    x4, t4, x1, t1 = x(4), torch.full((1, 4), 0.5, device=device), x(1), torch.full((1, 1), 0.9, device=device)

    def run(xx: torch.Tensor, tt: torch.Tensor, first: int, ranges: list[tuple[int, int]]) -> Callable[[], Any]:
        def go() -> Any:
            with torch.no_grad():
                return model(xx, tt, caption, mask, first_chunk=first, kv_ranges=ranges, cache=cache)
        return go

    out = {"window": _time(run(x4, t4, 4, [(3, 5), (3, 6), (3, 7), (3, 8)]), device, 2),
           "alone": _time(run(x4, t4, 4, [(4, 5), (5, 6), (6, 7), (7, 8)]), device, 2),
           "one": _time(run(x1, t1, 8, [(8, 9)]), device, 2)}
    del model, cache
    return out


def costs(device: torch.device, smoke: bool, deadline: float) -> dict[str, Any]:
    """Every configuration of ``accelframe bench costs``, measured: its calls and commits with random
    weights at the contexts the FLOPs tables assume, the decode in bfloat16 (the other precisions are
    kept beside it), the score left at the FLOPs estimate."""
    from accelframe_bench import costs as bc

    dtype = torch.float32 if smoke else torch.bfloat16
    hw = {"832x480": (4, 4), "960x544": (4, 4), "720x720": (4, 4)} if smoke else {
        "832x480": (60, 104), "960x544": (68, 120), "720x720": (90, 90)}
    big, small = ("tiny", "tiny") if smoke else ("14B", "1.3B")
    window = 3 if smoke else 25  # SkyReels-V2's window: base_num_frames 97 -> 25 latent frames
    sf_ctx = round(bc._self_forcing_kv_frames()) - 3  # cached frames of an average Self-Forcing call
    decode = _decodes(device, smoke, hw)
    out: dict[str, Any] = {"decode_per_latent_frame_s": decode, "calls_s": {}}
    calls = out["calls_s"]
    d = DiTBench(_random_dit(small, device, dtype), device, dtype, hw["832x480"])
    calls["1.3B 832x480 block of 3, 11 cached frames"] = _time(d.call(sf_ctx), device, 3)
    d = DiTBench(d.dit, device, dtype, hw["960x544"])
    calls["1.3B 960x544 window of 25, one pass"] = _time(d.call(0, frames=window), device, 2)
    del d
    if time.perf_counter() > deadline:
        return {**out, "skipped": "the section's time budget ran out after the 1.3B calls"}
    t = DiTBench(_random_dit(big, device, dtype), device, dtype, hw["832x480"])
    calls["14B 832x480 block of 3, 3 cached frames"] = _time(t.call(3), device, 3)
    calls["14B 832x480 block of 3, no context"] = _time(t.call(0), device, 3)  # Krea's rebuild
    t = DiTBench(t.dit, device, dtype, hw["960x544"])
    calls["14B 960x544 window of 25, one pass"] = _time(t.call(0, frames=window), device, 2)
    del t
    if device.type == "cuda":
        torch.cuda.empty_cache()
    magi = _magi_passes(device, dtype, smoke) if time.perf_counter() < deadline else None
    if magi is not None:
        calls.update({f"MAGI-1 4.5B 720x720 {k}": v for k, v in magi.items()})
    sf = calls["1.3B 832x480 block of 3, 11 cached frames"]
    parts = {  # (target call, drafter call, target commit, drafter commit, decode size)
        "self-forcing-1.3B@832x480": (sf, sf, sf, sf, "832x480"),
        "krea-14B@832x480": (calls["14B 832x480 block of 3, 3 cached frames"], sf,
                             calls["14B 832x480 block of 3, no context"], sf, "832x480"),
        "skyreels-v2-14B@540P": (2 * calls["14B 960x544 window of 25, one pass"],
                                 2 * calls["1.3B 960x544 window of 25, one pass"], 0.0, 0.0, "960x544"),
    }
    if magi is not None:
        parts["magi-1-4.5B"] = (2 * magi["window"] + magi["alone"], magi["window"] + magi["one"], magi["one"],
                                magi["one"], "720x720")
    tables = {}
    for name, (tc, dc, tm, dm, size) in parts.items():
        projected = bc.table(name)
        tables[name] = bc.CostTable(
            config=name, target_call_s=tc, drafter_call_s=dc, target_commit_s=tm, drafter_commit_s=dm,
            decode_per_latent_frame_s=decode[size]["bfloat16"],
            score_per_pixel_frame_s=projected.score_per_pixel_frame_s,
            source=f"measured on {_device_name(device)} ({dt.date.today()}): random weights, "
                   f"{'float32 smoke run' if smoke else 'bfloat16 DiTs and Wan VAE'}, the calls composed as "
                   "the FLOPs table's assumptions say; score: the FLOPs estimate (ImageReward not loaded)",
            detail={"projected": projected.to_dict() | {"detail": None},
                    "contexts": {"drafter": sf_ctx, "krea target": 3}}).to_dict()
    out["tables"] = tables
    return out


# ---- 4: stack --------------------------------------------------------------------------------


def stack(out_dir: Path, tables: dict[str, Any], results: Path | None) -> dict[str, Any]:
    from accelframe_bench import costs as bc

    if results is not None:
        res, source = json.loads(results.read_text()), f"{results.name} (a bench stack run made beforehand)"
    else:
        dest = out_dir / "stack"
        threads = os.environ.get("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "accelframe", "--threads", threads, "bench", "stack", "--quick",
               "--project", "none", "--json", "--force", "--out", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            return {"error": proc.stderr[-2000:], "command": " ".join(cmd[1:])}
        res, source = json.loads(proc.stdout), " ".join(cmd[1:])
    base, rows = res["baseline"], [r for r in res["rows"] if r.get("work")]
    priced: dict[str, Any] = {}
    for name, tab in tables.items():
        if name not in BLOCK_CONFIGS:  # SkyReels' and MAGI's calls are not a 3-frame block's unit
            continue
        table = bc.CostTable(**tab)
        priced[name] = {r["name"]: bc.projected_speedup(bc.Counts(**base["work"]), bc.Counts(**r["work"]), table)
                        for r in rows}
    config = {k: res["config"].get(k) for k in ("prompts", "quick", "decoder", "decode_worker")}
    return {"source": source, "config": config,
            "measured_on_world": {r["name"]: r["speedup"] for r in rows},
            "priced_with_measured_table": priced}


# ---- 5: training on the device ---------------------------------------------------------------


def train(device: torch.device, smoke: bool) -> dict[str, Any]:
    """Writes its clips and weights to a temporary folder (nothing of it is a result)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return _train(Path(tmp), device, smoke)


def _train(out_dir: Path, device: torch.device, smoke: bool) -> dict[str, Any]:
    from accelframe_adapters.world import models
    from accelframe_adapters.world.training import common, train_dit

    clips_n, steps = (2, 3) if smoke else (16, 60)
    shipped = train_dit.DEFAULTS["target"]
    settings = common.TrainSettings(steps=steps, batch=2 if smoke else shipped.batch, lr=shipped.lr, seed=0,
                                    warmup=shipped.warmup, log_every=1)
    data = out_dir / "train-clips.pt"
    runs = {}
    for where in ("cpu", str(device)):
        dest = out_dir / f"train-{where.replace(':', '-')}.safetensors"
        t0 = time.perf_counter()
        rec = train_dit.train("target", dest, vae=models.weights_path("vae"), text=models.weights_path("text"),
                              clips_n=clips_n, settings=settings, short_steps=0, data=data, force=True,
                              quiet=True, device=where)
        log = json.loads(dest.with_suffix(".log.json").read_text())
        runs[where] = {"wall_s": time.perf_counter() - t0, "train_wall_s": rec["wall_s"],
                       "steps_per_s": steps / max(rec["wall_s"], 1e-9), "loss": log["loss"]}
    cpu, dev = runs["cpu"], runs[str(device)]
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(cpu["loss"], dev["loss"]))
    full = shipped.steps  # the shipped recipe's steps, all on full clips (an upper bound: its first half is short)
    # the CPU run encoded the clips into ``data`` (the device run read them): encode them again on the device
    on_cpu = common.read_data(data, False)["latents"]
    on_dev = train_dit.build_dataset(models.load_vae(models.weights_path("vae")).to(device), clips_n, seed=1234,
                                     quiet=True)["latents"]
    enc_diff = ((on_dev - on_cpu).abs().max() / on_cpu.abs().max()).item()
    return {"clips": clips_n, "steps": steps, "batch": settings.batch, "runs": runs,
            "loss_max_relative_difference": diff, "encode_max_relative_difference": enc_diff,
            "device_speedup_over_cpu": dev["steps_per_s"] / cpu["steps_per_s"],
            f"shipped_{full}_steps_on_device_s": full / dev["steps_per_s"],
            "cpu_threads": torch.get_num_threads()}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json and the stack bench's files")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that the suite runs")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--stack-results", type=Path, default=None, metavar="FILE",
                    help="price this bench stack results.json instead of running bench stack --quick here")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device (use --smoke to run it on the CPU at tiny sizes)")
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    wanted = args.only.split(",")
    if args.stack_results is not None and not args.stack_results.is_file():
        raise SystemExit(f"gpu_suite: --stack-results {args.stack_results}: no such file")
    result: dict[str, Any] = {"device": _device_name(device), "torch": torch.__version__,
                              "date": str(dt.date.today()), "smoke": args.smoke, "sections_s": {}}
    dest = out_dir / "gpu_suite.json"

    def save(name: str, value: Any) -> None:  # the file whole after every section (and timing's rows)
        result[name] = value
        dest.write_text(json.dumps(result, indent=2))

    for name in SECTIONS:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        deadline = t0 + BUDGET_S[name]
        print(f"gpu_suite: {name} (budget {BUDGET_S[name]} s)", file=sys.stderr, flush=True)
        try:
            if name == "equality":
                result[name] = equality(device, args.smoke)
            elif name == "costs":
                result[name] = costs(device, args.smoke, deadline)
            elif name == "stack":
                result[name] = stack(out_dir, result.get("costs", {}).get("tables", {}), args.stack_results)
            elif name == "train":
                result[name] = train(device, args.smoke)
            else:
                result[name] = timing(device, args.smoke, deadline, lambda rows: save("timing", rows))
        except Exception as e:  # a failed section is reported; the others still run
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        result["sections_s"][name] = time.perf_counter() - t0
        save(name, result[name])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
