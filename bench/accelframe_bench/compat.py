"""``accelframe bench compat``: which policy acts in which adapter's loop, measured, as a table.

For every registered adapter loop of :data:`LOOPS` and every registered policy, at the policy's
default settings, a short run (two units, the world's models with the tiny decoder) decides the
cell:

- **refused**: building the pipeline, validating the request or starting the stream loop raised
  a typed error (the reason is listed under the table), before any model call;
- **acts**: the policy changed the run: a step policy decided a model call other than recompute (a
  cached or predicted velocity), a block policy accepted a draft, a batch or stream policy planned
  chunks other than the exact fallback's or changed the frames;
- **exact**: it ran and changed nothing: the same frames, bit for bit, as the run without it, the
  same model calls and the same plans;
- **fails**: it raised (or answered nonsense) while running, and the exact path answered for it
  (the warning's text is listed under the table).

Step and block policies run in ``pipe.generate``; batch and stream policies in the stream loop,
a text-to-video and a video-to-video stream (a rendered world clip) whose frames have all arrived
(a virtual clock: nothing waits), against the loop without the policy: the cell says what it did
in either (acts in one: acts; refused in both: refused). A block policy runs with a drafter: the
world's drafter where the family has one, else the same model. ``--out`` writes the table as
markdown (default: print it); ``--check FILE`` compares it with FILE and fails when they differ
(the test that keeps ``docs/compatibility.md`` current runs this).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe.errors import AccelframeError, ConfigError, PolicyFallbackWarning

OWNER = "bench compat"
DOC = "docs/compatibility.md"
PROMPT = "a red circle moves left on a blue background"
SEED = 0


@attrs.frozen(kw_only=True)
class Loop:
    """One adapter loop of the table: its settings, the latent frames of a run (two units) and the
    drafter a block policy gets."""

    adapter: str
    settings: dict[str, Any] = attrs.field(factory=dict)
    frames: int = 6
    drafter_settings: dict[str, Any] | None = None  # None: the same settings as the target
    stream_frames: int = 27  # latent frames of a stream: long enough for a KV window to roll


WORLD = {"decoder": "tiny"}
LOOPS = (
    Loop(adapter="analytic", settings={"steps": 8}, frames=6, stream_frames=9),
    Loop(adapter="self-forcing", settings=WORLD, drafter_settings={"size": "world-drafter", **WORLD}),
    Loop(adapter="krea-realtime", settings=WORLD, drafter_settings={"size": "world-drafter", **WORLD}),
    Loop(adapter="skyreels-v2-df", settings=WORLD),
    Loop(adapter="magi-1", settings=WORLD, frames=24, stream_frames=24),  # its window is 4 chunks of 6
)


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0]


def _step_or_block(loop: Loop, policy: str, kind: str, hooks: Any, cache: dict[str, Any]) -> dict[str, Any]:
    """One cell of a step or block policy: its run against the loop's own without it."""
    from accelframe.pipeline import Pipeline

    drafted = kind == "block"
    try:
        pipe = Pipeline(loop.adapter, adapter_kwargs=loop.settings, hooks=hooks, trace=False,
                        **({"drafter": loop.adapter, "drafter_kwargs": loop.drafter_settings or loop.settings}
                           if drafted else {}))
        pipe.use(policy)
        req = pipe.request([PROMPT], num_frames=loop.frames, seed=SEED)
    except AccelframeError as err:
        return {"cell": "refused", "reason": _first_line(err)}
    try:
        key = f"{loop.adapter}:base"
        if key not in cache:
            base = Pipeline(loop.adapter, adapter_kwargs=loop.settings, hooks=hooks, trace=False)
            cache[key] = base.generate(base.request([PROMPT], num_frames=loop.frames, seed=SEED))
        ref = cache[key]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PolicyFallbackWarning)
            res = pipe.generate(req)
    finally:
        pipe.close()
    failed = _fallback(caught)
    if failed is not None:
        return {"cell": "fails", "reason": failed}
    st = res.stats.to_dict()
    calls = st["calls"]["target"]
    d = st["calls"]["drafter"]
    skipped = calls["cached"] + calls["predicted"] + d["cached"] + d["predicted"]
    accepted = st["blocks"]["accepted"] if drafted else 0
    same = _same(res, ref)
    acts = (accepted > 0) if drafted else (skipped > 0)
    detail = (f"{accepted} of {st['units'] - 1} drafts accepted" if drafted else
              f"{skipped} of {skipped + calls['computed'] + d['computed']} calls cached or predicted")
    return {"cell": "acts" if acts or not same else "exact", "detail": detail}


