"""Time and profile one Wan DiT call at a released size on CUDA (a development tool).

    python scripts/profile_dit.py [--size 1.3B] [--frames 3] [--cached 6]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from accelframe.types import KVWrite
from accelframe_adapters.wan.dit import KVCache, WanDiT, WanDiTConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.3B", choices=("1.3B", "14B"))
    ap.add_argument("--frames", type=int, default=3, help="latent frames per call (default: 3)")
    ap.add_argument("--cached", type=int, default=6, help="latent frames in the KV cache (default: 6)")
    ap.add_argument("--rows", type=int, default=15, help="profiler rows (default: 15)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block")
    args = ap.parse_args()
    cfg = WanDiTConfig.wan_1_3b() if args.size == "1.3B" else WanDiTConfig.wan_14b()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WanDiT(cfg).to(torch.bfloat16).eval()
    if args.compile:
        for blk in model.blocks:
            blk.forward = torch.compile(blk.forward)
    x = torch.randn(1, 16, args.frames, 60, 104, device="cuda", dtype=torch.bfloat16)  # 480 x 832 pixels
    t = torch.full((1, args.frames), 500.0, device="cuda")
    ctx = torch.randn(1, 512, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        cross = model.cross_cache(ctx)
        cache = KVCache(num_layers=cfg.num_layers, tokens_per_frame=1560)
        for s in range(0, args.cached, args.frames):
            model(x, t, cross, frame_offset=s, cache=cache, kv_write=KVWrite.COMMIT)

        def call() -> torch.Tensor:
            return model(x, t, cross, frame_offset=args.cached, cache=cache, kv_write=KVWrite.SCRATCH)

        for _ in range(3):
            call()
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            call()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        print(f"median ms per call ({args.frames} frames, {len(cache)} cached): {sorted(times)[5] * 1000:.2f}")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
