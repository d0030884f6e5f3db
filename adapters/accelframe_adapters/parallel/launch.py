"""StreamDiffusionV2's pipeline-parallel stream batch: one text-to-video stream on the self-forcing
Wan DiT, its blocks split over R ranks in a ring (paper section 4.2, docs/pipeline-parallel.md).

Entry points:

- ``torchrun --nproc-per-node 2 -m accelframe_adapters.parallel --latent-frames 24 --out out.pt``
  (reads RANK, WORLD_SIZE, LOCAL_RANK; gloo on the CPU, nccl on ``cuda:LOCAL_RANK``);
- :func:`launch`: the same from Python, spawning the R processes itself on a free local port;
- :func:`run_reference`: the same schedule in one process (the equality tests' reference);
- :func:`compare_ranks`: one process against two ranks of one thread each (``accelframe bench stream``).

The schedule lives in :mod:`~accelframe_adapters.parallel.schedule`, the model stages in
:mod:`~accelframe_adapters.parallel.stage`, a rank's loop and the rebalance in
:mod:`~accelframe_adapters.parallel.runtime`, the messages in :mod:`~accelframe_adapters.parallel.comm`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import attrs
import torch

from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe_adapters.parallel import partition as part
from accelframe_adapters.parallel.comm import DistLink, LoopLink, RankFailedError, free_port
from accelframe_adapters.parallel.runtime import RankResult, Runner

DEFAULT_PROMPT = "a red circle moves right on a blue background"
SIZES = ("world", "world-drafter", "tiny", "1.3B", "14B")
ROPE_MAX_LEN = 1024  # every size's WanDiTConfig.rope_max_len: frame positions must stay below it
log = logging.getLogger("accelframe.pipeline_parallel")


def num_layers(size: str) -> int:
    """DiT blocks of a model size (without loading it)."""
    from accelframe_adapters import presets
    from accelframe_adapters.wan.dit import WanDiTConfig

    p = presets.preset("wan", size)  # "world", "world-drafter": the presets the world registers
    if p is not None:
        return p.dit_config().num_layers
    random = {"tiny": WanDiTConfig.tiny, "1.3B": WanDiTConfig.wan_1_3b, "14B": WanDiTConfig.wan_14b}
    return random[size]().num_layers


def _opt_tuple(x: Any) -> Any:
    return tuple(x) if isinstance(x, (list, tuple)) else x  # anything else: the validator names it


def _opt_numbers(kind: str) -> Any:
    """None or a tuple of finite numbers (``kind`` "int": of ints), else a ConfigError."""
    allowed = f"None or a list of {'ints' if kind == 'int' else 'finite numbers'}"

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        ok = isinstance(value, tuple) and all(
            not isinstance(x, bool) and (isinstance(x, int) if kind == "int"
                                         else isinstance(x, (int, float)) and math.isfinite(x))
            for x in value)
        if not ok:
            raise ConfigError(type(inst).__name__, attribute.name, value, allowed)

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def _numbers(kind: str) -> Any:
    """A field holding None or a list of numbers (JSON lists become tuples)."""
    return attrs.field(default=None, converter=_opt_tuple, validator=_opt_numbers(kind))


RANK_STEP = "None or (rank, micro-step): two ints >= 0"


def _rank_step(inst: Any, attribute: Any, value: Any) -> None:
    """None or a (rank, micro-step) pair of ints >= 0 (the testing hooks die_at and hang_at)."""
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)):
        raise ConfigError(type(inst).__name__, attribute.name, value, RANK_STEP)


_rank_step.allowed = RANK_STEP  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class PPConfig:
    """One pipeline-parallel run. ``frames`` counts latent frames, whole chunks of 3."""

    frames: int = attrs.field(default=24, validator=v.number_in(1, ROPE_MAX_LEN, integer=True))
    prompt: str = attrs.field(default=DEFAULT_PROMPT, validator=v.instance_of(str, "a prompt (a string)"))
    seed: int = attrs.field(default=0, validator=v.number_in(0, 2**63 - 1, integer=True))
    size: str = attrs.field(default="world", validator=v.one_of(*SIZES))
    steps: tuple[float, ...] | None = _numbers("float")  # denoising_step_list
    window: int = attrs.field(default=-1, validator=v.number_in(-1, ROPE_MAX_LEN, integer=True))  # local_attn_size
    sinks: int = attrs.field(default=0, validator=v.number_in(0, ROPE_MAX_LEN, integer=True))
    partition: tuple[int, ...] | None = _numbers("int")  # start; None: even
    rebalance: bool = attrs.field(default=True, validator=v.boolean)
    rebalance_at: int | None = attrs.field(default=None)  # None: S R + measure (steady state)
    measure: int = attrs.field(default=3, validator=v.number_in(1, 1000, integer=True))
    min_gain: float = attrs.field(default=0.05, validator=v.number_in(0.0, 1.0, hi_open=True))
    block_times: tuple[float, ...] | None = _numbers("float")  # forcing: s/block
    overheads: tuple[float, ...] | None = _numbers("float")  # forcing: s/rank
    decode: bool = attrs.field(default=False, validator=v.boolean)
    threads: int = attrs.field(default=1, validator=v.number_in(1, 1024, integer=True))
    timeout_s: float = attrs.field(default=60.0, validator=v.number_in(0.1, 86400.0))
    device: str | None = attrs.field(  # None: cuda:LOCAL_RANK when CUDA is there, else cpu
        default=None, validator=attrs.validators.optional(v.device))
    # throughput from this micro-step on (None: after the rebalance)
    steady_from: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.number_in(0, 1_000_000, integer=True)))
    # testing: (rank, micro-step) at which that rank kills itself / stops answering
    die_at: tuple[int, int] | None = attrs.field(default=None, converter=_opt_tuple, validator=_rank_step)
    hang_at: tuple[int, int] | None = attrs.field(default=None, converter=_opt_tuple, validator=_rank_step)

    def __attrs_post_init__(self) -> None:
        unit = self.unit_frames  # builds the adapter's config: its ConfigErrors name steps and window
        if self.frames % unit:
            ok = ", ".join(str(unit * k) for k in range(1, 5))
            raise ConfigError("PPConfig", "frames", self.frames,
                              f"whole chunks of {unit} latent frames ({ok}, ...)")
        if self.rebalance_at is not None and (not isinstance(self.rebalance_at, int)
                                              or isinstance(self.rebalance_at, bool) or self.rebalance_at < 1):
            raise ConfigError("PPConfig", "rebalance_at", self.rebalance_at, "None or a micro-step >= 1")

    def _adapter_knobs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.steps is not None:
            kw["denoising_step_list"] = self.steps
        if self.window != -1:
            kw["local_attn_size"] = self.window
        if self.sinks:
            kw["sink_size"] = self.sinks
        return kw

    @property
    def unit_frames(self) -> int:
        """Latent frames per chunk (self-forcing's block)."""
        from accelframe_adapters.wan.self_forcing import SelfForcingConfig

        return SelfForcingConfig(**self._adapter_knobs()).num_frame_per_block

    def check(self, ranks: int) -> None:
        """The fields that depend on the rank count; a :class:`ConfigError` before any model runs."""
        layers = num_layers(self.size)
        if not isinstance(ranks, int) or ranks < 1 or ranks > layers:
            raise ConfigError("pipeline", "ranks", ranks, f"1 to {layers}: the {self.size!r} DiT has {layers} "
                                                          "blocks and every rank runs at least one")
        unit = self.unit_frames
        if self.frames < ranks * unit:
            raise ConfigError("PPConfig", "frames", self.frames,
                              f"at least {ranks * unit} latent frames: one chunk per rank, or a micro-step would "
                              "have no rows")
        if self.partition is not None:
            part.check_partition(self.partition, layers, ranks)
        if self.block_times is not None and len(self.block_times) != layers:
            raise ConfigError("PPConfig", "block_times", self.block_times, f"{layers} times, one per block")
        if self.overheads is not None and len(self.overheads) != ranks:
            raise ConfigError("PPConfig", "overheads", self.overheads, f"{ranks} times, one per rank")
        for name in ("die_at", "hang_at"):
            at = getattr(self, name)
            if at is not None and not at[0] < ranks:
                raise ConfigError("PPConfig", name, at, f"(rank, micro-step) with rank in [0, {ranks})")

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str = "--config") -> PPConfig:
        """A config from its JSON object; bad JSON, a value that is not an object, or an unknown
        key is a ConfigError naming ``source`` (unknown keys list the valid ones, closest first)."""
        from accelframe.knobs import check_keywords

        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("pipeline_parallel", source, text[:80], f"a JSON object ({exc})") from None
        if not isinstance(doc, dict):
            raise ConfigError("pipeline_parallel", source, doc, "a JSON object of PPConfig fields")
        check_keywords("PPConfig", cls, doc)
        return cls(**doc)


