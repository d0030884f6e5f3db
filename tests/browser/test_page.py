"""The serve page in a real headless Chromium (marked ``browser``; ``.ci/browser`` runs them): a
text session shows changing frames, switches its prompt and stops; video sessions from a file and
from the (fake) camera. The world's self-forcing target serves, as ``accelframe serve`` does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

cdp = pytest.importorskip("tests.browser.cdp")
if cdp.find_browser() is None:
    pytest.skip("no chromium on the PATH (apt-get install chromium)", allow_module_level=True)

# the canvas's pixels: their spread (not blank) and a checksum (changes from frame to frame)
CANVAS = """(() => { const c = document.getElementById('screen');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, min = 255, max = 0;
  for (let i = 0; i < d.length; i += 4) { sum += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7; min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
  return {sum, spread: max - min}; })()"""


def hooks():
    from accelframe.testing.fixtures import make_hooks
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_policies import plugin as policies_plugin

    return make_hooks(adapters_plugin, policies_plugin)


@pytest.fixture(scope="module")
def server():
    import argparse

    from accelframe.serve import cli as serve_cli
    from accelframe.serve.app import ServerThread

    p = argparse.ArgumentParser()
    serve_cli.configure(p)
    args = p.parse_args(["--port", "0", "--max-sessions", "2", "--metrics-interval", "0.5"])
    serve_cli.check_args(args)
    with ServerThread(serve_cli.build_hub(args, hooks()), metrics_interval_s=0.5) as srv:
        yield srv


@pytest.fixture
def browser(tmp_path):
    b = cdp.Browser(tmp_path / "profile")
    yield b
    b.close()


def start(browser, mode: str) -> dict:
    browser.eval(f"document.querySelector('input[name=mode][value={mode}]').checked = true")
    browser.eval("document.getElementById('start').click()")
    return browser.wait("window.accelframe.started")


def test_a_text_session_shows_frames_switches_and_stops(server, browser, tmp_path):
    browser.open(server.url)
    started = start(browser, "text")
    assert started["mode"] == "text" and started["size"] == [64, 64]
    browser.wait("window.accelframe.frames >= 12")
    first = browser.eval(CANVAS)
    browser.wait("window.accelframe.frames >= 30")
    later = browser.eval(CANVAS)
    assert first["spread"] > 30 and later["spread"] > 30  # not blank
    assert first["sum"] != later["sum"]  # it moves
    browser.eval("document.getElementById('prompt').value = 'a yellow square moves up on a gray background'")
    browser.eval("document.getElementById('switch').click()")
    switched = browser.wait("window.accelframe.messages.find(m => m.type === 'prompt')")
    assert switched["prompt"].startswith("a yellow square")
    browser.wait("window.accelframe.messages.some(m => m.type === 'metrics' && m.frames > 100)")
    shot = os.environ.get("ACCELFRAME_PAGE_SCREENSHOT")  # docs: the README's picture of the page
    browser.screenshot(Path(shot) if shot else tmp_path / "page.png")
    browser.eval("document.getElementById('stop').click()")
    closed = browser.wait("window.accelframe.closed")
    assert closed["code"] == 1000
    ended = browser.eval("window.accelframe.messages.find(m => m.type === 'ended')")
    assert ended["frames"] > 60 and ended["prompt"].startswith("a yellow square")


def test_a_video_session_from_a_file(server, browser, tmp_path):
    import av
    import numpy as np

    from accelframe.streaming.cli import stream_source

    clip = stream_source("world", hooks().registry()).clip("a red circle moves left on a blue background",
                                                                  0, 48)
    path = tmp_path / "input.webm"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libvpx", rate=16)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for f in clip:
            rgb = (f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(s.encode(None))
    browser.open(server.url)
    browser.set_files("#file", str(path))
    started = start(browser, "file")
    assert started["mode"] == "video"
    browser.wait("window.accelframe.frames >= 12", timeout=90)
    assert browser.eval(CANVAS)["spread"] > 30
    browser.eval("document.getElementById('stop').click()")
    assert browser.wait("window.accelframe.closed")["code"] == 1000


def test_a_video_session_from_the_camera(server, browser):
    browser.open(server.url)
    assert start(browser, "webcam")["mode"] == "video"
    browser.wait("window.accelframe.frames >= 12", timeout=90)
    browser.eval("document.getElementById('stop').click()")
    assert browser.wait("window.accelframe.closed")["code"] == 1000
