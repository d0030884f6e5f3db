"""The live-session protocol over one WebSocket per session (docs/serve.md is its reference).

Client to server: JSON text messages ``{"type": ...}`` (:data:`CLIENT_TYPES`) and, in a video
session, binary messages that are one input frame each (a JPEG or PNG image). Server to client:
JSON text messages (:data:`SERVER_TYPES`) and binary messages that are one output frame each: the
frame's number in the session (4 bytes, big-endian, unsigned) followed by a JPEG image.

:func:`parse` turns a text message into a checked dict or raises :class:`ProtocolError`, whose
``field``, ``value`` and ``allowed`` the server sends back in an ``error`` message (the session
survives a bad message).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from accelframe.errors import AccelframeError

MAX_TEXT_BYTES = 4096  # a control message
MAX_FRAME_BYTES = 1 << 20  # an input frame (a JPEG or PNG image)
MAX_PROMPT_CHARS = 500
MODES = ("text", "video")  # text-to-video, video-to-video

# close codes (1000-1015 are the WebSocket standard's; 4000-4999 are this protocol's)
CLOSE_NORMAL = 1000  # the client stopped, the session ended
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_SERVER_ERROR = 1011  # the stream loop failed
CLOSE_UNAUTHORIZED = 4001  # the token is missing or wrong
CLOSE_REFUSED = 4003  # admission control: the session would push the others past their deadlines
CLOSE_NO_START = 4008  # no valid start message in time

CLIENT_TYPES = {
    "start": "begin the session: prompt, mode ('text' or 'video'), optional seed",
    "prompt": "switch the prompt: the next chunk is made under it, the cached context recomputed",
    "pause": "text sessions: stop making frames until resume",
    "resume": "text sessions: make frames again",
    "knobs": "set the session's own values of a policy's live knobs: policy, knobs ({name: value})",
    "stop": "end the session: frames in flight are sent, then 'ended' and close 1000",
    "metrics": "ask for a metrics message now",
}
MESSAGE_FIELDS = {"start": ("prompt", "mode", "seed"), "prompt": ("prompt",), "knobs": ("policy", "knobs")}
SERVER_TYPES = ("started", "prompt", "knobs", "paused", "resumed", "metrics", "error", "ended")


class ProtocolError(AccelframeError):
    """A client message the server cannot take: sent back as an ``error`` message."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
        super().__init__(f"{field}={shown!r}: expected {allowed}")
        self.field, self.value, self.allowed = field, shown, allowed

    def message(self) -> dict[str, Any]:
        return {"type": "error", "field": self.field, "value": self.value, "allowed": self.allowed,
                "message": str(self)}


def _prompt(msg: dict[str, Any]) -> str:
    prompt = msg.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError("prompt", prompt, f"a non-empty string of at most {MAX_PROMPT_CHARS} characters")
    return prompt.strip()


def parse(text: str | bytes) -> dict[str, Any]:
    """A client's text message, checked: ``{"type": ..., ...}`` with its fields normalised."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_TEXT_BYTES:
        raise ProtocolError("message", f"{size} bytes", f"a control message of at most {MAX_TEXT_BYTES} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("message", text if isinstance(text, str) else repr(text),
                            "a JSON object such as {\"type\": \"start\", \"prompt\": \"...\"}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message", json.dumps(msg)[:80], "a JSON object")
    kind = msg.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("type", kind, "one of " + ", ".join(repr(k) for k in CLIENT_TYPES))
    fields = MESSAGE_FIELDS.get(kind, ())
    unknown = sorted(set(msg) - {"type", *fields})
    if unknown:
        raise ProtocolError(unknown[0], msg[unknown[0]], f"fields of a {kind!r} message: "
                            + (", ".join(fields) or "none besides type"))
    out: dict[str, Any] = {"type": kind}
    if kind == "start":
        out["prompt"] = _prompt(msg)
        mode = msg.get("mode", "text")
        if mode not in MODES:
            raise ProtocolError("mode", mode, "'text' (text-to-video) or 'video' (video-to-video: send frames)")
        seed = msg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ProtocolError("seed", seed, "an int in [0, 2**63)")
        out.update(mode=mode, seed=seed)
    elif kind == "prompt":
        out["prompt"] = _prompt(msg)
    elif kind == "knobs":
        policy, knobs = msg.get("policy"), msg.get("knobs")
        if not isinstance(policy, str) or not policy:
            raise ProtocolError("policy", policy, "the name of a policy of the server's stack")
        if (not isinstance(knobs, dict) or not knobs
                or any(not isinstance(v, (int, float, str, bool)) for v in knobs.values())):
            raise ProtocolError("knobs", knobs, "an object of knob names and values, e.g. {\"tau\": -1.0}")
        out.update(policy=policy, knobs=knobs)
    return out


def frame_message(index: int, jpeg: bytes) -> bytes:
    """An output frame: its number (4 bytes, big-endian) and the JPEG image."""
    return struct.pack(">I", index & 0xFFFFFFFF) + jpeg


def read_frame_message(data: bytes) -> tuple[int, bytes]:
    """(frame number, JPEG bytes) of an output frame message (what a client does)."""
    if len(data) < 5:
        raise ProtocolError("frame", f"{len(data)} bytes", "a 4-byte frame number followed by a JPEG image")
    return struct.unpack(">I", data[:4])[0], data[4:]


__all__ = ["CLIENT_TYPES", "CLOSE_GOING_AWAY", "CLOSE_NORMAL", "CLOSE_NO_START", "CLOSE_REFUSED",
           "CLOSE_SERVER_ERROR", "CLOSE_UNAUTHORIZED", "MAX_FRAME_BYTES", "MAX_TEXT_BYTES", "MODES",
           "ProtocolError", "SERVER_TYPES", "frame_message", "parse", "read_frame_message"]
