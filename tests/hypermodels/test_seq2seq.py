"""Seq2Seq (GNMT-style attention encoder-decoder): overfitting, search, padding, attention, state handling."""

from __future__ import annotations

import itertools

import pytest
import torch

from hypermodels import HyperLSTMState, Seq2Seq, label_smoothed_nll, length_penalty
from hypermodels.recurrent import detach_state, map_state, state_to, state_to_cpu
from hypermodels.seq2seq import RecurrentLayer

PAD, BOS, EOS = 0, 1, 2
VOCAB = 13  # 3..12 are words

# Six short pairs with no simple rule: the model has to memorise each one (and the lengths differ).
PAIRS = [
    ([3, 4, 5], [6, 7]),
    ([5, 9, 8, 4], [10, 3, 3]),
    ([12, 11], [4, 5, 6, 7]),
    ([7, 7, 3, 10, 6], [8, 9]),
    ([4, 3], [12]),
    ([9, 10, 11, 12, 3, 5], [5, 4, 11, 10]),
]
TARGETS = [t for _, t in PAIRS]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is shared: one intra-op thread is faster here than two competing ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(pairs, src_fill: int = PAD):
    """Padded batch-first tensors: src, src_lengths, tgt_in (bos + target), tgt_out (target + eos)."""
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = torch.tensor([s + [src_fill] * (S - len(s)) for s, _ in pairs])
    lengths = torch.tensor([len(s) for s, _ in pairs])
    tgt_in = torch.tensor([[BOS] + t + [PAD] * (T - 1 - len(t)) for _, t in pairs])
    tgt_out = torch.tensor([t + [EOS] + [PAD] * (T - 1 - len(t)) for _, t in pairs])
    return src, lengths, tgt_in, tgt_out


def small_model(cell="hyperlstm", seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(
        hidden_size=32, num_layers=3, embedding_size=16, hyper_size=16, embed_size=4, pad_id=PAD, bos_id=BOS, eos_id=EOS
    )
    args.update(kw)
    return Seq2Seq(VOCAB, VOCAB, cell=cell, **args)


# Trained models: the paper's cell with input feeding and additive attention, and the LSTM baseline with
# the other options (no input feeding: the parallel decoder path; Luong's general attention).
TRAINED = {
    "hyperlstm": dict(cell="hyperlstm", input_feeding=True, attention="additive"),
    "lstm": dict(cell="lstm", input_feeding=False, attention="general"),
}


@pytest.fixture(scope="module", params=sorted(TRAINED))
def trained(request, one_thread):
    model = small_model(**TRAINED[request.param])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    src, lengths, tgt_in, tgt_out = make_batch(PAIRS)
    for _ in range(300):
        loss, n = label_smoothed_nll(model(src, lengths, tgt_in), tgt_out, epsilon=0.0, ignore_index=PAD)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        if loss.item() / n < 0.005:
            break
    assert loss.item() / n < 0.005, f"{request.param} did not overfit: {loss.item() / n:.4f}"
    return model.eval()


# ---- learning and search ------------------------------------------------------------------------


def test_overfits_pairs_under_greedy_and_beam(trained):
    src, lengths, _, _ = make_batch(PAIRS)
    assert trained.greedy(src, lengths, max_len=10) == TARGETS
    assert trained.beam_search(src, lengths, beam_size=3, max_len=10) == TARGETS
    assert trained.beam_search(src, lengths, beam_size=4, max_len=10, alpha=0.0) == TARGETS


def test_beam_size_one_is_greedy(trained):
    src, lengths, _, _ = make_batch(PAIRS)
    # Unseen sources too (the trained model's outputs vary there), and untrained models of every cell.
    g = torch.Generator().manual_seed(1)
    other = torch.randint(3, VOCAB, (8, 7), generator=g)
    other_lengths = torch.tensor([7, 1, 3, 5, 7, 2, 6, 4])
    cases = [(trained, src, lengths), (trained, other, other_lengths)]
    for cell, feed in itertools.product(("hyperlstm", "lstm", "ln_lstm"), (True, False)):
        cases.append((small_model(cell, seed=3, input_feeding=feed).eval(), other, other_lengths))
    for model, s, n in cases:
        greedy, greedy_attn = model.greedy(s, n, max_len=12, return_attention=True)
        beam, scores, beam_attn = model.beam_search(
            s, n, beam_size=1, max_len=12, return_scores=True, return_attention=True
        )
        assert beam == greedy
        for a, b in zip(greedy_attn, beam_attn, strict=True):
            torch.testing.assert_close(a, b)
    # the untrained models do not all emit one constant sequence: the comparison above means something
    assert len({tuple(h) for h in greedy}) > 1


def _check_beam_scores(model, pairs, beam_size, max_len, alpha):
    """The reported score of each best hypothesis is its teacher-forced log P(Y|X) / lp(|Y|)."""
    src, lengths, _, _ = make_batch(pairs)
    hyps, scores = model.beam_search(
        src, lengths, beam_size=beam_size, max_len=max_len, alpha=alpha, return_scores=True
    )
    ended = [len(h) < max_len for h in hyps]  # otherwise cut at max_len, without eos
    _, _, tgt_in, tgt_out = make_batch([(s, h) for (s, _), h in zip(pairs, hyps, strict=True)])
    with torch.no_grad():
        logp = torch.log_softmax(model(src, lengths, tgt_in), dim=-1)
    token_logp = logp.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1).masked_fill(tgt_out == PAD, 0.0)
    for b, (hyp, end) in enumerate(zip(hyps, ended, strict=True)):
        if not end:
            token_logp[b, len(hyp)] = 0.0  # the eos make_batch appended was never emitted
    n = torch.tensor([len(h) + int(e) for h, e in zip(hyps, ended, strict=True)])  # eos counts in |Y|
    expected = token_logp.sum(1) / length_penalty(n, alpha)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    return hyps, ended