def build_adapter(cfg: PPConfig, device: str | torch.device = "cpu") -> Any:
    """The self-forcing adapter a run uses (the world's weights for ``size='world'``)."""
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    return SelfForcingAdapter(size=cfg.size, device=str(device), **cfg._adapter_knobs())


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_reference(cfg: PPConfig, *, lag: int = 1, adapter: Any = None) -> RankResult:
    """The lag-``lag`` schedule in this process, with ``cfg.threads`` threads: what ``lag`` ranks
    compute, bit for bit (lag 1 is the single-process stream batch). The pipeline-only fields
    (partition, forced times, die_at, hang_at) do not apply here."""
    cfg = attrs.evolve(cfg, partition=None, block_times=None, overheads=None, die_at=None, hang_at=None)
    cfg.check(lag)
    with _threads(cfg.threads), torch.no_grad():
        ad = adapter if adapter is not None else build_adapter(cfg, cfg.device or "cpu")
        return Runner(cfg, ad, rank=0, world=1, lag=lag, link=LoopLink()).run()


def _device(cfg: PPConfig, local_rank: int) -> torch.device:
    if cfg.device is not None:
        return torch.device(cfg.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def run_rank(cfg: PPConfig, env: dict[str, str] | None = None) -> RankResult:
    """This process's rank of the pipeline (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from
    ``env``, default the environment, as torchrun sets them)."""
    import datetime

    import torch.distributed as dist

    env = dict(os.environ if env is None else env)
    rank, world, local = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    cfg.check(world)
    device = _device(cfg, local)
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with torch.no_grad():
        ad = build_adapter(cfg, device)
        if world == 1:
            return Runner(cfg, ad, rank=0, world=1, lag=1, link=LoopLink()).run()
        try:
            # joining waits for the slowest rank's model load: at least two minutes, whatever timeout_s
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=max(cfg.timeout_s, 120.0)))
        except RuntimeError as exc:  # a rank that never joined: the store times out
            raise RankFailedError(None, seen_by=rank, during="joining the process group",
                                  cause=str(exc).splitlines()[0][:300]) from exc
        try:
            link = DistLink(rank, world, device, cfg.timeout_s)
            return Runner(cfg, ad, rank=rank, world=world, lag=world, link=link).run()
        finally:
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# launching ranks from Python
# ------------------------------------------------------------------------------------------------


