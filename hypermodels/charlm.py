"""Character-level language model (paper §4.1-4.2): one-hot input, RNN stack, softmax output."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recurrent import build_rnn


class CharLM(nn.Module):
    """Character-level language model.

    Args:
        vocab_size: number of symbols (50 for PTB char, the newline included).
        cell: ``"hyperlstm"`` | ``"lstm"`` | ``"ln_lstm"``.
        hidden_size, num_layers: of the RNN stack.
        hyper_size, embed_size, layer_norm: HyperLSTM settings (N_ĥ, N_z, LN).
        dropout: dropout on the RNN output before the softmax and between layers.
        input_dropout: dropout on the one-hot input; defaults to ``dropout``.
        fast: ``hyperlstm`` only: the fast path (default) or the reference implementation.
        recurrent_dropout: dropout on the cell candidate.

    Inputs are one-hot (as in the paper), so the first layer's input projection is the embedding.
    ``forward(tokens, state=None)``: ``tokens`` ``(T, B)`` long -> ``logits`` ``(T, B, vocab_size)``, state.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "hyperlstm",
        hidden_size: int = 1000,
        num_layers: int = 1,
        *,
        hyper_size: int = 128,
        embed_size: int = 4,
        layer_norm: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size, self.cell = vocab_size, cell
        self.dropout = dropout
        self.input_dropout = dropout if input_dropout is None else input_dropout
        self.rnn = build_rnn(
            cell,
            vocab_size,
            hidden_size,
            num_layers,
            hyper_size=hyper_size,
            embed_size=embed_size,
            layer_norm=layer_norm,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            fast=fast,
        )
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        x = F.one_hot(tokens, self.vocab_size).to(self.decoder.weight.dtype)
        x = F.dropout(x, self.input_dropout, self.training)
        output, state = self.rnn(x, state)
        output = F.dropout(output, self.dropout, self.training)
        return self.decoder(output), state

    @torch.no_grad()
    def sample(
        self, prime: list[int], length: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[int]:
        """Continue ``prime`` (token ids, at least one) by ``length`` sampled ids.

        ``temperature`` < 1 sharpens the distribution, > 1 flattens it; 0 takes the argmax.
        """
        if not prime:
            raise ValueError("prime must hold at least one token id")
        was_training = self.training
        self.eval()
        device = self.decoder.weight.device
        logits, state = self(torch.tensor(prime, device=device).view(-1, 1))
        out: list[int] = []
        for _ in range(length):
            last = logits[-1, 0]
            if temperature == 0:
                nxt = int(last.argmax())
            else:
                probs = torch.softmax(last.double() / temperature, dim=-1)
                nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            out.append(nxt)
            logits, state = self(torch.tensor([[nxt]], device=device), state)
        self.train(was_training)
        return out


def stream_batches(ids: Tensor, batch_size: int, pad_id: int = -100) -> tuple[Tensor, Tensor]:
    """Cut a 1-D id sequence into ``batch_size`` contiguous streams of inputs and next-token targets.

    Returns ``inputs``, ``targets`` of shape ``(L, batch_size)``; the last stream is padded at its end
    (inputs with 0, targets with ``pad_id``), so every target of ``ids[1:]`` appears exactly once.
    """
    inputs, targets = ids[:-1], ids[1:]
    n = inputs.numel()
    length = math.ceil(n / batch_size)
    pad = length * batch_size - n
    inputs = torch.cat([inputs, inputs.new_zeros(pad)])
    targets = torch.cat([targets, targets.new_full((pad,), pad_id)])
    return inputs.view(batch_size, length).t().contiguous(), targets.view(batch_size, length).t().contiguous()


@torch.no_grad()
def bits_per_char(model: CharLM, ids: Tensor, batch_size: int = 16, seq_len: int = 100) -> float:
    """Bits per character over a whole split: mean cross-entropy (nats) / ln 2 over every target.

    ``ids`` is the split as one 1-D tensor; start it with a separator (e.g. the newline that ends
    the previous split) so its first symbol is predicted too. State is carried across segments.
    """
    inputs, targets = stream_batches(ids.to(model.decoder.weight.device), batch_size)
    starts = range(0, inputs.shape[0], seq_len)
    return segments_bits_per_char(model, ((inputs[s : s + seq_len], targets[s : s + seq_len]) for s in starts))


@torch.no_grad()
def segments_bits_per_char(model: CharLM, segments: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Bits per character over consecutive TBPTT segments ``(inputs, targets)`` of the same streams,
    each of shape ``(seq_len, batch)`` on the model's device (targets -100 where padded), the state
    carried from one to the next: summed cross-entropy (nats, in float64) / targets / ln 2."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for x, tgt in segments:
        logits, state = model(x, state)
        total += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).double(), tgt.reshape(-1), ignore_index=-100, reduction="sum"
            )
        )
        count += int((tgt != -100).sum())
    model.train(was_training)
    return total / count / math.log(2)


__all__ = ["CharLM", "bits_per_char", "segments_bits_per_char", "stream_batches"]
