"""``accelframe serve``'s protocol with an in-process client (Starlette's TestClient) on the analytic
adapter: every message type, bad messages, close codes, the token, admission refusal, disconnects,
slow clients, shutdown and recording. The page in a real browser: tests/browser/ (own CI job)."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from accelframe import hookimpl  # noqa: E402
from accelframe.errors import ConfigError  # noqa: E402
from accelframe.pipeline import Pipeline  # noqa: E402
from accelframe.serve import protocol as proto  # noqa: E402
from accelframe.serve.app import create_app  # noqa: E402
from accelframe.serve.hub import Hub, Outbox  # noqa: E402
from accelframe.streaming.loop import AdmissionRefused  # noqa: E402
from accelframe.testing.fixtures import make_hooks  # noqa: E402

TOKEN = "s3cret-token"


def pipe(*policies) -> Pipeline:
    p = Pipeline("analytic", hooks=make_hooks(), adapter_kwargs={"plan": "block", "unit_frames": 2, "steps": 2,
                                                                 "height": 8, "width": 8})
    for pol in policies:
        p.use(pol)
    return p


def client(*policies, token=TOKEN, **kw) -> TestClient:
    hub = Hub(pipe(*policies), fps=kw.pop("fps", 50.0), deadline_s=2.0, **kw)
    return TestClient(create_app(hub, token=token, metrics_interval_s=0.2, start_timeout_s=kw.pop("start", 5.0)))


def url(token=TOKEN) -> str:
    return f"/ws?token={token}" if token else "/ws"


def drain(ws, limit: int = 10_000) -> dict:
    """Read until the server closes: frames (index, pixels), JSON messages, the close code and reason."""
    out = {"frames": [], "json": [], "code": None, "reason": ""}
    for _ in range(limit):
        msg = ws.receive()
        if msg["type"] == "websocket.close":
            out["code"], out["reason"] = msg.get("code"), msg.get("reason", "")
            break
        if msg.get("bytes") is not None:
            index, jpeg = proto.read_frame_message(msg["bytes"])
            out["frames"].append((index, Image.open(io.BytesIO(jpeg)).size))
        else:
            out["json"].append(json.loads(msg["text"]))
    return out


def until(ws, kind: str, limit: int = 10_000) -> dict:
    """Skip frames and other messages up to the first JSON message of ``kind``."""
    for _ in range(limit):
        msg = ws.receive()
        assert msg["type"] != "websocket.close", msg
        if msg.get("text") is not None and json.loads(msg["text"])["type"] == kind:
            return json.loads(msg["text"])
    raise AssertionError(f"no {kind!r} message")


def png(size=(8, 8), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_a_text_session_starts_sends_frames_in_order_and_stops():
    with client() as c, c.websocket_connect(url()) as ws:
        ws.send_json({"type": "start", "prompt": "a red circle", "seed": 3})
        started = ws.receive_json()
        assert started["type"] == "started" and started["mode"] == "text" and started["size"] == [8, 8]
        frames = []
        while len(frames) < 12:
            msg = ws.receive()
            if msg.get("bytes") is not None:
                frames.append(proto.read_frame_message(msg["bytes"])[0])
        ws.send_json({"type": "metrics"})
        m = until(ws, "metrics")
        assert m["frames"] >= 12 and m["decisions"]["calls"]["target"]["computed"] > 0 and m["batch_streams"] == 1
        ws.send_json({"type": "stop"})
        rest = drain(ws)
    indices = frames + [i for i, _ in rest["frames"]]
    assert indices == list(range(len(indices)))  # every frame once, in order
    assert all(size == (8, 8) for _, size in rest["frames"])
    ended = rest["json"][-1]
    assert ended["type"] == "ended" and ended["frames"] == len(indices) and ended["summary"]["ended"] == "complete"
    assert rest["code"] == proto.CLOSE_NORMAL


def test_the_page_and_health():
    with client() as c:
        page = c.get("/")
        assert page.status_code == 200 and "<canvas" in page.text and "app.js" in page.text
        assert "new WebSocket" in c.get("/app.js").text
        assert c.get("/health").json() == {"running": True, "sessions": 0, "max_sessions": 4, "error": None}
        assert c.get("/metrics").status_code == 401
        doc = c.get(f"/metrics?token={TOKEN}").json()
        assert doc["sessions"] == [] and set(doc["decisions"]) == {"step", "block", "batch"}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_missing_or_wrong_token_is_closed_4001(token):
    with client() as c, c.websocket_connect(url(token)) as ws:
        out = drain(ws)
    assert out["code"] == proto.CLOSE_UNAUTHORIZED and "token" in out["reason"]


def test_bad_messages_get_errors_and_the_session_survives():
    with client() as c, c.websocket_connect(url()) as ws:
        ws.send_bytes(b"\x00\x01")  # binary before start
        assert ws.receive_json()["allowed"] == "a start message first"
        ws.send_text("not json")
        assert ws.receive_json()["field"] == "message"
        ws.send_json({"type": "stop"})  # not a start
        assert ws.receive_json()["allowed"] == "'start' first"
        ws.send_json({"type": "start", "prompt": ""})
        assert ws.receive_json()["field"] == "prompt"
        ws.send_json({"type": "start", "prompt": "a red circle", "mode": "audio"})
        assert ws.receive_json()["field"] == "mode"
        ws.send_json({"type": "start", "prompt": "a red circle"})
        assert ws.receive_json()["type"] == "started"
        for bad, field in ((json.dumps({"type": "dance"}), "type"),
                           (json.dumps({"type": "pause", "prompt": "x"}), "prompt"),
                           (json.dumps({"type": "prompt", "colour": 1}), "colour"),
                           ("x" * (proto.MAX_TEXT_BYTES + 1), "message"),
                           (json.dumps([1, 2]), "message"),
                           (json.dumps({"type": "start", "prompt": "again"}), "type")):
            ws.send_text(bad)
            err = until(ws, "error")
            assert err["field"] == field, (bad[:40], err)
        ws.send_bytes(png())  # a frame in a text session
        assert until(ws, "error")["field"] == "frame"
        ws.send_json({"type": "prompt", "prompt": "a blue square"})  # the analytic model cannot switch
        assert "cannot switch prompts" in until(ws, "error")["message"]
        ws.send_json({"type": "pause"})
        assert until(ws, "paused")["type"] == "paused"
        ws.send_json({"type": "resume"})
        assert until(ws, "resumed")["type"] == "resumed"
        ws.send_json({"type": "stop"})
        out = drain(ws)
    assert out["code"] == proto.CLOSE_NORMAL and out["json"][-1]["type"] == "ended"


def test_a_video_session_runs_on_the_frames_it_is_sent():
    with client() as c, c.websocket_connect(url()) as ws:
        ws.send_json({"type": "start", "prompt": "a red circle", "mode": "video"})
        assert ws.receive_json()["mode"] == "video"
        for k in range(9):
            ws.send_bytes(png(size=(16, 16), colour=(20 * k, 50, 90)))  # resized to the model's 8 x 8
        ws.send_bytes(b"not an image")
        assert until(ws, "error")["allowed"] == "a JPEG or PNG image"
        ws.send_json({"type": "pause"})
        assert until(ws, "error")["field"] == "type"  # a video session pauses when the client stops sending
        ws.send_json({"type": "stop"})
        out = drain(ws)
    ended = out["json"][-1]
    assert ended["type"] == "ended" and ended["frames"] == 9 and out["code"] == proto.CLOSE_NORMAL


class RefuseSecond:
    name = "refuse-second"

    @hookimpl
    def accelframe_batch_admit(self, ctx, fps):
        return "the running session would miss its deadlines" if ctx.streams else None


@pytest.mark.parametrize("policy,max_sessions,reason", [
    (None, 1, "--max-sessions 1"), (RefuseSecond(), 4, "would miss its deadlines")])
def test_admission_refuses_with_4003_and_a_reason(policy, max_sessions, reason):
    with client(*([policy] if policy else []), max_sessions=max_sessions) as c, \
            c.websocket_connect(url()) as first:
        first.send_json({"type": "start", "prompt": "a red circle"})
        assert first.receive_json()["type"] == "started"
        with c.websocket_connect(url()) as second:
            second.send_json({"type": "start", "prompt": "a blue square"})
            out = drain(second)
        assert out["code"] == proto.CLOSE_REFUSED and reason in out["reason"]
        assert out["json"][0]["refused"] is True
        first.send_json({"type": "stop"})
        assert drain(first)["code"] == proto.CLOSE_NORMAL  # the running session did not notice


def test_a_client_that_leaves_frees_its_session_and_the_other_runs_on():
    with client() as c:
        with c.websocket_connect(url()) as stay:
            stay.send_json({"type": "start", "prompt": "a red circle"})
            assert stay.receive_json()["type"] == "started"
            with c.websocket_connect(url()) as leave:
                leave.send_json({"type": "start", "prompt": "a blue square"})
                assert leave.receive_json()["type"] == "started"
                assert c.get("/health").json()["sessions"] == 2
            for _ in range(200):  # the server notices the disconnect and ends that session
                if c.get("/health").json()["sessions"] == 1:
                    break
                time.sleep(0.02)
            assert c.get("/health").json()["sessions"] == 1
            seen = 0
            while seen < 8:
                msg = stay.receive()
                seen += msg.get("bytes") is not None
            stay.send_json({"type": "stop"})
            assert drain(stay)["code"] == proto.CLOSE_NORMAL


def test_a_slow_client_loses_the_oldest_frames_counted():
    box = Outbox(limit=3)
    for k in range(5):
        box.put(k, torch.zeros(3, 2, 2))
    assert box.dropped == 2 and [i for i, _ in box.take()] == [2, 3, 4] and box.take() == []


def test_shutdown_ends_every_session_and_finalises_its_recording(tmp_path):
    import av

    hub = Hub(pipe(), fps=50.0, deadline_s=2.0, record_dir=str(tmp_path)).start()
    session = hub.open("a red circle").result(timeout=10)
    while session.frames < 10:
        time.sleep(0.01)
    hub.shutdown()
    assert session.ended.is_set() and not hub.running and hub.error is None
    path = session.summary["recording"]
    with av.open(path) as f:
        assert sum(1 for _ in f.decode(video=0)) == session.frames
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(AdmissionRefused, match="not running"):
        hub.open("again").result(timeout=5)


def test_protocol_parse_and_frames():
    assert proto.parse('{"type": "start", "prompt": " a red circle "}') == {
        "type": "start", "prompt": "a red circle", "mode": "text", "seed": 0}
    with pytest.raises(proto.ProtocolError, match="seed"):
        proto.parse('{"type": "start", "prompt": "x", "seed": -1}')
    with pytest.raises(proto.ProtocolError, match="prompt"):
        proto.parse(json.dumps({"type": "prompt", "prompt": "x" * (proto.MAX_PROMPT_CHARS + 1)}))
    assert proto.read_frame_message(proto.frame_message(7, b"jpeg")) == (7, b"jpeg")
    with pytest.raises(ConfigError, match="max_sessions"):
        Hub(pipe(), max_sessions=0)


class FailingPlan:
    name = "failing-plan"

    @hookimpl
    def accelframe_batch_plan(self, ctx):
        raise RuntimeError("planner crashed")


def test_a_failing_policy_falls_back_exactly_and_the_session_runs():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's warning
        with client(FailingPlan()) as c, c.websocket_connect(url()) as ws:
            ws.send_json({"type": "start", "prompt": "a red circle"})
            assert ws.receive_json()["type"] == "started"
            frames = 0
            while frames < 8:
                frames += ws.receive().get("bytes") is not None
            ws.send_json({"type": "stop"})
            out = drain(ws)
    assert out["code"] == proto.CLOSE_NORMAL and out["json"][-1]["frames"] >= 8


def test_a_session_sets_its_own_live_knobs():
    from accelframe_policies import plugin as policies_plugin
    from tests.test_step_executor import mean_scorer

    base = {"plan": "block", "unit_frames": 2, "height": 8, "width": 8}
    p = Pipeline("analytic", drafter="analytic", hooks=make_hooks(policies_plugin),
                 adapter_kwargs={**base, "steps": 2}, drafter_kwargs={**base, "steps": 1})
    p.use("sdvg", tau=0.0, scorer=mean_scorer)
    app = create_app(Hub(p, fps=50.0, deadline_s=2.0), token=TOKEN, metrics_interval_s=0.2)
    with TestClient(app) as c, c.websocket_connect(url()) as ws:
        ws.send_json({"type": "start", "prompt": "a red circle"})
        assert ws.receive_json()["type"] == "started"
        ws.send_json({"type": "knobs", "policy": "sdvg", "knobs": {"tau": 1e9}})
        ack = until(ws, "knobs")
        assert ack["knobs"] == {"tau": 1e9} and ack["policy"] == "sdvg"
        for bad, field in (({"type": "knobs", "policy": "scope", "knobs": {"tau_c": 0.1}}, "policy"),
                           ({"type": "knobs", "policy": "sdvg", "knobs": {"aggregation": "mean"}}, "knob"),
                           ({"type": "knobs", "policy": "sdvg", "knobs": {"tau": "high"}}, "tau"),
                           ({"type": "knobs", "policy": "sdvg", "knobs": {}}, "knobs"),
                           ({"type": "knobs", "knobs": {"tau": 1}}, "policy")):
            ws.send_json(bad)
            err = until(ws, "error")
            assert err.get("field") == field, (bad, err)
        ws.send_json({"type": "stop"})
        out = drain(ws)
    ended = out["json"][-1]
    assert out["code"] == proto.CLOSE_NORMAL and ended["decisions"]["blocks"]["accepted"] <= 1


def test_no_start_in_time_is_closed_4008():
    hub = Hub(pipe(), fps=50.0, deadline_s=2.0)
    with TestClient(create_app(hub, token=None, start_timeout_s=0.3)) as c, c.websocket_connect("/ws") as ws:
        ws.send_text("not json")
        assert ws.receive_json()["field"] == "message"
        out = drain(ws)
    assert out["code"] == proto.CLOSE_NO_START and "no start message" in out["reason"]


def test_a_stream_loop_that_fails_ends_its_sessions_with_1011():
    import warnings

    p = Pipeline("analytic", hooks=make_hooks(), strict=True,  # strict: a policy's failure raises
                 adapter_kwargs={"plan": "block", "unit_frames": 2, "steps": 2, "height": 8, "width": 8})
    p.use(FailingPlan())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with TestClient(create_app(Hub(p, fps=50.0), token=None)) as c, c.websocket_connect("/ws") as ws:
            ws.send_json({"type": "start", "prompt": "a red circle"})
            assert ws.receive_json()["type"] == "started"
            out = drain(ws)
            assert c.get("/health").json()["error"] is not None
    assert out["code"] == proto.CLOSE_SERVER_ERROR and "planner crashed" in out["json"][-1]["error"]