def launch(cfg: PPConfig, ranks: int = 2, *, deadline_s: float | None = None) -> RankResult:
    """Spawn ``ranks`` launcher processes (``python -m accelframe_adapters.parallel``, which runs
    :func:`main`) on a free local port (what torchrun does on one machine) and return the last
    rank's result, its log holding every rank's under ``"per_rank"``.
    A rank that fails raises :class:`RankFailedError` here, naming it; a rank that dies the same."""
    cfg.check(ranks)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="accelframe-pp-") as tmp:
        d = Path(tmp)
        (d / "config.json").write_text(cfg.to_json())
        procs = []
        for r in range(ranks):
            env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r),
                   "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": str(cfg.threads)}
            cmd = [sys.executable, "-m", "accelframe_adapters.parallel",  # its __main__ runs main()
                   "--config", str(d / "config.json"), "--json"]
            cmd += ["--out", str(d / "out.pt")] if r == ranks - 1 else []
            with open(d / f"{r}.out", "w") as out, open(d / f"{r}.err", "w") as err:
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err))
        try:
            late = _wait_all(procs, deadline_s if deadline_s is not None else 2 * cfg.timeout_s + 120,
                             grace_s=3.0)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        outs = [(d / f"{r}.out").read_text() for r in range(ranks)]
        errs = [(d / f"{r}.err").read_text() for r in range(ranks)]
        _raise_failures(procs, errs, late)
        logs = [_tagged(o, "PP_LOG") for o in outs]
        got = torch.load(d / "out.pt", weights_only=False)
    doc = {**got["log"], "per_rank": [x[0] if x else None for x in logs]}
    return RankResult(latents=got["latents"], frames=got["frames"], log=doc)


