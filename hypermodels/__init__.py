"""The models of *HyperNetworks* (Ha, Dai, Le, ICLR 2017) in plain PyTorch.

No Ray, MLflow or storage code lives here: the training service (``service``) imports this
package, never the reverse.

Names are loaded on first use (PEP 562): ``import hypermodels`` or its torch-free
:mod:`hypermodels.sizes` does not import torch, so commands that only read a job start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .charlm import CharLM, bits_per_char, segments_bits_per_char, stream_batches
    from .fast_hyperlstm import HyperLSTMLayerFunction, fast_forward
    from .handwriting import (
        HandwritingModel,
        Mixture,
        log_loss,
        mixture_from_output,
        mixture_nll,
        pad_sequences,
        sequence_nll,
        teacher_inputs,
    )
    from .hyperlstm import CellState, HyperLSTM, HyperLSTMCell, HyperLSTMState, count_parameters
    from .lstm import LSTM, LayerNormLSTM, LayerNormLSTMCell
    from .recurrent import CELLS, build_rnn, detach_state, map_state, state_to, state_to_cpu
    from .seq2seq import (
        Attention,
        DecoderState,
        EncoderOutput,
        RecurrentLayer,
        Seq2Seq,
        label_smoothed_nll,
        length_penalty,
    )
    from .static_hyper import (
        CenteredBatchNorm2d,
        HyperConv2d,
        KernelHyperNetwork,
        MNISTConvNet,
        WideBlock,
        WideResNet,
        hyper_conv_layers,
        variable_count,
    )
    from .text import CharVocab, ptb_char_symbols, raw_char_symbols

# Every public name -> the module that defines it.
_WHERE = {
    "CharLM": "charlm",
    "bits_per_char": "charlm",
    "segments_bits_per_char": "charlm",
    "stream_batches": "charlm",
    "HyperLSTMLayerFunction": "fast_hyperlstm",
    "fast_forward": "fast_hyperlstm",
    "HandwritingModel": "handwriting",
    "Mixture": "handwriting",
    "log_loss": "handwriting",
    "mixture_from_output": "handwriting",
    "mixture_nll": "handwriting",
    "pad_sequences": "handwriting",
    "sequence_nll": "handwriting",
    "teacher_inputs": "handwriting",
    "CellState": "hyperlstm",
    "HyperLSTM": "hyperlstm",
    "HyperLSTMCell": "hyperlstm",
    "HyperLSTMState": "hyperlstm",
    "count_parameters": "hyperlstm",
    "LSTM": "lstm",
    "LayerNormLSTM": "lstm",
    "LayerNormLSTMCell": "lstm",
    "CELLS": "recurrent",
    "build_rnn": "recurrent",
    "detach_state": "recurrent",
    "map_state": "recurrent",
    "state_to": "recurrent",
    "state_to_cpu": "recurrent",
    "Attention": "seq2seq",
    "DecoderState": "seq2seq",
    "EncoderOutput": "seq2seq",
    "RecurrentLayer": "seq2seq",
    "Seq2Seq": "seq2seq",
    "label_smoothed_nll": "seq2seq",
    "length_penalty": "seq2seq",
    "CenteredBatchNorm2d": "static_hyper",
    "HyperConv2d": "static_hyper",
    "KernelHyperNetwork": "static_hyper",
    "MNISTConvNet": "static_hyper",
    "WideBlock": "static_hyper",
    "WideResNet": "static_hyper",
    "hyper_conv_layers": "static_hyper",
    "variable_count": "static_hyper",
    "CharVocab": "text",
    "ptb_char_symbols": "text",
    "raw_char_symbols": "text",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hypermodels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


__all__ = [
    "HandwritingModel",
    "Mixture",
    "log_loss",
    "mixture_from_output",
    "mixture_nll",
    "pad_sequences",
    "sequence_nll",
    "teacher_inputs",
    "CELLS",
    "CellState",
    "CharLM",
    "CharVocab",
    "HyperLSTM",
    "HyperLSTMCell",
    "HyperLSTMLayerFunction",
    "HyperLSTMState",
    "LSTM",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "bits_per_char",
    "build_rnn",
    "count_parameters",
    "detach_state",
    "segments_bits_per_char",
    "Attention",
    "DecoderState",
    "EncoderOutput",
    "RecurrentLayer",
    "Seq2Seq",
    "label_smoothed_nll",
    "length_penalty",
    "fast_forward",
    "ptb_char_symbols",
    "raw_char_symbols",
    "stream_batches",
    "CenteredBatchNorm2d",
    "HyperConv2d",
    "KernelHyperNetwork",
    "MNISTConvNet",
    "WideBlock",
    "WideResNet",
    "hyper_conv_layers",
    "variable_count",
    "map_state",
    "state_to",
    "state_to_cpu",
]
