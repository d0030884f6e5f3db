"""Train a world DiT (the target or the drafter) by diffusion forcing on the world VAE's latents.

Data: ``clips`` training-split clips of the full length (105 pixel frames = 27 latent frames = 9
blocks of 3), rendered, encoded once by the world VAE and kept in memory; prompts go through the
frozen word encoder (``world-text.safetensors``).

Objective (flow matching, DESIGN section 3): ``x_s = (1 - s) x0 + s eps``, the network sees Wan
timesteps ``t = 1000 s`` per frame and predicts ``v = eps - x0``; the loss is the mean squared error
over the frames with ``s > 0`` (a clean frame is context: it only feeds the attention). Attention is
block-causal over blocks of 3 latent frames, as in the Self-Forcing block loop and SkyReels-V2's
causal blocks. Per-frame noise levels (diffusion forcing), one pattern per clip:

- 35 %: an independent level per block;
- 25 %: *teacher forcing*: blocks before a random block are clean (``s = 0``, what the KV cache of a
  block loop holds), that block and the later ones draw independent levels;
- 20 %: an independent level per frame;
- 20 %: one level for the whole clip (synchronous denoising: SkyReels-V2 with ``ar_step = 0``).

Levels are drawn as ``s = 3u / (1 + 2u)`` with ``u`` uniform (Wan's shift of 3 toward noisy levels,
where the few-step loops spend their calls). One prompt in ten is replaced by the empty prompt, so the
model also predicts unconditionally (classifier-free guidance, SkyReels-V2's default).

Two things aim the training at what the block loops need most, the shape in the right colour at the
start of a clip (docs/world.md measures why):

- **a short first phase** (``SHORT_STEPS``): its steps see only the first ``SHORT_FRAMES`` latent
  frames (two blocks; such a step takes about a third of the time of a full clip's); the rest see
  all 27;
- **a shape-weighted loss**: the squared error is weighted ``1 + OBJECT_WEIGHT`` on the shape's
  latent footprint (latent pixels under the shape in any of the frame's pixel frames, grown by one
  latent pixel) and 1 elsewhere, so the background, which covers most latent pixels, does not
  drown out the shape's error.

The saved weights are an exponential moving average of the trained ones (decay ``EMA``, ramped up
as ``(1 + n) / (10 + n)`` over the first updates), as Self-Forcing ships its ``generator_ema``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe.errors import ConfigError
from accelframe.validators import check_device
from accelframe_adapters.wan.text import WordEncoder
from accelframe_adapters.wan.dit import WanDiT
from accelframe_adapters.wan.vae import WanVAE, pixel_frames
from accelframe_adapters.world import clips
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.models import CAUSAL_BLOCK, drafter_config, load_text, load_vae, target_config

DEFAULTS = {
    "target": training.TrainSettings(steps=6000, batch=8, lr=1e-3, seed=0, warmup=200, log_every=25),
    "drafter": training.TrainSettings(steps=2400, batch=8, lr=1.5e-3, seed=1, warmup=100, log_every=25),
}
SHORT_STEPS = {"target": 3000, "drafter": 1500}  # the first steps train on the first SHORT_FRAMES only
SHORT_FRAMES = 2 * CAUSAL_BLOCK
OBJECT_WEIGHT = 4.0
CONFIGS = {"target": target_config, "drafter": drafter_config}
SHIFT = 3.0
EMA = 0.998


class WeightAverage:
    """An exponential moving average of a module's parameters; ``update()`` after each optimiser step."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module, self.decay, self.updates = module, decay, 0
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in self.module.named_parameters():
            self.shadow[k].lerp_(p.detach(), 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's state with the averaged parameters in place of the trained ones."""
        return {**self.module.state_dict(), **self.shadow}


def make_text(seed: int = 0) -> WordEncoder:
    """The frozen word encoder: random rows, the same on every machine for a seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = WordEncoder(target_config().text_dim, target_config().text_len)
    return enc.eval()


@torch.no_grad()
def encode_chunks(vae: WanVAE, video: torch.Tensor) -> torch.Tensor:
    """What ``vae.encode`` gives for a chunk-local VAE (:func:`~accelframe_adapters.world.training.train_vae.chunk_local`),
    with every 4-frame chunk encoded at once: ``[B, 3, 1 + 4k, H, W]`` -> ``[B, z, 1 + k, h, w]``.
    Each chunk goes in as the second piece of its own stream (behind a copy of its first frame,
    whose latent is dropped): with the past taps zero, what the cache holds does not matter."""
    b, c, t, h, w = video.shape
    k = (t - 1) // 4
    first = vae.encode(video[:, :, :1])  # [B, z, 1, h', w']
    chunks = video[:, :, 1:].reshape(b, c, k, 4, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b * k, c, 4, h, w)
    lead = torch.cat([chunks[:, :, :1], chunks], dim=2)  # [B*k, 3, 5, H, W]
    rest = vae.encode(lead)[:, :, 1:]  # [B*k, z, 1, h', w']
    rest = rest.reshape(b, k, *rest.shape[1:]).permute(0, 2, 1, 3, 4, 5).flatten(2, 3)  # [B, z, k, h', w']
    return torch.cat([first, rest], dim=2)


@torch.no_grad()
def build_dataset(vae: WanVAE, n: int, seed: int, *, quiet: bool = False, batch: int = 8) -> dict[str, Any]:
    """``n`` training clips: latents ``[n, 27, z, 16, 16]`` (frame-major, on the CPU) and their prompts.
    The clips are rendered on the CPU and encoded on the device ``vae`` is on."""
    from accelframe.progress import progress_bar

    device = next(vae.parameters()).device

    scenes = clips.sample_scenes(n, seed)
    rng = random.Random(seed)
    seeds = [rng.randrange(2**31) for _ in range(n)]
    out = []
    with progress_bar(total=n, desc="encode clips", unit="clip", quiet=quiet) as bar:
        for i in range(0, n, batch):
            video = torch.stack([clips.render(s, sd) for s, sd in zip(scenes[i:i + batch], seeds[i:i + batch])])
            lat = encode_chunks(vae, video.permute(0, 2, 1, 3, 4).to(device) * 2.0 - 1.0)  # [b, z, F, h, w]
            out.append(lat.permute(0, 2, 1, 3, 4).contiguous().cpu())  # [b, F, z, h, w]
            bar.update(len(video))
    return {"latents": torch.cat(out), "prompts": [s.prompt for s in scenes], "seeds": seeds}


def object_masks(prompts: list[str], seeds: list[int], frames: int, size: tuple[int, int]) -> torch.Tensor:
    """``[N, frames, h, w]`` 1.0 on each clip's shape footprint in latent frame ``f`` (its pixel frames
    ``0`` for ``f = 0``, ``4f - 3 .. 4f`` after: the causal VAE's grouping), grown by one latent pixel."""
    import torch.nn.functional as F

    out = []
    for prompt, seed in zip(prompts, seeds):
        scene = clips.parse_prompt(prompt)
        if scene is None:
            raise ConfigError("world train", "prompt", prompt, "a prompt of the world's grammar")
        a = clips.shape_coverage(scene, seed, frames=pixel_frames(frames))  # [T, H, W]
        a = torch.cat([a[:1].expand(4, -1, -1), a[1:]]).view(frames, 4, *a.shape[1:]).amax(1)  # [F, H, W]
        a = F.adaptive_max_pool2d(a.unsqueeze(1), size)  # [F, 1, h, w]
        out.append(F.max_pool2d(a, 3, 1, 1).squeeze(1).gt(0).float())
    return torch.stack(out)


def noise_levels(b: int, frames: int, g: torch.Generator) -> torch.Tensor:
    """Per-frame levels ``[b, frames]`` in [0, 1], one pattern per row (see the module docstring)."""
    blocks = frames // CAUSAL_BLOCK

    def draw(*shape: int) -> torch.Tensor:
        u = torch.rand(shape, generator=g)
        return SHIFT * u / (1 + (SHIFT - 1) * u)

    out = torch.empty(b, frames)
    kind = torch.rand(b, generator=g)
    for i in range(b):
        if kind[i] < 0.35:
            out[i] = draw(blocks).repeat_interleave(CAUSAL_BLOCK)
        elif kind[i] < 0.60:
            cut = int(torch.randint(0, blocks, (1,), generator=g))
            lv = draw(blocks)
            lv[:cut] = 0.0
            out[i] = lv.repeat_interleave(CAUSAL_BLOCK)
        elif kind[i] < 0.80:
            out[i] = draw(frames)
        else:
            out[i] = draw(1).expand(frames)
    return out


def train(which: str, out: str | Path, *, vae: str | Path, text: str | Path, clips_n: int = 1000,
          settings: training.TrainSettings | None = None, short_steps: int | None = None,
          data: str | Path | None = None, init: str | Path | None = None, force: bool = False,
          quiet: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train the ``which`` ("target" or "drafter") DiT; the first ``short_steps`` (default
    ``SHORT_STEPS[which]``, at most all) see only ``SHORT_FRAMES`` frames. ``data`` caches the encoded
    clips (read when it exists and was made by the same VAE, else written). ``init``: start from the
    weights of an earlier run of the same config (its record is kept in this one's).

    ``device``: where the DiT trains and the clips are encoded (rendered on the CPU; a ``data`` cache
    made on one device serves the others: the latents differ only by the device's arithmetic). Every
    random draw (the batch, the noise, the levels, the dropped prompts) is made on the CPU by the
    run's own generator and then moved, so a run on another device sees the same batches as on the
    CPU; its weights differ only by the device's arithmetic."""
    if which not in CONFIGS:
        raise ConfigError("world train", "model", which, "'target' or 'drafter'")
    dev = check_device("world train", "device", device)
    settings = settings or DEFAULTS[which]
    short_steps = SHORT_STEPS[which] if short_steps is None else short_steps
    training.at_least("world train", "short_steps", short_steps, 0)
    training.at_least("world train", "clips", clips_n, 1)
    path = training.check_out(out, force)
    training.check_data(data)
    cfg = CONFIGS[which]()
    # the network (and --init's weights in it) before the data: a bad --init is refused before any clip
    # is encoded (the steps draw only from their own generator: the order leaves the run's bits alone)
    torch.manual_seed(settings.seed)
    dit = WanDiT(cfg)
    init_record = None if init is None else training.load_init(
        dit, attrs.asdict(cfg), init, owner="world train", what=f"the world {which} DiT")
    vae_model = load_vae(vae)
    enc = load_text(text, cfg.text_dim, cfg.text_len)
    ds = training.encoded_clips(data, force, clips_n, vae,
                                build=lambda: build_dataset(vae_model.to(dev), clips_n, seed=1234, quiet=quiet))
    latents = ds["latents"]  # [N, F, z, h, w]
    masks = object_masks(ds["prompts"], ds["seeds"], latents.shape[1], tuple(latents.shape[-2:]))  # [N, F, h, w]
    with torch.no_grad():
        states = enc(ds["prompts"])  # [N, L, text_dim]
        empty = enc([""])  # [1, L, text_dim]
    latents, masks, states, empty = (t.to(dev) for t in (latents, masks, states, empty))

    dit.to(dev).train()
    g = torch.Generator().manual_seed(settings.seed)

    def step(i: int) -> dict[str, float]:
        idx = torch.randint(0, latents.shape[0], (settings.batch,), generator=g).to(dev)
        frames = SHORT_FRAMES if i < short_steps else latents.shape[1]
        x0 = latents[idx, :frames]  # [B, F, z, h, w]
        weight = 1.0 + OBJECT_WEIGHT * masks[idx, :frames]  # [B, F, h, w]
        ctx = states[idx].clone()
        drop = (torch.rand(settings.batch, generator=g) < 0.1).to(dev)
        ctx[drop] = empty
        b, f = x0.shape[:2]
        sig = noise_levels(b, f, g).to(dev)  # [B, F]
        eps = torch.randn(x0.shape, generator=g).to(dev)
        s = sig.view(b, f, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        pred = dit(xt.permute(0, 2, 1, 3, 4), 1000.0 * sig, ctx, causal_block=CAUSAL_BLOCK)  # [B, z, F, h, w]
        sq = (pred.permute(0, 2, 1, 3, 4) - (eps - x0)).pow(2).mean(dim=2)  # [B, F, h, w]
        err = (sq * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))  # [B, F]
        w = (sig > 0).float()
        loss = (err * w).sum() / w.sum().clamp_min(1.0)
        loss.backward()
        return {"loss": loss.item()}

    ema = WeightAverage(dit, EMA)
    log = training.run_loop(which, settings, list(dit.parameters()), step, quiet=quiet, after_step=ema.update)
    dit.eval()
    record = {"settings": attrs.asdict(settings), "clips": clips_n, "causal_block": CAUSAL_BLOCK, "ema": EMA,
              "short_steps": short_steps, "short_frames": SHORT_FRAMES, "object_weight": OBJECT_WEIGHT,
              **({"init": init_record} if init_record is not None else {}),
              "machine": training.machine(dev), "wall_s": log["wall_s"],
              "parameters": sum(p.numel() for p in dit.parameters()),
              "command": f"accelframe world train {which} --steps {settings.steps} --short-steps {short_steps} "
                         f"--seed {settings.seed}" + (f" --lr {settings.lr:g} --init {Path(init).name}" if init else "")
                         + ("" if dev.type == "cpu" else f" --device {dev}")}
    training.save(path, ema.state_dict(), config=attrs.asdict(cfg), training=record, log=log)
    return record


__all__ = ["CONFIGS", "DEFAULTS", "EMA", "OBJECT_WEIGHT", "SHORT_FRAMES", "SHORT_STEPS", "WeightAverage",
           "build_dataset", "load_text", "load_vae", "make_text", "noise_levels", "object_masks", "train"]
