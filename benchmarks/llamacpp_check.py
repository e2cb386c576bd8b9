"""llama.cpp vs bittern: perplexity of a GGUF export on held-out text, against bittern's own forward.

Needs `llama-cpp-python` (benchmarks/llamacpp_check.sh builds it from source) and a run that llama.cpp's
bitnet graph can hold, such as the built-in job's (`make train`, configs/shakespeare-tiny.toml):
  python benchmarks/llamacpp_check.py runs/shakespeare-tiny [--text HELD_OUT.txt] --gguf-type TQ1_0
Without --text the held-out text is the built-in Shakespeare corpus's validation split, which runs on
the built-in corpus never train on. Both sides score the same token windows (bittern's ids); whether
llama.cpp's own tokenizer gives the same ids is reported beside, and both continue one prompt
greedily (llama.cpp through its own sampler and tokenizer). The issue's bar is a gap within 2%.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import bittern
from bittern.config import DataConfig, load_config
from bittern.data.sources import open_corpus
from bittern.data.split import split_pieces
from bittern.export.gguf_export import export_gguf
from bittern.generate import sample


def shakespeare_validation_text() -> str:
    """The built-in corpus's validation pieces, chosen exactly as bittern's data preparation does."""
    blocks = (b.data for b in open_corpus("shakespeare").blocks())
    routed = split_pieces(blocks, DataConfig().val_fraction, seed=0)
    return b"".join(r.piece for r in routed if r.split == "val").decode("utf-8", errors="replace")


def chunks(ids: list[int], length: int, limit: int) -> list[list[int]]:
    """Non-overlapping windows of `length` tokens, at most `limit` of them (0: all)."""
    windows = [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
    return windows[:limit] if limit else windows


def bittern_logits(model, window: list[int]) -> torch.Tensor:
    """bittern's logits at every position but the last, all padded-vocab rows (as its eval scores)."""
    with torch.no_grad():
        return model(torch.tensor([window]))[0, :-1].float()


def llamacpp_logits(llm, window: list[int]) -> torch.Tensor:
    """llama.cpp's logits at every position but the last, evaluated from an empty context."""
    llm.reset()
    llm.eval(window)
    return torch.from_numpy(np.array(llm.scores[: len(window) - 1], dtype=np.float32))


def greedy_texts(model, tokenizer, llm, prompt: str, n: int) -> tuple[str, str]:
    """(bittern's, llama.cpp's) greedy continuation of `prompt`, `n` tokens each."""
    ids = tokenizer.encode(prompt)
    ours = tokenizer.decode(sample(model, ids, n, temperature=0))
    llm.reset()
    out = llm(prompt, max_tokens=n, temperature=0.0, top_k=1)
    return ours, out["choices"][0]["text"]


def compare(run: str, text: str, seq: int, n_windows: int, gguf_type: str, prompt: str) -> dict:
    """Export `run` as `gguf_type`, score the same windows of `text` with bittern and llama.cpp."""
    from llama_cpp import Llama

    model, tokenizer = bittern.load(run)
    ids = tokenizer.encode(text)
    windows = chunks(ids, seq, n_windows)
    sums = torch.zeros(4, dtype=torch.float64)  # nll bittern, nll llama.cpp, top-1 agreements, |diff|
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = Path(tmp) / "model.gguf"
        export = export_gguf(run, gguf_path, gguf_type)
        llm = Llama(model_path=str(gguf_path), n_ctx=seq, logits_all=True, verbose=False, n_threads=2)
        same_ids = llm.tokenize(text.encode("utf-8"), add_bos=False) == ids
        for w in windows:
            ours, theirs, target = bittern_logits(model, w), llamacpp_logits(llm, w), torch.tensor(w[1:])
            sums += torch.tensor(
                [
                    F.cross_entropy(ours, target, reduction="sum").item(),
                    F.cross_entropy(theirs, target, reduction="sum").item(),
                    (ours.argmax(-1) == theirs.argmax(-1)).sum().item(),
                    (ours - theirs).abs().mean(-1).sum().item(),
                ],
                dtype=torch.float64,
            )
        ours_text, theirs_text = greedy_texts(model, tokenizer, llm, prompt, 60)
        llm.close()
    n = sum(len(w) - 1 for w in windows)
    ppl_ours, ppl_theirs = math.exp(sums[0] / n), math.exp(sums[1] / n)
    return {
        "run": run,
        "gguf_type": gguf_type,
        "windows": len(windows),
        "seq_len": seq,
        "tokens": n,
        "llamacpp_tokenizes_identically": same_ids,
        "bittern_perplexity": ppl_ours,
        "llamacpp_perplexity": ppl_theirs,
        "relative_gap": ppl_theirs / ppl_ours - 1,
        "top1_agreement": sums[2].item() / n,
        "mean_abs_logit_diff": sums[3].item() / n,
        "prompt": prompt,
        "bittern_greedy": ours_text,
        "llamacpp_greedy": theirs_text,
        "gguf_projection_types": export.note,
        "gguf_bytes": export.bytes,
        "gguf_bits_per_param": export.bits_per_param,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--text", help="held-out text file (default: the Shakespeare validation split)")
    p.add_argument("--seq-len", type=int, default=0, help="window length (default: the run's train.seq_len)")
    p.add_argument("--windows", type=int, default=0, help="at most this many windows (default 0: all)")
    p.add_argument("--gguf-type", default="TQ2_0", choices=["TQ2_0", "TQ1_0"])
    p.add_argument("--prompt", default="ROMEO.\n", help="prompt both continue greedily")
    p.add_argument("--out", default="benchmarks/results/llamacpp_check.json")
    args = p.parse_args()

    text = Path(args.text).read_text(encoding="utf-8") if args.text else shakespeare_validation_text()
    seq = args.seq_len or load_config(Path(args.run) / "config.toml").train.seq_len
    result = compare(args.run, text, seq, args.windows, args.gguf_type, args.prompt)
    result["text"] = args.text or "shakespeare validation split"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