def test_beam_scores_are_length_normalised_log_probabilities(trained):
    hyps, ended = _check_beam_scores(trained, PAIRS, beam_size=3, max_len=10, alpha=0.6)
    assert hyps == TARGETS and all(ended)
    # An untrained model's beams cross over (the best final hypothesis descends from other beams than
    # the first), so this also checks that beam states are reordered along with the tokens.
    model = small_model("hyperlstm", seed=11, input_feeding=True).eval()
    for alpha in (0.0, 1.0):
        _check_beam_scores(model, SENTENCES, beam_size=5, max_len=6, alpha=alpha)


@pytest.mark.parametrize("cell,feed", [("hyperlstm", True), ("lstm", False)])
def test_wide_beam_is_exhaustive_search(cell, feed):
    """A beam as wide as the search space must return the best of all hypotheses under log P / lp.

    Beams cross over here (the winner descends from beams other than the first), so this checks the
    reordering of the decoder states, tokens and attention history.
    """
    V, max_len, alpha = 5, 3, 0.8
    torch.manual_seed(13)
    model = Seq2Seq(
        VOCAB,
        V,
        cell=cell,
        hidden_size=16,
        num_layers=2,
        embedding_size=8,
        hyper_size=8,
        input_feeding=feed,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
    ).eval()
    with torch.no_grad():
        model.output.weight.mul_(10.0)  # sharper, more context-dependent next-token distributions
        model.output.bias[EOS] -= 2.0  # and longer hypotheses: the search has somewhere to go
    src, lengths = torch.tensor([[3, 9, 4, 0], [7, 5, 6, 8]]), torch.tensor([3, 4])
    hyps, scores, mats = model.beam_search(
        src, lengths, beam_size=V**max_len, max_len=max_len, alpha=alpha, return_scores=True, return_attention=True
    )
    others = [t for t in range(V) if t != EOS]
    space = [list(p) + [EOS] for k in range(max_len) for p in itertools.product(others, repeat=k)]
    space += [list(p) for p in itertools.product(others, repeat=max_len)]  # cut at max_len, no eos
    for b in range(2):
        T = max_len
        tgt_in = torch.tensor([[BOS] + y[:-1] + [PAD] * (T - len(y)) for y in space])
        tgt_out = torch.tensor([y + [PAD] * (T - len(y)) for y in space])
        n = len(space)
        with torch.no_grad():
            logits, attn = model(
                src[b : b + 1].expand(n, -1), lengths[b : b + 1].expand(n), tgt_in, return_attention=True
            )
        logp = torch.log_softmax(logits, -1).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
        n_tokens = torch.tensor([len(y) for y in space])  # the model may emit pad (0) too: mask by length
        logp = logp.masked_fill(torch.arange(T) >= n_tokens.unsqueeze(1), 0.0).sum(1)
        ranked = logp / length_penalty(n_tokens, alpha)
        best = int(ranked.argmax())
        assert hyps[b] == [t for t in space[best] if t != EOS]
        assert scores[b].item() == pytest.approx(ranked[best].item(), abs=1e-4)
        torch.testing.assert_close(mats[b], attn[best, : len(space[best]), : int(lengths[b])], atol=1e-5, rtol=0)
    # the searches did not simply follow the greedy path
    assert model.greedy(src, lengths, max_len=max_len) != hyps