def _fallback(caught: list[Any]) -> str | None:
    """The first policy failure the run warned about (the exact path answered it), else None."""
    for w in caught:
        if issubclass(w.category, PolicyFallbackWarning):
            return str(w.message).split("; the exact path answered")[0]
    return None


def _same(res: Any, ref: Any) -> bool:
    a = res.frames if res.frames is not None else res.latents
    b = ref.frames if ref.frames is not None else ref.latents
    return a.shape == b.shape and bool(torch.equal(a, b))


def _stream(loop: Loop, policy: str | None, hooks: Any, video: bool) -> Any:
    """The stream loop's run of ``loop`` with ``policy`` (None: none), text-to-video or (``video``)
    video-to-video from a rendered world clip: its frames, plans and any policy failure."""
    from accelframe.adapter import pixel_frames
    from accelframe.pipeline import Pipeline
    from accelframe.streaming.source import StreamSource
    from accelframe_bench.stack import STREAM_FPS, arrived_clock, source

    pipe = Pipeline(loop.adapter, adapter_kwargs=loop.settings, hooks=hooks, trace=False)
    try:
        if policy is not None:
            pipe.use(policy)
        src = source(pipe.adapter, PROMPT, SEED, loop.stream_frames)
        if video:
            registry = hooks.registry()
            if "world" not in registry.names("source"):
                raise ConfigError(OWNER, "source", "world", "a registered 'world' stream source (the adapters' plugin)")
            clip = registry.get("source", "world").factory().clip(PROMPT, SEED, pixel_frames(pipe.adapter,
                                                                                           loop.stream_frames))
            src = StreamSource(id="s", prompt=PROMPT, frames=clip, fps=STREAM_FPS, seed=SEED)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PolicyFallbackWarning)
            run = pipe.stream([src], clock=arrived_clock(src))  # every frame has arrived
    finally:
        pipe.close()
    return run, _fallback(caught)


def _batch(loop: Loop, policy: str, hooks: Any, cache: dict[str, Any]) -> dict[str, Any]:
    """A batch or stream policy's cell: text-to-video and video-to-video streams, each against the
    loop's own without the policy; it acts when it acts in either, and is refused when both are."""
    out = {}
    for video in (False, True):
        mode = "video" if video else "text"
        try:
            run, failed = _stream(loop, policy, hooks, video)
        except AccelframeError as err:
            out[mode] = {"cell": "refused", "reason": _first_line(err)}
            continue
        if failed is not None:
            out[mode] = {"cell": "fails", "reason": failed}
            continue
        key = f"{loop.adapter}:stream:{mode}"
        if key not in cache:
            cache[key] = _stream(loop, None, hooks, video)[0]
        ref = cache[key]
        plans = [b["entries"] for b in run.batches]
        same_plans = plans == [b["entries"] for b in ref.batches]
        a, b = run.outputs["s"].frames, ref.outputs["s"].frames
        same = a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a, b))
        out[mode] = {"cell": "exact" if same_plans and same else "acts",
                     "detail": f"{len(plans)} chunks (without it: {len(ref.batches)})" + ("" if same else
                                                                                         ", frames differ")}
    for verdict in ("acts", "fails", "exact", "refused"):
        hits = [m for m in ("text", "video") if out[m]["cell"] == verdict]
        if hits:
            first = out[hits[0]]
            return {**first, "modes": out, "detail": "; ".join(f"{m}: {out[m].get('detail') or out[m]['reason']}"
                                                                for m in ("text", "video"))}
    raise AssertionError("unreachable")


def measure(hooks: Any, loops: tuple[Loop, ...] = LOOPS, quiet: bool = False) -> dict[str, Any]:
    """Every cell: ``{"loops": [...], "policies": [{"name", "kind", "cells": {adapter: {...}}}]}``."""
    from accelframe.progress import progress_bar

    reg = hooks.registry()
    adapters = set(reg.names("adapter"))
    loops = tuple(lp for lp in loops if lp.adapter in adapters)
    entries = sorted(reg.of_kind("policy"), key=lambda e: (("step", "block", "batch").index(e.policy_kind or "step"),
                                                           e.name))
    cache: dict[str, Any] = {}
    rows = []
    with progress_bar(total=len(entries) * len(loops), desc=OWNER, unit="cell", quiet=quiet) as bar:
        for e in entries:
            kind = e.policy_kind or "step"
            cells = {}
            for lp in loops:
                cells[lp.adapter] = (_batch(lp, e.name, hooks, cache) if kind == "batch"
                                     else _step_or_block(lp, e.name, kind, hooks, cache))
                bar.update(1)
            rows.append({"name": e.name, "kind": kind, "plugin": e.plugin, "cells": cells})
    return {"loops": [attrs.asdict(lp) for lp in loops], "policies": rows}


