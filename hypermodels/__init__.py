"""The models of *HyperNetworks* (Ha, Dai, Le, ICLR 2017) in plain PyTorch.

No Ray, MLflow or storage code lives here: the training service (``service``) imports this
package, never the reverse.
"""

from .charlm import CharLM, bits_per_char, stream_batches
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
from .seq2seq import Attention, DecoderState, EncoderOutput, RecurrentLayer, Seq2Seq, label_smoothed_nll, length_penalty
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

__all__ = [
    "CELLS",
    "CellState",
    "CharLM",
    "CharVocab",
    "HandwritingModel",
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
    "Mixture",
    "mixture_from_output",
    "mixture_nll",
    "log_loss",
    "pad_sequences",
    "sequence_nll",
    "teacher_inputs",
    "state_to",
    "state_to_cpu",
]