def test_input_feeding_feeds_the_previous_attentional_vector():
    model = small_model("hyperlstm", seed=13, input_feeding=True).eval()
    assert model.decoder_layers[0].input_size == model.embedding_size + model.hidden_size
    src, lengths, tgt_in, _ = make_batch(SENTENCES)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        _, state, _ = model.decode_step(tgt_in[:, 0], model.init_decoder_state(enc), enc)
        assert state.feed.abs().min() > 0  # ã_1, not the initial zeros
        a, _, _ = model.decode_step(tgt_in[:, 1], state, enc)
        b, _, _ = model.decode_step(tgt_in[:, 1], state._replace(feed=torch.zeros_like(state.feed)), enc)
    assert (a - b).abs().max() > 1e-4


def test_beam_search_ranks_by_gnmt_length_penalty():
    assert length_penalty(torch.tensor(1), 0.6).item() == pytest.approx(1.0)
    assert length_penalty(torch.tensor(7), 1.0).item() == pytest.approx(2.0)
    assert length_penalty(torch.tensor(13), 0.5).item() == pytest.approx(3**0.5)
    assert length_penalty(torch.tensor(40), 0.0).item() == 1.0


# ---- padding -----------------------------------------------------------------------------------

SENTENCES = [
    ([3, 4, 5, 6, 7, 8], [9, 10, 11]),
    ([12, 3], [4, 5, 6, 7, 8]),
    ([5, 5, 9], [10]),
    ([11, 4, 8, 3, 6], [7, 3]),
]


@pytest.mark.parametrize(
    "cell,feed,attention",
    [
        ("hyperlstm", True, "additive"),
        ("hyperlstm", False, "general"),
        ("lstm", True, "general"),
        ("lstm", False, "additive"),
        ("ln_lstm", True, "additive"),
    ],
)
def test_padded_batch_gives_each_sentence_its_own_logits(cell, feed, attention):
    model = small_model(cell, seed=5, input_feeding=feed, attention=attention, num_layers=3).eval()
    # Padding holds word ids, not pad: only src_lengths may decide what is real.
    src, lengths, tgt_in, _ = make_batch(SENTENCES, src_fill=9)
    with torch.no_grad():
        batched = model(src, lengths, tgt_in)
        for b, pair in enumerate(SENTENCES):
            s, n, t_in, _ = make_batch([pair])
            alone = model(s, n, t_in)[0]
            torch.testing.assert_close(batched[b, : alone.shape[0]], alone, atol=1e-5, rtol=0)
    # and the sentences do differ (a model ignoring its source would pass the comparison above)
    assert (batched[0, 0] - batched[1, 0]).abs().max() > 1e-3


