"""``accelframe serve`` as a process: bad options refused before any model, and SIGTERM ends every
session cleanly (the client gets its last frames, 'ended' and close 1001; the recording is whole)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from accelframe.cli import main  # noqa: E402
from accelframe.errors import ConfigError  # noqa: E402


@pytest.mark.parametrize("argv,field", [
    (["--host", "0.0.0.0"], "--token"),
    (["--token", "short"], "--token"),
    (["--port", "70000"], "--port"),
    (["--max-sessions", "0"], "--max-sessions"),
    (["--fps", "0"], "--fps"),
])
def test_bad_options_are_refused_before_any_model(argv, field, capsys):
    from accelframe.serve import cli as serve_cli
    import argparse

    p = argparse.ArgumentParser()
    serve_cli.configure(p)
    with pytest.raises(ConfigError) as err:
        serve_cli.check_args(p.parse_args(argv))
    assert err.value.field == field


def test_record_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["serve", "--record", str(f)]) == 2


def test_sigterm_ends_every_session_cleanly(tmp_path):
    from av import open as av_open
    from websockets.sync.client import connect

    rec = tmp_path / "rec"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELFRAME_DISABLE_PLUGIN")}
    env["OMP_NUM_THREADS"] = "1"  # the command as a user runs it: the built-in plugins autoloaded
    proc = subprocess.Popen([sys.executable, "-m", "accelframe", "--threads", "1", "serve", "--size", "tiny",
                             "--port", "0", "--record", str(rec)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)/", line)
        assert found, line + proc.stderr.read()
        port = int(found.group(1))
        frames, texts, close = 0, [], None
        with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            ws.send(json.dumps({"type": "start", "prompt": "a red circle moves left on a blue background"}))
            while frames < 12:
                frames += isinstance(ws.recv(timeout=60), bytes)
            proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    msg = ws.recv(timeout=60)
                    if isinstance(msg, bytes):
                        frames += 1
                    else:
                        texts.append(json.loads(msg))
            except Exception as exc:  # the server closed the connection
                close = getattr(exc, "rcvd", None)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    ended = [t for t in texts if t["type"] == "ended"]
    assert close is not None and close.code == 1001 and len(ended) == 1
    assert ended[0]["frames"] == frames  # every frame the loop emitted reached the client
    [path] = list(rec.iterdir())
    with av_open(str(path)) as f:
        assert sum(1 for _ in f.decode(video=0)) == frames
    assert ended[0]["summary"]["recording"] == str(path)
