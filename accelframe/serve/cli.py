"""``accelframe serve``: live sessions over WebSockets, a page to drive them (docs/serve.md).

The pipeline is ``accelframe stream``'s (self-forcing on the world's models; ``slo-batch``,
``rolling-kv`` and, for video sessions, ``motion-noise``), with ``--policy`` entries used after
them, or the one a stack file describes (``--stack FILE``). Every check of the command line runs
before any model is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from pathlib import Path
from typing import Any

from accelframe.errors import ConfigError

OWNER = "accelframe serve"
LOOPBACK = "127.0.0.1"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default: 127.0.0.1, this machine only; "
                                                    "any other needs --token)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.add_argument("--token", default=None, help="a secret every WebSocket must carry (?token=...); required "
                                                 "when --host is not a loopback address")
    p.add_argument("--max-sessions", type=int, default=2, help="most sessions at once (default: 2); "
                   "admission control may refuse earlier when the running ones would miss their deadlines")
    p.add_argument("--stack", default=None, metavar="FILE",
                   help="a stack file (TOML; docs/stacking.md): its adapter, drafter and policies are the pipeline "
                        "instead of the options that build one (--size, --block-frames, --drafter-size, "
                        "--max-chunk-units, --no-rolling); its [stream] table gives --stream-batch, --fps and "
                        "--deadline unless they are given. (NAME[:K=V,...] here is the old spelling of --policy.)")
    p.add_argument("--policy", action="append", default=[], metavar="NAME[:K=V,...]",
                   help="a step or block policy used after the stream policies (or the stack file's), repeatable, "
                        "in order (e.g. scope, sdvg:tau=-1.1 with --drafter-size)")
    p.add_argument("--size", default=None, help="model size of the adapter (default: world)")
    p.add_argument("--block-frames", type=int, default=None, help="latent frames per unit (default: 3)")
    p.add_argument("--drafter-size", default=None, metavar="SIZE",
                   help="a self-forcing drafter of this size for block policies (the world's: world-drafter)")
    p.add_argument("--stream-batch", action="store_true",
                   help="run the sessions' denoising steps as rows of batched forwards")
    p.add_argument("--max-chunk-units", type=int, default=None, help="longest chunk, in units (default: 4)")
    p.add_argument("--no-rolling", action="store_true", help="no rolling-kv (sessions end at the model's "
                                                             "frame positions)")
    p.add_argument("--fps", type=float, default=None, help="frames per second of every session (default: 16)")
    p.add_argument("--deadline", type=float, default=None,
                   help="per-frame deadline from arrival to output, seconds (default: 1.5: a unit of 3 latent "
                        "frames buffers 12 pixel frames, 0.75 s at 16 fps, before it can run)")
    p.add_argument("--max-session-s", type=float, default=3600.0,
                   help="longest session, seconds (default: 3600); it ends by itself there")
    p.add_argument("--metrics-interval", type=float, default=1.0,
                   help="seconds between the metrics messages of a session (default: 1)")
    p.add_argument("--no-recache", action="store_true",
                   help="a prompt switch changes the cross-attention only; by default the cached context is "
                        "also recomputed under the new prompt (one model call)")
    p.add_argument("--record", default=None, metavar="DIR",
                   help="write every session to DIR/<UTC date-time>-<session>.mp4 (never over a file)")


STACK_CONFLICTS = (("size", "--size", "[adapter] settings"), ("block_frames", "--block-frames", "[adapter] settings"),
                   ("drafter_size", "--drafter-size", "[drafter]"),
                   ("max_chunk_units", "--max-chunk-units", "slo-batch settings"),
                   ("no_rolling", "--no-rolling", "rolling-kv entry"))


def _old_stack_spelling(args: argparse.Namespace) -> None:
    """``--stack NAME[:K=V]`` (before stack files, ``--stack`` was ``--policy``'s other name): a
    value that is no existing file and does not end in .toml is a policy entry, with a warning."""
    import warnings

    if args.stack is None or Path(args.stack).is_file() or args.stack.endswith(".toml"):
        return
    warnings.warn(f"--stack {args.stack}: a policy entry is now given with --policy; --stack takes a stack file "
                  "(TOML)", FutureWarning, stacklevel=2)
    args.policy = [args.stack, *args.policy]
    args.stack = None


def check_args(args: argparse.Namespace) -> None:
    """Typed errors for bad input, before any model is loaded."""
    from accelframe.streaming.cli import resolve_stack

    _old_stack_spelling(args)
    resolve_stack(args, OWNER, STACK_CONFLICTS, {"fps": 16.0, "deadline": 1.5})
    for name, lo in (("max_sessions", 1), ("block_frames", 1), ("max_chunk_units", 1)):
        value = getattr(args, name)
        if value is None and args.stack_config is not None:  # the file builds the pipeline
            continue
        if not isinstance(value, int) or value < lo:
            raise ConfigError(OWNER, "--" + name.replace("_", "-"), value, f"an int >= {lo}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(OWNER, "--port", args.port, "a port in [0, 65535] (0: a free one)")
    for name in ("fps", "deadline", "max_session_s", "metrics_interval"):
        value = getattr(args, name)
        if not value > 0 or value == float("inf"):
            raise ConfigError(OWNER, "--" + name.replace("_", "-"), value, "a positive number")
    if args.token is not None and len(args.token) < 8:
        raise ConfigError(OWNER, "--token", "(hidden)", "a secret of at least 8 characters")
    if not is_loopback(args.host) and args.token is None:
        raise ConfigError(OWNER, "--token", None, f"a token when binding {args.host!r}, which is not a loopback "
                                                  "address: anyone who reaches it could run sessions")
    if args.record is not None:
        path = Path(args.record)
        if path.exists() and not path.is_dir():
            raise ConfigError(OWNER, "--record", args.record, "a folder (made if missing)")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
        from PIL import Image  # noqa: F401
    except ImportError as exc:
        raise ConfigError(OWNER, "install", exc.name, "the serve extra: pip install -c constraints.txt "
                                                      "'accelframe[serve]'") from None
    from accelframe.cli import parse_policy

    args.policies = [parse_policy(spec) for spec in args.policy]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_hub(args: argparse.Namespace, hooks: Any) -> Any:
    from accelframe.serve.hub import Hub
    from accelframe.streaming.cli import command_pipeline

    pipe = command_pipeline(args, hooks, max_streams=args.max_sessions, motion=True)
    if args.record is not None:
        Path(args.record).mkdir(parents=True, exist_ok=True)
    return Hub(pipe, max_sessions=args.max_sessions, fps=args.fps, deadline_s=args.deadline,
               stream_batch=args.stream_batch, max_session_s=args.max_session_s, record_dir=args.record,
               prompt_recache=not args.no_recache)


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    """``accelframe serve`` on ``hooks``, the CLI's plugin manager (default: the autoloading one)."""
    from accelframe.plugins import create_hooks

    check_args(args)
    hooks = hooks if hooks is not None else create_hooks()
    for name, _ in args.policies:  # before any model is loaded: a typed error naming the policy
        hooks.registry().get("policy", name)
    from accelframe.serve.app import create_app, drain, uvicorn_server

    hub = build_hub(args, hooks)
    app = create_app(hub, token=args.token, metrics_interval_s=args.metrics_interval)
    server = uvicorn_server(app, args.host, args.port)

    async def announce() -> None:  # once the socket is bound: where to point a browser
        while not server.started:
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else args.port
        query = f"/?token={args.token}" if args.token else "/"
        print(f"accelframe serve: open http://{args.host}:{port}{query} (Ctrl-C or SIGTERM ends every session)",
              file=sys.stderr, flush=True)

    # SIGTERM and Ctrl-C end every session cleanly (frames in flight sent, 'ended', close 1001, recordings
    # finalised) before uvicorn stops; a second one stops at once
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    signalled: list[int] = []

    def on_signal(signum: int) -> None:
        signalled.append(signum)
        if len(signalled) > 1:
            server.force_exit = server.should_exit = True
            return
        print("accelframe serve: ending every session (again to stop at once)", file=sys.stderr, flush=True)

        async def stop() -> None:
            await drain(app, hub)
            server.should_exit = True
        asyncio.ensure_future(stop())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        task = asyncio.create_task(announce())
        await server.serve()
        task.cancel()

    asyncio.run(main())
    if hub.error is not None:
        raise hub.error
    return 0


__all__ = ["check_args", "configure", "is_loopback", "run"]
