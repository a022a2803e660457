"""MIDI ports and audio devices for the live host: listing, choosing by name, virtual ports, and an
input that reconnects when its controller comes back.

Backends: python-rtmidi's APIs (JACK, ALSA, CoreMIDI, Windows MultiMedia) for MIDI, sounddevice
(PortAudio) for audio. ``auto`` picks JACK MIDI when the audio runs on JACK (a JACK server is up),
otherwise the platform's own MIDI API. Names are matched as case-insensitive substrings; a name
that matches nothing, or several ports equally well, is an error that lists what exists.

Nothing here runs on the audio thread: the rtmidi callback of a :class:`MidiInput` is the
host's (it only stamps and queues), and :meth:`ReconnectingInput.poll` runs on the host's
housekeeping thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from ..errors import PortError

CLIENT_NAME = "liveart"
VIRTUAL_IN = "liveart in"  # the client names a DAW sees for --virtual
VIRTUAL_OUT = "liveart out"
VIRTUAL_PORT = "midi"
JACK_HOST_API = "JACK Audio Connection Kit"
MIDI_APIS = ("auto", "jack", "alsa", "coremidi", "winmm")
# What to use where rtmidi cannot make a virtual port.
NO_VIRTUAL_HINT = {
    "winmm": "Windows has no virtual MIDI ports: install loopMIDI (or loopBe1), create a port there and pass "
             "its name to --in and --out",
}


def _rtmidi():
    try:
        import rtmidi
    except ImportError as e:  # pragma: no cover - a dependency
        raise PortError("python-rtmidi is not installed (pip install python-rtmidi)") from e
    return rtmidi


@contextlib.contextmanager
def quiet_stderr():
    """Silence what C libraries (libjack, ALSA) print on stderr while probing; Python errors still
    travel as exceptions. Only for the main thread at start-up: it swaps file descriptor 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def api_number(name: str) -> int:
    rtmidi = _rtmidi()
    numbers = {"jack": rtmidi.API_UNIX_JACK, "alsa": rtmidi.API_LINUX_ALSA, "coremidi": rtmidi.API_MACOSX_CORE,
               "winmm": rtmidi.API_WINDOWS_MM}
    if name not in numbers:
        raise PortError(f"unknown MIDI API {name!r}; use one of {', '.join(MIDI_APIS)}")
    if numbers[name] not in rtmidi.get_compiled_api():
        have = [k for k, v in numbers.items() if v in rtmidi.get_compiled_api()]
        raise PortError(f"this python-rtmidi has no {name} MIDI; it has: {', '.join(have) or 'none'}")
    return numbers[name]


def jack_running() -> bool:
    """Whether PortAudio found a JACK server (and so JACK MIDI can be used)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError):
        return False
    return any(h["name"] == JACK_HOST_API and h["devices"] for h in sd.query_hostapis())


def choose_midi_api(name: str = "auto", audio_host_api: str | None = None) -> str:
    """The MIDI API to use: ``name``, or for ``auto`` JACK when the audio runs on JACK, else the
    platform's own."""
    if name != "auto":
        api_number(name)  # checks it is compiled in
        return name
    if audio_host_api == JACK_HOST_API or (audio_host_api is None and jack_running()):
        return "jack"
    if sys.platform.startswith("linux"):
        return "alsa"
    if sys.platform == "darwin":
        return "coremidi"
    return "winmm"


def _open_client(kind: str, api: str, client_name: str):
    rtmidi = _rtmidi()
    cls = rtmidi.MidiIn if kind == "input" else rtmidi.MidiOut
    try:
        with quiet_stderr():
            return cls(api_number(api), name=client_name)
    except rtmidi.RtMidiError as e:
        raise PortError(f"cannot open {api} MIDI ({_first_line(e)}){_api_hint(api)}") from e


def _api_hint(api: str) -> str:
    if api == "jack":
        return "; is a JACK server running? (start one, or use --midi-api alsa)"
    if api == "alsa":
        return "; is the ALSA sequencer there (/dev/snd/seq)? With JACK running use --midi-api jack"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def list_ports(api: str) -> tuple[list[str], list[str]]:
    """(MIDI inputs liveart can read from, MIDI outputs it can write to) on ``api``."""
    midi_in = _open_client("input", api, CLIENT_NAME + " list")
    midi_out = _open_client("output", api, CLIENT_NAME + " list")
    try:
        with quiet_stderr():
            return list(midi_in.get_ports()), list(midi_out.get_ports())
    finally:
        midi_in.delete()
        midi_out.delete()