def markdown(doc: dict[str, Any]) -> str:
    loops = [lp["adapter"] for lp in doc["loops"]]
    lines = ["# Compatibility: which policy acts in which adapter's loop", "",
             "Generated by `accelframe bench compat --out docs/compatibility.md`; `accelframe bench compat --check "
             "docs/compatibility.md` (and the slow test `bench/tests/test_compat.py`) fails when this file is not "
             "what the command writes now, and `bench/accelframe_bench/compat.py` says how each cell is measured. "
             "Every policy runs at its default settings on a short run of each loop (two units; MAGI-1 four "
             "chunks, its window), the world's models with the tiny decoder:", "",
             "- **acts**: it changed the run: a step policy cached or predicted a model call, a block policy "
             "accepted a draft, a batch or stream policy planned other chunks than the exact fallback or changed "
             "the frames;",
             "- **exact**: it ran and changed nothing (the same frames bit for bit, calls and plans);",
             "- **refused**: a typed error before any model call (the reasons are below the table);",
             "- **fails**: it raised while running and the exact path answered for it (the warnings are below the "
             "table).", "",
             "Step and block policies run in `pipe.generate`, batch and stream policies in the stream loop (a "
             "text-to-video and a video-to-video stream of a rendered world clip, 27 latent frames; the cell says "
             "what the policy did in either). \"Exact\" at the defaults is not \"useless\": a "
             "reuse policy tuned for 30 to 50 steps finds nothing to skip in a 4-step loop, and `accelframe "
             "tune` searches its settings.", "",
             "| policy | kind | " + " | ".join(f"`{a}`" for a in loops) + " |",
             "|---|---|" + "---|" * len(loops)]
    reasons: dict[str, str] = {}
    for r in doc["policies"]:
        cells = []
        for a in loops:
            c = r["cells"][a]
            if c["cell"] in ("refused", "fails"):
                n = reasons.setdefault(c["reason"], str(len(reasons) + 1))
                cells.append(f"{c['cell']} ({n})")
            else:
                cells.append(c["cell"])
        lines.append(f"| `{r['name']}` | {r['kind']} | " + " | ".join(cells) + " |")
    if reasons:
        lines += ["", "Why a cell is refused or fails:", ""]
        lines += [f"{n}. {text}" for text, n in reasons.items()]
    return "\n".join(lines) + "\n"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="FILE", help=f"write the table there (e.g. {DOC}); default: print it")
    p.add_argument("--check", default=None, metavar="FILE",
                   help="compare the table with FILE and exit 1 when they differ (nothing is written)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print every cell, with what was counted, as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe.outputs import atomic_paths, check_output
    from accelframe_bench.hooks import or_default

    if args.out is not None and args.check is not None:
        raise ConfigError(OWNER, "--check", args.check, "nothing with --out: --check compares, --out writes")
    if args.check is not None and not Path(args.check).is_file():
        raise ConfigError(OWNER, "--check", args.check, "an existing file (the table to compare with)")
    out = check_output(args.out, owner=OWNER, field="--out", force=args.force, suffixes=(".md",)) if args.out else None
    doc = measure(or_default(hooks), quiet=args.json)
    text = markdown(doc)
    if args.check is not None:
        current = Path(args.check).read_text()
        if current != text:
            print(f"accelframe bench compat: {args.check} is not current; run accelframe bench compat --out "
                  f"{args.check} --force", file=sys.stderr)
            return 1
        return 0
    if out is not None:
        with atomic_paths([out]) as (tmp,):
            tmp.write_text(text)
    if args.json:
        print(json.dumps(doc, indent=1))
    elif out is None:
        print(text, end="")
    else:
        print(f"written to {out}")
    return 0


__all__ = ["LOOPS", "Loop", "configure", "markdown", "measure", "run"]
