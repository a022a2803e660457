"""The visualizer: the image-set distance the quality target is measured with, the crop sampler,
the generator's training and export, the shipped generator (``models/visual-generator.onnx`` and
its weights ``models/visual.pt``), the driver, and the offline video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liveart.training import swd

MODELS = Path(__file__).resolve().parent.parent / "models"


def _textures(n: int, seed: int, size: int = 64) -> np.ndarray:
    """Images with natural-image statistics: colour noise with a 1/f amplitude spectrum, in -1..1."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    spectrum = rng.standard_normal((n, 3, size, size // 2 + 1)) + 1j * rng.standard_normal((n, 3, size, size // 2 + 1))
    img = np.fft.irfft2(spectrum / np.maximum(f, 1.0 / size), s=(size, size))
    img /= 3 * img.std(axis=(1, 2, 3), keepdims=True)
    return np.clip(img, -1, 1).astype(np.float32)


def test_sliced_wasserstein_orders_copies_blur_and_noise():
    a, b = _textures(48, 1, 128), _textures(48, 2, 128)
    same, levels = swd.sliced_wasserstein(a, b)
    assert len(levels) == 4  # 128 → 64 → 32 → 16: three band-pass levels and the low-pass residual
    blurred, _ = swd.sliced_wasserstein(swd.blurred(a, 1), b)
    noise, _ = swd.sliced_wasserstein(np.random.default_rng(3).uniform(-1, 1, a.shape).astype(np.float32), b)
    assert same < blurred < noise
    assert swd.sliced_wasserstein(a, a)[0] < same, "a set against itself is closest (up to patch sampling)"


def test_random_crops_are_the_size_asked_in_range_flipped_and_keep_to_their_region():
    from liveart.training import visual_data as vd

    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.float32)[None, :, None], (120, 1, 3)).astype(np.uint8)
    data = vd.VisualDataset(["a"], [ramp])
    rng = np.random.default_rng(0)
    train = vd.random_crops(data, "train", 64, 32, rng)
    held = vd.random_crops(data, "eval", 64, 32, rng)
    assert train.shape == (64, 3, 32, 32) and train.dtype == np.float32
    assert train.min() >= -1.0 and train.max() <= 1.0
    slopes = np.sign(train[:, 0, 16, -1] - train[:, 0, 16, 0])
    assert 10 < np.sum(slopes > 0) < 54, "about half the crops are mirrored"
    # The ramp's value says where a pixel came from: training crops never reach the held-out band.
    cut = 255 * (1 - vd.HELD_OUT_BAND) / 127.5 - 1.0
    assert train.max() <= cut + 0.02 and held.min() >= cut - 0.02
    assert vd.region((120, 200, 3), "train")[3] == vd.region((120, 200, 3), "eval")[2]
    assert vd.region((300, 100, 3), "eval")[0] == 180, "a portrait image keeps its bottom band"


