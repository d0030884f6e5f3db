"""The ASGI app of ``accelframe serve`` (Starlette): the page, ``/health``, ``/metrics`` (every
session's metrics and the decisions; the token as ``?token=``) and one WebSocket per session
speaking :mod:`accelframe.serve.protocol` over the :class:`~accelframe.serve.hub.Hub`.

Per connection three tasks run on the event loop: the receiver (control messages, input frames),
the sender (output frames from the session's outbox, JPEG-encoded as they are sent, so frames
dropped for a slow client are never encoded) and the metrics ticker. A send that waits on a slow
client holds only its own session's tasks; the stream loop runs on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from importlib import resources
from typing import Any

from accelframe.errors import AccelframeError, ConfigError
from accelframe.serve import protocol as proto
from accelframe.serve.hub import Hub, Session
from accelframe.serve.images import decode_image, encode_jpeg
from accelframe.streaming.live import BacklogError

PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript")}
START_TIMEOUT_S = 30.0  # a connection without a valid start message this long is closed (4008)
CLOSE_REASON_BYTES = 120  # a close frame's reason is at most 123 bytes


def _reason(text: str) -> str:
    raw = text.encode()[:CLOSE_REASON_BYTES]
    return raw.decode(errors="ignore")


def create_app(hub: Hub, *, token: str | None = None, metrics_interval_s: float = 1.0,
               start_timeout_s: float = START_TIMEOUT_S) -> Any:
    """The app serving ``hub``'s sessions; ``token``: every WebSocket must carry it (``?token=``).
    The hub's loop is started with the app and shut down with it (every session ended, recordings
    finalised)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute

    def page(request: Any) -> Response:
        name, media = PAGE_FILES[request.url.path]
        body = resources.files("accelframe.serve").joinpath("page", name).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "no-store"})

    def metrics(request: Any) -> JSONResponse:
        if token is not None and not secrets.compare_digest(request.query_params.get("token", ""), token):
            return JSONResponse({"error": "missing or wrong token (?token=...)"}, status_code=401)
        return JSONResponse(hub.metrics())

    def health(request: Any) -> JSONResponse:
        return JSONResponse({"running": hub.running, "sessions": len(hub.sessions),
                             "max_sessions": hub.max_sessions, "error": repr(hub.error) if hub.error else None})

    async def session(ws: Any) -> None:
        await ws.accept()
        if token is not None and not secrets.compare_digest(ws.query_params.get("token", ""), token):
            await ws.close(proto.CLOSE_UNAUTHORIZED, "missing or wrong token (?token=...)")
            return
        conn = Connection(ws, hub, metrics_interval_s, start_timeout_s)
        connections.add(conn)
        try:
            await conn.run()
        finally:
            connections.discard(conn)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        if not hub.running:
            hub.start()
        yield
        await asyncio.to_thread(hub.shutdown)

    connections: set[Connection] = set()
    routes = [Route(path, page) for path in PAGE_FILES]
    routes += [Route("/health", health), Route("/metrics", metrics), WebSocketRoute("/ws", session)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.connections = connections  # open sessions' connections (a graceful shutdown waits for them)
    return app


async def drain(app: Any, hub: Hub, timeout_s: float = 30.0) -> None:
    """End every session and wait until each client got its last frames, ``ended`` and close 1001
    (at most ``timeout_s``): what a server does on SIGTERM before it stops."""
    hub.loop.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while app.state.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)


