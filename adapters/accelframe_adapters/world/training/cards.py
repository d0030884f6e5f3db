"""Model cards of the world's models, written from what the trainers stored with the weights.

For each ``world-MODEL.safetensors`` the card ``world-MODEL.md`` gives the architecture and size,
the data, the settings and the command that reproduces it, the machine and time it took, a loss
curve (``world-MODEL.loss.png``, drawn from ``world-MODEL.log.json``) and the measured quality: the
trainer's own evaluation, and for the DiTs the numbers of ``accelframe bench world --json`` (pass
its output file with ``--quality``; for the MAGI model, that of ``accelframe bench step --adapter
magi-1 --json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelframe.errors import ConfigError
from accelframe_adapters.world.models import FILES, WEIGHTS, read_metadata
from accelframe_adapters.world.training.plot import line_plot
from accelframe_adapters.world.training.common import file_digest, log_path

ABOUT = {
    "vae": ("The Wan 2.1 causal video VAE (`accelframe_adapters.wan.vae.WanVAE`, original key names) in a "
            "tiny size: 4x spatial and 4x temporal compression (first frame alone), 8 latent channels, "
            "chunk-local (the weights that read earlier chunks through the causal caches are zero).",
            "Fresh training-split clips every step: 5-frame windows at random points of 105-frame clips, "
            "cropped to 32 x 32 around the shape. Loss L1 + MSE (shape pixels weighed 5x) with latent noise "
            "(0.1 of the latent spread) and 1e-4 mean(mu^2); the latent mean / spread of 32 clips are folded "
            "into conv1 / conv2 afterwards (see `world/training/train_vae.py`)."),
    "text": ("The word-level text encoder (`accelframe_adapters.wan.text.WordEncoder`): one row per vocabulary "
             "word plus a position row; frozen random rows (the DiTs and the reward learn their own projections).",
             "None: drawn from the seed."),
    "target": ("The Wan 2.1 DiT (`accelframe_adapters.wan.dit.WanDiT`, original key names) in a tiny size, "
               "trained by diffusion forcing (independent per-frame noise levels, block-causal attention in "
               "blocks of 3 latent frames), so one set of weights serves the Self-Forcing / Krea block loops "
               "and the SkyReels-V2 staircase. One addition to Wan: a learned spatial embedding of the 4 x 4 "
               "token grid (`spatial_grid`), so the first block's estimate at full noise can place the shape.",
               "Training-split clips of 105 frames (27 latent frames) encoded by the world VAE; flow matching "
               "v = eps - x0 with four noise-level patterns (per block, teacher forcing, per frame, synchronous) "
               "and 10 % empty prompts; the first `short_steps` steps see only the first two blocks; the loss "
               "weights the shape's latent footprint by 1 + `object_weight`; the file holds the exponential "
               "moving average of the weights (see `world/training/train_dit.py`)."),
    "reward": ("The world's frame reward: ImageReward's shape (a ViT over 8 x 8 patches, a text encoder whose "
               "layers cross-attend to the image, an MLP on the first token), scores standardised.",
               "Pairs of a good frame (rendered, or through the world VAE) and a bad one for the same prompt "
               "(blurred, wrong colour / shape / background, background alone, decoded noise, pixel noise); "
               "ImageReward's ranking loss -log sigmoid(r_good - r_bad) (see `world/training/train_reward.py`)."),
}
ABOUT["magi"] = (
    "MAGI-1's DiT (`accelframe_adapters.magi.dit.MagiDiT`, MAGI-1's key names) in a tiny size: parallel self- "
    "and cross-attention with grouped K/V, learned 3-D RoPE, per-chunk tanh gates before sandwich LayerNorms; "
    "chunks of 6 latent frames with chunk-causal attention over a band of chunks. One addition to MAGI-1, as "
    "for the Wan world models: a learned spatial embedding of the 4 x 4 token grid (`spatial_grid`).",
    "Training-split clips, their first 24 latent frames (4 chunks) encoded by the world VAE; flow matching in "
    "MAGI's time (x_t = t x0 + (1 - t) eps, v = x0 - eps) with per-chunk times (staged and sorted, independent, "
    "or shared), bands of 2 to 5 chunks or full history, 10 % null captions; the first `short_steps` steps see "
    "only the first chunk; the loss weights the shape's latent footprint by 1 + 4; the file holds the "
    "exponential moving average of the weights (see `world/training/train_magi.py`).")
ABOUT["drafter"] = (ABOUT["target"][0].replace("in a tiny size", "in a smaller size than the target"),
                    ABOUT["target"][1])
ABOUT["decoder"] = (
    "A tiny streaming video decoder in TAEHV's shape (`accelframe_adapters.wan.taehv.TinyDecoder`, TAEHV's "
    "`decoder.N` key names): per-frame 2-D convolutions, MemBlocks that read the previous frame, TGrow for 4x "
    "in time, 4x in space; it decodes the world VAE's latents (`decoder=\"tiny\"` of the Wan adapters).",
    "Fresh training-split clips every step: 13-frame windows (4 latent frames) at random points of full-length "
    "clips, cropped to 32 x 32 around the shape, encoded by the frozen world VAE with latent noise of 0.1 times "
    "their spread; loss L1 + MSE against the rendered pixels, shape pixels weighed 5x (see "
    "`world/training/train_decoder.py`).")
# a drafter distilled by `accelframe world distill` (its record names a teacher)
DISTILLED = (
    "The Wan 2.1 DiT (`accelframe_adapters.wan.dit.WanDiT`, original key names) in a smaller size than the target, "
    "distilled to draw a block in one call (`denoising_step_list=(1000,)`, no guidance: the presets run it so). "
    "One addition to Wan: a learned spatial embedding of the 4 x 4 token grid (`spatial_grid`).",
    "Self-Forcing's way: every step rolls the student out over 9 blocks on its own drafts (one call per block, "
    "the context committed without gradient); the world target, on the same drafts and from the same noise, "
    "denoises every block with the loop's 4 steps and guidance 1.5 (Euler between steps, so its block is a "
    "function of the noise); the student's block regresses onto the target's, the shape's footprint weighted "
    "1 + `object_weight`; training-split prompts only; the file holds the exponential moving average of the "
    "weights (see `world/training/distill.py`).")


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


def _teacher(record: dict[str, Any]) -> str:
    """A distillation's teacher: its file and, where the record has it, the file's digest (a card's
    ``sha256`` line names the same digest of the file it describes)."""
    t = record["teacher"]
    digest = f"sha256 `{t['sha256']}`" if t.get("sha256") else "its digest not recorded"
    return f"`{t.get('file', '?')}` ({digest})"


def _quality(name: str, record: dict[str, Any], benches: list[dict[str, Any]]) -> list[str]:
    lines = []
    bench = next((b for b in benches if f"{name}_quality" in b), None)
    if name == "vae" and "eval" in record:
        e = record["eval"]
        lines.append(f"- reconstruction PSNR on 16 held-out 105-frame clips: **{e['psnr_db']:.2f} dB**; "
                     f"latents: mean {e['latent_mean']:.3f}, spread {e['latent_std']:.3f}")
    if name == "decoder" and "eval" in record:
        e = record["eval"]
        lines.append(f"- reconstruction PSNR on 16 held-out 105-frame clips through the VAE's encoder: "
                     f"**{e['psnr_db']:.2f} dB** (the VAE's own decoder: {e['vae_psnr_db']:.2f} dB)")
        lines.append(f"- decode time per latent frame, whole clips at batch 1: {e['ms_per_latent_frame']:.1f} ms "
                     f"(the VAE's decoder: {e['vae_ms_per_latent_frame']:.1f} ms)")
    if name == "reward" and "eval" in record:
        e = record["eval"]
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in e["accuracy_by_kind"].items())
        lines.append(f"- pairwise accuracy on {e['pairs']} held-out pairs: **{e['accuracy']:.3f}** ({kinds})")
        lines.append(f"- mean score of good frames {e['good_mean']:.2f}, of bad frames {e['bad_mean']:.2f}")
    if name in ("target", "drafter") and bench:
        q = bench[f"{name}_quality"]
        adh = bench["prompt_adherence" if name == "target" else "drafter_adherence"]
        part = bench[name]
        t = bench["timing"]
        cfg = bench["config"]
        lines.append(f"- world quality on {cfg['clips']} held-out prompts ({cfg['adapter']} loop, 9 blocks): "
                     f"**{q:.3f}** (decoded noise {bench['noise_quality']:.3f}, rendered truth "
                     f"{bench['truth_quality']:.3f}, VAE reconstruction {bench['vae_quality']:.3f})")
        lines.append(f"- prompt adherence (colour, shape and direction right): **{adh:.2f}**; parts: "
                     + ", ".join(f"{k} {part[k]:.3f}" for k in ("presence", "shape", "motion", "smoothness",
                                                               "sharpness", "background")))
        lines.append(f"- a 9-block clip at batch 1: {t[f'{name}_clip_s']:.2f} s, "
                     f"{t[f'{name}_calls_per_s']:.1f} model calls per second ({cfg['threads']} threads)")
    step = next((b for b in benches if b.get("config", {}).get("adapter") == "magi-1"), None)
    if name == "magi" and step:  # accelframe bench step --adapter magi-1
        bench = step
        orig = next(m for m in bench["methods"] if m["name"] == "original")
        c = bench["config"]
        lines.append(f"- world quality on {c['prompts']} held-out prompts (magi-1 loop, {c['latent_frames']} latent "
                     f"frames, `accelframe bench step --adapter magi-1`): **{orig['quality']:.3f}**, prompt "
                     f"adherence **{orig['adherence']:.2f}**; a clip takes {orig['time_s'] / c['prompts']:.2f} s "
                     f"({c['threads']} threads)")
    if not lines:
        lines.append("- not measured (pass `--quality` with the output of `accelframe bench world --json`)")
    return lines


def _card_outputs(name: str, folder: Path) -> tuple[dict[str, Any], Path | None, Path]:
    """The loss log of ``name``'s weights, the loss curve to draw (None without a log) and the card."""
    weights = folder / FILES[name]
    logged = log_path(weights)
    log = json.loads(logged.read_text()) if logged.exists() else {}
    curve = weights.with_name(weights.name.replace(".safetensors", ".loss.png")) if log.get("step") else None
    return log, curve, weights.with_name(weights.name.replace(".safetensors", ".md"))


