"""The melody data set: real tunes from music21's corpus → stepped tokens, split by tune, cached.

Sources (all ship inside the music21 wheel; nothing is downloaded):

- ``essen``   — the Essen folk song collection (``essenFolksong``, ABC, many tunes per file);
- ``oneills`` — O'Neill's Music of Ireland, 1850 tunes (``oneills1850``, ABC);
- ``ryans``   — Ryan's Mammoth Collection (``ryansMammoth``, ABC);
- ``bach``    — the 371 Bach chorales (Riemenschneider numbering): each of the four voices is a
  line, conditioned on the pitch classes of the other three (the performer, for accompaniment).

Each line becomes tokens (see :mod:`liveart.melody.representation`), its place in the bar per
step, the beat length per step and, for chorales, the other voices' pitch classes per step.
Tunes whose onsets fall off the 16th-note grid (triplets) too often are left out. Exact duplicates
(the same melody up to transposition, common between O'Neill and Ryan) are kept once. The split is
by tune: a hash of the tune's content picks train (80%), validation (10%) or test (10%), so a tune
and its duplicates and every voice of one chorale land in one split. Versions of one tune are
grouped too (:func:`group_tunes`): tunes that open with the same contour or share a long run of
notes are one group, so a variant from another collection cannot sit in another split.
Transposition is an augmentation applied when training, never stored.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..melody import representation as rep

SOURCES = ("essen", "oneills", "ryans", "bach")
CORPUS_NAMES = {"essen": "essenFolksong", "oneills": "oneills1850", "ryans": "ryansMammoth"}
DATASET_VERSION = 2
OFF_GRID_LIMIT = 0.05  # tunes with more of their onsets off the 16th grid than this are left out
MIN_NOTES = 8
MAX_STEPS = 4096
OPENING_NOTES = 10  # versions of a tune that open with the same 9 intervals are one tune ...
WINDOW_NOTES = 16  # ... and so are tunes that share a run of 16 notes, intervals and rhythm alike
SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_CACHE = Path(".cache") / f"melody-dataset-v{DATASET_VERSION}.npz"


@dataclass
class Line:
    """One melodic line: parallel per-step arrays."""

    source: str
    name: str
    group: str  # lines of one group (a tune, a chorale) share a split
    tokens: np.ndarray  # uint8
    bar_pos: np.ndarray  # int16, steps since the bar line, -1 = no meter
    beat_steps: np.ndarray  # uint8
    chroma: np.ndarray  # uint16, other voices' pitch classes sounding in each step (12 bits)
    conditioned: bool


@dataclass
class MelodyDataset:
    tokens: np.ndarray
    bar_pos: np.ndarray
    beat_steps: np.ndarray
    chroma: np.ndarray
    offsets: np.ndarray  # int64, line i = [offsets[i], offsets[i+1])
    split: np.ndarray  # uint8 per line: 0 train, 1 valid, 2 test
    conditioned: np.ndarray  # bool per line
    source: np.ndarray  # str per line
    name: np.ndarray  # str per line
    group: np.ndarray  # str per line

    def __len__(self) -> int:
        return len(self.split)

    def line(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLIT_NAMES.index(split))

    def summary(self) -> dict:
        out = {}
        for s in SPLIT_NAMES:
            idx = self.indices(s)
            out[s] = {
                "lines": int(len(idx)),
                "tunes": int(len(set(self.group[idx]))),
                "steps": int(sum(self.offsets[i + 1] - self.offsets[i] for i in idx)),
                "by_source": {src: int(np.sum(self.source[idx] == src)) for src in SOURCES},
            }
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part.npz")
        np.savez_compressed(tmp, version=DATASET_VERSION, music21=_music21_version(), tokens=self.tokens, bar_pos=self.bar_pos,
                            beat_steps=self.beat_steps, chroma=self.chroma, offsets=self.offsets,
                            split=self.split, conditioned=self.conditioned, source=self.source,
                            name=self.name, group=self.group)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "MelodyDataset":
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != DATASET_VERSION:
                raise ValueError(f"{path}: data set version {int(z['version'])}, expected {DATASET_VERSION}")
            return cls(**{k: z[k] for k in ("tokens", "bar_pos", "beat_steps", "chroma", "offsets", "split",
                                             "conditioned", "source", "name", "group")})


def _music21_version() -> str:
    try:
        import music21

        return str(music21.__version__)
    except ImportError:
        return "unknown"


def corpus_files(sources=SOURCES) -> list[tuple[str, str]]:
    """(source, path) of every file to parse, in a fixed order."""
    from music21 import corpus

    files: list[tuple[str, str]] = []
    for source in sources:
        if source == "bach":
            names = list(corpus.chorales.Iterator(numberingSystem="riemenschneider", returnType="filename"))
            files += [("bach", str(n)) for n in names]
        else:
            files += [(source, str(p)) for p in sorted(corpus.getComposer(CORPUS_NAMES[source]))]
    return files


def parse_file(item: tuple[str, str]) -> list[Line]:
    """All usable lines of one corpus file (run in worker processes)."""
    import warnings

    from music21 import converter, corpus, stream

    source, path = item
    warnings.filterwarnings("ignore")
    try:
        parsed = corpus.parse(path) if source == "bach" else converter.parse(path, forceSource=True)
    except Exception:  # a file music21 cannot read is skipped, and counted by the caller
        return []
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    # Chorale names such as 'bach/bwv153.1' carry no extension: their dot is part of the name.
    stem = Path(path).name if source == "bach" else Path(path).stem
    lines: list[Line] = []
    for index, score in enumerate(scores):
        try:
            title = (score.metadata.title if score.metadata and score.metadata.title else "") or ""
            parts = list(score.parts)
            if not parts:
                continue
            if source == "bach":
                if len(parts) != 4:
                    continue
                voices = [_part_notes(p) for p in parts]
                if any(v is None for v in voices):
                    continue
                total = max(max((e for _, e, _ in v), default=0) for v in voices)
                meter = _meter_steps(parts[0], total)
                chorale: list[Line] = []
                for vi, part in enumerate(parts):
                    others = [n for vj, v in enumerate(voices) if vj != vi for n in v]
                    chroma = np.zeros(total, np.uint16)
                    for s, e, p in others:
                        chroma[s:e] |= np.uint16(1 << (p % 12))
                    line = _make_line(source, f"bach/{stem}/{part.partName or vi}", "bach", voices[vi], total,
                                      meter, chroma, True)
                    if line is not None:
                        chorale.append(line)
                if len(chorale) == 4:
                    # The group is the tune (the soprano), not the file: a tune Bach harmonised twice
                    # lands in one split, and so does a folk tune that is the same melody.
                    group = _content_key(chorale[0].tokens)
                    for line in chorale:
                        line.group = group
                    lines += chorale
            else:
                notes = _part_notes(parts[0])
                if notes is None:
                    continue
                total = max((e for _, e, _ in notes), default=0)
                meter = _meter_steps(parts[0], total)
                line = _make_line(source, f"{source}/{stem}/{index}:{title}", "", notes, total, meter,
                                  np.zeros(total, np.uint16), False)
                if line is not None:
                    lines.append(line)
        except Exception:  # one malformed tune must not lose the file
            continue
    return lines


def _part_notes(part) -> list[tuple[int, int, int]] | None:
    """(start_step, end_step, pitch) of a part, ties merged, chords → top note; None if off-grid."""
    flat = part.stripTies().flatten()
    notes = []
    off_grid = 0
    for n in flat.notes:
        ql = float(n.duration.quarterLength)
        if ql <= 0:  # grace notes
            continue
        start = float(n.offset) * rep.STEPS_PER_QUARTER
        end = start + ql * rep.STEPS_PER_QUARTER
        if abs(start - round(start)) > 0.01:
            off_grid += 1
        pitch = max(p.midi for p in n.pitches) if n.isChord else n.pitch.midi
        s, e = int(round(start)), int(round(end))
        if e <= s:
            e = s + 1
        notes.append((s, e, int(pitch)))
    if len(notes) < MIN_NOTES or off_grid > OFF_GRID_LIMIT * len(notes):
        return None
    return notes


def _meter_steps(part, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step: steps since the bar line (-1 where unknown) and the beat length in steps."""
    bar_pos = np.full(total, -1, np.int16)
    beat = np.full(total, 4, np.uint8)
    meter = None
    for m in part.getElementsByClass("Measure"):
        if m.timeSignature is not None:
            meter = rep.Meter.from_time_signature(m.timeSignature.numerator, m.timeSignature.denominator)
        if meter is None:
            continue
        start = int(round(float(m.offset) * rep.STEPS_PER_QUARTER))
        length = int(round(float(m.duration.quarterLength) * rep.STEPS_PER_QUARTER))
        pad = int(round(float(m.paddingLeft) * rep.STEPS_PER_QUARTER))
        stop = min(start + length, total)
        if stop <= start:
            continue
        bar_pos[start:stop] = (np.arange(stop - start) + pad) % meter.bar_steps
        beat[start:stop] = meter.beat_steps
    return bar_pos, beat