def test_padded_batch_gives_each_sentence_its_own_search_results(trained):
    src, lengths, _, _ = make_batch(PAIRS, src_fill=7)
    for search in (
        lambda s, n: trained.greedy(s, n, max_len=10),
        lambda s, n: trained.beam_search(s, n, beam_size=3, max_len=10),
    ):
        batched = search(src, lengths)
        alone = [search(*make_batch([p])[:2])[0] for p in PAIRS]
        assert batched == alone == TARGETS
    # untrained, on unseen sentences (non-trivial outputs)
    model = small_model("hyperlstm", seed=2).eval()
    src, lengths, _, _ = make_batch(SENTENCES, src_fill=4)
    for search in (
        lambda s, n: model.greedy(s, n, max_len=8),
        lambda s, n: model.beam_search(s, n, beam_size=3, max_len=8, alpha=1.0),
    ):
        assert search(src, lengths) == [search(*make_batch([p])[:2])[0] for p in SENTENCES]


def test_backward_direction_starts_at_last_real_token():
    model = small_model("hyperlstm", seed=4, num_layers=1).eval()
    src, lengths, _, _ = make_batch(SENTENCES)
    with torch.no_grad():
        memory = model.encode(src, lengths).memory
        changed_last = src.clone()
        changed_last[1, 1] = 7  # last real token of sentence 1 (length 2)
        changed_first = src.clone()
        changed_first[0, 0] = 12
        m_last = model.encode(changed_last, lengths).memory
        m_first = model.encode(changed_first, lengths).memory
    # the first position sees the last real token (backward run) and the last sees the first (forward run)
    assert (m_last[1, 0] - memory[1, 0]).abs().max() > 1e-4
    assert (m_first[0, 5] - memory[0, 5]).abs().max() > 1e-4
    # other sentences are untouched, and padding positions are zero
    torch.testing.assert_close(m_last[[0, 2, 3]], memory[[0, 2, 3]])
    assert memory[1, 2:].abs().max() == 0.0


# ---- attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attention,feed", [("additive", True), ("general", False)])
def test_attention_sums_to_one_over_real_source_and_is_zero_on_padding(attention, feed):
    model = small_model("hyperlstm", seed=6, attention=attention, input_feeding=feed).eval()
    src, lengths, tgt_in, _ = make_batch(SENTENCES)
    with torch.no_grad():
        logits, attn = model(src, lengths, tgt_in, return_attention=True)
    B, T, S = attn.shape
    assert (B, T, S) == (4, 6, 6)
    real = (torch.arange(S) < lengths.unsqueeze(1)).unsqueeze(1).expand_as(attn)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, T))
    assert bool((attn[~real] == 0).all())
    assert bool((attn[real] > 0).all())
    # search returns one (T_out, S_i) matrix per sentence, rows summing to 1
    hyps, mats = model.greedy(src, lengths, max_len=9, return_attention=True)
    _, beam_mats = model.beam_search(src, lengths, beam_size=2, max_len=9, return_attention=True)
    for hyp, mat, n in zip(hyps, mats, lengths.tolist(), strict=True):
        assert mat.shape == (min(len(hyp) + 1, 9), n)
        torch.testing.assert_close(mat.sum(-1), torch.ones(mat.shape[0]))
    for mat, n in zip(beam_mats, lengths.tolist(), strict=True):
        assert mat.shape[1] == n
        torch.testing.assert_close(mat.sum(-1), torch.ones(mat.shape[0]))


def test_overfit_attention_matrices_match_the_search_output(trained):
    src, lengths, _, _ = make_batch(PAIRS)
    hyps, mats = trained.greedy(src, lengths, max_len=10, return_attention=True)
    pairs = [(s, h) for (s, _), h in zip(PAIRS, hyps, strict=True)]
    _, _, tgt_in, _ = make_batch(pairs)
    with torch.no_grad():
        _, attn = trained(src, lengths, tgt_in, return_attention=True)
    for b, mat in enumerate(mats):  # teacher forcing on the greedy output gives the same weights
        torch.testing.assert_close(mat, attn[b, : mat.shape[0], : mat.shape[1]], atol=1e-5, rtol=0)