def _off_cli_warmups(name: str, runs: list[dict[str, Any]]) -> list[str]:
    """A line for each run whose warm-up its command does not give (``world train`` has no warm-up
    option: a one-off script set it), so a card never calls such a command a reproduction without
    saying so."""
    from accelframe_adapters.world.training import train_dit

    default = getattr(train_dit.DEFAULTS.get(name), "warmup", None)
    lines = []
    for run in runs:
        warm, command = run.get("settings", {}).get("warmup"), run.get("command", "")
        if default is not None and warm is not None and warm != default and "--warmup" not in command:
            lines.append(f"- `{run.get('command', '')}` ran with a warm-up of {warm} steps, not the command "
                         f"line's {default} (a one-off script set it)")
    return lines


def write_card(name: str, folder: Path, benches: list[dict[str, Any]]) -> list[Path]:
    """Write ``name``'s card and loss curve (each whole or not at all; the caller checks overwrites)."""
    from accelframe.outputs import write_text

    weights = folder / FILES[name]
    meta = read_metadata(weights)
    record, config = meta.get("training", {}), meta.get("config", {})
    written = []
    log, curve, card = _card_outputs(name, folder)
    if curve is not None:
        line_plot(curve, log["step"], [log["loss"]], log_y=True)
        written.append(curve)
    arch, data = DISTILLED if "teacher" in record else ABOUT[name]
    s = record.get("settings", {})
    lines = [f"# world-{name}", "", arch, "",
             f"- file: `{weights.name}` ({_size(weights)}, sha256 `{file_digest(weights)}`), "
             f"parameters: {record.get('parameters', 'see config')}",
             f"- config: `{json.dumps(config, sort_keys=True)}`", "", "## Data and training", "", data, ""]
    if s:
        lines.append(f"- {s['steps']} steps, batch {s['batch']}, AdamW lr {s['lr']} (warm-up {s['warmup']}, "
                     f"cosine to a tenth), seed {s['seed']}")
    if "short_steps" in record:
        lines.append(f"- of them {record['short_steps']} on the first {record['short_frames']} latent frames only; "
                     f"shape footprint weighted 1 + {record['object_weight']:g}")
    if "wall_s" in record:
        m = record.get("machine", {})
        torch_v = f"torch {m.get('torch', '?')}"
        where = (f"one {m['device']} ({m.get('threads', '?')} CPU threads, {torch_v})" if m.get("device")
                 else f"{m.get('threads', '?')} CPU threads ({torch_v})")
        lines.append(f"- trained in {record['wall_s'] / 60:.1f} min on {where}")
    if "teacher" in record:
        lines.append(f"- distilled against {_teacher(record)}")
    chain = []  # the earlier runs this one continued, latest first
    first = record.get("init")
    while first:
        chain.append(first)
        first = first.get("training", {}).get("init")
    if chain:  # a continued run: the earlier runs come first
        for earlier in chain:
            t = earlier.get("training", {})
            steps = t.get("settings", {}).get("steps", "?")
            warm = t.get("settings", {}).get("warmup", "?")
            against = f", distilled against {_teacher(t)}" if "teacher" in t else ""
            lines.append(f"- continued from `{earlier.get('file')}`, itself trained {steps} steps (warm-up {warm}) "
                         f"in {t.get('wall_s', 0) / 60:.1f} min{against}: `{t.get('command', '')}`")
        cmds = [e.get("training", {}).get("command", "") for e in reversed(chain)] + [record.get("command", "")]
        lines.append("- reproduce: " + ", then ".join(f"`{c}`" for c in cmds)
                     + " (each after the first with `--init` naming the output before it)")
    else:
        lines.append(f"- reproduce: `{record.get('command', '')}`")
    lines += [*_off_cli_warmups(name, [record] + [e.get("training", {}) for e in chain]), ""]
    if curve is not None:
        lines += ["## Loss", "", f"![training loss, log scale, against the step]({curve.name})", "",
                  f"Training loss (log scale) against the step; first logged {log['loss'][0]:.4f}, "
                  f"last {log['loss'][-1]:.4f}.", ""]
    lines += ["## Measured quality", "", *_quality(name, record, benches), ""]
    write_text(card, "\n".join(lines))
    written.append(card)
    return written


