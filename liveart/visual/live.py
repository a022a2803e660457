"""The live display: the generator's pictures, moved by what the engine plays, on a local web page.

    display = LiveDisplay(model_path, DisplayOptions(port=8765), sample_rate=48000)  # starts the process
    display.url                                    # http://127.0.0.1:8765/
    display.feed(start, end, rms, onsets, places)  # after blocks: what the engine played (any thread)
    display.close()

Everything visual runs in its own process (``multiprocessing`` spawn): the driver, the generator
(onnxruntime, CUDA when a session truly runs there, else one CPU thread at a lower priority), the
JPEG encoder and the web server. The audio process only sends what the engine played, a few small
messages a second, so the generator never holds the audio process's GIL.

Time is the engine's, not the wall clock's: frame k shows the musical state at k / fps seconds after
the first block the display heard, the same rule as the offline video (:mod:`liveart.hosts.video`).
When the generator falls behind, the frames it could not make in time are skipped (their latents are
still computed, so the picture's motion is the same) and counted.

Frames go out at the generator's own size (128x128 for the shipped one) and the page scales them to
the shown size (``--size``, 512 by default) and the screen in one step, with the browser's
high-quality smoothing: the display process spends no time on an upsample, the JPEGs are a
sixteenth of the pixels, and a projector's full screen is one interpolation from the generator's
pixels rather than two. (The offline video, which needs the pixels, upsamples with Pillow's bicubic.)

The page (``/``) shows the newest frame full screen (a projector, or an OBS browser source), the
frames a second it draws, and reconnects by itself when the server goes away and comes back
(``?overlay=0`` hides the figures). The page reads ``/stream``, one response that carries every new
frame as it is made (each an 8-byte header, the frame's index and the JPEG's length as two
big-endian 32-bit numbers, then the JPEG), and draws the newest it has; it costs no request a frame.
``/frame?after=N&epoch=E`` answers with the first frame newer than N (waiting up to a second), for
other clients; ``/status`` with the server's figures and the pages' reports, which the pages post to
``/report`` every second.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing as mp
import os
import struct
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from ..errors import LiveartError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
START_TIMEOUT_S = 60.0  # loading onnxruntime and the generator in a fresh process
FRAME_WAIT_S = 1.0  # a page's request for a new frame waits this long before an empty answer
JPEG_QUALITY = 92  # the page scales the generator's pixels up: artefacts grow with them
VISUAL_NICE = 5  # the display's process yields to everything else on the machine
REPORTS_KEPT = 64


@dataclasses.dataclass(frozen=True)
class DisplayOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port
    fps: float = 30.0
    size: int = 512
    device: str = "auto"
    seed: int = 0
    driver: dict = dataclasses.field(default_factory=dict)  # DriverSettings fields (a patch's [visual])


class LiveDisplay:
    """The display's process, seen from the audio process."""

    def __init__(self, model_path: str | Path, options: DisplayOptions, sample_rate: int):
        if not 1.0 <= options.fps <= 120.0:
            raise LiveartError(f"--fps {options.fps:g} is not allowed; use 1 to 120")
        if not 16 <= options.size <= 4096 or options.size % 2:
            raise LiveartError(f"--size {options.size} is not allowed; use an even number of pixels from 16 to 4096")
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()  # feed() may be called from more than one thread
        self.process = ctx.Process(target=_serve, args=(child, str(model_path), options, sample_rate),
                                   name="liveart-visual", daemon=True)
        self.process.start()
        child.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self.close()
            raise LiveartError(f"the visual display did not start within {START_TIMEOUT_S:.0f} s")
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self.close()
            raise LiveartError("the visual display's process ended while starting") from None
        if kind == "error":
            self.close()
            raise LiveartError(value)
        self.url, self.device = value["url"], value["device"]
        self.closed = False

    def feed(self, start_frame: int, end_frame: int, rms: float, onsets: list, places: np.ndarray | None) -> None:
        """What the engine played from ``start_frame`` to ``end_frame`` (exclusive): the blocks' RMS,
        the onsets (frame, channel, note, velocity) and, if any note began, the channels' timbre places."""
        if self.closed:
            return
        with self._lock:
            try:
                self._conn.send((int(start_frame), int(end_frame), float(rms), onsets, places))
            except (BrokenPipeError, OSError, EOFError):
                self.closed = True

    def status(self) -> dict | None:
        """The server's figures (from its process), or None if it has gone."""
        if self.closed:
            return None
        with self._lock:
            try:
                self._conn.send(("status",))
                if self._conn.poll(5.0):
                    return self._conn.recv()[1]
            except (BrokenPipeError, OSError, EOFError):
                self.closed = True
        return None

    def close(self) -> dict | None:
        """Stop the display; returns its last figures."""
        figures = self.status() if not getattr(self, "closed", True) else None
        self.closed = True
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError, EOFError):
            pass
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=2.0)
        self._conn.close()
        return figures