def _make_line(source, name, group, notes, total, meter, chroma, conditioned) -> Line | None:
    # Transpose the whole line by octaves into range only if it does not fit as it is.
    pitches = [p for _, _, p in notes]
    low, high = min(pitches), max(pitches)
    if high - low > rep.MAX_PITCH - rep.MIN_PITCH:
        return None
    shift = 0
    while low + shift < rep.MIN_PITCH:
        shift += 12
    while high + shift > rep.MAX_PITCH:
        shift -= 12
    if low + shift < rep.MIN_PITCH:
        return None
    notes = [(s, e, p + shift) for s, e, p in notes]
    first = min(s for s, _, _ in notes)
    last = min(total, MAX_STEPS + first)
    tokens = rep.notes_to_tokens(notes, total)[first:last]
    bar_pos, beat = meter
    return Line(source, name, group or _content_key(tokens), tokens.astype(np.uint8), bar_pos[first:last].copy(),
                beat[first:last].copy(), chroma[first:last].copy(), conditioned)


def _content_key(tokens: np.ndarray) -> str:
    """Transposition-invariant content hash: tokens with pitches relative to the first note."""
    t = tokens.astype(np.int16)
    notes = t >= rep.NOTE_BASE
    if notes.any():
        t = np.where(notes, t - int(t[np.argmax(notes)]) + 200, t)
    return hashlib.sha1(t.tobytes()).hexdigest()[:16]


