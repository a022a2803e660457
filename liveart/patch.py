"""Patches: TOML files → typed, validated configuration.

A patch says which preset each MIDI channel plays, how controllers map onto parameters, and the
audio settings. Every value is checked once, here; an invalid patch raises :class:`PatchError` with
one line naming the file, the key, what was found and what is allowed. See ``patches/default.toml``
for the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import PatchError
from .melody.settings import MODES as MELODY_MODES
from .melody.settings import PlaySettings, parse_key
from .synth.presets import BUILTIN_PRESETS, N_HARMONICS, Preset
from .timbre.frames import MAX_OFF_SECONDS

# The repository's patches/ folder; liveart/data/patches links to it so that wheels carry it too.
PATCH_DIR = Path(__file__).resolve().parent / "data" / "patches"
DEFAULT_PATCH = "default"

SAMPLE_RATES = (22050, 32000, 44100, 48000, 88200, 96000)
MAX_POLYPHONY = 128
MIN_POLYPHONY = 1

# Parameters a controller can drive, with their natural range (low, high) and what they touch.
CC_PARAMS: dict[str, tuple[float, float]] = {
    "volume": (0.0, 1.0),        # channel gain, squared law as General MIDI
    "expression": (0.0, 1.0),    # second channel gain
    "pan": (-1.0, 1.0),          # equal-power pan
    "brightness": (0.0, 1.0),    # spectral tilt of sounding and new notes; 0.5 = as the preset
    "noise": (0.0, 1.0),         # noise amount of sounding and new notes; 0.5 = as the preset
    "attack": (0.05, 10.0),      # multiplier on the preset's attack time, new notes
    "release": (0.05, 10.0),     # multiplier on the preset's release time, new notes
}

# Melody-model parameters a controller can drive (the host applies them to its partner, not the
# engine): (low, high) for continuous ones; mode picks one of the modes by value range; key_lock
# turns the automatic key lock on at 64 and above; panic silences the model at 64 and above.
MELODY_CC_PARAMS: dict[str, tuple[float, float]] = {
    "melody_temperature": (0.1, 3.0),
    "melody_density": (0.1, 4.0),
    "melody_answer_length": (0.25, 4.0),
    "melody_mode": (0.0, 3.0),
    "melody_key_lock": (0.0, 1.0),
    "melody_panic": (0.0, 1.0),
}
# Parameters of the live host: panic (at 64 and above) silences everything at once, the engine's
# voices and the model, and sends a note-off for every note liveart sent out.
HOST_CC_PARAMS: dict[str, tuple[float, float]] = {
    "panic": (0.0, 1.0),
}
MELODY_KEYS = ("model", "mode", "temperature", "top_p", "density", "answer_ratio", "continue_bars",
               "silence_seconds", "wait_for_bar", "key_lock", "low_pitch", "high_pitch", "velocity", "program",
               "seed", "channel")

# Controllers the engine keeps for itself (120-127 are channel mode messages, beyond the range).
ENGINE_CONTROLLERS = {64: "64 (the sustain pedal)"}
# Controllers mapped unless a patch maps the same number to something else.
DEFAULT_CC = ((7, "volume"), (10, "pan"), (11, "expression"), (74, "brightness"))

CHANNEL_KEYS = ("preset", "timbre", "follow_program", "volume", "pan", "brightness", "noise")
TIMBRE_KEYS = ("model", "device", "smoothing_ms", "gain_db", "position", "morph", "xy", "dim")
# The visualizer's driver: weights of each musical influence and its times (see liveart.visual.driver).
VISUAL_KEYS = ("seed", "pulse", "pulse_seconds", "chroma", "contour", "loudness", "timbre", "drift", "drift_hz",
               "smoothing_seconds")
TIMBRE_DEVICES = ("auto", "cpu", "cuda")
PRESET_KEYS = ("base", "harmonics", "attack", "decay", "sustain", "release", "gain", "noise",
               "noise_centre", "noise_width", "velocity_brightness")
# TOML key in a [presets.NAME] table → Preset field.
PRESET_FIELDS = {
    "attack": "attack_seconds", "decay": "decay_seconds", "sustain": "sustain_level",
    "release": "release_seconds", "gain": "gain", "noise": "noise_level",
    "noise_centre": "noise_centre_ratio", "noise_width": "noise_width_octaves",
    "velocity_brightness": "velocity_brightness",
}


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int = 48000
    block_frames: int = 128
    polyphony: int = 32
    control_hop_frames: int = 128
    pitch_bend_range: float = 2.0  # semitones for a full bend
    gain_db: float = -10.0


@dataclass(frozen=True)
class ChannelSettings:
    preset: str = "soft_flute"
    follow_program: bool = True  # program changes pick a preset by General MIDI family (or a timbre anchor)
    # None: the channel plays its preset. Otherwise it plays through the timbre model, starting at
    # this GM program's anchor (-1: the patch's [timbre] position, or the channel's program).
    timbre: int | None = None
    volume: float = 100 / 127
    pan: float = 0.0
    brightness: float = 0.5
    noise: float = 0.5


@dataclass(frozen=True)
class CCMapping:
    control: int
    param: str
    low: float
    high: float
    channel: int | None = None  # 0-15, or None for every channel

    def value(self, cc_value: int) -> float:
        return self.low + (self.high - self.low) * (cc_value / 127.0)


@dataclass(frozen=True)
class Patch:
    name: str
    source: str
    audio: AudioSettings
    channels: tuple[ChannelSettings, ...]  # 16, index = MIDI channel 0-15
    presets: dict[str, Preset] = field(default_factory=dict)
    cc: tuple[CCMapping, ...] = ()
    melody: "MelodyPatch" = None  # type: ignore[assignment]
    timbre: "TimbrePatch" = None  # type: ignore[assignment]
    visual: dict = field(default_factory=dict)  # DriverSettings fields (and "seed") the patch sets

    def __post_init__(self):
        if self.melody is None:
            object.__setattr__(self, "melody", MelodyPatch())
        if self.timbre is None:
            object.__setattr__(self, "timbre", TimbrePatch())

    def uses_timbre(self) -> bool:
        return any(c.timbre is not None for c in self.channels)

    def cc_map(self) -> dict[int, list[CCMapping]]:
        table: dict[int, list[CCMapping]] = {}
        for m in self.cc:
            table.setdefault(m.control, []).append(m)
        return table

    def max_release_seconds(self) -> float:
        longest = max(p.release_seconds for p in self.presets.values()) * CC_PARAMS["release"][1]
        if self.uses_timbre():  # a timbre voice is freed once its release passes what the model learnt
            longest = max(longest, MAX_OFF_SECONDS + 0.05)
        return longest


@dataclass(frozen=True)
class TimbreMorph:
    """A controller moves the channel's place along the line from one anchor to another."""

    control: int
    start: int  # GM program of the anchor at 0 (-1: the channel's own place, its program or anchor)
    end: int  # ... and at 127
    default: float = 0.0  # where it sits before the controller moves, 0..1
    channel: int | None = None


