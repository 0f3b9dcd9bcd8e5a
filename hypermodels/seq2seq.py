"""Attention encoder-decoder in the GNMT mould (Wu et al. 2016), the paper's translation model (§4.4).

Ha, Dai, Le (2017) replace every LSTM of GNMT by a layer-norm HyperLSTM. :class:`Seq2Seq` builds that
model at any scale from the project's recurrent layers (``cell`` = ``"hyperlstm"``, ``"lstm"`` or
``"ln_lstm"``, see :func:`~hypermodels.recurrent.build_rnn`):

* **Encoder.** Layer 1 is bidirectional: a forward and a backward run of the cell, each ``hidden_size``
  wide, concatenated to ``2 * hidden_size`` and **projected** back to ``hidden_size`` by a linear layer
  (GNMT feeds the concatenation to layer 2; the projection keeps every later layer, the residual sums
  and the attention memory at ``hidden_size``, and makes ``num_layers=1`` a valid encoder). Layers 2 ..
  ``num_layers`` are unidirectional. Padding: sentences are padded at their end; the forward direction
  and the unidirectional layers are causal, so padding never reaches a real position; the backward
  direction reverses each sentence *within its length* (a gather), runs, and reverses back, so it
  starts at the sentence's last real token.
* **Decoder.** ``num_layers`` unidirectional layers, zero initial state (as GNMT). The top layer's
  output ``h_t`` queries the encoder outputs (attention masked on source padding) for a context
  ``c_t``; the attentional vector ``ã_t = tanh(W_c [c_t; h_t])`` (Luong et al. 2015) feeds the softmax.
  With ``input_feeding`` the previous ``ã_{t-1}`` is concatenated to the next input embedding.
* **Residual connections** from the third layer on, in both encoder and decoder (GNMT): the output of
  layer k >= 3 (counting from 1) is ``layer_k(x) + x``.
* **Attention**: ``"additive"`` (Bahdanau: ``v^T tanh(W_q h_t + W_k e_s)``), the default, as in GNMT;
  or ``"general"`` (Luong: ``h_t^T W e_s``).

Token tensors are batch-first: ``(batch, length)`` long. Recurrent layers run time-major internally.
Every piece of cell-specific state handling (HyperLSTM's 4-tuple vs the LSTMs' ``(h, c)``) lives in
:class:`RecurrentLayer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hyperlstm import HyperLSTM
from .recurrent import CELLS, build_rnn, map_state

ATTENTIONS = ("additive", "general")

# What beam_search returns: the hypotheses, with their scores and/or attention matrices if asked.
Hypotheses: TypeAlias = list[list[int]]
BeamSearchResult: TypeAlias = (
    Hypotheses | tuple[Hypotheses, Tensor] | tuple[Hypotheses, list[Tensor]] | tuple[Hypotheses, Tensor, list[Tensor]]
)


# --------------------------------------------------------------------------------------------------
# Recurrent layer: the one place that knows what a cell's state looks like.
# --------------------------------------------------------------------------------------------------


class RecurrentLayer(nn.Module):
    """One layer of the chosen cell, with the cell's state handled behind a uniform interface.

    Args:
        cell: ``"hyperlstm"`` | ``"lstm"`` | ``"ln_lstm"``.
        input_size, hidden_size: features in and out.
        hyper_size, embed_size, layer_norm, recurrent_dropout: see :func:`~hypermodels.recurrent.build_rnn`.

    ``forward(x, state)``: ``x`` ``(T, B, input_size)``, ``state`` from :meth:`zero_state` or a previous
    call; returns ``output`` ``(T, B, hidden_size)`` and the new state (each tensor ``(1, B, ·)``).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        *,
        hyper_size: int = 128,
        embed_size: int = 4,
        layer_norm: bool = True,
        recurrent_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.rnn = build_rnn(
            cell,
            input_size,
            hidden_size,
            1,
            hyper_size=hyper_size,
            embed_size=embed_size,
            layer_norm=layer_norm,
            dropout=0.0,
            recurrent_dropout=recurrent_dropout,
        )

    def zero_state(self, batch: int, like: Tensor) -> Any:
        """The all-zero state for ``batch`` sequences (dtype/device of ``like``)."""
        if isinstance(self.rnn, HyperLSTM):
            return self.rnn.zero_state(batch, like)
        zeros = like.new_zeros(1, batch, self.hidden_size)
        return (zeros, zeros.clone())

    @staticmethod
    def select(state: Any, index: Tensor) -> Any:
        """The state of the sequences ``index`` (``(B',)`` long) of the batch: beam reordering."""
        return map_state(lambda t: t.index_select(1, index), state)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        if state is None:
            state = self.zero_state(x.shape[1], x)
        result: tuple[Tensor, Any] = self.rnn(x.contiguous(), state)
        return result


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Attention over encoder outputs with a source padding mask.

    Args:
        query_size: features of the decoder query ``h_t``.
        key_size: features of the encoder outputs.
        kind: ``"additive"`` (Bahdanau, ``v^T tanh(W_q q + W_k k + b)``) or ``"general"``
            (Luong, ``q^T W k``).
        attention_size: inner size of the additive score (defaults to ``query_size``).

    Use: ``keys = attn.precompute(memory)`` once per source, then
    ``attn(query, keys, memory, mask)`` with ``query`` ``(B, T, query_size)``, ``memory``
    ``(B, S, key_size)``, ``mask`` ``(B, S)`` bool (True = real token); returns ``context``
    ``(B, T, key_size)`` and ``weights`` ``(B, T, S)``, which sum to 1 over real positions and are
    exactly 0 on padding.
    """

    def __init__(
        self, query_size: int, key_size: int, kind: str = "additive", attention_size: int | None = None
    ) -> None:
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
        self.kind = kind
        if kind == "additive":
            size = attention_size or query_size
            self.key_proj = nn.Linear(key_size, size)
            self.query_proj = nn.Linear(query_size, size, bias=False)
            self.v = nn.Linear(size, 1, bias=False)
        else:
            self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        """The query-independent part: ``W_k memory`` ``(B, S, ·)``."""
        keys: Tensor = self.key_proj(memory)
        return keys

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "additive":
            hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, A)
            scores = self.v(hidden).squeeze(-1)
        else:
            scores = torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, memory), weights


# --------------------------------------------------------------------------------------------------
# Encoder-decoder
# --------------------------------------------------------------------------------------------------


class EncoderOutput(NamedTuple):
    """What the decoder needs of a source batch.

    ``memory`` ``(B, S, hidden_size)`` (zero on padding), ``keys`` (the attention's precomputed
    projection of ``memory``), ``mask`` ``(B, S)`` bool, True on real tokens.
    """

    memory: Tensor
    keys: Tensor
    mask: Tensor

    def select(self, index: Tensor) -> EncoderOutput:
        """Rows ``index`` of the batch (e.g. each sentence repeated once per beam)."""
        return EncoderOutput(*(t.index_select(0, index) for t in self))


class DecoderState(NamedTuple):
    """Decoder state carried between steps.

    ``layers``: one recurrent state per decoder layer (see :class:`RecurrentLayer`);
    ``feed``: the last attentional vector ``ã`` ``(B, hidden_size)`` (zeros before the first step;
    used only with input feeding).
    """

    layers: list[Any]
    feed: Tensor

    def select(self, index: Tensor) -> DecoderState:
        """The state of the sequences ``index`` of the batch (beam reordering)."""
        return DecoderState([RecurrentLayer.select(s, index) for s in self.layers], self.feed.index_select(0, index))


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's length penalty ``lp(Y) = ((5 + |Y|) / 6) ** alpha`` (Wu et al. 2016, Eq. 14).

    Beam search ranks hypotheses by ``log P(Y|X) / lp(Y)``; ``alpha = 0`` ranks by raw log-probability.
    """
    return ((5.0 + length.to(torch.get_default_dtype())) / 6.0) ** alpha


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float = 0.1, ignore_index: int = 0
) -> tuple[Tensor, int]:
    """Label-smoothed cross-entropy, summed over the non-padding targets.

    ``logits`` ``(..., V)``, ``target`` ``(...)`` long. Returns the summed loss (a scalar tensor) and
    the number of target tokens that are not ``ignore_index`` (divide for the per-token mean).
    This is ``F.cross_entropy(label_smoothing=epsilon)``: ``(1 - ε) · NLL + ε · mean_v(-log p_v)``.
    """
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=ignore_index,
        label_smoothing=epsilon,
        reduction="sum",
    )
    return loss, int((target != ignore_index).sum())