# ---- shapes, incremental decoding, state handling ---------------------------------------------


@pytest.mark.parametrize("cell", ["hyperlstm", "lstm", "ln_lstm"])
@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_shapes(cell, num_layers):
    model = Seq2Seq(
        11,
        17,
        cell=cell,
        hidden_size=8,
        num_layers=num_layers,
        embedding_size=6,
        hyper_size=5,
        embed_size=3,
        dropout=0.1,
    )
    src = torch.randint(3, 11, (3, 5))
    lengths = torch.tensor([5, 2, 4])
    tgt_in = torch.randint(3, 17, (3, 4))
    logits = model(src, lengths, tgt_in)
    assert logits.shape == (3, 4, 17)
    logits.sum().backward()  # trains with dropout on
    assert model.training
    hyps = model.greedy(src, lengths, max_len=3)
    assert model.training  # search restores the mode
    assert len(hyps) == 3 and all(len(h) <= 3 and all(0 <= t < 17 for t in h) for h in hyps)
    assert len(model.encoder_layers) == num_layers - 1 and len(model.decoder_layers) == num_layers


@pytest.mark.parametrize("cell,feed", [("hyperlstm", True), ("hyperlstm", False), ("lstm", True), ("ln_lstm", False)])
def test_incremental_decode_matches_teacher_forcing(cell, feed):
    model = small_model(cell, seed=7, input_feeding=feed).eval()
    src, lengths, tgt_in, _ = make_batch(SENTENCES)
    with torch.no_grad():
        full, attn = model(src, lengths, tgt_in, return_attention=True)
        enc = model.encode(src, lengths)
        state = model.init_decoder_state(enc)
        for t in range(tgt_in.shape[1]):
            logits, state, weights = model.decode_step(tgt_in[:, t], state, enc)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
            torch.testing.assert_close(weights, attn[:, t], atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", ["hyperlstm", "lstm", "ln_lstm"])
def test_decoder_state_reorders_every_layer(cell):
    model = small_model(cell, seed=8).eval()
    src, lengths, tgt_in, _ = make_batch(SENTENCES)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        state = model.init_decoder_state(enc)
        _, state, _ = model.decode_step(tgt_in[:, 0], state, enc)
        order = torch.tensor([2, 0, 0, 3])
        moved = state.select(order)
        # continuing from reordered states equals reordering the continued ones
        a, _, _ = model.decode_step(tgt_in[order, 1], moved, enc.select(order))
        b, _, _ = model.decode_step(tgt_in[:, 1], state, enc)
        torch.testing.assert_close(a, b[order], atol=1e-6, rtol=0)
    expected_type = HyperLSTMState if cell == "hyperlstm" else tuple
    assert all(type(s) is expected_type for s in moved.layers)
    assert len(moved.layers[0]) == (4 if cell == "hyperlstm" else 2)
    assert all(t.shape[:2] == (1, 4) for s in moved.layers for t in s)


def test_map_state_keeps_structure():
    h = torch.zeros(1, 3, 2)
    st = HyperLSTMState(h, h + 1, h + 2, h + 3)
    out = map_state(lambda t: t[:, :1], [st, (h, h)])
    assert type(out[0]) is HyperLSTMState and out[0].c.shape == (1, 1, 2) and float(out[0].hyper_c.sum()) == 6.0
    assert type(out[1]) is tuple and out[1][0].shape == (1, 1, 2)


def test_state_helpers_detach_and_move():
    w = torch.ones(1, 2, 3, requires_grad=True)
    st = HyperLSTMState(w * 1, w * 2, w * 3, w * 4)
    for out in (detach_state(st), state_to_cpu([st]), state_to((w * 5, w * 6), "cpu")):
        tensors = [t for s in (out if isinstance(out, list) else [out]) for t in s]
        assert all(t.device.type == "cpu" for t in tensors)
    assert type(detach_state(st)) is HyperLSTMState and not any(t.requires_grad for t in detach_state(st))
    assert not any(t.requires_grad for t in state_to_cpu([st])[0])
    assert all(t.requires_grad for t in state_to((w * 5, w * 6), "cpu"))  # moving keeps the graph
    assert detach_state(None) is None and state_to_cpu(None) is None
    with pytest.raises(TypeError, match="not a recurrent state"):
        detach_state({"h": w})


def _stub_zero_output(layer: RecurrentLayer):
    """Make ``layer`` output zeros: what is left is what the residual connection carries."""
    layer.forward = lambda x, state=None: (x.new_zeros(*x.shape[:2], layer.hidden_size), state)


def test_residual_connections_start_at_the_third_layer():
    src, lengths, tgt_in, _ = make_batch(SENTENCES)
    with torch.no_grad():
        # Encoder: zero every unidirectional layer (2, 3, 4). Layer 2 has no residual, so all is zero.
        model = small_model("lstm", seed=9, num_layers=4).eval()
        for layer in model.encoder_layers:
            _stub_zero_output(layer)
        assert model.encode(src, lengths).memory.abs().max() == 0.0
        # Zero layers 3 and 4 only: their residuals pass layer 2's output through unchanged.
        model = small_model("lstm", seed=9, num_layers=4).eval()
        seen = {}
        model.encoder_layers[0].register_forward_hook(lambda m, i, o: seen.update(out=o[0]))
        for layer in model.encoder_layers[1:]:
            _stub_zero_output(layer)
        memory = model.encode(src, lengths).memory
        real = model.source_mask(src, lengths)
        torch.testing.assert_close(memory[real], seen["out"].transpose(0, 1)[real])
        assert memory.abs().max() > 0
        # Decoder: the same rule; layer 2 zeroed kills the top output, layers 3-4 zeroed pass layer 2's.
        for zeroed, expect_zero in (((1, 2, 3), True), ((2, 3), False)):
            model = small_model("ln_lstm", seed=9, num_layers=4, input_feeding=False).eval()
            seen = {}
            model.decoder_layers[1].register_forward_hook(lambda m, i, o, seen=seen: seen.update(out=o[0]))
            for k in zeroed:
                _stub_zero_output(model.decoder_layers[k])
            top, _ = model._decoder_stack(
                model.tgt_embedding(tgt_in).transpose(0, 1), model.init_decoder_state(model.encode(src, lengths)).layers
            )
            if expect_zero:
                assert top.abs().max() == 0.0
            else:
                torch.testing.assert_close(top, seen["out"])
                assert top.abs().max() > 0


# ---- loss and arguments ------------------------------------------------------------------------


def test_label_smoothed_nll():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    target = torch.tensor([[3, 4, 2, 0, 0], [5, 6, 1, 4, 2]])
    real = target != 0
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    loss, n = label_smoothed_nll(logits, target, epsilon=0.0, ignore_index=0)
    assert n == 8
    torch.testing.assert_close(loss, nll[real].sum())
    eps = 0.1
    loss, n = label_smoothed_nll(logits, target, epsilon=eps, ignore_index=0)
    expected = ((1 - eps) * nll - eps * logp.mean(-1))[real].sum()
    torch.testing.assert_close(loss, expected)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="cell"):
        Seq2Seq(5, 5, cell="gru")
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(5, 5, cell="lstm", hidden_size=4, embedding_size=4, attention="dot")
    with pytest.raises(ValueError, match="num_layers"):
        Seq2Seq(5, 5, cell="lstm", num_layers=0)
    model = Seq2Seq(5, 5, cell="lstm", hidden_size=4, embedding_size=4)
    with pytest.raises(ValueError, match="src_lengths"):
        model.greedy(torch.tensor([[3, 4]]), torch.tensor([3]), max_len=2)
    with pytest.raises(ValueError, match="src_lengths"):
        model(torch.tensor([[3, 4]]), torch.tensor([0]), torch.tensor([[1]]))
