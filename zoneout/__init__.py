"""Zoneout (Krueger et al., ICLR 2017): drop-in zoneout LSTM / GRU / RNN layers for PyTorch.

    from zoneout import ZoneoutLSTM
    lstm = ZoneoutLSTM(128, 256, zoneout_c=0.5, zoneout_h=0.05)   # nn.LSTM's arguments + rates
    output, (h_n, c_n) = lstm(x)                                   # x: [T, B, 128]

Light on purpose: importing the package loads only torch and the layers (no Hydra, no data code).
"""
from . import functional
from .cells import ZoneoutGRUCell, ZoneoutLSTMCell, ZoneoutRNNCell
from .functional import zoneout
from .rnn import SequenceMasks, ZoneoutGRU, ZoneoutLSTM, ZoneoutRNN

__version__ = "0.1.0"

__all__ = [
    "ZoneoutLSTM",
    "ZoneoutGRU",
    "ZoneoutRNN",
    "ZoneoutLSTMCell",
    "ZoneoutGRUCell",
    "ZoneoutRNNCell",
    "SequenceMasks",
    "zoneout",
    "functional",
    "__version__",
]
