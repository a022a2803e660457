"""Where each MIDI channel sits in the timbre space, from its anchor, program changes and controllers.

A channel's *place* is one of: its anchor (a GM program: the patch's, or the last program change
when the channel follows programs), a point on a morph line between two anchors, or from the
channel's own anchor to another (one controller),
or a point on the plane through three anchors (two controllers, an XY pad). Per-dimension
controllers add offsets on top. :attr:`TimbreControl.targets` holds the result per channel; the
engine glides the sound towards it (see :class:`Glide`), so a jump in a target is never a step in
the sound.
"""

from __future__ import annotations

import math

import numpy as np

from ..patch import ChannelSettings, TimbreMorph, TimbrePatch, TimbreXY


class TimbreControl:
    def __init__(self, anchors: dict[int, np.ndarray], latent_low: np.ndarray, latent_high: np.ndarray,
                 patch: TimbrePatch, channels: tuple[ChannelSettings, ...], programs: list[int] | None = None):
        self.anchors = anchors
        self.latent = len(latent_low)
        self.span = np.asarray(latent_high, np.float64) - np.asarray(latent_low, np.float64)
        self.patch = patch
        self.follow_program = [c.follow_program for c in channels]
        self.enabled = np.array([c.timbre is not None for c in channels])
        self._default_position = None
        if isinstance(patch.position, tuple):
            if len(patch.position) != self.latent:
                raise ValueError(f"timbre.position has {len(patch.position)} coordinates; the model's latent has "
                                 f"{self.latent}")
            self._default_position = np.asarray(patch.position, np.float64)
        self.base = np.zeros((16, self.latent))
        programs = programs or [0] * 16
        for c, ch in enumerate(channels):
            if ch.timbre is None:
                continue
            if ch.timbre >= 0:
                self.base[c] = self.point(ch.timbre)
            elif self._default_position is not None:
                self.base[c] = self._default_position
            elif isinstance(patch.position, int):
                self.base[c] = self.point(patch.position)
            else:
                self.base[c] = self.point(programs[c])
        # Which morph or XY pad places each channel (a channel's own first, then one for every channel).
        self.place: list[TimbreMorph | TimbreXY | None] = [None] * 16
        for c in range(16):
            for item in (*patch.morphs, *patch.xys):
                if item.channel == c or (item.channel is None and self.place[c] is None):
                    self.place[c] = item
        self.morph_value = np.array([p.default if isinstance(p, TimbreMorph) else 0.0 for p in self.place])
        self.xy_value = np.array([p.default if isinstance(p, TimbreXY) else (0.0, 0.0) for p in self.place])
        for d in patch.dims:
            if d.dim >= self.latent:
                raise ValueError(f"timbre.dim: dimension {d.dim} does not exist; the model's latent has {self.latent} "
                                 f"(0 to {self.latent - 1})")
        self.offsets = np.zeros((16, self.latent))
        self.targets = np.zeros((16, self.latent))
        for c in range(16):
            self._update(c)

    def point(self, program: int) -> np.ndarray:
        z = self.anchors.get(int(program))
        if z is None:  # a program the model never heard: the nearest one it did, within the family first
            known = sorted(self.anchors, key=lambda p: (p // 8 != program // 8, abs(p - program)))
            z = self.anchors[known[0]]
        return np.asarray(z, np.float64)

    def _update(self, c: int) -> None:
        place = self.place[c]
        if isinstance(place, TimbreMorph):
            a = self.base[c] if place.start < 0 else self.point(place.start)
            b = self.point(place.end)
            point = a + (b - a) * self.morph_value[c]
        elif isinstance(place, TimbreXY):
            o = self.point(place.origin)
            x, y = self.xy_value[c]
            point = o + x * (self.point(place.x_anchor) - o) + y * (self.point(place.y_anchor) - o)
        else:
            point = self.base[c]
        self.targets[c] = point + self.offsets[c]

    def reset(self, channel: int) -> bool:
        """Reset all controllers (CC 121): morph and XY back to their defaults, dimension knobs to none."""
        if not self.enabled[channel]:
            return False
        place = self.place[channel]
        self.morph_value[channel] = place.default if isinstance(place, TimbreMorph) else 0.0
        self.xy_value[channel] = place.default if isinstance(place, TimbreXY) else (0.0, 0.0)
        self.offsets[channel] = 0.0
        before = self.targets[channel].copy()
        self._update(channel)
        return not np.array_equal(before, self.targets[channel])

    def program_change(self, channel: int, program: int) -> bool:
        """Move a following channel's anchor; True when its target moved."""
        if not self.enabled[channel] or not self.follow_program[channel]:
            return False
        self.base[channel] = self.point(program)
        before = self.targets[channel].copy()
        self._update(channel)
        return not np.array_equal(before, self.targets[channel])

    def control_change(self, channel: int, control: int, value: int) -> bool:
        """Apply a controller; True when a target moved."""
        if not self.enabled[channel]:
            return False
        v = value / 127.0
        changed = False
        place = self.place[channel]
        if isinstance(place, TimbreMorph) and place.control == control:
            self.morph_value[channel] = v
            changed = True
        elif isinstance(place, TimbreXY) and control in (place.x_control, place.y_control):
            self.xy_value[channel, 0 if control == place.x_control else 1] = v
            changed = True
        for d in self.patch.dims:
            if d.control == control and (d.channel is None or d.channel == channel):
                self.offsets[channel, d.dim] = (v - 64 / 127.0) * d.amount * self.span[d.dim]
                changed = True
        if changed:
            self._update(channel)
        return changed


class Glide:
    """Each channel's sounding position follows its target by an exact exponential in frames, so it is a
    function of the event times alone (any block size gives the same path)."""

    def __init__(self, targets: np.ndarray, smoothing_frames: float):
        self.targets = targets  # shared with the TimbreControl: read live
        self.position = targets.copy()
        self.frame = 0
        self.tau = float(smoothing_frames)

    def predict(self, frame: int) -> np.ndarray:
        """Where the positions will be at ``frame`` if no target moves meanwhile (nothing changes)."""
        dt = frame - self.frame
        if self.tau <= 0:
            return self.targets.copy()
        if dt <= 0:
            return self.position.copy()
        return self.targets + (self.position - self.targets) * math.exp(-dt / self.tau)

    def advance(self, frame: int) -> np.ndarray:
        dt = frame - self.frame
        if self.tau <= 0:
            self.position[:] = self.targets
        elif dt > 0:
            self.position += (self.targets - self.position) * (1.0 - math.exp(-dt / self.tau))
        self.frame = max(self.frame, frame)
        return self.position

    def snap(self, channel: int) -> None:
        """Jump a channel to its target: for a channel with nothing sounding, where a jump is silent
        (a note that follows a program change starts as the new instrument, not on the way to it)."""
        self.position[channel] = self.targets[channel]

    def moving(self) -> bool:
        return not np.allclose(self.position, self.targets, rtol=0.0, atol=1e-6)