def _own(port: str) -> bool:
    return port.lower().startswith((VIRTUAL_IN, VIRTUAL_OUT, CLIENT_NAME + ":", CLIENT_NAME + " "))


def match_names(names: list[str], name: str, what: str, several: bool = False) -> list[str]:
    """The names ``name`` names: an exact match (case-insensitive), else the only one containing it
    (``several``: every one containing it). None, or several when one is wanted, is a PortError
    that lists what there is."""
    wanted = name.strip().lower()
    exact = [n for n in names if n.lower() == wanted]
    if exact:
        return exact[:1]
    hits = [n for n in names if wanted and wanted in n.lower()]
    if hits and (len(hits) == 1 or several):
        return hits
    if not hits:
        raise PortError(f"no {what} matches {name!r}; available: {', '.join(map(repr, names)) or 'none'}")
    raise PortError(f"several {what}s match {name!r}: {', '.join(map(repr, hits))}; give more of the name")


def find_port(ports: list[str], name: str, what: str) -> int:
    """Index of the MIDI port ``name`` names (see :func:`match_names`); liveart's own never match."""
    return ports.index(match_names([p for p in ports if not _own(p)], name, f"MIDI {what}")[0])


def open_output(api: str, name: str | None, virtual: bool):
    """An rtmidi output: the port ``name`` names, or a virtual port "liveart out" (``virtual``)."""
    rtmidi = _rtmidi()
    out = _open_client("output", api, VIRTUAL_OUT if virtual else CLIENT_NAME)
    try:
        with quiet_stderr():
            if virtual:
                out.open_virtual_port(VIRTUAL_PORT)
            else:
                out.open_port(find_port(out.get_ports(), name, "output"), VIRTUAL_PORT)
    except (NotImplementedError, rtmidi.RtMidiError) as e:
        out.delete()
        if virtual:
            raise PortError(f"cannot create a virtual MIDI port on {api} ({_first_line(e)}); "
                            f"{NO_VIRTUAL_HINT.get(api, 'connect to a port by name with --out')}") from e
        raise PortError(f"cannot open MIDI output {name!r} ({_first_line(e)})") from e
    except PortError:
        out.delete()
        raise
    return out


@dataclass
class InputStatus:
    connected: bool = False
    lost: int = 0  # times the controller went away
    reconnected: int = 0


class ReconnectingInput:
    """A MIDI input that follows a controller by name: opened at start, and when the controller
    disappears (unplugged) and comes back, opened again. ``callback(message, arrival)`` is called on
    rtmidi's thread for every message (a list of ints); keep it short.

    ``name`` None with ``virtual`` makes the virtual port "liveart in" (which never goes away)."""

    def __init__(self, api: str, name: str | None, callback, virtual: bool = False):
        self.api = api
        self.name = name
        self.virtual = virtual
        self.status = InputStatus()
        self._callback = callback
        self._port_name: str | None = None
        self._midi = _open_client("input", api, VIRTUAL_IN if virtual else CLIENT_NAME)
        self._midi.ignore_types(sysex=True, timing=False, active_sense=True)
        self._midi.set_callback(self._on_message)
        rtmidi = _rtmidi()
        try:
            with quiet_stderr():
                if virtual:
                    self._midi.open_virtual_port(VIRTUAL_PORT)
                    self._port_name = VIRTUAL_IN
                else:
                    ports = self._midi.get_ports()
                    index = find_port(ports, name, "input")
                    self._midi.open_port(index, "in")
                    self._port_name = ports[index]
        except (NotImplementedError, rtmidi.RtMidiError) as e:
            self._midi.delete()
            if virtual:
                raise PortError(f"cannot create a virtual MIDI port on {api} ({_first_line(e)}); "
                                f"{NO_VIRTUAL_HINT.get(api, 'connect to a port by name with --in')}") from e
            raise PortError(f"cannot open MIDI input {name!r} ({_first_line(e)})") from e
        except PortError:
            self._midi.delete()
            raise
        self.status.connected = True

    @property
    def port_name(self) -> str | None:
        return self._port_name

    def _on_message(self, event, data=None) -> None:
        message, _delta = event
        self._callback(message)

    def poll(self) -> str | None:
        """Check the controller is still there: 'lost' when it just went away, 'back' when it just
        came back (and was opened again), else None. Call it every half second or so."""
        if self.virtual:
            return None
        with quiet_stderr():
            try:
                ports = self._midi.get_ports()
            except Exception:  # a backend hiccup: try again next time
                return None
        present = [p for p in ports if p == self._port_name]
        if self.status.connected and not present:
            self.status.connected = False
            self.status.lost += 1
            with quiet_stderr():
                self._midi.close_port()
            return "lost"
        if not self.status.connected:
            # The same port back, or (hardware renumbers) a port the name still matches.
            try:
                index = ports.index(self._port_name) if present else find_port(ports, self.name, "input")
            except PortError:
                return None
            try:
                with quiet_stderr():
                    self._midi.open_port(index, "in")
            except Exception:
                return None
            self._port_name = ports[index]
            self.status.connected = True
            self.status.reconnected += 1
            return "back"
        return None

    def close(self) -> None:
        if self._midi is not None:
            with quiet_stderr():
                self._midi.cancel_callback()
                self._midi.close_port()
                self._midi.delete()
            self._midi = None


