"""CharLM: the paper's parameter counts, bpc evaluation, sampling, learning, baselines, PTB data."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hypermodels import (
    LSTM,
    CharLM,
    CharVocab,
    LayerNormLSTM,
    bits_per_char,
    count_parameters,
    detach_state,
    ptb_char_symbols,
    stream_batches,
)

PTB_CHAR = Path(__file__).resolve().parents[2] / "data" / "ptb-char"


def read_ptb_char(split: str) -> list[str]:
    """The symbols of the vendored PTB-char split (hypermodels reads no files; the service owns this)."""
    with gzip.open(PTB_CHAR / f"ptb.char.{split}.txt.gz", "rt", encoding="utf-8") as f:
        return ptb_char_symbols(f.read())


# (paper row, CharLM arguments, parameters in the paper's tables in millions)
PAPER_COUNTS = [
    ("PTB LSTM 1000", dict(vocab_size=50, cell="lstm"), 4.25),
    ("PTB LN LSTM 1000", dict(vocab_size=50, cell="ln_lstm"), 4.26),
    ("PTB HyperLSTM 1000/128/4", dict(vocab_size=50, layer_norm=False), 4.91),
    ("PTB LN HyperLSTM", dict(vocab_size=50), 4.92),
    ("PTB LN HyperLSTM N_z=16", dict(vocab_size=50, embed_size=16), 5.06),
    ("PTB 2-layer LN HyperLSTM N_z=16", dict(vocab_size=50, embed_size=16, num_layers=2), 14.41),
    (
        "enwik8 HyperLSTM 1800/256/64",
        dict(vocab_size=205, hidden_size=1800, hyper_size=256, embed_size=64, layer_norm=False),
        18.71,
    ),
]


@pytest.mark.parametrize("row,kwargs,paper_m", PAPER_COUNTS, ids=[r[0] for r in PAPER_COUNTS])
def test_parameter_counts_match_paper(row, kwargs, paper_m):
    n = count_parameters(CharLM(**kwargs))
    assert abs(n / 1e6 - paper_m) / paper_m < 0.01, f"{row}: {n:,} vs paper {paper_m}M"


def test_stream_batches_cover_every_target_once():
    ids = torch.arange(23)
    inputs, targets = stream_batches(ids, 4)
    assert inputs.shape == targets.shape == (6, 4)
    real = targets[targets != -100]
    assert sorted(real.tolist()) == list(range(1, 23))
    # streams are contiguous: next input is the current target
    torch.testing.assert_close(inputs[1:, 0], targets[:-1, 0])


def test_bits_per_char_equals_one_full_pass():
    torch.manual_seed(0)
    model = CharLM(7, hidden_size=8, hyper_size=4, embed_size=2)
    ids = torch.randint(0, 7, (101,))
    bpc = bits_per_char(model, ids, batch_size=1, seq_len=13)  # 8 segments, state carried across
    with torch.no_grad():
        logits, _ = model(ids[:-1].view(-1, 1))
        want = F.cross_entropy(logits.view(-1, 7).double(), ids[1:]).item() / math.log(2)
    assert bpc == pytest.approx(want, rel=1e-9)
    assert bits_per_char(model, ids, batch_size=3, seq_len=13) == pytest.approx(
        bits_per_char(model, ids, batch_size=3, seq_len=1000), rel=1e-5
    )


@pytest.mark.parametrize("cell", ["hyperlstm", "ln_lstm", "lstm"])
def test_tiny_model_learns_repeating_text(cell):
    torch.manual_seed(0)
    vocab = CharVocab.build("hello world\n")
    ids = torch.tensor(vocab.encode("hello world\n" * 40))
    model = CharLM(len(vocab), cell=cell, hidden_size=32, hyper_size=16, embed_size=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = stream_batches(ids, 4)
    state = None
    for step in range(150):
        start = (step * 20) % (inputs.shape[0] - 20)
        if start == 0:
            state = None
        logits, state = model(inputs[start : start + 20], state)
        state = detach_state(state)
        loss = F.cross_entropy(
            logits.reshape(-1, len(vocab)), targets[start : start + 20].reshape(-1), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert bits_per_char(model, ids, batch_size=2, seq_len=50) < 0.1
    text = vocab.to_text(model.sample(vocab.encode("hel"), 20, temperature=0), ptb_format=False)
    assert text == "lo world\nhello world"


def test_sampling_temperature_and_seed():
    torch.manual_seed(0)
    model = CharLM(5, hidden_size=8, hyper_size=4, embed_size=2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert model.sample([1, 2], 30, 1.0, g()) == model.sample([1, 2], 30, 1.0, g())
    assert len(set(model.sample([1], 200, temperature=5.0, generator=g()))) == 5
    with pytest.raises(ValueError, match="prime"):
        model.sample([], 3)


def test_baselines_share_conventions():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3)
    for rnn in (
        LSTM(3, 5, num_layers=2),
        LayerNormLSTM(3, 5, num_layers=2),
        LayerNormLSTM(3, 5, num_layers=2, layer_norm=False, recurrent_dropout=0.2),
    ):
        out, (h, c) = rnn(x)
        assert out.shape == (6, 2, 5) and h.shape == c.shape == (2, 2, 5)
        first, state = rnn.eval()(x[:2])
        second, _ = rnn(x[2:], state)
        torch.testing.assert_close(torch.cat([first, second]), rnn(x)[0])


def test_lstm_forget_bias_and_plain_cell_agree():
    # The step-loop LSTM without LN computes the same function as the fused kernel.
    torch.manual_seed(0)
    fused = LSTM(3, 4)
    loop = LayerNormLSTM(3, 4, layer_norm=False, forget_bias=0.0)
    assert torch.all(fused.bias_ih_l0[4:8] == 1.0)
    # torch gate order (i, f, g, o) -> ours (i, g, f, o)
    order = lambda w: torch.cat([w[0:4], w[8:12], w[4:8], w[12:16]])  # noqa: E731
    with torch.no_grad():
        loop.cells[0].weight_ih.copy_(order(fused.weight_ih_l0))
        loop.cells[0].weight_hh.copy_(order(fused.weight_hh_l0))
        loop.cells[0].bias.copy_(order(fused.bias_ih_l0 + fused.bias_hh_l0))
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(loop(x)[0], fused(x)[0], rtol=1e-5, atol=1e-6)


def test_ptb_char_vocab_and_splits():
    train = read_ptb_char("train")
    vocab = CharVocab.build(train)
    assert len(vocab) == 50 and "\n" in vocab.index and "_" in vocab.index
    assert train.count("\n") == 42068
    valid = read_ptb_char("valid")
    assert valid.count("\n") == 3370
    vocab.encode(valid)  # every valid symbol is in the train vocabulary
    assert vocab.to_text(vocab.encode(list("a_b"))) == "a b"


def test_charlm_rejects_unknown_cell():
    with pytest.raises(ValueError, match="cell must be one of"):
        CharLM(10, cell="gru")
