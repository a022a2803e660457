"""The baseline the melody model must beat: an order-3 Markov chain over the same tokens, smoothed.

Interpolated Kneser-Ney (absolute discount 0.75 at every order, continuation counts below the
top order), trained on the training lines — as they are, or in every transposition the network
sees ([-6, +5] semitones where the line stays in range) — and evaluated on whole held-out lines in
their own keys, with the same start (a REST before the first step) as the network. Without the
transpositions it scores better on held-out tunes in their own keys (it keeps the corpus's
preference for some keys), so that is the baseline the network is held to.
"""

from __future__ import annotations


import numpy as np

from ..melody import representation as rep
from .melody_data import MelodyDataset
from .train_melody import transpose_limits

V = rep.VOCAB_SIZE
DISCOUNT = 0.75
ORDER = 3  # tokens of context


def _contexts(tokens: np.ndarray) -> np.ndarray:
    """(n, ORDER + 1) array of [t-3, t-2, t-1, t] with REST before the line's start."""
    padded = np.concatenate([np.full(ORDER, rep.REST, np.int64), tokens.astype(np.int64)])
    n = len(tokens)
    return np.stack([padded[j : j + n] for j in range(ORDER + 1)], axis=1)


class KneserNey:
    def __init__(self):
        self.tables: list[dict] = []

    def fit(self, grams: np.ndarray) -> "KneserNey":
        """``grams`` (n, 4) int array of [t-3, t-2, t-1, t]."""
        # For each order k (context length 0..3): counts of (context, token); the top order uses raw
        # counts, lower orders use continuation counts (how many distinct longer contexts precede).
        self.tables = []
        for k in range(ORDER, -1, -1):
            cols = grams[:, ORDER - k :]
            ids = np.zeros(len(grams), np.int64)
            for c in range(cols.shape[1]):
                ids = ids * V + cols[:, c]
            if k == ORDER:
                uniq, counts = np.unique(ids, return_counts=True)
            else:
                # continuation count: distinct (one-longer context, token) with this suffix
                longer = grams[:, ORDER - k - 1 :]
                lid = np.zeros(len(grams), np.int64)
                for c in range(longer.shape[1]):
                    lid = lid * V + longer[:, c]
                lu = np.unique(lid)
                uniq, counts = np.unique(lu % (V ** (k + 1)), return_counts=True)
            ctx = uniq // V
            cu, cinv = np.unique(ctx, return_inverse=True)
            ctx_total = np.bincount(cinv, weights=counts).astype(np.float64)
            ctx_types = np.bincount(cinv).astype(np.float64)
            self.tables.insert(0, {"ids": uniq, "counts": counts.astype(np.float64), "ctx": cu,
                                   "ctx_total": ctx_total, "ctx_types": ctx_types})
        return self

    def _lookup(self, table: dict, key: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arr = table[key]
        pos = np.searchsorted(arr, ids)
        pos = np.minimum(pos, len(arr) - 1)
        found = arr[pos] == ids
        return pos, found

    def prob(self, grams: np.ndarray) -> np.ndarray:
        """P(t | t-3, t-2, t-1) for each row of ``grams``."""
        p = np.full(len(grams), 1.0 / V)
        for k in range(0, ORDER + 1):
            table = self.tables[k]
            cols = grams[:, ORDER - k :]
            ids = np.zeros(len(grams), np.int64)
            for c in range(cols.shape[1]):
                ids = ids * V + cols[:, c]
            ctx = ids // V
            cpos, cfound = self._lookup(table, "ctx", ctx)
            gpos, gfound = self._lookup(table, "ids", ids)
            total = np.where(cfound, table["ctx_total"][cpos], 0.0)
            types = np.where(cfound, table["ctx_types"][cpos], 0.0)
            count = np.where(gfound, table["counts"][gpos], 0.0)
            safe = np.maximum(total, 1e-12)
            higher = np.maximum(count - DISCOUNT, 0.0) / safe + DISCOUNT * types / safe * p
            p = np.where(cfound, higher, p)  # an unseen context falls back to the lower order
        return p


def markov_grams(data: MelodyDataset, split: str, augment: bool, indices=None) -> np.ndarray:
    rows = []
    for i in data.indices(split) if indices is None else indices:
        base = data.tokens[data.line(int(i))].astype(np.int64)
        shifts = range(transpose_limits(data, int(i))[0], transpose_limits(data, int(i))[1] + 1) if augment else [0]
        for s in shifts:
            t = np.where(base >= rep.NOTE_BASE, base + s, base)
            rows.append(_contexts(t))
    return np.concatenate(rows)


def markov_bits_per_step(data: MelodyDataset, test_split: str = "test", augment: bool = False,
                         test_indices=None) -> tuple[float, int]:
    """Bits per step of the chain on ``test_split`` (or the lines ``test_indices``) and the steps."""
    model = KneserNey().fit(markov_grams(data, "train", augment=augment))
    grams = markov_grams(data, test_split, augment=False, indices=test_indices)
    p = model.prob(grams)
    return float(-np.log2(p).mean()), len(grams)


def unigram_bits_per_step(data: MelodyDataset, test_split: str = "test") -> float:
    train = data.tokens[np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1]) for i in data.indices("train")])]
    counts = np.bincount(train, minlength=V).astype(np.float64) + 1.0
    p = counts / counts.sum()
    test = data.tokens[np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1]) for i in data.indices(test_split)])]
    return float(-np.log2(p[test]).mean())


def _check_normalised(model: KneserNey, context: tuple[int, int, int]) -> float:
    grams = np.array([[*context, t] for t in range(V)], np.int64)
    return float(model.prob(grams).sum())


__all__ = ["KneserNey", "markov_bits_per_step", "unigram_bits_per_step"]
