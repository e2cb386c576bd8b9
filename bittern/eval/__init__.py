"""Evaluation: held-out perplexity, bits per byte, the unigram baseline."""

from bittern.eval.baseline import unigram_loss
from bittern.eval.perplexity import evaluate

__all__ = ["evaluate", "unigram_loss"]
