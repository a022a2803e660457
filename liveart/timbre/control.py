"""Where each MIDI channel sits in the timbre space, from its anchor, program changes and controllers:
the patch's timbre controls laid out as arrays for the engine's compiled block.

A channel's *place* is one of: its anchor (a GM program: the patch's, or the last program change
when the channel follows programs), a point on a morph line between two anchors, or from the
channel's own anchor to another (one controller), or a point on the plane through three anchors
(two controllers, an XY pad). Per-dimension controllers add offsets on top. The block
(:mod:`liveart.realtime.block`) keeps each channel's target from these and glides the sound towards
it, so a jump in a target is never a step in the sound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..patch import ChannelSettings, TimbreMorph, TimbrePatch, TimbreXY

PLACE_ANCHOR, PLACE_MORPH, PLACE_XY = 0, 1, 2  # the block's Config.place kinds
PLACE_WIDTH = 6


@dataclass
class TimbreLayout:
    """The arrays of :class:`~liveart.realtime.block.Config` and the initial places.

    points : (128, latent) each GM program's anchor (a program the model never heard: the nearest
    one it did, within the family first); place : (16, PLACE_WIDTH) int64; place_default : (16, 2);
    dims : (D, 4) (controller, channel or -1, dimension, amount in latent units); base, morph_value,
    xy_value : each channel's starting anchor and controller values."""

    points: np.ndarray
    place: np.ndarray
    place_default: np.ndarray
    dims: np.ndarray
    base: np.ndarray
    morph_value: np.ndarray
    xy_value: np.ndarray


def nearest_point(anchors: dict[int, np.ndarray], program: int) -> np.ndarray:
    z = anchors.get(int(program))
    if z is None:  # a program the model never heard: the nearest one it did, within the family first
        known = sorted(anchors, key=lambda p: (p // 8 != program // 8, abs(p - program)))
        z = anchors[known[0]]
    return np.asarray(z, np.float64)


def timbre_layout(anchors: dict[int, np.ndarray], latent_low: np.ndarray, latent_high: np.ndarray,
                  patch: TimbrePatch, channels: tuple[ChannelSettings, ...],
                  programs: list[int] | None = None) -> TimbreLayout:
    """Lay out a patch's timbre controls; ValueError when the patch does not fit the model."""
    latent = len(latent_low)
    span = np.asarray(latent_high, np.float64) - np.asarray(latent_low, np.float64)
    points = np.stack([nearest_point(anchors, p) for p in range(128)])
    default_position = None
    if isinstance(patch.position, tuple):
        if len(patch.position) != latent:
            raise ValueError(f"timbre.position has {len(patch.position)} coordinates; the model's latent has "
                             f"{latent}")
        default_position = np.asarray(patch.position, np.float64)
    for d in patch.dims:
        if d.dim >= latent:
            raise ValueError(f"timbre.dim: dimension {d.dim} does not exist; the model's latent has {latent} "
                             f"(0 to {latent - 1})")
    base = np.zeros((16, latent))
    programs = programs or [0] * 16
    for c, ch in enumerate(channels):
        if ch.timbre is None:
            continue
        if ch.timbre >= 0:
            base[c] = points[ch.timbre]
        elif default_position is not None:
            base[c] = default_position
        elif isinstance(patch.position, int):
            base[c] = points[patch.position]
        else:
            base[c] = points[programs[c]]
    # Which morph or XY pad places each channel (a channel's own first, then one for every channel).
    place = np.zeros((16, PLACE_WIDTH), np.int64)
    place_default = np.zeros((16, 2))
    morph_value = np.zeros(16)
    xy_value = np.zeros((16, 2))
    for c in range(16):
        chosen = None
        for item in (*patch.morphs, *patch.xys):
            if item.channel == c or (item.channel is None and chosen is None):
                chosen = item
        if isinstance(chosen, TimbreMorph):
            place[c] = (PLACE_MORPH, chosen.control, chosen.start, chosen.end, 0, 0)
            place_default[c, 0] = morph_value[c] = chosen.default
        elif isinstance(chosen, TimbreXY):
            place[c] = (PLACE_XY, chosen.x_control, chosen.y_control, chosen.origin, chosen.x_anchor, chosen.y_anchor)
            place_default[c] = xy_value[c] = chosen.default
    dims = np.array([(d.control, -1 if d.channel is None else d.channel, d.dim, d.amount * span[d.dim])
                     for d in patch.dims], np.float64).reshape(-1, 4)
    return TimbreLayout(points, place, place_default, dims, base, morph_value, xy_value)