def _wait_all(procs: Sequence[subprocess.Popen], deadline_s: float, grace_s: float) -> list[int]:
    """Wait for every process, at most ``deadline_s``; once one has failed, the others get
    ``grace_s`` to notice and report. Returns the ranks still running then (the caller kills them)."""
    limit, grace = time.monotonic() + deadline_s, None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if grace is None and any(p.returncode not in (None, 0) for p in procs):
            grace = now + grace_s
        if now > limit or (grace is not None and now > grace):
            break
        time.sleep(0.05)
    return [r for r, p in enumerate(procs) if p.poll() is None]


def _tagged(text: str, tag: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(tag) + 1:]) for line in text.splitlines() if line.startswith(tag + " ")]


def _raise_failures(procs: Sequence[subprocess.Popen], errs: Sequence[str], late: Sequence[int]) -> None:
    if not late and all(p.returncode == 0 for p in procs):
        return
    reports = sorted((e for text in errs for e in _tagged(text, "PP_ERROR")), key=lambda e: e["time"])
    deaths = [e for text in errs for e in _tagged(text, "PP_DIE") + _tagged(text, "PP_HANG")]
    if reports:
        e = reports[0]
        exc = RankFailedError(e["rank"], seen_by=e["seen_by"], during=e["during"], cause=e["cause"])
        exc.delay_s = e["time"] - deaths[0]["time"] if deaths else None
        raise exc
    configs = [e for text in errs for e in _tagged(text, "PP_CONFIG")]
    if configs:
        c = configs[0]
        raise ConfigError(c["owner"], c["field"], c["value"], c["allowed"])
    bad = next((r for r, p in enumerate(procs) if p.returncode not in (0, None) and r not in late), late[0])
    tail = errs[bad].strip().splitlines()[-6:]
    status = "still running at the deadline, killed" if bad in late else f"exit status {procs[bad].returncode}"
    raise RankFailedError(bad, seen_by=None, during="launch", cause=f"{status}; " + " | ".join(tail))


# ------------------------------------------------------------------------------------------------
# one process against two ranks
# ------------------------------------------------------------------------------------------------


def compare_ranks(quick: bool = True, *, ranks: int = 2, decode: bool | None = None,
                  repeats: int | None = None) -> dict[str, Any]:
    """Throughput of the world model in one process of one thread against ``ranks`` processes of
    one thread each, on the same frames (steady-state latent frames per second, after the
    rebalance); ``equal``: the ranks' latents equal the single-process lag-``ranks`` reference's
    (torch.equal). Each run times the single process before and after the ranks (their mean is
    ``throughput_1``): the machine's other load moves both. Quick: 96 latent frames, no decode, one
    run (about 20 s). Else 144 frames, three runs without and three with decode (``with_decode``),
    the headline numbers from the median run."""
    chunks = 32 if quick else 48
    measure, steps = 3, 4
    steady = steps * ranks + measure + 2 * ranks + 1  # after the rebalance's switch and drain
    base = PPConfig(frames=3 * chunks, window=12, sinks=3, threads=1, measure=measure, steady_from=steady)
    runs = [False] if quick else [False, True]
    if decode is not None:
        runs = [decode]
    out: dict[str, Any] = {}
    with _threads(1):
        ad = build_adapter(base)
        for dec in runs:
            res = _compare(attrs.evolve(base, decode=dec), ad, ranks, repeats or (1 if quick else 3))
            if not out:
                out.update(res)
            else:
                out["with_decode"] = res
    out["quick"] = quick
    return out