def split_of(group: str) -> int:
    """0 train, 1 valid, 2 test, from a stable hash of the group key."""
    h = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) % 100
    return 0 if h < 80 else (1 if h < 90 else 2)


def _signatures(tokens: np.ndarray) -> list[tuple]:
    """What marks a tune as the same tune in another version: its opening contour (the intervals of
    its first OPENING_NOTES notes) and every run of WINDOW_NOTES notes with the same intervals and
    rhythm. Transposition-invariant."""
    notes = rep.tokens_to_notes(tokens)
    pitches = [p for _, _, p in notes]
    intervals = tuple(b - a for a, b in zip(pitches, pitches[1:]))
    sigs: list[tuple] = []
    if len(notes) > OPENING_NOTES:
        sigs.append(("open", intervals[: OPENING_NOTES - 1]))
    rhythm = [(e - s, b[0] - s) for (s, e, _), b in zip(notes, notes[1:])]
    for j in range(len(notes) - WINDOW_NOTES + 1):
        sigs.append(("run", intervals[j : j + WINDOW_NOTES - 1], tuple(rhythm[j : j + WINDOW_NOTES - 1])))
    return sigs


def group_tunes(lines: list[Line]) -> None:
    """Put versions of one tune into one group (and so one split): lines whose melodies share an
    opening contour or a long run of notes are joined, transitively (union-find). A chorale's inner
    and bass voices follow their soprano. Groups are named by their smallest member key, so the
    result does not depend on the order of the lines."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    owner: dict[tuple, str] = {}
    for line in lines:
        if line.source == "bach" and not line.name.endswith("/Soprano"):
            continue  # the voices below follow the tune
        find(line.group)
        for sig in _signatures(line.tokens):
            if sig in owner:
                union(owner[sig], line.group)
            else:
                owner[sig] = line.group
    for line in lines:
        line.group = find(line.group)


def assemble(lines: list[Line]) -> MelodyDataset:
    """Drop duplicates, group versions of a tune, assign splits, concatenate."""
    seen: set[str] = set()
    kept: list[Line] = []
    for line in lines:
        # A tune is kept once; a chorale's voice once per harmonisation (its own content).
        key = line.group if line.source != "bach" else line.group + "/" + _content_key(line.tokens)
        if key in seen:
            continue
        seen.add(key)
        kept.append(line)
    group_tunes(kept)
    offsets = np.zeros(len(kept) + 1, np.int64)
    offsets[1:] = np.cumsum([len(l.tokens) for l in kept])

    def cat(attr, dtype):
        return np.concatenate([getattr(l, attr) for l in kept]).astype(dtype) if kept else np.zeros(0, dtype)

    return MelodyDataset(
        tokens=cat("tokens", np.uint8), bar_pos=cat("bar_pos", np.int16), beat_steps=cat("beat_steps", np.uint8),
        chroma=cat("chroma", np.uint16), offsets=offsets,
        split=np.array([split_of(l.group) for l in kept], np.uint8),
        conditioned=np.array([l.conditioned for l in kept], bool),
        source=np.array([l.source for l in kept]), name=np.array([l.name for l in kept]),
        group=np.array([l.group for l in kept]),
    )


def build_dataset(cache: Path = DEFAULT_CACHE, sources=SOURCES, workers: int = 2, limit_files: int | None = None,
                  progress: bool = True, rebuild: bool = False) -> MelodyDataset:
    """Parse the corpus (or load the cache if it is there) and return the data set."""
    cache = Path(cache)
    if cache.exists() and not rebuild:
        try:
            return MelodyDataset.load(cache)
        except Exception as e:  # numpy raises many types for a file that is not this data set
            from ..errors import LiveartError

            raise LiveartError(f"{cache}: not a melody data set of version {DATASET_VERSION} ({type(e).__name__}: "
                               f"{str(e)[:120]}); build it again with --rebuild-data") from e
    from tqdm import tqdm

    files = corpus_files(sources)
    if limit_files is not None:
        files = files[:limit_files]
    lines: list[Line] = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for result in tqdm(pool.imap(parse_file, files, chunksize=1), total=len(files), disable=not progress,
                               desc="parsing corpus", unit="file"):
                lines += result
    else:
        for item in tqdm(files, disable=not progress, desc="parsing corpus", unit="file"):
            lines += parse_file(item)
    data = assemble(lines)
    data.save(cache)
    return data
