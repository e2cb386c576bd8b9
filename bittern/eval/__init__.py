"""Evaluation: held-out perplexity and bits per byte."""

from bittern.eval.perplexity import evaluate

__all__ = ["evaluate"]