def _reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` ``(T, B, F)`` within its length, padding staying at the end.

    Its own inverse: applying it twice gives back ``x``.
    """
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    lengths = lengths.to(x.device).unsqueeze(0)  # (1, B)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


class Seq2Seq(nn.Module):
    """GNMT-style attention encoder-decoder whose recurrent layers are any of the project's cells.

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes (source and target).
        cell: ``"hyperlstm"`` (the paper's model, with ``layer_norm=True``), ``"lstm"`` or ``"ln_lstm"``.
        hidden_size: width of every recurrent layer, the encoder outputs and the attentional vector.
        num_layers: layers of the encoder (the first bidirectional) and of the decoder; >= 1.
            Residual connections start at the third layer.
        embedding_size: word embedding size (source and target).
        hyper_size: HyperLSTM hyper-cell units N_ĥ.
        embed_size: HyperLSTM z-embedding size N_z (not the word embedding: see ``embedding_size``).
        layer_norm: layer norm in the HyperLSTM (``ln_lstm`` always has it, ``lstm`` never).
        dropout: dropout on the embeddings, between layers, and on ``ã_t`` before the softmax.
        recurrent_dropout: dropout on the cell candidate (``hyperlstm``/``ln_lstm``; ``lstm`` then
            runs the step-loop cell).
        attention: ``"additive"`` (Bahdanau, default, as GNMT) or ``"general"`` (Luong).
        input_feeding: concatenate ``ã_{t-1}`` to the decoder input (Luong et al. 2015); teacher-forced
            training then runs step by step. Without it the decoder runs each layer over the whole
            target at once.
        pad_id, bos_id, eos_id: special target ids (``pad_id`` is also the source padding id).

    ``forward(src, src_lengths, tgt_in)``: ``src`` ``(B, S)`` long padded with ``pad_id`` at the end,
    ``src_lengths`` ``(B,)``, ``tgt_in`` ``(B, T)`` (``bos`` + target, padded) -> ``logits``
    ``(B, T, tgt_vocab_size)`` under teacher forcing (plus attention ``(B, T, S)`` if asked).
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        *,
        cell: str = "hyperlstm",
        hidden_size: int = 256,
        num_layers: int = 2,
        embedding_size: int = 256,
        hyper_size: int = 128,
        embed_size: int = 4,
        layer_norm: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        attention: str = "additive",
        input_feeding: bool = True,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.embedding_size, self.dropout, self.input_feeding = embedding_size, dropout, input_feeding
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        H = hidden_size

        def layer(n_in: int) -> RecurrentLayer:
            return RecurrentLayer(
                cell,
                n_in,
                H,
                hyper_size=hyper_size,
                embed_size=embed_size,
                layer_norm=layer_norm,
                recurrent_dropout=recurrent_dropout,
            )

        self.src_embedding = nn.Embedding(src_vocab_size, embedding_size, padding_idx=pad_id)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, embedding_size, padding_idx=pad_id)
        # Encoder: bidirectional layer 1, merged by a projection, then unidirectional layers.
        self.encoder_fwd = layer(embedding_size)
        self.encoder_bwd = layer(embedding_size)
        self.encoder_merge = nn.Linear(2 * H, H)
        self.encoder_layers = nn.ModuleList(layer(H) for _ in range(num_layers - 1))
        # Decoder.
        self.decoder_layers = nn.ModuleList(
            layer(embedding_size + (H if input_feeding else 0) if k == 0 else H) for k in range(num_layers)
        )
        self.attention = Attention(H, H, attention)
        self.attentional = nn.Linear(2 * H, H, bias=False)  # W_c [c_t; h_t]
        self.output = nn.Linear(H, tgt_vocab_size)

    # ---- encoder ---------------------------------------------------------------------------------

    def source_mask(self, src: Tensor, src_lengths: Tensor) -> Tensor:
        """``(B, S)`` bool, True at positions below each sentence's length."""
        lengths = src_lengths.to(src.device)
        if lengths.numel() != src.shape[0] or bool((lengths < 1).any()) or int(lengths.max()) > src.shape[1]:
            raise ValueError(
                f"src_lengths must be in [1, {src.shape[1]}], one per sentence; got {src_lengths.tolist()}"
            )
        return torch.arange(src.shape[1], device=src.device).unsqueeze(0) < lengths.unsqueeze(1)

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """Encode ``src`` ``(B, S)`` with ``src_lengths`` ``(B,)``; see :class:`EncoderOutput`."""
        mask = self.source_mask(src, src_lengths)
        x = F.dropout(self.src_embedding(src), self.dropout, self.training).transpose(0, 1)  # (S, B, E)
        fwd, _ = self.encoder_fwd(x)
        bwd, _ = self.encoder_bwd(_reverse_within_lengths(x, src_lengths))
        bwd = _reverse_within_lengths(bwd, src_lengths)
        out = self.encoder_merge(torch.cat([fwd, bwd], dim=-1))
        for k, layer in enumerate(self._layers(self.encoder_layers), start=2):  # k: 1-based layer number
            inp = F.dropout(out, self.dropout, self.training)
            out, _ = layer(inp)
            if k >= 3:
                out = out + inp
        memory = out.transpose(0, 1).masked_fill(~mask.unsqueeze(-1), 0.0)
        return EncoderOutput(memory, self.attention.precompute(memory), mask)

    # ---- decoder ---------------------------------------------------------------------------------

    def init_decoder_state(self, enc: EncoderOutput) -> DecoderState:
        """Zero decoder state for the batch of ``enc``."""
        B, like = enc.memory.shape[0], enc.memory
        return DecoderState(
            [layer.zero_state(B, like) for layer in self._layers(self.decoder_layers)],
            like.new_zeros(B, self.hidden_size),
        )

    @staticmethod
    def _layers(layers: nn.ModuleList) -> Iterable[RecurrentLayer]:
        """``layers`` with their type (an encoder or decoder stack)."""
        return cast(Iterable[RecurrentLayer], layers)

    def _decoder_stack(self, x: Tensor, states: list[Any]) -> tuple[Tensor, list[Any]]:
        """Run the decoder layers on ``x`` ``(T, B, in)``; residual from layer 3 on."""
        new_states: list[Any] = []
        out = x
        for k, layer in enumerate(self._layers(self.decoder_layers), start=1):
            inp = out if k == 1 else F.dropout(out, self.dropout, self.training)
            out, state = layer(inp, states[k - 1])
            if k >= 3:
                out = out + inp
            new_states.append(state)
        return out, new_states

    def _attend(self, top: Tensor, enc: EncoderOutput) -> tuple[Tensor, Tensor, Tensor]:
        """``top`` ``(B, T, H)`` -> logits ``(B, T, V)``, ``ã`` ``(B, T, H)``, weights ``(B, T, S)``."""
        context, weights = self.attention(top, enc.keys, enc.memory, enc.mask)
        attentional = torch.tanh(self.attentional(torch.cat([context, top], dim=-1)))
        logits = self.output(F.dropout(attentional, self.dropout, self.training))
        return logits, attentional, weights

    def _step(self, emb: Tensor, state: DecoderState, enc: EncoderOutput) -> tuple[Tensor, DecoderState, Tensor]:
        x = torch.cat([emb, state.feed], dim=-1) if self.input_feeding else emb
        top, layers = self._decoder_stack(x.unsqueeze(0), state.layers)
        logits, attentional, weights = self._attend(top.transpose(0, 1), enc)
        return logits.squeeze(1), DecoderState(layers, attentional.squeeze(1)), weights.squeeze(1)

    def decode_step(
        self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One incremental decoder step.

        ``prev_tokens`` ``(B,)`` long (``bos`` first), ``state`` from :meth:`init_decoder_state` or the
        previous step, ``enc`` from :meth:`encode` (rows matching the batch). Returns ``logits``
        ``(B, V)``, the new state and the attention weights ``(B, S)``.
        """
        emb = F.dropout(self.tgt_embedding(prev_tokens), self.dropout, self.training)
        return self._step(emb, state, enc)

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher-forced logits ``(B, T, tgt_vocab_size)`` (and attention ``(B, T, S)`` if asked).

        Positions of ``tgt_in`` after a sentence's end see only earlier positions, so padding there
        does not change the logits of real positions.
        """
        enc = self.encode(src, src_lengths)
        emb = F.dropout(self.tgt_embedding(tgt_in), self.dropout, self.training)  # (B, T, E)
        if self.input_feeding:
            state = self.init_decoder_state(enc)
            steps = []
            for emb_t in emb.unbind(1):
                logits_t, state, weights_t = self._step(emb_t, state, enc)
                steps.append((logits_t, weights_t))
            logits = torch.stack([s[0] for s in steps], dim=1)
            weights = torch.stack([s[1] for s in steps], dim=1)
        else:
            states = self.init_decoder_state(enc).layers
            top, _ = self._decoder_stack(emb.transpose(0, 1), states)
            logits, _, weights = self._attend(top.transpose(0, 1), enc)
        return (logits, weights) if return_attention else logits

    # ---- search ----------------------------------------------------------------------------------

    def _trim(self, tokens: list[int]) -> list[int]:
        return tokens[: tokens.index(self.eos_id)] if self.eos_id in tokens else tokens

    @torch.no_grad()
    def greedy(
        self, src: Tensor, src_lengths: Tensor, max_len: int = 100, return_attention: bool = False
    ) -> list[list[int]] | tuple[list[list[int]], list[Tensor]]:
        """Greedy decoding of a batch; each sentence stops at its ``eos`` or after ``max_len`` tokens.

        Returns one token-id list per sentence (``eos`` not included). With ``return_attention``, also
        one attention matrix per sentence, ``(T_out, S_i)``: a row per emitted token (``eos``
        included), a column per real source token.
        """
        was_training = self.training
        self.eval()
        try:
            enc = self.encode(src, src_lengths)
            B = src.shape[0]
            state = self.init_decoder_state(enc)
            prev = src.new_full((B,), self.bos_id)
            done = torch.zeros(B, dtype=torch.bool, device=src.device)
            tokens, weights = [], []
            for _ in range(max_len):
                logits, state, w = self.decode_step(prev, state, enc)
                prev = logits.argmax(-1)
                tokens.append(prev)
                weights.append(w)
                done = done | (prev == self.eos_id)
                if bool(done.all()):
                    break
        finally:
            self.train(was_training)
        rows = torch.stack(tokens, dim=1).tolist()
        hyps = [self._trim(r) for r in rows]
        if not return_attention:
            return hyps
        attn = torch.stack(weights, dim=1)  # (B, T, S)
        lengths = src_lengths.tolist()
        n_out = [min(len(h) + 1, attn.shape[1]) for h in hyps]
        return hyps, [attn[b, : n_out[b], : lengths[b]] for b in range(B)]

    @torch.no_grad()
    def beam_search(
        self,
        src: Tensor,
        src_lengths: Tensor,
        beam_size: int = 4,
        max_len: int = 100,
        alpha: float = 0.6,
        return_scores: bool = False,
        return_attention: bool = False,
    ) -> BeamSearchResult:
        """Beam search, batched over sentences (``B * beam_size`` rows in the decoder batch).

        Hypotheses are ranked by ``log P(Y|X) / lp(Y)`` with GNMT's length penalty
        ``lp(Y) = ((5 + |Y|) / 6) ** alpha`` (:func:`length_penalty`); ``|Y|`` counts the emitted tokens,
        ``eos`` included. A finished hypothesis stays in its beam with a fixed score (it may only
        extend by ``eos`` at no cost and its length stops growing) and competes with the live ones;
        search ends when every beam of every sentence has finished or after ``max_len`` tokens.
        ``beam_size=1`` gives exactly :meth:`greedy`.

        Returns the best hypothesis per sentence (token ids, ``eos`` not included); with
        ``return_scores`` also a ``(B,)`` tensor of their normalised scores, with ``return_attention``
        also their ``(T_out, S_i)`` attention matrices (as :meth:`greedy`), in that order.
        """
        if beam_size < 1 or max_len < 1:
            raise ValueError(f"beam_size and max_len must be >= 1, got {beam_size} and {max_len}")
        was_training = self.training
        self.eval()
        try:
            B, K, V = src.shape[0], beam_size, self.tgt_vocab_size
            device = src.device
            enc = self.encode(src, src_lengths).select(torch.arange(B, device=device).repeat_interleave(K))
            state = self.init_decoder_state(enc)
            prev = src.new_full((B * K,), self.bos_id)
            logp_sum = torch.full((B, K), float("-inf"), device=device)
            logp_sum[:, 0] = 0.0  # all beams start equal: expand only the first
            lengths = torch.zeros(B, K, dtype=torch.long, device=device)
            finished = torch.zeros(B, K, dtype=torch.bool, device=device)
            tokens = src.new_zeros(B, K, 0)
            attn = enc.memory.new_zeros(B, K, 0, src.shape[1])
            eos_only = torch.full((V,), float("-inf"), device=device)
            eos_only[self.eos_id] = 0.0
            base = (torch.arange(B, device=device) * K).unsqueeze(1)
            for _ in range(max_len):
                logits, state, w = self.decode_step(prev, state, enc)
                logp = torch.log_softmax(logits.float(), dim=-1).view(B, K, V)
                logp = torch.where(finished.unsqueeze(-1), eos_only, logp)
                cand = (logp_sum.unsqueeze(-1) + logp).view(B, K * V)
                cand_len = lengths + (~finished).long()  # (B, K)
                norm = cand.view(B, K, V) / length_penalty(cand_len, alpha).unsqueeze(-1)
                best, index = norm.view(B, K * V).topk(K, dim=1)  # sorted, best first
                beam, token = index // V, index % V
                logp_sum = cand.gather(1, index)
                lengths = cand_len.gather(1, beam)
                finished = finished.gather(1, beam) | (token == self.eos_id)
                tokens = torch.cat([tokens.gather(1, beam.unsqueeze(-1).expand_as(tokens)), token.unsqueeze(-1)], -1)
                w = w.view(B, K, 1, -1)
                attn = torch.cat(
                    [
                        attn.gather(1, beam[..., None, None].expand_as(attn)),
                        w.gather(1, beam[..., None, None].expand_as(w)),
                    ],
                    dim=2,
                )
                rows = (base + beam).view(-1)
                state = state.select(rows)
                prev = token.view(-1)
                if bool(finished.all()):
                    break
        finally:
            self.train(was_training)
        hyps = [self._trim(r) for r in tokens[:, 0].tolist()]
        if not return_attention:
            return (hyps, best[:, 0]) if return_scores else hyps
        src_len = src_lengths.tolist()
        mats = [attn[b, 0, : min(len(hyps[b]) + 1, attn.shape[2]), : src_len[b]] for b in range(B)]
        return (hyps, best[:, 0], mats) if return_scores else (hyps, mats)


__all__ = [
    "ATTENTIONS",
    "Attention",
    "DecoderState",
    "EncoderOutput",
    "RecurrentLayer",
    "Seq2Seq",
    "label_smoothed_nll",
    "length_penalty",
]