# ---------------------------------------------------------------------- audio devices
_jack_name_buffer = None  # PortAudio keeps the pointer: the buffer must live as long as the process


def name_jack_client(name: str = CLIENT_NAME) -> bool:
    """Make PortAudio's JACK client (the audio ports) appear as ``name`` ("liveart:out_0", ...)
    instead of "PortAudio". Must run before a stream opens; re-initialises PortAudio. False where
    the PortAudio library has no JACK support."""
    global _jack_name_buffer
    import ctypes

    import sounddevice as sd

    try:
        set_name = ctypes.CDLL(sd._libname).PaJack_SetClientName
    except (OSError, AttributeError):
        return False
    set_name.argtypes = [ctypes.c_char_p]
    _jack_name_buffer = ctypes.create_string_buffer(name.encode())
    if set_name(_jack_name_buffer) != 0:
        return False
    sd._terminate()
    sd._initialize()
    return True


def audio_devices() -> list[dict]:
    """Every audio device PortAudio sees, with its host API's name under "hostapi_name"."""
    import sounddevice as sd

    apis = sd.query_hostapis()
    devices = []
    for d in sd.query_devices():
        d = dict(d)
        d["hostapi_name"] = apis[d["hostapi"]]["name"]
        devices.append(d)
    return devices


def choose_audio_device(name: str | None) -> dict:
    """The output device ``name`` names (substring of "device name" or "host API: device name"),
    or the default: JACK's when a JACK server runs, else PortAudio's default output."""
    import sounddevice as sd

    devices = [d for d in audio_devices() if d["max_output_channels"] >= 2]
    if not devices:
        raise PortError("no audio output device with 2 channels found (is a sound server or card there? "
                        "'liveart devices' lists what PortAudio sees)")
    if name is None:
        jack = [d for d in devices if d["hostapi_name"] == JACK_HOST_API]
        if jack:
            return jack[0]
        default = sd.default.device[1]
        for d in devices:
            if d["index"] == default:
                return d
        return devices[0]
    wanted = name.strip().lower()
    labels = [f"{d['hostapi_name']}: {d['name']}" for d in devices]
    exact = [d for d, label in zip(devices, labels) if wanted in (d["name"].lower(), label.lower())]
    if exact:
        return exact[0]
    return devices[labels.index(match_names(labels, name, "audio output device")[0])]


def describe_devices(midi_api: str = "auto") -> str:
    """The text of ``liveart devices``: MIDI ports (per API tried) and audio devices with host APIs."""
    lines = []
    apis = [choose_midi_api("auto")] if midi_api == "auto" else [midi_api]
    for api in apis:
        try:
            inputs, outputs = list_ports(api)
        except PortError as e:
            lines.append(f"MIDI ({api}): {e}")
            continue
        for what, ports in (("inputs", inputs), ("outputs", outputs)):
            lines.append(f"MIDI {what} ({api}):")
            lines.extend([f"  {p}" for p in ports if not _own(p)] or ["  (none)"])
    lines.append("Audio outputs (host API: device, channels, default rate):")
    try:
        devices = [d for d in audio_devices() if d["max_output_channels"] > 0]
    except Exception as e:  # PortAudio missing or broken
        lines.append(f"  (cannot list: {_first_line(e)})")
        devices = []
    for d in devices:
        lines.append(f"  {d['hostapi_name']}: {d['name']} ({d['max_output_channels']} out, "
                     f"{int(d['default_samplerate'])} Hz)")
    if not devices:
        lines.append("  (none)")
    return "\n".join(lines)