@dataclass(frozen=True)
class TimbreXY:
    """Two controllers place the channel on the plane through three anchors: origin + x (a - origin)
    + y (b - origin), x and y 0..1."""

    x_control: int
    y_control: int
    origin: int
    x_anchor: int
    y_anchor: int
    default: tuple[float, float] = (0.0, 0.0)
    channel: int | None = None


@dataclass(frozen=True)
class TimbreDim:
    """A controller offsets one latent dimension by +-amount/2 of the anchors' span (64 = none)."""

    control: int
    dim: int
    amount: float = 1.0
    channel: int | None = None


@dataclass(frozen=True)
class TimbrePatch:
    model: str = "timbre"
    device: str = "auto"
    smoothing_ms: float = 40.0  # time constant of the latent glide
    gain_db: float = 0.0
    position: int | tuple[float, ...] | None = None  # default place: a GM program or a latent vector
    morphs: tuple[TimbreMorph, ...] = ()
    xys: tuple[TimbreXY, ...] = ()
    dims: tuple[TimbreDim, ...] = ()

    def controls(self) -> set[int]:
        return ({m.control for m in self.morphs} | {x.x_control for x in self.xys} | {x.y_control for x in self.xys}
                | {d.control for d in self.dims})


@dataclass(frozen=True)
class MelodyPatch:
    """The melody model's part: which model, how it plays, and the program its notes sound with."""

    model: str = "gru"
    settings: PlaySettings = field(default_factory=PlaySettings)
    program: int = 73  # General MIDI flute
    seed: int = 0
    channel: int = 1  # 0-based: live, the model's notes go out on MIDI channel 2 (TOML: channel = 2)


