"""Named places in the timbre space: General MIDI program names → program numbers.

The model file carries each program's anchor (its mean latent, placed by the encoder); this module
only resolves the names a patch or a command line uses ("flute", "cello", "violin", 41, "program
42") to program numbers.
"""

from __future__ import annotations

import re

GM_PROGRAM_NAMES = (
    "acoustic grand piano", "bright acoustic piano", "electric grand piano", "honky-tonk piano",
    "electric piano 1", "electric piano 2", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music box", "vibraphone", "marimba", "xylophone", "tubular bells", "dulcimer",
    "drawbar organ", "percussive organ", "rock organ", "church organ", "reed organ", "accordion", "harmonica",
    "tango accordion",
    "nylon guitar", "steel guitar", "jazz guitar", "clean guitar", "muted guitar", "overdriven guitar",
    "distortion guitar", "guitar harmonics",
    "acoustic bass", "fingered bass", "picked bass", "fretless bass", "slap bass 1", "slap bass 2",
    "synth bass 1", "synth bass 2",
    "violin", "viola", "cello", "contrabass", "tremolo strings", "pizzicato strings", "orchestral harp", "timpani",
    "string ensemble 1", "string ensemble 2", "synth strings 1", "synth strings 2", "choir aahs", "voice oohs",
    "synth voice", "orchestra hit",
    "trumpet", "trombone", "tuba", "muted trumpet", "french horn", "brass section", "synth brass 1", "synth brass 2",
    "soprano sax", "alto sax", "tenor sax", "baritone sax", "oboe", "english horn", "bassoon", "clarinet",
    "piccolo", "flute", "recorder", "pan flute", "blown bottle", "shakuhachi", "whistle", "ocarina",
    "square lead", "sawtooth lead", "calliope lead", "chiff lead", "charang", "voice lead", "fifths lead",
    "bass and lead",
    "new age pad", "warm pad", "polysynth", "choir pad", "bowed pad", "metallic pad", "halo pad", "sweep pad",
    "rain", "soundtrack", "crystal", "atmosphere", "brightness", "goblins", "echoes", "sci-fi",
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shanai",
    "tinkle bell", "agogo", "steel drums", "woodblock", "taiko drum", "melodic tom", "synth drum", "reverse cymbal",
    "guitar fret noise", "breath noise", "seashore", "bird tweet", "telephone ring", "helicopter", "applause",
    "gunshot",
)
GM_FAMILY_NAMES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
                   "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive",
                   "sound effects")
# Short names players use for a program.
ALIASES = {"piano": 0, "grand piano": 0, "organ": 16, "guitar": 24, "bass": 32, "strings": 48, "choir": 52,
           "horn": 60, "sax": 65, "saxophone": 65, "double bass": 43, "harp": 46, "voice": 53}


def normalise(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower().replace("_", " "))


def program_of(name) -> int:
    """A program number 0-127 from a number, "program N", a GM name or a unique word of one.

    Raises ValueError with the near names when nothing or more than one program matches.
    """
    if isinstance(name, bool):
        raise ValueError(f"not an instrument: {name!r}")
    if isinstance(name, int):
        if 0 <= name <= 127:
            return name
        raise ValueError(f"program {name} is outside 0-127")
    text = normalise(str(name))
    m = re.fullmatch(r"(?:program\s*)?(\d+)", text)
    if m:
        return program_of(int(m.group(1)))
    if text in ALIASES:
        return ALIASES[text]
    if text in GM_PROGRAM_NAMES:
        return GM_PROGRAM_NAMES.index(text)
    words = [p for p, full in enumerate(GM_PROGRAM_NAMES) if text in full.split(" ") or full.startswith(text + " ")]
    if len(words) == 1:
        return words[0]
    near = [GM_PROGRAM_NAMES[p] for p in words] or [n for n in GM_PROGRAM_NAMES if text[:3] and text[:3] in n][:6]
    hint = f"; did you mean {', '.join(repr(n) for n in near[:6])}" if near else "; see `liveart timbre anchors`"
    raise ValueError(f"no single General MIDI instrument is called {name!r}{hint}")


def family_of(program: int) -> int:
    return int(program) // 8