def _compare(cfg: PPConfig, adapter: Any, ranks: int, repeats: int) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ref = run_reference(cfg, lag=ranks, adapter=adapter)  # what the ranks must give, bit for bit
    rows, equal = [], True
    for _ in range(repeats):
        one = run_reference(cfg, lag=1, adapter=adapter)
        many = launch(cfg, ranks)
        again = run_reference(cfg, lag=1, adapter=adapter)
        equal = equal and bool(torch.equal(many.latents, ref.latents))
        t1 = (one.log["throughput"] + again.log["throughput"]) / 2
        t2 = many.log["throughput"]
        rows.append({"throughput_1": t1, "throughput_2": t2, "ratio": t2 / t1 if t1 and t2 else None,
                     "one": one.log, "ranks": many.log})
    mid = sorted(rows, key=lambda r: r["ratio"] or 0.0)[len(rows) // 2]  # the median run by ratio
    lg, one = mid["ranks"], mid["one"]
    decision = next((r["decision"] for r in lg["per_rank"] if r and r.get("decision")), None)
    return {
        "throughput_1": mid["throughput_1"], "throughput_2": mid["throughput_2"], "ratio": mid["ratio"],
        "runs": [{k: r[k] for k in ("throughput_1", "throughput_2", "ratio")} for r in rows],
        "partition_before": lg["partition_before"], "partition_after": lg["partition_after"],
        "switch_at": lg["switch_at"],
        "stage_times_s": {"measured_busy_per_rank": [r["busy_s"] if r else None for r in lg["per_rank"]],
                          "stall_per_rank": [r["stall_s"] if r else None for r in lg["per_rank"]],
                          "single_process_busy": one["busy_s"],
                          "before": decision["stage_times_s"] if decision else None,
                          "after_predicted": decision["stage_times_after_s"] if decision else None},
        "block_times_s": decision["block_times_s"] if decision else None,
        "overheads_s": decision["overheads_s"] if decision else None,
        "frames": cfg.frames, "decode": cfg.decode, "ranks": ranks, "threads_per_rank": cfg.threads,
        "steady_window": lg["steady_window"], "equal": equal, "load_avg_1min_before": load,
    }


# ------------------------------------------------------------------------------------------------
# the command line (torchrun, or one process, or a local launch)
# ------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m accelframe_adapters.parallel",
        description="StreamDiffusionV2's pipeline-parallel stream batch: one text-to-video stream on the "
                    "self-forcing Wan DiT with its blocks split over ranks in a ring (docs/pipeline-parallel.md). "
                    "Under torchrun every process is one rank (RANK, WORLD_SIZE, LOCAL_RANK from the "
                    "environment; gloo on the CPU, nccl on cuda:LOCAL_RANK). Without torchrun, --ranks R "
                    "spawns R local processes itself.",
        epilog="examples:\n"
               "  torchrun --nproc-per-node 2 -m accelframe_adapters.parallel --latent-frames 24 --out out.pt\n"
               "  python -m accelframe_adapters.parallel --ranks 2 --latent-frames 24 --out out.pt --json\n"
               "  python -m accelframe_adapters.parallel --compare --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from accelframe.cli import add_latent_frame_options

    add_latent_frame_options(p, default=24, latent_help="latent frames, whole chunks of 3 (default: 24)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text prompt (default: a world prompt)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--size", default="world", choices=SIZES,
                   help="model: the world's weights or random ones (default: world)")
    p.add_argument("--steps", default=None, metavar="LIST",
                   help="denoising step list (default: 1000,750,500,250, self-forcing's)")
    p.add_argument("--window", type=int, default=-1,
                   help="local attention window in frames, chunk included (-1: all frames; default)")
    p.add_argument("--sinks", type=int, default=0, help="sink frames the window keeps (default: 0)")
    p.add_argument("--partition", default=None, metavar="BOUNDS",
                   help="start partition, e.g. 0,1,4 (rank r runs blocks [b_r, b_r+1); default: even)")
    p.add_argument("--no-rebalance", action="store_true", help="keep the start partition")
    p.add_argument("--rebalance-at", type=int, default=None, metavar="M",
                   help="micro-step whose message carries the measured times (default: steady state)")
    p.add_argument("--measure", type=int, default=3, help="micro-steps timed before --rebalance-at (default: 3)")
    p.add_argument("--min-gain", type=float, default=0.05,
                   help="move blocks only when the period shrinks by this fraction (default: 0.05)")
    p.add_argument("--decode", action="store_true", help="the last rank decodes every finished chunk (VAE)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a rank waits for a peer (default: 60)")
    p.add_argument("--device", default=None, help="device (default: cuda:LOCAL_RANK when available, else cpu)")
    p.add_argument("--ranks", type=int, default=1,
                   help="without torchrun: spawn this many local ranks, 1 to the model's DiT blocks "
                        "(default: 1, this process)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the last rank saves {'latents', 'frames', 'log'} here (torch.save); checked before "
                        "any rank starts, its folder created")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print each rank's log as a 'PP_LOG {json}' line")
    p.add_argument("--compare", action="store_true", help="run compare_ranks and print its JSON")
    p.add_argument("--quick", action="store_true", help="with --compare: the short run (about 20 s)")
    p.add_argument("--block-times", default=None, metavar="LIST", help="testing: use these block times (s)")
    p.add_argument("--overheads", default=None, metavar="LIST", help="testing: use these rank overheads (s)")
    p.add_argument("--die-at", default=None, metavar="RANK:M",
                   help="testing: rank RANK kills itself at micro-step M")
    p.add_argument("--hang-at", default=None, metavar="RANK:M",
                   help="testing: rank RANK stops answering at micro-step M")
    p.add_argument("--config", default=None, metavar="FILE", help="all settings as JSON (what launch() passes)")
    return p


def _list(text: str | None, kind: type, flag: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(x) for x in text.replace(":", ",").split(",") if x.strip())
    except ValueError:
        raise ConfigError("pipeline_parallel", flag, text, f"comma-separated {kind.__name__}s") from None


def _rank_step_arg(text: str | None, flag: str) -> tuple[int, int] | None:
    """``RANK:M`` (``--die-at``, ``--hang-at``) as (rank, micro-step), else a ConfigError naming ``flag``."""
    if text is None:
        return None
    rank, sep, step = text.partition(":")
    try:
        pair = (int(rank), int(step)) if sep else None
    except ValueError:
        pair = None
    if pair is None or min(pair) < 0:
        raise ConfigError("pipeline_parallel", flag, text,
                          "RANK:M, two ints >= 0: rank RANK at micro-step M (e.g. 1:5)")
    return pair


def config_from_args(a: argparse.Namespace) -> PPConfig:
    if a.config is not None:
        try:
            text = Path(a.config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("pipeline_parallel", "--config", a.config,
                              f"a readable JSON file ({type(exc).__name__}: {exc})") from None
        return PPConfig.from_json(text)
    return PPConfig(frames=a.latent_frames, prompt=a.prompt, seed=a.seed, size=a.size,
                    steps=_list(a.steps, float, "--steps"), window=a.window, sinks=a.sinks,
                    partition=_list(a.partition, int, "--partition"), rebalance=not a.no_rebalance,
                    rebalance_at=a.rebalance_at, measure=a.measure, min_gain=a.min_gain, decode=a.decode,
                    threads=a.threads, timeout_s=a.timeout, device=a.device,
                    block_times=_list(a.block_times, float, "--block-times"),
                    overheads=_list(a.overheads, float, "--overheads"),
                    die_at=_rank_step_arg(a.die_at, "--die-at"), hang_at=_rank_step_arg(a.hang_at, "--hang-at"))


def _emit(tag: str, doc: dict[str, Any], stream: Any) -> None:
    print(f"{tag} {json.dumps(doc)}", file=stream, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO, format=f"[pp rank {rank}] %(message)s", stream=sys.stderr)
    try:
        a = parser().parse_args(argv)  # a frame count below 1 is a ConfigError here
        if a.compare:
            print(json.dumps(compare_ranks(quick=a.quick), indent=2))
            return 0
        cfg = config_from_args(a)
        from accelframe.outputs import check_output

        if "RANK" not in os.environ:
            cfg.check(a.ranks)  # --ranks 0 or past the model's blocks: refused, not run as one process
        check_output(a.out, owner="pipeline_parallel", field="--out", force=a.force)
        if "RANK" not in os.environ and a.ranks > 1:
            res = launch(cfg, a.ranks)
        else:
            res = run_rank(cfg)
    except RankFailedError as exc:
        _emit("PP_ERROR", {"rank": exc.rank, "seen_by": exc.seen_by, "during": exc.during, "cause": exc.cause,
                           "time": time.time()}, sys.stderr)
        print(f"RankFailedError: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        _emit("PP_CONFIG", {"owner": exc.owner, "field": exc.field, "value": repr(exc.value),
                            "allowed": exc.allowed}, sys.stderr)
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    if a.json:
        _emit("PP_LOG", res.log, sys.stdout)
    if res.latents is not None:
        lg = res.log
        why = f" (rebalance skipped: {lg['rebalance_skipped']})" if lg.get("rebalance_skipped") else ""
        thr = f"{lg['throughput']:.2f} latent frames/s" if lg.get("throughput") else "n/a (no steady window)"
        log.info("%d latent frames; partition %s -> %s%s; steady throughput %s", lg["frames"],
                 lg["partition_before"], lg["partition_after"], why, thr)
        if a.out is not None:
            from accelframe.outputs import atomic_path

            with atomic_path(a.out) as tmp:  # renamed into place when complete
                torch.save({"latents": res.latents, "frames": res.frames, "log": res.log}, tmp)
    return 0


__all__ = ["PPConfig", "RankFailedError", "build_adapter", "compare_ranks", "config_from_args", "launch", "main",
           "num_layers", "parser", "run_rank", "run_reference"]
