"""Metric math for the paper's tables (Krueger et al. 2017, §4): losses are mean negative log-likelihoods in
nats; character-level results are bits per character, word-level results perplexity, (p)MNIST error rate."""
from __future__ import annotations

import math

LN2 = math.log(2.0)
METRICS = ("bpc", "ppl", "error")


def nats_to_bpc(nats: float) -> float:
    """Bits per character (or byte): mean NLL in nats / ln 2."""
    return float(nats) / LN2


def nats_to_ppl(nats: float) -> float:
    """Perplexity: exp(mean NLL in nats); inf instead of OverflowError for a diverged model."""
    try:
        return math.exp(float(nats))
    except OverflowError:
        return math.inf


def error_rate(correct: int, total: int) -> float:
    """1 - accuracy. ``total`` must be positive."""
    if total <= 0:
        raise ValueError(f"error_rate needs total > 0, got {total}")
    return 1.0 - float(correct) / float(total)


def from_nats(metric: str, nats: float) -> float:
    """The table metric for a language model's mean NLL: ``bpc`` or ``ppl``."""
    if metric == "bpc":
        return nats_to_bpc(nats)
    if metric == "ppl":
        return nats_to_ppl(nats)
    raise ValueError(f"metric {metric!r} is not a function of the loss alone; expected 'bpc' or 'ppl'")