# ---------------------------------------------------------------------------------- the display's process
class _Frames:
    """The newest frame, for the web server's threads."""

    def __init__(self):
        self.epoch = uuid.uuid4().hex[:12]  # a restarted server has a new epoch: pages start over
        self.index = -1
        self.jpeg = b""
        self.cond = threading.Condition()
        self.reports: deque = deque(maxlen=REPORTS_KEPT)
        self.requests = 0
        self.closing = False  # the server is stopping: streams end

    def publish(self, index: int, jpeg: bytes) -> None:
        with self.cond:
            self.index, self.jpeg = index, jpeg
            self.cond.notify_all()

    def newer(self, after: int, epoch: str, timeout: float):
        with self.cond:
            self.requests += 1
            if epoch != self.epoch:
                after = -1
            self.cond.wait_for(lambda: self.index > after, timeout)
            return (self.index, self.jpeg) if self.index > after else None


def _handler(frames: _Frames, status, shown: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a page fetches one frame after another

        def log_message(self, *args):  # no request log on the terminal
            pass

        def _send(self, code: int, body: bytes, kind: str, headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif url.path == "/frame":
                try:
                    after = int(query.get("after", ["-1"])[0])
                except ValueError:
                    after = -1
                got = frames.newer(after, query.get("epoch", [""])[0], FRAME_WAIT_S)
                if got is None:
                    self._send(204, b"", "image/jpeg", {"X-Epoch": frames.epoch})
                else:
                    self._send(200, got[1], "image/jpeg", {"X-Frame-Index": str(got[0]), "X-Epoch": frames.epoch})
            elif url.path == "/stream":
                self._stream()
            elif url.path == "/status":
                self._send(200, json.dumps(status()).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _stream(self):
            """Every new frame, as it is made, on one response (it ends when the page goes away)."""
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Epoch", frames.epoch)
            self.send_header("X-Shown-Size", str(shown))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            after = -1
            try:
                while not frames.closing:
                    got = frames.newer(after, frames.epoch, FRAME_WAIT_S)
                    if got is None:
                        continue
                    after, jpeg = got
                    self.wfile.write(struct.pack(">II", after, len(jpeg)) + jpeg)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass

        def do_POST(self):
            if urlparse(self.path).path != "/report":
                self._send(404, b"not found\n", "text/plain")
                return
            length = min(int(self.headers.get("Content-Length", "0") or 0), 1 << 20)
            try:
                report = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, b"not JSON\n", "text/plain")
                return
            report["received"] = time.time()
            frames.reports.append(report)
            self._send(204, b"", "text/plain")

    return Handler


def _serve(conn, model_path: str, options: DisplayOptions, sample_rate: int) -> None:
    """The display's process: generator, driver and web server; ends when the pipe closes."""
    try:
        os.nice(VISUAL_NICE)
    except OSError:
        pass
    try:
        from ..errors import ModelError
        from .driver import Driver, DriverSettings
        from .generator import VisualGenerator

        try:
            generator = VisualGenerator.load(model_path, shown=options.size, device=options.device, threads=1)
            settings = DriverSettings(**options.driver)
        except (ModelError, TypeError) as e:
            conn.send(("error", str(e)))
            return
        frames = _Frames()
        made = {"frames": 0, "skipped": 0, "generate_ms": deque(maxlen=512), "error": None}

        def status() -> dict:
            ms = np.array(made["generate_ms"]) if made["generate_ms"] else np.zeros(1)
            return {"epoch": frames.epoch, "index": frames.index, "frames_made": made["frames"],
                    "frames_skipped": made["skipped"], "generate_ms_p50": float(np.median(ms)),
                    "generate_ms_p99": float(np.percentile(ms, 99)), "device": generator.device,
                    "fps": options.fps, "size": options.size, "requests": frames.requests, "error": made["error"],
                    "reports": list(frames.reports)}

        try:
            server = ThreadingHTTPServer((options.host, options.port), _handler(frames, status, options.size))
        except OSError as e:
            conn.send(("error", f"the visual display cannot listen on {options.host}:{options.port} ({e.strerror or e}); "
                                f"choose another with --visual-port"))
            return
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="liveart-visual-http", daemon=True).start()
        host, port = server.server_address[:2]
        conn.send(("ready", {"url": f"http://{host}:{port}/", "device": generator.device}))
        driver = Driver(settings, generator.z_dim, options.seed)
        frame0 = None  # the engine frame the display's time starts at
        k = 0  # the next video frame

        def show(z: np.ndarray, index: int) -> None:
            from PIL import Image

            t0 = time.perf_counter()
            image = generator.pixels(z[None, :])[0]  # the page scales it to the shown size
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
            made["generate_ms"].append(1000 * (time.perf_counter() - t0))
            made["frames"] += 1
            frames.publish(index, buf.getvalue())

        try:
            while True:
                message = conn.recv()
                if message is None:
                    break
                if message[0] == "status":
                    conn.send(("status", status()))
                    continue
                batch = [message]
                while conn.poll():  # everything already sent: catch up in one go
                    m = conn.recv()
                    if m is None or m[0] == "status":
                        if m is None:
                            batch.append(None)
                            break
                        conn.send(("status", status()))
                        continue
                    batch.append(m)
                stop = batch[-1] is None
                due: tuple[np.ndarray, int] | None = None
                try:
                    for item in batch:
                        if item is None:
                            break
                        start_frame, end_frame, rms, onsets, places = item
                        if frame0 is None:
                            frame0 = start_frame
                        # Frame k hears what was played before k / fps (the offline video's rule).
                        for frame, channel, note, velocity in onsets:
                            t = max((frame - frame0) / sample_rate, driver.time)
                            while k / options.fps <= t:
                                if due is not None:
                                    made["skipped"] += 1
                                due = (driver.frame(k / options.fps), k)
                                k += 1
                            if channel != 9:  # percussion has no pitch class
                                driver.onset(t, note, velocity)
                        end = max((end_frame - frame0) / sample_rate, driver.time)
                        while k / options.fps < end:
                            if due is not None:
                                made["skipped"] += 1
                            due = (driver.frame(k / options.fps), k)
                            k += 1
                        driver.level(end, rms)
                        if places is not None and onsets:
                            played = sorted({c for _f, c, _n, _v in onsets})
                            driver.timbre(end, np.asarray(places)[played].mean(axis=0))
                    if due is not None:
                        show(*due)
                except Exception as e:  # the picture stops moving; the audio process is told, plays on
                    made["error"] = f"{type(e).__name__}: {e}"
                if stop:
                    break
        finally:
            frames.closing = True
            server.shutdown()
            server.server_close()
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>liveart</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
html, body { margin: 0; height: 100%; background: #000; overflow: hidden; cursor: none; }
canvas { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain; }
#info { position: absolute; left: 8px; top: 6px; font: 12px/1.3 monospace; color: #ccc;
        text-shadow: 0 0 3px #000; pointer-events: none; }
</style></head>
<body><canvas id="view" width="512" height="512"></canvas><div id="info">connecting</div>
<script>
"use strict";
const view = document.getElementById("view"), ctx = view.getContext("2d");
const info = document.getElementById("info");
if (new URLSearchParams(location.search).get("overlay") === "0") info.style.display = "none";
const thumb = document.createElement("canvas"); thumb.width = thumb.height = 16;
const tctx = thumb.getContext("2d", { willReadFrequently: true });
let epoch = "", index = -1, drawn = 0, previous = null, times = [], changes = [], connected = false;
const sleep = ms => new Promise(r => setTimeout(r, ms));

function change(bitmap) {  // mean absolute difference of a 16x16 thumbnail from the last frame's, 0..255
  tctx.drawImage(bitmap, 0, 0, 16, 16);
  const px = tctx.getImageData(0, 0, 16, 16).data;
  let sum = 0;
  if (previous) for (let i = 0; i < px.length; i += 4) sum += Math.abs(px[i] - previous[i]) +
      Math.abs(px[i + 1] - previous[i + 1]) + Math.abs(px[i + 2] - previous[i + 2]);
  previous = px;
  return sum / (16 * 16 * 3);
}

let shown = 512;
async function draw(i, jpeg) {  // the generator's own pixels, scaled here to the shown size
  const bitmap = await createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }));
  if (view.width !== shown) { view.width = view.height = shown; }
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, shown, shown);
  changes.push([i, change(bitmap)]);
  bitmap.close();
  index = i; drawn++;
  times.push(performance.now());
}

