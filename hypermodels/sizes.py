"""Trainable parameter counts of this package's models from their constructor arguments, without
building them (and without importing torch): what ``hyperctl validate`` prints in a fraction of a second.

Each function mirrors one constructor; tests/hypermodels/test_sizes.py checks every one against the
built model's ``count_parameters`` over a grid of arguments, so the two cannot drift apart.
"""

from __future__ import annotations

GATES = 4


def lstm_cell_parameters(input_size: int, hidden_size: int, *, layer_norm: bool) -> int:
    """:class:`~hypermodels.lstm.LayerNormLSTMCell`: ``W_x``, ``W_h``, one bias; with layer norm the
    per-gate gain and shift (``4H`` each) and the cell-output gain and shift (``H`` each)."""
    H = hidden_size
    count = GATES * H * (input_size + H) + GATES * H
    return count + (2 * GATES * H + 2 * H if layer_norm else 0)


def hyperlstm_cell_parameters(
    input_size: int, hidden_size: int, *, hyper_size: int, embed_size: int, layer_norm: bool
) -> int:
    """:class:`~hypermodels.hyperlstm.HyperLSTMCell` (App. A.2.2): the main cell's ``W_x, W_h, b``, the
    hyper cell's LSTM on ``[h, x]``, ``z`` projections ``(3, 4, N_z, N_ĥ)`` with biases ``(2, 4, N_z)``,
    ``d`` projections ``(3, 4, N_h, N_z)``, and layer norm in both cells when on."""
    H, Hh, Nz = hidden_size, hyper_size, embed_size
    main = GATES * H * (input_size + H) + GATES * H
    hyper = GATES * Hh * (H + input_size) + GATES * Hh * Hh + GATES * Hh
    embeddings = 3 * GATES * Nz * Hh + 2 * GATES * Nz + 3 * GATES * H * Nz
    norms = (2 * GATES * H + 2 * H) + (2 * GATES * Hh + 2 * Hh) if layer_norm else 0
    return main + hyper + embeddings + norms


def rnn_parameters(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    hyper_size: int = 128,
    embed_size: int = 4,
    layer_norm: bool = True,
    recurrent_dropout: float = 0.0,
) -> int:
    """:func:`~hypermodels.recurrent.build_rnn`'s stack (same arguments; ``lstm`` is ``torch.nn.LSTM``,
    two biases a layer, unless recurrent dropout asks for the one-bias step loop)."""
    total = 0
    for k in range(num_layers):
        n_in = input_size if k == 0 else hidden_size
        if cell == "hyperlstm":
            total += hyperlstm_cell_parameters(
                n_in, hidden_size, hyper_size=hyper_size, embed_size=embed_size, layer_norm=layer_norm
            )
        elif cell == "ln_lstm":
            total += lstm_cell_parameters(n_in, hidden_size, layer_norm=True)
        elif cell == "lstm":
            extra_bias = 0 if recurrent_dropout else GATES * hidden_size
            total += lstm_cell_parameters(n_in, hidden_size, layer_norm=False) + extra_bias
        else:
            raise ValueError(f"cell must be one of hyperlstm, lstm, ln_lstm, got {cell!r}")
    return total


def charlm_parameters(
    vocab_size: int,
    cell: str = "hyperlstm",
    hidden_size: int = 1000,
    num_layers: int = 1,
    *,
    hyper_size: int = 128,
    embed_size: int = 4,
    layer_norm: bool = True,
    recurrent_dropout: float = 0.0,
) -> int:
    """:class:`~hypermodels.charlm.CharLM`: the stack on one-hot input and the softmax layer."""
    rnn = rnn_parameters(
        cell,
        vocab_size,
        hidden_size,
        num_layers,
        hyper_size=hyper_size,
        embed_size=embed_size,
        layer_norm=layer_norm,
        recurrent_dropout=recurrent_dropout,
    )
    return rnn + hidden_size * vocab_size + vocab_size


