"""Check the Wan-family adapters on a CUDA device against the CPU (run on a GPU machine).

    python scripts/check_cuda.py --json

1. The tiny DiT in float32 on CUDA equals the CPU result (TF32 off), with and without the
   block-causal mask and with the KV cache.
2. Each family generates the same request on CPU and CUDA (float32): latents agree closely.
3. A bfloat16 run on CUDA stays close to float32 (relative error reported).
"""

from __future__ import annotations

import argparse
import json

import torch

from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe.types import KVWrite
from accelframe_adapters import plugin
from accelframe_adapters.wan.dit import KVCache, WanDiT, WanDiTConfig


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    torch.manual_seed(0)
    cpu = WanDiT(WanDiTConfig.tiny()).eval()
    gpu = WanDiT(WanDiTConfig.tiny()).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 6, 8, 8, generator=g), torch.rand(1, 6, generator=g) * 1000
    ctx = torch.randn(1, 8, 24, generator=g)
    with torch.no_grad():
        out["dit_fp32_rel"] = rel(gpu(x.cuda(), t.cuda(), ctx.cuda()), cpu(x, t, ctx))
        out["dit_fp32_masked_rel"] = rel(gpu(x.cuda(), t.cuda(), ctx.cuda(), causal_block=3),
                                         cpu(x, t, ctx, causal_block=3))
        cache = KVCache(num_layers=2, tokens_per_frame=16)
        parts = [gpu(x[:, :, s:s + 3].cuda(), t[:, s:s + 3].cuda(), ctx.cuda(), frame_offset=s, cache=cache,
                     kv_write=KVWrite.COMMIT) for s in (0, 3)]
        out["dit_cuda_cache_vs_cpu_full_rel"] = rel(torch.cat(parts, 2), cpu(x, t, ctx, causal_block=3))
        gpu_bf16 = gpu.to(torch.bfloat16)
        out["dit_bf16_rel"] = rel(gpu_bf16(x.cuda().bfloat16(), t.cuda(), ctx.cuda().bfloat16()), cpu(x, t, ctx))
    hooks = lambda: create_hooks(autoload=False, disabled=(), plugins=(plugin,))  # noqa: E731
    fams = {"self-forcing": {}, "krea-realtime": {"num_denoising_steps": 3},
            "skyreels-v2-df": {"num_inference_steps": 4, "ar_step": 1}}
    out["generation"] = {}
    for name, kw in fams.items():
        res = {}
        for dev, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
            pipe = Pipeline(name, hooks=hooks(), adapter_kwargs={**kw, "device": dev, "dtype": dtype,
                                                                 "size": "tiny", "height": 32, "width": 32})
            res[f"{dev}-{dtype}"] = pipe.generate("a red circle moves left", num_frames=6, seed=1).latents
        out["generation"][name] = {"cuda_fp32_vs_cpu_rel": rel(res["cuda-float32"], res["cpu-float32"]),
                                   "cuda_bf16_vs_cpu_rel": rel(res["cuda-bfloat16"], res["cpu-float32"])}
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
