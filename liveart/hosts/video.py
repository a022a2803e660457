"""Offline video: frame k of the video is computed from the musical state at exactly k / fps seconds.

The offline host renders the audio in blocks that end on video-frame times; after each block the
driver (:mod:`liveart.visual.driver`) hears what the engine played in it (onsets at their frames,
the block's loudness, the timbre places) and gives the latent of the next frame. The generator turns
the latents into pictures, and ffmpeg (the Debian program) encodes them with the rendered audio
into an MP4, written beside the target and renamed over it when complete.
"""

from __future__ import annotations

import math
from fractions import Fraction
import shutil
import subprocess
import numpy as np

from ..errors import OutputError, RenderError
from ..visual.driver import Driver, DriverSettings

VIDEO_SUFFIXES = (".mp4",)
GENERATOR_BATCH = 8
GENERATOR_WORKERS = 2  # threads generating batches of frames while ffmpeg encodes
GENERATOR_AHEAD = 4  # batches generated ahead of the encoder at most


class FrameClock:
    """Video-frame boundaries in audio frames, exactly: frame k shows what was played before k / fps
    seconds, the audio frames before floor(k * sr / fps) (fps as the exact decimal given: 29.97 is
    2997/100)."""

    def __init__(self, sample_rate: int, fps: float):
        if not (1.0 <= fps <= 120.0):
            raise RenderError(f"--fps {fps:g} is not allowed; use 1 to 120")
        self.sample_rate = sample_rate
        self.fps = fps
        self._rate = Fraction(str(fps)).limit_denominator(100000)  # frames a second, exact

    def boundary(self, k: int) -> int:
        return math.floor(Fraction(k * self.sample_rate) / self._rate)

    def count(self, frames: int) -> int:
        """Video frames covering ``frames`` audio frames: ceil(frames * fps / sr), at least one."""
        return max(1, math.ceil(Fraction(frames) * self._rate / self.sample_rate))


class LatentRecorder:
    """Feeds the driver after each rendered block and records one latent per video frame."""

    def __init__(self, clock: FrameClock, z_dim: int, settings: DriverSettings | None = None, seed: int = 0,
                 timbre_dim: int = 8):
        self.clock = clock
        self.driver = Driver(settings or DriverSettings(), z_dim, seed, timbre_dim)
        self.latents: list[np.ndarray] = [self.driver.frame(0.0)]  # frame 0: nothing heard yet

    def after_block(self, state) -> None:
        """Call after the block that ends on video frame len(latents)'s boundary."""
        sr = self.clock.sample_rate
        played = set()
        for frame, channel, note, velocity in state.onsets:
            if channel != 9:  # percussion has no pitch class
                self.driver.onset(frame / sr, note, velocity)
                played.add(channel)
        # The block ends at or before k / fps (floor boundaries); observe it at k / fps at the latest.
        end = min((state.block_start + state.block_frames) / sr, len(self.latents) / self.clock.fps)
        self.driver.level(end, state.rms)
        positions = getattr(state, "timbre_positions", None)
        if positions is not None and played:  # the places of the channels that just played
            self.driver.timbre(end, positions[sorted(played)].mean(axis=0))
        self.latents.append(self.driver.frame(len(self.latents) / self.clock.fps))


def check_video_size(size: int) -> None:
    if not (16 <= size <= 4096) or size % 2:
        raise RenderError(f"--size {size} is not allowed; use an even number of pixels from 16 to 4096")


def check_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None:
        raise RenderError("--video needs the ffmpeg program; install the Debian package ffmpeg (scripts/setup.sh does)")


def encode(latents: np.ndarray, generator, fps: float, audio_path: str, out_temp: str, progress: bool = False) -> None:
    """Generate every frame and encode them with the audio into ``out_temp`` (an MP4).

    Batches of frames are generated on GENERATOR_WORKERS threads (onnxruntime and Pillow's resize
    let go of the GIL), at most GENERATOR_AHEAD batches ahead of ffmpeg, which encodes meanwhile."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    size = generator.shown
    command = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{size}x{size}", "-r", f"{fps:g}", "-i", "-", "-i", audio_path,
               "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k", "-f", "mp4", out_temp]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    bar = tqdm(total=len(latents), unit="frame", desc="video", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=GENERATOR_WORKERS, thread_name_prefix="liveart-video") as pool:
            starts = iter(range(0, len(latents), GENERATOR_BATCH))
            pending: deque = deque()

            def submit() -> None:
                k = next(starts, None)
                if k is not None:
                    pending.append(pool.submit(generator.images, latents[k : k + GENERATOR_BATCH]))

            for _ in range(GENERATOR_AHEAD):
                submit()
            while pending:
                frames = pending.popleft().result()
                submit()
                proc.stdin.write(frames.tobytes())
                bar.update(len(frames))
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise OutputError(f"ffmpeg could not write the video ({err.splitlines()[-1] if err else 'no message'})")
    except BrokenPipeError:
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        raise OutputError(f"ffmpeg stopped while writing the video ({err.splitlines()[-1] if err else 'no message'})")
    finally:
        bar.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
