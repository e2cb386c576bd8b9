"""Evaluation: held-out perplexity, bits per byte, the unigram baseline, reports.

The lm-evaluation-harness adapter (bittern.eval.lm_eval_adapter) needs lm-eval, so it is not
imported here."""

from bittern.eval.baseline import unigram_loss
from bittern.eval.perplexity import evaluate, figures, rank_share, scope, score_windows, val_windows

__all__ = ["evaluate", "figures", "rank_share", "scope", "score_windows", "unigram_loss", "val_windows"]