async function frames() {  // one response carries every frame: [index u32][length u32][JPEG] ...
  for (;;) {
    try {
      const r = await fetch("/stream", { cache: "no-store" });
      if (!r.ok) throw new Error(`status ${r.status}`);
      epoch = r.headers.get("X-Epoch") || epoch; connected = true;
      shown = Number(r.headers.get("X-Shown-Size")) || shown;
      const reader = r.body.getReader();
      let buf = new Uint8Array(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the stream ended");
        const joined = new Uint8Array(buf.length + value.length);
        joined.set(buf); joined.set(value, buf.length); buf = joined;
        let newest = null, at = 0;
        while (buf.length - at >= 8) {  // every whole frame received; only the newest is drawn
          const head = new DataView(buf.buffer, buf.byteOffset + at, 8);
          const i = head.getUint32(0), n = head.getUint32(4);
          if (buf.length - at - 8 < n) break;
          newest = [i, buf.subarray(at + 8, at + 8 + n)];
          at += 8 + n;
        }
        buf = buf.slice(at);
        if (newest) await draw(newest[0], newest[1]);
      }
    } catch (err) {
      connected = false;
      info.textContent = "reconnecting";
      await sleep(1000);
    }
  }
}

async function report() {
  for (;;) {
    await sleep(1000);
    const now = performance.now();
    times = times.filter(t => now - t <= 1000);
    if (connected) info.textContent = `${times.length} fps  frame ${index}`;
    const body = JSON.stringify({ epoch, index, drawn, fps: times.length, changes });
    changes = [];
    try { await fetch("/report", { method: "POST", body, headers: { "Content-Type": "application/json" } }); }
    catch (err) { /* the frame loop reconnects */ }
  }
}
frames(); report();
</script></body></html>
"""