class _Checker:
    """Reads typed values out of a TOML table, raising PatchError with file and key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, found: Any, allowed: str) -> PatchError:
        return PatchError(f"{self.source}: {key}: found {found!r}; allowed {allowed}")

    def table(self, data: dict, key: str, allowed_keys: tuple[str, ...] | None = None) -> dict:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            raise self.fail(key, value, "a table")
        if allowed_keys is not None:
            for k in value:
                if k not in allowed_keys:
                    raise self.fail(f"{key}.{k}", value[k], f"no such key; keys are {', '.join(allowed_keys)}")
        return value

    def number(self, data: dict, key: str, default: float, low: float, high: float, where: str) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise self.fail(f"{where}{key}", value, f"a number from {low:g} to {high:g}")
        return float(value)

    def integer(self, data: dict, key: str, default: int, low: int, high: int, where: str) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(f"{where}{key}", value, f"an integer from {low} to {high}")
        return value

    def choice(self, data: dict, key: str, default: Any, allowed: tuple, where: str) -> Any:
        value = data.get(key, default)
        # Exact type too: 128.0 == 128 and True == 1 in Python, but neither is what a patch means.
        if value not in allowed or not any(type(value) is type(a) and value == a for a in allowed):
            raise self.fail(f"{where}{key}", value, "one of " + ", ".join(str(a) for a in allowed))
        return value


def available_patches() -> list[str]:
    return sorted(p.stem for p in PATCH_DIR.glob("*.toml"))


def resolve_patch_path(name_or_path: str | Path | None) -> Path:
    """A patch name ('default') or a path to a .toml file → an existing path."""
    if name_or_path is None:
        name_or_path = DEFAULT_PATCH
    path = Path(name_or_path)
    # A bare word is a patch name (a file called 'default' in the working folder is not a patch);
    # anything with a folder or a .toml ending is a path.
    if path.suffix == ".toml" or len(path.parts) > 1:
        if path.is_dir():
            raise PatchError(f"{path}: is a directory, not a patch file")
        if not path.is_file():
            raise PatchError(f"{path}: no such patch file")
        return path
    candidate = PATCH_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise PatchError(f"no patch named {str(name_or_path)!r}; available: {', '.join(available_patches()) or 'none'}")
    return candidate


def load_patch(name_or_path: str | Path | None = None) -> Patch:
    path = resolve_patch_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PatchError(f"{path}: cannot read the patch ({e})") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PatchError(f"{path}: not valid TOML ({e})") from e
    return patch_from_dict(data, str(path))


def patch_from_dict(data: dict, source: str = "<patch>") -> Patch:
    check = _Checker(source)
    for key in data:
        if key not in ("name", "description", "audio", "channels", "presets", "cc", "melody", "timbre", "visual"):
            raise check.fail(key, data[key], "no such key; top-level keys are name, description, audio, channels, "
                                             "presets, cc, melody, timbre, visual")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise check.fail("name", name, "a string")

    a = check.table(data, "audio", ("sample_rate", "block_frames", "polyphony", "control_hop_frames",
                                    "pitch_bend_range", "gain_db"))
    audio = AudioSettings(
        sample_rate=check.choice(a, "sample_rate", 48000, SAMPLE_RATES, "audio."),
        block_frames=check.integer(a, "block_frames", 128, 16, 8192, "audio."),
        polyphony=check.integer(a, "polyphony", 32, MIN_POLYPHONY, MAX_POLYPHONY, "audio."),
        control_hop_frames=check.choice(a, "control_hop_frames", 128, (32, 64, 128, 256, 512), "audio."),
        pitch_bend_range=check.number(a, "pitch_bend_range", 2.0, 0.0, 48.0, "audio."),
        gain_db=check.number(a, "gain_db", -10.0, -60.0, 12.0, "audio."),
    )

    presets = dict(BUILTIN_PRESETS)
    user_presets = check.table(data, "presets")
    for pname, spec in user_presets.items():
        where = f"presets.{pname}."
        if not isinstance(spec, dict):
            raise check.fail(f"presets.{pname}", spec, "a table")
        for k in spec:
            if k not in PRESET_KEYS:
                raise check.fail(where + k, spec[k], f"no such key; keys are {', '.join(PRESET_KEYS)}")
        # Redefining a built-in preset starts from it; a new name starts from saw_lead.
        base_name = check.choice(spec, "base", pname if pname in BUILTIN_PRESETS else "saw_lead",
                                 tuple(BUILTIN_PRESETS), where)
        base = BUILTIN_PRESETS[base_name]
        changes: dict[str, Any] = {"name": pname}
        if "harmonics" in spec:
            h = spec["harmonics"]
            if not isinstance(h, list) or not 1 <= len(h) <= N_HARMONICS or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in h) \
                    or sum(h) <= 0:
                raise check.fail(where + "harmonics", h,
                                 f"a list of 1 to {N_HARMONICS} non-negative numbers, not all zero")
            changes["harmonics"] = tuple(float(x) for x in h)
        for k, fname in PRESET_FIELDS.items():
            if k in spec:
                v = spec[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise check.fail(where + k, v, "a number")
                changes[fname] = float(v)
        preset = base.replace(**changes)
        problems = preset.validate()
        if problems:
            field_name, _, problem = problems[0].partition(": ")
            key = {v: k for k, v in PRESET_FIELDS.items()}.get(field_name, field_name)
            raise PatchError(f"{source}: {where}{key}: {problem}")
        presets[pname] = preset

    channel_tables = check.table(data, "channels")
    allowed_channel_names = ["default"] + [str(i) for i in range(1, 17)]
    for k in channel_tables:
        if k not in allowed_channel_names:
            raise check.fail(f"channels.{k}", channel_tables[k], "a table named default or a MIDI channel 1 to 16")
    default_channel = _channel(check, channel_tables.get("default", {}), "channels.default.", ChannelSettings(), presets)
    # Channel 10 is percussion: it plays noise_hit unless its own table says otherwise, and never
    # inherits the timbre model (drum kits are not in it) from [channels.default].
    percussion_base = (ChannelSettings(preset="noise_hit", follow_program=False) if "10" not in channel_tables
                       else replace(default_channel, timbre=None))
    channels = tuple(
        _channel(check, channel_tables.get(str(i + 1), {}), f"channels.{i + 1}.",
                 percussion_base if i == 9 else default_channel, presets)
        for i in range(16)
    )

    timbre = _timbre(check, data, channels)
    cc_list = data.get("cc", [])
    if not isinstance(cc_list, list):
        raise check.fail("cc", cc_list, "an array of tables ([[cc]])")
    mappings: list[CCMapping] = []
    mapped = set()
    for i, m in enumerate(cc_list):
        where = f"cc[{i}]."
        if not isinstance(m, dict):
            raise check.fail(f"cc[{i}]", m, "a table with number, param, min, max")
        for k in m:
            if k not in ("number", "param", "min", "max", "channel"):
                raise check.fail(where + k, m[k], "no such key; keys are number, param, min, max, channel")
        number = check.integer(m, "number", -1, 0, 119, where)
        if number in timbre.controls():
            raise check.fail(where + "number", number, "a controller the [timbre] table does not use")
        if number in ENGINE_CONTROLLERS:
            raise check.fail(where + "number", number, f"a controller other than {ENGINE_CONTROLLERS[number]}")
        param = check.choice(m, "param", None, tuple(CC_PARAMS) + tuple(MELODY_CC_PARAMS) + tuple(HOST_CC_PARAMS),
                             where)
        low_limit, high_limit = {**CC_PARAMS, **MELODY_CC_PARAMS, **HOST_CC_PARAMS}[param]
        low = check.number(m, "min", low_limit, low_limit, high_limit, where)
        high = check.number(m, "max", high_limit, low_limit, high_limit, where)
        channel = m.get("channel")
        if channel is not None:
            channel = check.integer(m, "channel", 1, 1, 16, where) - 1
        mappings.append(CCMapping(number, param, low, high, channel))
        mapped.add(number)
    for number, param in DEFAULT_CC:
        if number not in mapped and number not in timbre.controls():
            low, high = CC_PARAMS[param]
            mappings.append(CCMapping(number, param, low, high, None))
    return Patch(name, source, audio, channels, presets, tuple(mappings), _melody(check, data), timbre,
                 _visual(check, data))


def _visual(check: _Checker, data: dict) -> dict:
    v = check.table(data, "visual", VISUAL_KEYS)
    out: dict = {}
    limits = {"pulse": (0.0, 10.0), "pulse_seconds": (0.01, 10.0), "chroma": (0.0, 10.0), "contour": (0.0, 10.0),
              "loudness": (0.0, 10.0), "timbre": (0.0, 10.0), "drift": (0.0, 10.0), "drift_hz": (0.0, 5.0),
              "smoothing_seconds": (0.0, 10.0)}
    for key, (low, high) in limits.items():
        if key in v:
            out[key] = check.number(v, key, 0.0, low, high, "visual.")
    if "seed" in v:
        out["seed"] = check.integer(v, "seed", 0, 0, 2**31 - 1, "visual.")
    return out


def _anchor(check: _Checker, value, where: str) -> int:
    from .timbre.anchors import program_of

    try:
        return program_of(value)
    except ValueError as e:
        raise check.fail(where, value, f"a General MIDI instrument name or program 0-127 ({e})") from None


def _control(check: _Checker, spec: dict, key: str, where: str) -> int:
    number = check.integer(spec, key, -1, 0, 119, where)
    if number in ENGINE_CONTROLLERS:
        raise check.fail(where + key, number, f"a controller other than {ENGINE_CONTROLLERS[number]}")
    return number


def _timbre_channel(check: _Checker, spec: dict, where: str, channels) -> int | None:
    if "channel" not in spec:
        return None
    channel = check.integer(spec, "channel", 1, 1, 16, where) - 1
    if channels[channel].timbre is None:
        raise check.fail(where + "channel", channel + 1, "a channel that plays through the timbre model "
                                                         "(set timbre in its [channels] table)")
    return channel


def _timbre(check: _Checker, data: dict, channels) -> TimbrePatch:
    t = check.table(data, "timbre", TIMBRE_KEYS)
    w = "timbre."
    model = t.get("model", "timbre")
    if not isinstance(model, str) or not model:
        raise check.fail(w + "model", model, "timbre or a path to an .onnx file")
    position = t.get("position")
    if isinstance(position, list):
        if not position or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                   and abs(x) <= 100 for x in position):
            raise check.fail(w + "position", position, "an instrument name, a program or a list of latent coordinates")
        position = tuple(float(x) for x in position)
    elif position is not None:
        position = _anchor(check, position, w + "position")
    morphs, xys, dims = [], [], []
    used: dict[int, str] = {}

    def claim(number: int, where: str) -> None:
        if number in used:
            raise check.fail(where, number, f"a controller not already used by {used[number]}")
        used[number] = where

    for kind, spec_list in (("morph", t.get("morph", [])), ("xy", t.get("xy", [])), ("dim", t.get("dim", []))):
        if not isinstance(spec_list, list):
            raise check.fail(w + kind, spec_list, f"an array of tables ([[timbre.{kind}]])")
        for i, spec in enumerate(spec_list):
            where = f"{w}{kind}[{i}]."
            keys = {"morph": ("cc", "from", "to", "default", "channel"),
                    "xy": ("x_cc", "y_cc", "anchors", "default", "channel"),
                    "dim": ("cc", "dim", "amount", "channel")}[kind]
            if not isinstance(spec, dict):
                raise check.fail(where.rstrip("."), spec, "a table")
            for k in spec:
                if k not in keys:
                    raise check.fail(where + k, spec[k], f"no such key; keys are {', '.join(keys)}")
            channel = _timbre_channel(check, spec, where, channels)
            if kind == "morph":
                cc = _control(check, spec, "cc", where)
                claim(cc, where + "cc")
                if "to" not in spec:
                    raise check.fail(where + "to", None, "an instrument name or program")
                start = _anchor(check, spec["from"], where + "from") if "from" in spec else -1
                morphs.append(TimbreMorph(cc, start, _anchor(check, spec["to"], where + "to"),
                                          check.number(spec, "default", 0.0, 0.0, 1.0, where), channel))
            elif kind == "xy":
                x, y = _control(check, spec, "x_cc", where), _control(check, spec, "y_cc", where)
                claim(x, where + "x_cc")
                claim(y, where + "y_cc")
                names = spec.get("anchors")
                if not isinstance(names, list) or len(names) != 3:
                    raise check.fail(where + "anchors", names, "three instruments: the origin, the x end, the y end")
                a = [_anchor(check, n, f"{where}anchors[{j}]") for j, n in enumerate(names)]
                default = spec.get("default", [0.0, 0.0])
                if not isinstance(default, list) or len(default) != 2 or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in default):
                    raise check.fail(where + "default", default, "[x, y], each 0 to 1")
                xys.append(TimbreXY(x, y, a[0], a[1], a[2], (float(default[0]), float(default[1])), channel))
            else:
                cc = _control(check, spec, "cc", where)
                claim(cc, where + "cc")
                dims.append(TimbreDim(cc, check.integer(spec, "dim", -1, 0, 63, where),
                                      check.number(spec, "amount", 1.0, 0.0, 4.0, where), channel))
    # A channel's place comes from one control: two morphs or XY pads on one channel would fight.
    placements = [(f"{w}morph[{i}]", m.channel) for i, m in enumerate(morphs)] + \
                 [(f"{w}xy[{i}]", x.channel) for i, x in enumerate(xys)]
    for a, (where_a, ca) in enumerate(placements):
        for where_b, cb in placements[:a]:
            if ca is None or cb is None or ca == cb:
                raise check.fail(where_a + "channel", "every channel" if ca is None else ca + 1,
                                 f"a channel no other morph or xy places (also placed by {where_b})")
    return TimbrePatch(
        model=model,
        device=check.choice(t, "device", "auto", TIMBRE_DEVICES, w),
        smoothing_ms=check.number(t, "smoothing_ms", 40.0, 0.0, 5000.0, w),
        gain_db=check.number(t, "gain_db", 0.0, -40.0, 24.0, w),
        position=position, morphs=tuple(morphs), xys=tuple(xys), dims=tuple(dims),
    )


def _melody(check: _Checker, data: dict) -> MelodyPatch:
    m = check.table(data, "melody", MELODY_KEYS)
    w = "melody."
    model = m.get("model", "gru")
    if not isinstance(model, str) or not model:
        raise check.fail(w + "model", model, "gru, lstm or a path to an .onnx file")
    key_lock = m.get("key_lock", "off")
    if not isinstance(key_lock, str):
        raise check.fail(w + "key_lock", key_lock, "off, auto or a key such as 'D minor'")
    try:
        parse_key(key_lock)
    except ValueError as e:
        raise check.fail(w + "key_lock", key_lock, "off, auto or a key such as 'D minor'") from e
    wait = m.get("wait_for_bar", True)
    if not isinstance(wait, bool):
        raise check.fail(w + "wait_for_bar", wait, "true or false")
    low = check.integer(m, "low_pitch", 48, 36, 96, w)
    high = check.integer(m, "high_pitch", 88, 36, 96, w)
    if high < low:
        raise check.fail(w + "high_pitch", high, f"a note at or above low_pitch ({low})")
    settings = PlaySettings(
        mode=check.choice(m, "mode", "answer", MELODY_MODES, w),
        temperature=check.number(m, "temperature", 1.0, 0.05, 5.0, w),
        top_p=check.number(m, "top_p", 0.95, 0.01, 1.0, w),
        density=check.number(m, "density", 1.0, 0.05, 10.0, w),
        answer_ratio=check.number(m, "answer_ratio", 1.0, 0.05, 8.0, w),
        continue_bars=check.integer(m, "continue_bars", 4, 1, 1024, w),
        silence_seconds=check.number(m, "silence_seconds", 0.6, 0.0, 60.0, w),
        wait_for_bar=wait, key_lock=key_lock, low_pitch=low, high_pitch=high,
        velocity=check.integer(m, "velocity", 0, 0, 127, w),
    )
    return MelodyPatch(model=model, settings=settings, program=check.integer(m, "program", 73, 0, 127, w),
                       seed=check.integer(m, "seed", 0, 0, 2**31 - 1, w),
                       channel=check.integer(m, "channel", 2, 1, 16, w) - 1)


def _channel(check: _Checker, spec: dict, where: str, base: ChannelSettings, presets: dict) -> ChannelSettings:
    if not isinstance(spec, dict):
        raise check.fail(where.rstrip("."), spec, "a table")
    for k in spec:
        if k not in CHANNEL_KEYS:
            raise check.fail(where + k, spec[k], f"no such key; keys are {', '.join(CHANNEL_KEYS)}")
    follow = spec.get("follow_program", base.follow_program)
    if not isinstance(follow, bool):
        raise check.fail(where + "follow_program", follow, "true or false")
    timbre = base.timbre
    if "timbre" in spec:
        value = spec["timbre"]
        if value is False:
            timbre = None
        elif value is True:
            timbre = -1
        else:
            timbre = _anchor(check, value, where + "timbre")
    return ChannelSettings(
        preset=check.choice(spec, "preset", base.preset, tuple(presets), where),
        follow_program=follow,
        timbre=timbre,
        volume=check.number(spec, "volume", base.volume, 0.0, 1.0, where),
        pan=check.number(spec, "pan", base.pan, -1.0, 1.0, where),
        brightness=check.number(spec, "brightness", base.brightness, 0.0, 1.0, where),
        noise=check.number(spec, "noise", base.noise, 0.0, 1.0, where),
    )
