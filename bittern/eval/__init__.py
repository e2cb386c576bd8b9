"""Evaluation: held-out perplexity, bits per byte, the unigram baseline, reports.

The lm-evaluation-harness adapter (bittern.eval.lm_eval_adapter) needs lm-eval, so it is not
imported here."""

from bittern.eval.baseline import unigram_loss
from bittern.eval.perplexity import evaluate

__all__ = ["evaluate", "unigram_loss"]