def test_generator_export_matches_torch_and_shows_512(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from liveart.training.train_visual import export_onnx
    from liveart.training.visual_model import GanConfig, Generator, GeneratorExport, parameter_count
    from liveart.visual.generator import VisualGenerator

    torch.manual_seed(0)
    g = Generator(GanConfig(base=8)).eval()
    ckpt = tmp_path / "g.pt"
    torch.save({"config": GanConfig(base=8).to_dict(), "g_ema": g.state_dict(), "step": 0, "seed": 0}, ckpt)
    export_onnx(ckpt, tmp_path / "g.onnx")
    gen = VisualGenerator(tmp_path / "g.onnx", shown=512, device="cpu")
    z = torch.randn(2, 128)
    got = gen.raw(z.numpy())
    with torch.no_grad():
        want = GeneratorExport(g)(z).numpy()
    assert got.shape == (2, 3, 128, 128) and np.max(np.abs(got - want)) <= 1e-4
    frames = gen.images(z.numpy())
    assert frames.shape == (2, 512, 512, 3) and frames.dtype == np.uint8
    small = np.asarray(frames[0, ::4, ::4], np.float32) / 255.0
    assert np.abs(small - got[0].transpose(1, 2, 0)).mean() < 0.05, "the upsampled frame is the generator's image"
    assert parameter_count(Generator(GanConfig())) > 2_000_000


def test_the_shipped_generator_is_the_default_and_matches_its_torch_weights():
    torch = pytest.importorskip("torch")
    from liveart.training.visual_model import GanConfig, Generator, GeneratorExport
    from liveart.visual.generator import VisualGenerator, resolve_visual_model

    path = resolve_visual_model(None)
    assert path.samefile(MODELS / "visual-generator.onnx")
    ckpt = torch.load(MODELS / "visual.pt", map_location="cpu", weights_only=False)
    g = Generator(GanConfig(**ckpt["config"]))
    g.load_state_dict(ckpt["g_ema"])
    gen = VisualGenerator(path, shown=512, device="cpu")
    z = torch.from_numpy(np.random.default_rng(3).standard_normal((4, gen.z_dim)).astype(np.float32))
    with torch.no_grad():
        want = GeneratorExport(g.eval())(z).numpy()
    got = gen.raw(z.numpy())
    assert got.shape == (4, 3, 128, 128) and np.max(np.abs(got - want)) <= 1e-4
    # A trained generator: different latents give different pictures, and not flat ones.
    assert np.abs(got[0] - got[1]).mean() > 0.02 and got.std(axis=(2, 3)).mean() > 0.03


def test_gan_training_runs_keeps_the_best_by_swd_resumes_and_exports(tmp_path):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from liveart.training import visual_data as vd
    from liveart.training.train_visual import train
    from liveart.training.visual_model import GanConfig

    rng = np.random.default_rng(0)
    images = [(np.clip(_textures(1, i, 256)[0].transpose(1, 2, 0), -1, 1) * 127.5 + 127.5).astype(np.uint8)
              for i in range(3)]
    data = vd.VisualDataset(["a", "b", "c"], images)
    config = GanConfig(base=4)
    first = train(data, config, tmp_path, minutes=0.05, threads=1, progress=False, eval_every=2, eval_images=16,
                  batch=4)
    assert first.steps >= 2 and np.isfinite(first.best_swd) and np.isfinite(first.blurred_swd)
    import json

    first_history = json.loads((tmp_path / "visual.train.json").read_text())["history"]
    again = train(data, config, tmp_path, minutes=0.1, threads=1, resume=True, progress=False, eval_every=2,
                  eval_images=16, batch=4)
    history = json.loads((tmp_path / "visual.train.json").read_text())["history"]
    assert again.steps > first.steps and history[: len(first_history)] == first_history, \
        "it went on from the last checkpoint, keeping its history"
    assert again.best_swd == min(h["swd"] for h in history) or abs(again.best_swd - min(h["swd"] for h in history)) < 0.01
    from liveart.training.visual_model import Generator

    last = torch.load(tmp_path / "visual.last.pt", weights_only=False)
    torch.manual_seed(1)  # train() seeds torch, then makes the generator first: its initial weights
    init = Generator(config).state_dict()
    moved = [(torch.norm(last["g_ema"][k] - init[k]) / torch.norm(last["g"][k] - init[k])).item()
             for k in init if init[k].dtype.is_floating_point and init[k].numel() > 16
             and torch.norm(last["g"][k] - init[k]) > 0]
    assert np.median(moved) > 0.5, "early on, the weights' average has followed the generator most of the way"
    # A run of so many steps, seeded, on one thread: the same weights again.
    runs = [train(data, config, tmp_path / name, minutes=5.0, threads=1, progress=False, eval_every=2,
                  eval_images=16, batch=4, max_steps=3) for name in ("x", "y")]
    assert [r.steps for r in runs] == [3, 3]
    x, y = (torch.load(tmp_path / name / "visual.last.pt", weights_only=False)["g"] for name in ("x", "y"))
    assert all(torch.equal(x[k], y[k]) for k in x)
    from liveart.errors import LiveartError

    with pytest.raises(LiveartError, match="resume with the same settings"):
        train(data, GanConfig(base=8), tmp_path, minutes=0.01, threads=1, resume=True, progress=False)
    from liveart.visual.generator import VisualGenerator

    gen = VisualGenerator(again.onnx, shown=512, device="cpu")
    image = gen.images(rng.standard_normal((1, 128)).astype(np.float32))
    assert image.shape == (1, 512, 512, 3)
    assert gen.metadata["kind"] == "liveart-visual-generator" and gen.metadata["shown_size"] == "512"


def test_minibatch_std_the_lr_decay_and_a_run_from_another_runs_generator(tmp_path):
    torch = pytest.importorskip("torch")
    nn_pool = torch.nn.functional.adaptive_avg_pool2d
    from liveart.training.visual_model import Discriminator, GanConfig, minibatch_std

    same = torch.ones(8, 5, 4, 4) * 3.0
    varied = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 5, 4, 4)
    assert torch.allclose(minibatch_std(same), torch.full((8, 1, 4, 4), 1e-4), atol=1e-4)
    # groups of 4: images 0, 2, 4, 6 and 1, 3, 5, 7 (values spread by 2, 4, 6: std sqrt(5))
    assert torch.allclose(minibatch_std(varied), torch.full((8, 1, 4, 4), 5 ** 0.5))
    assert minibatch_std(torch.randn(6, 5, 4, 4)).shape == (6, 1, 4, 4)  # 6 does not divide by 4: one group
    d = Discriminator(GanConfig(base=4, mbstd=True))
    [score] = d(torch.rand(4, 3, 128, 128) * 2 - 1)
    assert score.shape == (4,)
    # A second critic on the pictures pooled to 32x32: it sees the pooled picture only.
    d = Discriminator(GanConfig(base=4, low_d=32)).eval()  # eval: spectral norm's power iteration stands still
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    full, low = d(x)
    assert full.shape == low.shape == (4,)
    assert torch.allclose(d.low(nn_pool(x, 32)), low)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(GanConfig(base=4, low_d=24))
    import json

    from liveart.training import visual_data as vd
    from liveart.training.train_visual import train

    images = [(np.clip(_textures(1, i, 256)[0].transpose(1, 2, 0), -1, 1) * 127.5 + 127.5).astype(np.uint8)
              for i in range(2)]
    result = train(vd.VisualDataset(["a", "b"], images), GanConfig(base=4, mbstd=True, low_d=16), tmp_path, minutes=5.0,
                   threads=1, progress=False, eval_every=2, eval_images=8, batch=4, max_steps=4, lr_decay=True)
    last = torch.load(tmp_path / "visual.last.pt", weights_only=False)
    assert result.steps == 4 and json.loads((tmp_path / "visual.train.json").read_text())["lr_decay"]
    # lr at step 3 of 4: 2e-4 + (2e-5 - 2e-4) * (2 * 3/4 - 1)
    assert last["opt_g"]["param_groups"][0]["lr"] == pytest.approx(2e-4 - 1.8e-4 * 0.5)
    # A second run starts from the first's generator (a new discriminator, without mbstd or low_d here).
    data = vd.VisualDataset(["a", "b"], images)
    train(data, GanConfig(base=4), tmp_path / "again", minutes=5.0, threads=1, progress=False, eval_images=8,
          batch=4, max_steps=0, init=tmp_path / "visual.pt")
    first, second = (torch.load(p, weights_only=False)["g_ema"] for p in (tmp_path / "visual.pt", tmp_path / "again" / "visual.pt"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    from liveart.errors import LiveartError

    with pytest.raises(LiveartError, match="its generator is"):
        train(data, GanConfig(base=8), tmp_path / "other", minutes=5.0, threads=1, progress=False, eval_images=8,
              batch=4, max_steps=0, init=tmp_path / "visual.pt")


def _drive(events, seconds=6.0, fps=30, seed=0, settings=None):
    from liveart.visual.driver import Driver, DriverSettings

    driver = Driver(settings or DriverSettings(), z_dim=128, seed=seed)
    events = sorted(events)
    out, i = [], 0
    for k in range(int(seconds * fps)):
        t = k / fps
        while i < len(events) and events[i][0] <= t:
            driver.onset(events[i][0], events[i][1], events[i][2])
            driver.level(events[i][0], 0.1 * events[i][2] / 127)
            i += 1
        out.append(driver.frame(t))
    return np.array(out)


def _melody(n=24, seed=1):
    rng = np.random.default_rng(seed)
    return [(0.25 * k + 0.01, int(rng.integers(55, 80)), int(rng.integers(60, 120))) for k in range(n)]


def test_the_driver_is_deterministic_and_causal():
    events = _melody()
    a, b = _drive(events), _drive(events)
    assert np.array_equal(a, b), "same events and seed, same latents"
    assert not np.allclose(_drive(events, seed=1), a), "another seed, another picture"
    # Change the future: frames before the change do not move.
    later = [e if e[0] < 3.0 else (e[0], e[1] + 5, e[2]) for e in events]
    c = _drive(later)
    cut = int(3.0 * 30)
    assert np.array_equal(a[:cut], c[:cut]) and not np.allclose(a[cut + 1 :], c[cut + 1 :])


def test_onsets_move_the_picture_within_a_frame():
    """Visual change correlates with onsets: the largest cross-correlation between onset impulses
    and frame-to-frame latent change is at a lag of at most one frame."""
    fps = 30
    events = [(0.5 * k + 0.2, 60 + (k * 5) % 12, 110) for k in range(10)]
    z = _drive(events, seconds=6.0, fps=fps)
    change = np.linalg.norm(np.diff(z, axis=0), axis=1)
    impulses = np.zeros(len(change))
    for t, _, _ in events:
        impulses[int(np.ceil(t * fps)) - 1] = 1.0
    change = (change - change.mean()) / change.std()
    lags = range(0, 6)
    xc = [np.dot(impulses[: len(change) - lag], change[lag:]) for lag in lags]
    assert int(np.argmax(xc)) <= 1
    assert max(xc) > 2.0 * len(events), "an onset frame's change stands out (z-score above 2 on average)"


def test_the_driver_normalises_loudness_causally_and_refuses_time_travel():
    """The same performance 20 dB quieter moves the picture the same once the running statistics
    have settled: loudness counts relative to the piece so far, never to the whole piece."""
    from liveart.visual.driver import Driver, DriverSettings

    rng = np.random.default_rng(4)
    levels = 0.05 * (1.2 + np.sin(np.arange(600) / 15.0)) * rng.uniform(0.8, 1.2, 600)
    loud, quiet = Driver(DriverSettings(), z_dim=16), Driver(DriverSettings(), z_dim=16)
    values = []
    for k, rms in enumerate(levels):
        t = k / 30
        loud.level(t, rms)
        quiet.level(t, rms * 0.1)
        values.append((loud.level_value, quiet.level_value, loud.level_db - quiet.level_db))
    values = np.array(values)
    assert np.allclose(values[300:, 2], 20.0, atol=0.01), "the raw levels differ by 20 dB"
    assert np.max(np.abs(values[300:, 0] - values[300:, 1])) < 0.05, "the normalised ones agree"
    assert np.std(values[300:, 0]) > 0.3, "and they still move with the music"
    driver = Driver(DriverSettings(), z_dim=16)
    driver.frame(1.0)
    with pytest.raises(ValueError, match="time order"):
        driver.onset(0.5, 60, 100)


def _probe(path):
    import json
    import subprocess

    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,nb_read_frames,duration,width,height", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_render_writes_a_synced_video_with_the_audio(tmp_path, tiny_generator):
    import shutil

    import mido
    import soundfile

    from liveart.cli import main

    from .conftest import write_midi

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed here")
    msgs = [mido.Message("program_change", program=73, time=0)]
    for k in range(6):
        msgs += [mido.Message("note_on", note=60 + 2 * k, velocity=100, time=0 if k == 0 else 120),
                 mido.Message("note_off", note=60 + 2 * k, velocity=0, time=240)]
    path = write_midi(tmp_path / "tune.mid", [msgs], midi_type=0)
    assert main(["render", str(path), "-o", str(tmp_path / "t.wav"), "--video", str(tmp_path / "t.mp4"),
                 "--visual-model", str(tiny_generator), "--fps", "25", "--size", "256", "-q"]) == 0
    audio, sr = soundfile.read(tmp_path / "t.wav")
    seconds = len(audio) / sr
    streams = _probe(tmp_path / "t.mp4")
    video, sound = streams["video"], streams["audio"]
    assert int(video["width"]) == int(video["height"]) == 256
    assert int(video["nb_read_frames"]) == int(np.ceil(seconds * 25 - 1e-9)), "duration x fps frames"
    assert float(sound["duration"]) == pytest.approx(seconds, abs=0.05), "the rendered audio, all of it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mp4", "t.wav", "tune.mid"], "no temporary files left"
    # The pictures in the file move with the notes: the largest cross-correlation between the onsets
    # and the decoded frames' change is at a lag of at most one frame.
    import subprocess

    small = 32
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "t.mp4"), "-vf", f"scale={small}:{small}",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, small, small, 3).astype(np.float64)
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # change[k]: from frame k to k + 1
    impulses = np.zeros(len(change))
    for k in range(6):  # note k at 0.375 k s: first heard by the frame after it
        impulses[int(np.floor(0.375 * k * 25))] = 1.0
    change = (change - change.mean()) / change.std()
    xc = [np.dot(impulses[: len(change) - lag], change[lag:]) for lag in range(6)]
    assert int(np.argmax(xc)) <= 1, xc