# what a card quotes from each kind of --quality file: keys, and "a.b" for a key of an object
BENCH_WORLD = ("target_quality", "drafter_quality", "noise_quality", "truth_quality", "vae_quality",
               "prompt_adherence", "drafter_adherence", "config.clips", "config.adapter", "config.threads",
               *(f"{m}.{k}" for m in ("target", "drafter")
                 for k in ("presence", "shape", "motion", "smoothness", "sharpness", "background")),
               *(f"timing.{m}_{k}" for m in ("target", "drafter") for k in ("clip_s", "calls_per_s")))
BENCH_MAGI = ("config.prompts", "config.latent_frames", "config.threads", "methods")
QUALITY_FILES = "the JSON output of 'accelframe bench world --json' or 'accelframe bench step --adapter magi-1 --json'"


def read_bench(path: str | Path) -> dict[str, Any]:
    """A ``--quality`` file: the output of ``accelframe bench world --json`` or of ``accelframe bench
    step --adapter magi-1 --json``, with every value a card quotes; anything else is a
    :class:`ConfigError` naming the file and what is wrong, before any card is written."""
    p = Path(path)

    def refuse(why: str) -> ConfigError:
        return ConfigError("accelframe world cards", "--quality", str(p), f"{QUALITY_FILES} ({p.name} {why})")

    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise refuse(f"cannot be read: {err.strerror or err}") from err
    except ValueError as err:
        raise refuse(f"is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise refuse(f"holds a JSON {type(doc).__name__}, not an object")
    magi = isinstance(doc.get("config"), dict) and doc["config"].get("adapter") == "magi-1"
    if not magi and "target_quality" not in doc:
        raise refuse("has neither 'target_quality' (bench world) nor config.adapter 'magi-1' (bench step)")
    absent = []
    for key in BENCH_MAGI if magi else BENCH_WORLD:
        node: Any = doc
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            absent.append(key)
    if magi and not absent and not any(isinstance(m, dict) and m.get("name") == "original"
                                       and all(k in m for k in ("quality", "adherence", "time_s"))
                                       for m in doc["methods"] if isinstance(doc["methods"], list)):
        absent.append("methods[name='original'].quality/adherence/time_s")
    if absent:
        raise refuse(f"lacks {', '.join(absent)}")
    return doc


def write_cards(folder: str | Path | None = None, quality: str | Path | list | None = None, *,
                force: bool = False) -> list[Path]:
    """Every card of ``folder``; ``quality``: JSON outputs of ``accelframe bench world`` and / or
    ``accelframe bench step --adapter magi-1`` to quote (each card takes what concerns it). Cards
    and loss curves that exist (an edited card) are refused before anything is written, unless
    ``force``."""
    from accelframe.outputs import check_output

    folder = Path(folder) if folder else WEIGHTS
    files = [] if quality is None else [quality] if isinstance(quality, (str, Path)) else list(quality)
    benches = [read_bench(q) for q in files]
    names = [name for name in FILES if (folder / FILES[name]).exists()]
    if not names:
        where = "does not exist" if not folder.exists() else "is not a folder" if not folder.is_dir() else \
            "holds none of them"
        raise ConfigError("accelframe world cards", "--dir", str(folder),
                          f"a folder holding the world's weights ({', '.join(FILES.values())}); this one {where}")
    for name in names:
        _, curve, card = _card_outputs(name, folder)
        for p in (curve, card):
            check_output(p, owner="accelframe world cards", field="--dir", force=force)
    out = []
    for name in names:
        out += write_card(name, folder, benches)
    return out


__all__ = ["read_bench", "write_card", "write_cards"]
