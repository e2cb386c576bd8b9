"""lm-evaluation-harness adapter: a bittern run as the harness's model "bittern".

lm-eval is optional (`pip install 'bittern[lmeval]'`) and only this module imports it. The
harness's own `lm_eval` command cannot import models from other packages, so run its command
line through this module, which registers "bittern" first:

    python -m bittern.eval.lm_eval_adapter --model bittern --model_args run=RUN --tasks hellaswag

or pass `BitternLM(run=...)` (or model="bittern" after importing this module) to
`lm_eval.simple_evaluate`. Every request is scored as the start of a document: after EOS, as
the model saw documents in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("bittern.eval.lm_eval_adapter needs lm-eval: pip install 'bittern[lmeval]'") from e

from bittern.checkpoint.load import load_model_and_tokenizer, load_run_config, resolve_checkpoint
from bittern.eval.perplexity import text_nll
from bittern.eval.runs import prefix_id, run_context
from bittern.generate import sample
from bittern.runtime import autocast, resolve_device, resolve_precision

DEFAULT_BATCH = 8


@register_model("bittern")
class BitternLM(LM):
    """Loglikelihood, rolling loglikelihood and greedy generation of a bittern run or checkpoint.

    model_args: run (folder), device (default: the first GPU, else CPU), batch_size (sequences
    per forward), max_length (context tokens; default the run's train.seq_len), max_gen_toks.
    """

    def __init__(
        self,
        run: str,
        device: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        **_harness_extras: object,  # e.g. max_batch_size, which simple_evaluate always passes
    ) -> None:
        super().__init__()
        self._device = resolve_device(device or "auto")
        self.model, self.tokenizer = load_model_and_tokenizer(run, device=self._device)
        cfg = load_run_config(resolve_checkpoint(run)[0])
        self.max_length = run_context(cfg, self.model, int(max_length or 0))
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else DEFAULT_BATCH  # "auto" too
        self.max_gen_toks = int(max_gen_toks)
        self.prefix_id = prefix_id(self.tokenizer)
        self.autocast = autocast(self._device, resolve_precision(cfg.train.precision, self._device))

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """log P(continuation | context) summed over its tokens, and whether greedy decoding
        would produce exactly those tokens."""
        pairs = [self._encode_pair(*r.args) for r in requests]
        results = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))  # like lengths batch well
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, result in zip(batch, self._score([pairs[i] for i in batch]), strict=True):
                results[i] = result
        for r, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", r.args, result)
        return results

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids after EOS, continuation ids). The pair is encoded whole and split, so a
        token the tokenizer merges across the boundary is read as in running text; trailing
        whitespace of the context moves to the continuation, as the harness's HF model does."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        k = len(self.tokenizer.encode(context))
        return [self.prefix_id, *whole[:k]], whole[k:]

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One right-padded forward for a batch (causal attention: padding never reaches a
        scored position); the context is cut from the left to fit max_length."""
        seqs = [(ctx + cont)[-(self.max_length + 1) :] for ctx, cont in pairs]
        scored = [min(len(cont), self.max_length) for _, cont in pairs]
        width = max(len(s) for s in seqs) - 1
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            x[row, : len(s) - 1] = torch.tensor(s[:-1])
        with self.autocast:
            logits = self.model(x.to(self._device)).float()
        vocab = self.model.config.vocab_size  # padded ids are never decoded, so never greedy
        out = []
        for row, (s, k) in enumerate(zip(seqs, scored, strict=True)):
            n = len(s) - 1
            target = torch.tensor(s[n + 1 - k :], device=logits.device)
            logp = F.log_softmax(logits[row, n - k : n], dim=-1)
            ll = logp.gather(-1, target[:, None]).sum().item()
            greedy = bool((logits[row, n - k : n, :vocab].argmax(-1) == target).all())
            out.append((ll, greedy))
        return out

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        """Total log-likelihood of each text, every token predicted once (the first after EOS)
        in windows of max_length tokens: the sum bittern.eval.perplexity scores texts with."""
        results = []
        for r in requests:
            (text,) = r.args
            ids = self.tokenizer.encode(text)
            ll = -text_nll(self.model, ids, self.max_length, self.prefix_id, self.batch_size, self.autocast)
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, ll)
            results.append(ll)
        return results

    def generate_until(self, requests: list) -> list[str]:
        """Greedy continuation with the KV cache, cut at the first stop string (or EOS)."""
        results = []
        for r in requests:
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = max(1, min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1))
            ids = [self.prefix_id, *self.tokenizer.encode(context)][-(self.max_length - budget) :]
            with self.autocast:
                new = sample(self.model, ids, budget, 0.0, None, self.tokenizer.eos_id)
            text = self.tokenizer.decode(new)
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", r.args, text)
            results.append(text)
        return results


def main() -> None:
    """The harness's command line with "bittern" registered (see the module docstring)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