def seq2seq_parameters(
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
    recurrent_dropout: float = 0.0,
    attention: str = "additive",
    input_feeding: bool = True,
) -> int:
    """:class:`~hypermodels.seq2seq.Seq2Seq`: embeddings, a bidirectional first encoder layer merged by
    a projection, the other encoder layers, the decoder layers, attention, ``W_c`` and the softmax."""
    H, E = hidden_size, embedding_size

    def layer(n_in: int) -> int:
        return rnn_parameters(
            cell,
            n_in,
            H,
            hyper_size=hyper_size,
            embed_size=embed_size,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
        )

    total = (src_vocab_size + tgt_vocab_size) * E
    total += 2 * layer(E) + (2 * H * H + H) + (num_layers - 1) * layer(H)
    total += layer(E + (H if input_feeding else 0)) + (num_layers - 1) * layer(H)
    total += (H * H + H + H * H + H) if attention == "additive" else H * H
    total += 2 * H * H + H * tgt_vocab_size + tgt_vocab_size
    return total


def handwriting_parameters(
    cell: str = "hyperlstm",
    hidden_size: int = 900,
    num_layers: int = 1,
    *,
    num_mixtures: int = 20,
    hyper_size: int = 128,
    embed_size: int = 4,
    layer_norm: bool = False,
    recurrent_dropout: float = 0.0,
) -> int:
    """:class:`~hypermodels.handwriting.HandwritingModel`: the stack on (Δx, Δy, pen) points and the mixture
    density head (6 numbers per component plus the end-of-stroke logit)."""
    rnn = rnn_parameters(
        cell,
        3,
        hidden_size,
        num_layers,
        hyper_size=hyper_size,
        embed_size=embed_size,
        layer_norm=layer_norm,
        recurrent_dropout=recurrent_dropout,
    )
    head = 6 * num_mixtures + 1
    return rnn + hidden_size * head + head


def kernel_hypernetwork_parameters(embed_size: int, in_size: int = 16, out_size: int = 16, kernel_size: int = 3) -> int:
    """:class:`~hypermodels.static_hyper.KernelHyperNetwork` (§3.1, two linear layers)."""
    d = embed_size
    return in_size * d * embed_size + in_size * d + d * out_size * kernel_size**2 + out_size * kernel_size**2


def mnist_convnet_parameters(hyper: bool = False, embed_size: int = 4) -> int:
    """:class:`~hypermodels.static_hyper.MNISTConvNet`: conv1 7x7 1->16, conv2 7x7 16->16 (its kernel
    generated from one N_z embedding when ``hyper``; its bias stays), linear 784->10."""
    conv1 = 16 * 1 * 7 * 7 + 16
    conv2 = (kernel_hypernetwork_parameters(embed_size, 16, 16, 7) + embed_size if hyper else 16 * 16 * 7 * 7) + 16
    return conv1 + conv2 + 7 * 7 * 16 * 10 + 10


def wide_resnet_parameters(
    depth: int = 40,
    widen_factor: int = 1,
    num_classes: int = 10,
    hyper: bool = False,
    embed_size: int = 64,
    in_channels: int = 3,
    shortcut: str = "pad",
    bn_scale: bool = False,
) -> int:
    """:class:`~hypermodels.static_hyper.WideResNet` (trainable parameters; batch norm's running
    statistics are not parameters). Raises ValueError for a depth that is not 6N+4."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6N+4, got {depth}")
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    per_bn = 2 if bn_scale else 1

    def conv3(cin: int, cout: int) -> int:
        return (cout // 16) * (cin // 16) * embed_size if hyper else cout * cin * 9

    total = in_channels * widths[0] * 9
    total += kernel_hypernetwork_parameters(embed_size, 16, 16, 3) if hyper else 0
    for g, stride in enumerate((1, 2, 2)):
        for b in range(n):
            cin, cout = (widths[g] if b == 0 else widths[g + 1]), widths[g + 1]
            s = stride if b == 0 else 1
            total += per_bn * cin + conv3(cin, cout) + per_bn * cout + conv3(cout, cout)
            if shortcut == "conv" and not (cin == cout and s == 1):
                total += cin * cout
    return total + per_bn * widths[3] + widths[3] * num_classes + num_classes


__all__ = [
    "charlm_parameters",
    "handwriting_parameters",
    "hyperlstm_cell_parameters",
    "kernel_hypernetwork_parameters",
    "lstm_cell_parameters",
    "mnist_convnet_parameters",
    "rnn_parameters",
    "seq2seq_parameters",
    "wide_resnet_parameters",
]
