"""The melody network (torch): token embedding + step features → GRU or LSTM → next-token logits.

The recurrent state is one tensor for both variants, so the run time never needs to know which it
steps: shape (layers, batch, hidden) for a GRU, (2 × layers, batch, hidden) for an LSTM (the h
rows, then the c rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..melody import representation as rep

ARCHS = ("gru", "lstm")


@dataclass(frozen=True)
class MelodyConfig:
    arch: str = "gru"
    hidden: int = 256
    layers: int = 2
    embed: int = 64
    dropout: float = 0.15

    def state_rows(self) -> int:
        return self.layers * (2 if self.arch == "lstm" else 1)

    def to_dict(self) -> dict:
        return asdict(self)


class MelodyNet(nn.Module):
    def __init__(self, config: MelodyConfig):
        super().__init__()
        if config.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {config.arch!r}")
        self.config = config
        self.embed = nn.Embedding(rep.VOCAB_SIZE, config.embed)
        rnn = nn.GRU if config.arch == "gru" else nn.LSTM
        self.rnn = rnn(config.embed + rep.N_FEATURES, config.hidden, num_layers=config.layers, batch_first=True,
                       dropout=config.dropout if config.layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, rep.VOCAB_SIZE)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(self.config.state_rows(), batch, self.config.hidden)

    def _unpack(self, state: torch.Tensor):
        if self.config.arch == "lstm":
            n = self.config.layers
            return (state[:n].contiguous(), state[n:].contiguous())
        return state

    def _pack(self, state) -> torch.Tensor:
        return torch.cat(state, 0) if self.config.arch == "lstm" else state

    def forward(self, prev_tokens: torch.Tensor, features: torch.Tensor, state: torch.Tensor | None = None):
        """prev_tokens (B, T) int64, features (B, T, N_FEATURES) → logits (B, T, V), state."""
        if state is None:
            state = self.initial_state(prev_tokens.shape[0])
        x = torch.cat([self.embed(prev_tokens), features], -1)
        y, new_state = self.rnn(x, self._unpack(state))
        return self.out(self.drop(y)), self._pack(new_state)


class MelodyStep(nn.Module):
    """One step, for ONNX export: token (B,) int64, features (B, F), state → logits (B, V), state."""

    def __init__(self, net: MelodyNet):
        super().__init__()
        self.net = net

    def forward(self, token: torch.Tensor, features: torch.Tensor, state: torch.Tensor):
        logits, new_state = self.net(token[:, None], features[:, None, :], state)
        return logits[:, 0, :], new_state


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
