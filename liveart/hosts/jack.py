"""The live host's JACK backend: one JACK client, "liveart", whose process callback is compiled
(:mod:`liveart.realtime.jack`) and never takes the GIL; and, on Python's side, its ports, their
connections, the controller it follows, and the server's notifications."""

from __future__ import annotations

from ..errors import PortError


class JackIO:
    """The JACK backend's client "liveart": MIDI in "liveart:midi_in" (a DAW or a controller connects
    to it; ``--in NAME`` connects one and follows it when it goes and comes back), MIDI out
    "liveart:midi_out" (the model's notes and the clock, at their exact frames), audio "liveart:out_0"
    and "liveart:out_1" (connected to the system's playback ports, or to ``audio_targets``)."""

    def __init__(self, client):
        from ..midi.ports import InputStatus

        self.client = client
        self.midi_in = self.midi_out = None  # registered at start(): ports appear once liveart is ready
        self.audio_out: list = []
        self.audio_targets: list[str] | None = None
        self.midi_targets: list[str] = []
        self.input_name: str | None = None
        self.port_name: str | None = None  # the controller's port, once connected
        self.status = InputStatus()
        self.xruns = 0
        self.shutdown_reason: str | None = None
        self.active = False
        self.on_xrun = None  # called on the server's notification thread

    @classmethod
    def open(cls, required: bool) -> "JackIO | None":
        """A client on the running JACK server; None (or, ``required``, a PortError) without one."""
        from ..midi.ports import CLIENT_NAME, quiet_stderr

        try:
            import jack
        except (ImportError, OSError) as e:
            if required:
                raise PortError(f"the jack backend needs JACK-Client and libjack (pip install JACK-Client; "
                                f"Debian: libjack-jackd2-0) ({e})") from e
            return None
        try:
            with quiet_stderr():
                client = jack.Client(CLIENT_NAME, no_start_server=True)
        except jack.JackError as e:
            if required:
                raise PortError("no JACK server is running (start one, e.g. 'jackd -d alsa', or use "
                                "--backend portaudio)") from e
            return None
        return cls(client)

    def find(self, name: str, midi: bool, output: bool, what: str) -> list[str]:
        """Full names of other clients' ports that ``name`` names (see
        :func:`~liveart.midi.ports.match_names`; audio: every port of the client it names, in order)."""
        from ..midi.ports import match_names

        ports = [p.name for p in self.client.get_ports(is_midi=midi, is_audio=not midi, is_output=output,
                                                       is_input=not output)
                 if not p.name.startswith(self.client.name + ":")]
        return match_names(ports, name, what, several=not midi)

    def want_input(self, name: str) -> None:
        self.input_name = name
        self.port_name = self.find(name, midi=True, output=True, what="MIDI input")[0]  # (a port that sends to us)

    def start(self, engine, rt, wake_fd: int = -1) -> None:
        """Activate with the compiled process callback (:mod:`liveart.realtime.jack`) running
        ``engine`` with the cycle state ``rt``; it never takes the GIL."""
        from ..realtime import jackapi
        from ..realtime.jack import JackIo, process

        client = self.client
        self.io = JackIo(engine, rt.live)
        self.io.set_wake(wake_fd)
        self.io.set_ports(None, None, None, None, None)
        jackapi.set_process_callback(client, process, self.io.address)
        client.set_xrun_callback(self._on_xrun)
        client.set_shutdown_callback(self._on_shutdown)
        self.io.set_ports(client, None, None, None, None)
        client.activate()
        self.active = True
        # Registered once active, so that a port that can be seen can be connected to; the callback
        # uses a port once its address is in the table.
        self.audio_out = [client.outports.register(f"out_{i}") for i in range(2)]
        self.midi_out = client.midi_outports.register("midi_out")
        self.midi_in = client.midi_inports.register("midi_in")
        self.io.set_ports(client, self.midi_in, self.midi_out, *self.audio_out)
        targets = self.audio_targets
        if targets is None:
            targets = [p.name for p in client.get_ports(is_audio=True, is_input=True, is_physical=True)]
        for source, target in zip(self.audio_out, targets):
            client.connect(source, target)
        for target in self.midi_targets:
            client.connect(self.midi_out, target)
        if self.port_name is not None:
            client.connect(self.port_name, self.midi_in)
            self.status.connected = True

    def _on_xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1
        if self.on_xrun is not None:
            self.on_xrun()

    def _on_shutdown(self, status, reason: str) -> None:
        self.shutdown_reason = reason or "the server stopped"

    def poll(self) -> str | None:
        """'lost' when the controller's port went away, 'back' when it (or a port its name matches)
        is there again and connected, else None."""
        if self.input_name is None or not self.active:
            return None
        names = {p.name for p in self.client.get_ports(is_midi=True, is_output=True)}
        if self.status.connected:
            if self.port_name not in names:
                self.status.connected = False
                self.status.lost += 1
                return "lost"
            return None
        try:
            port = self.port_name if self.port_name in names else self.find(self.input_name, True, True, "MIDI input")[0]
            self.client.connect(port, self.midi_in)
        except Exception:
            return None
        self.port_name = port
        self.status.connected = True
        self.status.reconnected += 1
        return "back"

    def close(self) -> None:
        if self.client is None:
            return
        try:
            if self.active:
                self.client.deactivate()
            self.client.close()
        except Exception:
            pass
        self.active = False
        self.client = None