def test_video_errors_are_one_line_and_leave_nothing(tmp_path, tiny_generator, capsys):
    import mido

    from liveart.cli import main

    from .conftest import write_midi

    path = write_midi(tmp_path / "n.mid", [[mido.Message("note_on", note=60, velocity=100, time=0),
                                            mido.Message("note_off", note=60, velocity=0, time=480)]], midi_type=0)
    for extra, message in ((["--video", str(tmp_path / "v.avi"), "--visual-model", str(tiny_generator)], ".mp4"),
                           (["--video", str(tmp_path / "v.mp4"), "--visual-model",
                             str(MODELS / "timbre-decoder.onnx")], "not a liveart visual generator"),
                           (["--video", str(tmp_path / "v.mp4"), "--visual-model", str(tmp_path / "none.onnx")],
                            "no such model file"),
                           (["--video", str(tmp_path / "v.mp4"), "--visual-model", str(tiny_generator), "--fps", "500"],
                            "--fps"),
                           (["--video", str(tmp_path / "v.mp4"), "--visual-model", str(tiny_generator), "--size", "17"],
                            "even number")):
        assert main(["render", str(path), "-o", str(tmp_path / "n.wav"), *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["n.mid"]


def test_play_checks_the_visual_model_before_opening_any_device(tmp_path, capsys):
    from liveart.cli import main

    for model, message in ((tmp_path / "none.onnx", "no such model file"),
                           (MODELS / "timbre-decoder.onnx", "not a liveart visual generator")):
        # (no audio device or MIDI port is named that exists: the model's error comes first)
        assert main(["play", "--in", "no such controller", "--audio-device", "no such device", "--visual",
                     "--visual-model", str(model), "--no-take"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_a_patch_sets_the_driver_and_bad_values_fail_with_the_key():
    from liveart.errors import PatchError
    from liveart.patch import patch_from_dict
    from liveart.visual.driver import DriverSettings

    patch = patch_from_dict({"visual": {"pulse": 1.5, "smoothing_seconds": 0.2, "seed": 7}})
    assert patch.visual == {"pulse": 1.5, "smoothing_seconds": 0.2, "seed": 7}
    assert DriverSettings(**{k: v for k, v in patch.visual.items() if k != "seed"}).pulse == 1.5
    for bad, message in (({"pulse": -1}, "visual.pulse"), ({"wobble": 1}, "visual.wobble"), ({"seed": 1.5}, "visual.seed")):
        with pytest.raises(PatchError, match=message):
            patch_from_dict({"visual": bad})


@pytest.mark.parametrize("fps, sample_rate", [(30.0, 48000), (29.97, 48000), (24.0, 44100)])
def test_video_frame_k_hears_exactly_what_was_played_before_k_over_fps(fps, sample_rate):
    """An extra note at time t changes no frame at or before t and changes the frame after it."""
    from liveart import events as ev
    from liveart.engine import Engine
    from liveart.hosts.offline import _render_frames
    from liveart.hosts.video import FrameClock, LatentRecorder
    from liveart.patch import patch_from_dict

    clock = FrameClock(sample_rate, fps)
    patch = patch_from_dict({"channels": {"default": {"preset": "organ", "follow_program": False}}})
    t_note = 1.0
    latents = {}
    for extra in (False, True):
        engine = Engine(patch, sample_rate=sample_rate)
        engine.schedule_many([ev.note_on(int(0.3 * sample_rate), 0, 60, 100), ev.note_off(int(0.8 * sample_rate), 0, 60)])
        if extra:
            engine.schedule(ev.note_on(int(t_note * sample_rate), 0, 67, 120))
        recorder = LatentRecorder(clock, 32, seed=0)
        mix = np.zeros((2 * sample_rate, 2), np.float32)
        _render_frames(engine, mix, clock, recorder, False, sample_rate)
        latents[extra] = np.stack(recorder.latents)
    assert len(latents[False]) == clock.count(2 * sample_rate) + 1 or len(latents[False]) >= clock.count(2 * sample_rate)
    before = [k for k in range(len(latents[False])) if k / fps <= t_note]
    assert np.array_equal(latents[False][before], latents[True][before]), "no frame at or before the note hears it"
    after = max(before) + 1
    assert not np.allclose(latents[False][after], latents[True][after]), "the next frame does"