class Connection:
    """One client's WebSocket: start, then the session's three tasks (see the module docstring)."""

    def __init__(self, ws: Any, hub: Hub, metrics_interval_s: float, start_timeout_s: float) -> None:
        self.ws, self.hub = ws, hub
        self.metrics_interval_s, self.start_timeout_s = metrics_interval_s, start_timeout_s
        self.send_lock = asyncio.Lock()
        self.session: Session | None = None
        self.wake = asyncio.Event()

    async def send_json(self, msg: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_json(msg)

    async def close(self, code: int, reason: str = "") -> None:
        async with self.send_lock:
            with contextlib.suppress(RuntimeError, OSError):
                await self.ws.close(code, _reason(reason))

    async def error(self, exc: AccelframeError) -> None:
        if isinstance(exc, proto.ProtocolError):
            msg = exc.message()
        elif isinstance(exc, ConfigError):  # a value the session's pipeline refused (a knob, say)
            value = exc.value if exc.value is None or isinstance(exc.value, (int, float, str, bool)) \
                else repr(exc.value)
            msg = {"type": "error", "field": exc.field, "value": value, "allowed": exc.allowed,
                   "message": str(exc)}
        else:
            msg = {"type": "error", "message": str(exc)}
        await self.send_json(msg)

    async def receive(self) -> dict[str, Any] | None:
        """The next message, None once the client is gone."""
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            return None
        return msg

    async def wait_start(self) -> dict[str, Any] | None:
        """The client's start message (bad ones answered with errors), None if it left or took too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while True:
            try:
                msg = await asyncio.wait_for(self.receive(), timeout=max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await self.close(proto.CLOSE_NO_START, f"no start message in {self.start_timeout_s:g} s")
                return None
            if msg is None:
                return None
            if msg.get("text") is None:
                await self.error(proto.ProtocolError("message", "binary data", "a start message first"))
                continue
            try:
                start = proto.parse(msg["text"])
            except proto.ProtocolError as exc:
                await self.error(exc)
                continue
            if start["type"] != "start":
                await self.error(proto.ProtocolError("type", start["type"], "'start' first"))
                continue
            return start

    async def run(self) -> None:
        start = await self.wait_start()
        if start is None:
            return
        try:
            session = await asyncio.wrap_future(self.hub.open(start["prompt"], seed=start["seed"],
                                                              video=start["mode"] == "video"))
        except AccelframeError as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            await self.send_json({"type": "error", "message": f"refused: {reason}", "refused": True})
            await self.close(proto.CLOSE_REFUSED, f"refused: {reason}")
            return
        self.session = session
        aloop = asyncio.get_running_loop()
        session.outbox.notify = lambda: aloop.call_soon_threadsafe(self.wake.set)
        self.wake.set()  # frames may have come before the notifier was in place
        h, w = self.hub.pixel_size
        await self.send_json({"type": "started", "session": session.id, "mode": start["mode"],
                              "prompt": session.source.prompt, "seed": start["seed"], "fps": self.hub.fps,
                              "size": [h, w], "deadline_s": self.hub.deadline_s,
                              "first_chunk_frames": self.hub.first_chunk_frames()})
        sender = asyncio.create_task(self.send_frames())
        ticker = asyncio.create_task(self.send_metrics())
        try:
            while True:
                recv = asyncio.create_task(self.receive())
                done, _ = await asyncio.wait({recv, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:  # the session ended: 'ended' was sent and the socket closed
                    recv.cancel()
                    break
                msg = recv.result()
                if msg is None:  # the client left: its session ends, the others do not notice
                    break
                await self.handle(msg)
        finally:
            self.hub.close(session.id)
            ticker.cancel()
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def handle(self, msg: dict[str, Any]) -> None:
        session = self.session
        assert session is not None
        data = msg.get("bytes")
        if data is not None:
            await self.frame_in(data)
            return
        try:
            m = proto.parse(msg.get("text") or "")
            kind = m["type"]
            if kind == "start":
                raise proto.ProtocolError("type", "start", "one start per connection: the session runs")
            if kind == "prompt":
                session.source.set_prompt(m["prompt"])
                await self.send_json({"type": "prompt", "prompt": m["prompt"], "after_frame": session.frames})
            elif kind in ("pause", "resume"):
                if session.source.frames is not None:
                    raise proto.ProtocolError("type", kind, "'pause' and 'resume' in a text session (a video "
                                                            "session pauses when the client stops sending)")
                session.source.pause() if kind == "pause" else session.source.resume()
                await self.send_json({"type": "paused" if kind == "pause" else "resumed", "frame": session.frames})
            elif kind == "knobs":
                applied = self.hub.set_knobs(session.id, m["policy"], m["knobs"])
                await self.send_json({"type": "knobs", "policy": m["policy"], "knobs": applied,
                                      "after_frame": session.frames})
            elif kind == "stop":
                self.hub.close(session.id)
            elif kind == "metrics":
                await self.send_json(self.metrics())
        except AccelframeError as exc:
            await self.error(exc)

    async def frame_in(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        try:
            if session.source.frames is None:
                raise proto.ProtocolError("frame", "binary data",
                                          "frames in a video session only ('mode': 'video')")
            if len(data) > proto.MAX_FRAME_BYTES:
                raise proto.ProtocolError("frame", f"{len(data)} bytes", f"at most {proto.MAX_FRAME_BYTES} bytes")
            frame = decode_image(data, self.hub.pixel_size)
            session.source.push(frame)
        except BacklogError as exc:
            await self.send_json({"type": "error", "field": "frame", "message": str(exc), "dropped": True})
        except AccelframeError as exc:
            await self.error(exc)

    def metrics(self) -> dict[str, Any]:
        assert self.session is not None
        return {"type": "metrics", **self.hub.session_metrics(self.session), "server": self.hub.decisions(),
                "sessions": len(self.hub.sessions), "max_sessions": self.hub.max_sessions}

    async def send_metrics(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval_s)
            with contextlib.suppress(RuntimeError, OSError):
                await self.send_json(self.metrics())

    async def send_frames(self) -> None:
        """Frames of the outbox as they come; once the session ended and its frames are out:
        'ended' and the close (1000; 1001 when the server shuts down; 1011 if the loop failed)."""
        session = self.session
        assert session is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            done = session.outbox.closed  # closed after its last put: one more take gets every frame
            while True:
                items = session.outbox.take()
                if not items:
                    break
                for index, frame in items:
                    data = proto.frame_message(index, encode_jpeg(frame))
                    async with self.send_lock:
                        await self.ws.send_bytes(data)
            if done:
                break
        if self.hub.error is not None:
            await self.send_json({"type": "ended", "error": repr(self.hub.error),
                                  **self.hub.session_metrics(session)})
            await self.close(proto.CLOSE_SERVER_ERROR, f"the stream loop failed: {self.hub.error!r}")
            return
        stopping = self.hub.loop.stopping
        await self.send_json({"type": "ended", **self.hub.session_metrics(session),
                              "summary": session.summary or {}})
        await self.close(proto.CLOSE_GOING_AWAY if stopping else proto.CLOSE_NORMAL,
                         "the server is shutting down" if stopping else "session ended")


def uvicorn_server(app: Any, host: str, port: int) -> Any:
    """The uvicorn server of ``app``: WebSocket messages up to 4 input frames long (a larger one
    closes the connection; up to that, ours answer an oversized frame with an error), lifespan on
    (the hub starts and shuts down with it)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                        ws_max_size=4 * proto.MAX_FRAME_BYTES, lifespan="on"))


class ServerThread:
    """``create_app(hub)`` on uvicorn in a thread of this process (no signal handlers), on ``host``
    and ``port`` (0: a free one, then in ``.port``): for benches, tests and programs that embed a
    server. A context manager: it returns once the socket is bound, and on exit shuts the server
    down, which ends every session."""

    def __init__(self, hub: Hub, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 metrics_interval_s: float = 1.0) -> None:
        import threading

        self.hub, self.host = hub, host
        app = create_app(hub, token=token, metrics_interval_s=metrics_interval_s)
        self.server = uvicorn_server(app, host, port)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, name="accelframe-serve", daemon=True)
        self.port = port

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        t0 = time.perf_counter()
        while not self.server.started:
            if time.perf_counter() - t0 > 60 or not self.thread.is_alive():
                raise RuntimeError("the server did not start (see its log above)")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(60)


__all__ = ["Connection", "ServerThread", "create_app", "drain", "uvicorn_server"]
