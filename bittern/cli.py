"""Command line: parse, load config, call one function per subcommand."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from bittern.errors import BitternError, TrainingStopped

EXIT_ERROR = 2


def _train(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.config import load_config, parse_overrides
    from bittern.distributed import launched_by_torchrun
    from bittern.train import train

    if args.nproc > 1 and not launched_by_torchrun():
        _launch_torchrun(args.nproc)
    out = Path(args.out or f"runs/{Path(args.config).stem if args.config else 'shakespeare-tiny'}")
    config = args.config
    if config is None and args.resume and (out / "config.toml").exists():
        config = out / "config.toml"  # resuming without --config continues with the run's own
    cfg = load_config(config, parse_overrides(extra))
    if args.fallback:
        cfg.checkpoint.fallback = True
    result = train(
        cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, init=args.init
    )
    if not result.is_main:
        return
    from bittern.eval import unigram_loss
    from bittern.train.data import open_dataset

    baseline = unigram_loss(open_dataset(cfg.data, progress=False))
    if result.already_complete:
        print(
            f"run {result.run_dir} is already complete ({result.step} of {cfg.train.steps} steps); "
            f"nothing was trained. To train longer, rerun with --resume --train.steps=N (N > {result.step})."
        )
    else:
        print(f"done: {result.step} steps in {result.run_dir}")
    whole = "" if result.val_scope.startswith("all") else f"; `bittern eval {result.run_dir}` scores all"
    print(
        f"validation loss {result.val_loss:.4f} | perplexity {result.val_perplexity:.2f} | "
        f"bits/byte {result.val_bits_per_byte:.3f} ({result.val_scope}{whole})\n"
        f"unigram baseline loss {baseline:.4f} | perplexity {math.exp(min(baseline, 50.0)):.2f}"
    )


def _launch_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun with `nproc` processes on this host (never returns)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--nproc":
            del argv[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del argv[i]
            break
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bittern",
        *argv,
    ]
    os.execv(sys.executable, cmd)


def _eval(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.eval import scope
    from bittern.eval.report import check_report_dir, write_report
    from bittern.eval.runs import evaluate_runs

    if args.report:
        check_report_dir(Path(args.report))  # refuse before minutes of evaluation, not after
    result = evaluate_runs(
        args.runs, args.data, args.batches, args.device, text_path=args.text, context=args.context
    )
    print(f"scored on {result.source}")
    for row in [*result.rows, result.baseline]:
        scored = scope(row) if "windows" in row else f"{row['tokens']:,} tokens"
        print(
            f"{row['run']}: loss {row['loss']:.4f} | perplexity {row['perplexity']:.2f} | "
            f"bits/byte {row['bits_per_byte']:.3f} | {scored}"
        )
    if args.report:
        print(write_report(result, args.runs, Path(args.report)))


def _generate(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.generate import check_sampling
    from bittern.runtime import resolve_device

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.num_samples, args.seed)
    if not 0.0 < args.top_p <= 1.0:
        raise BitternError(f"--top-p must be in (0, 1], got {args.top_p}")
    device = resolve_device(args.device)
    prompts = [args.prompt] if args.prompt_file is None else _prompt_lines(Path(args.prompt_file))
    if device.type == "cuda" or args.top_p < 1.0:
        return _generate_fast(args, device, prompts)
    from bittern.export import load_any
    from bittern.generate import generate_text

    model, tokenizer = load_any(args.path, device=device)
    _warn_context(prompts, tokenizer, args.max_new_tokens, model.config.max_seq_len)
    n = 0
    for prompt in prompts:
        for i in range(args.num_samples):
            text = generate_text(
                model, tokenizer, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed + i
            )
            n += 1
            print(text if args.num_samples * len(prompts) == 1 else f"--- sample {n}\n{text}")


def _warn_context(prompts: list[str], tokenizer, max_new_tokens: int, max_seq_len: int) -> None:
    """Warn (once) when the model's context cuts a prompt or the continuation asked for."""
    from bittern.generate import context_warning

    longest = max(len(tokenizer.encode(p)) for p in prompts)
    warning = context_warning(longest, max_new_tokens, max_seq_len)
    if warning:
        print(f"bittern: warning: {warning}", file=sys.stderr)


def _prompt_lines(path: Path) -> list[str]:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise BitternError(f"cannot read prompt file {path}: {e}") from None
    if not lines:
        raise BitternError(f"prompt file {path} holds no prompts (one per line)")
    return lines


def _generate_fast(args: argparse.Namespace, device, prompts: list[str]) -> None:
    """Every prompt x --num-samples in one batch on the static-cache decoder (packed kernels on CUDA)."""
    from bittern.inference import Sampling, load_for_decoding
    from bittern.inference.texts import generate_texts

    model, tokenizer = load_for_decoding(args.path, device)
    _warn_context(prompts, tokenizer, args.max_new_tokens, model.config.max_seq_len)
    batch = [p for p in prompts for _ in range(args.num_samples)]
    sampling = Sampling(args.temperature, args.top_k or 0, args.top_p)
    texts, result = generate_texts(
        model, tokenizer, batch, args.max_new_tokens, sampling, args.seed, compile=not args.no_compile
    )
    for i, text in enumerate(texts):
        print(text if len(texts) == 1 else f"--- sample {i + 1}\n{text}")
    print(
        f"{len(texts)} x {result.steps} tokens: first token {result.time_to_first_token_s * 1e3:.1f} ms, "
        f"{result.decode_tokens_per_s:.1f} tokens/s decoding, {result.tokens_per_s:.1f} tokens/s overall",
        file=sys.stderr,
    )


def _plot(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.monitor.plot import plot_run

    for path in plot_run(Path(args.run), Path(args.out) if args.out else None):
        print(path)


def _prepare(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.data.prepare import prepare_dataset

    out = prepare_dataset(
        args.source,
        Path(args.out),
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        text_field=args.text_field,
        overwrite=args.overwrite,
        progress=not args.quiet,
        tokenizer_sample_bytes=args.tokenizer_sample_mb * 1024 * 1024,
    )
    print(f"prepared {out}")


def _export(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.export import export_run

    print(export_run(args.run, args.out, args.format, args.gguf_type).summary())


def _convert(args: argparse.Namespace, extra: list[str]) -> None:
    from bittern.convert import convert_checkpoint

    out = convert_checkpoint(args.source, args.out, quant=args.quant, overwrite=args.overwrite)
    print(f"converted {args.source} -> {out} (model.quant = {args.quant})")


def build_parser() -> argparse.ArgumentParser:
    from bittern import __version__

    p = argparse.ArgumentParser(prog="bittern", description="Train 1.58-bit language models.")
    p.add_argument("--version", action="version", version=f"bittern {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (overrides: --section.key=value)")
    t.add_argument("--config", help="TOML config file (default: the built-in Shakespeare job)")
    t.add_argument("--out", help="run folder (default: runs/<config name>)")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest checkpoint"
    )
    t.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    t.add_argument(
        "--fallback",
        action="store_true",
        help="on --resume, skip a corrupt newest checkpoint for an older one",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--init", help="start from this run (e.g. from `bittern convert`); see init.*")
    t.add_argument(
        "--nproc", type=int, default=1, help="processes (GPUs) on this host, launched with torchrun"
    )
    t.set_defaults(func=_train, allow_extra=True)

    e = sub.add_parser("eval", help="validation perplexity and bits/byte of runs or checkpoints")
    e.add_argument("runs", nargs="+", help="run folders or checkpoint folders")
    e.add_argument("--data", help="prepared dataset folder (default: the first run's data)")
    e.add_argument("--batches", type=int, default=0, help="evaluate at most this many batches (0: all)")
    e.add_argument("--text", help="score this raw UTF-8 text file instead, each run with its own tokenizer")
    e.add_argument("--context", type=int, default=0, help="tokens per window (0: each run's train.seq_len)")
    e.add_argument("--report", help="write report.md and PNG plots into this new (or empty) folder")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)

    g = sub.add_parser(
        "generate",
        help="sample text from a run, a checkpoint or any export",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("path", help="run or checkpoint folder, packed or hf export folder, or .gguf file")
    g.add_argument("--prompt", default="\n", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    g.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (below 1: the static decoder)")
    g.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    g.add_argument("--num-samples", type=int, default=1, help="samples per prompt (one batch on CUDA)")
    g.add_argument("--prompt-file", help="UTF-8 file with one prompt per line, all decoded at once on CUDA")
    g.add_argument("--no-compile", action="store_true", help="on CUDA: decode eagerly, without CUDA graphs")
    g.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:N")
    g.set_defaults(func=_generate)

    pl = sub.add_parser("plot", help="PNG plots of a run's metrics (loss, LR, grad norm, zero fraction)")
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", help="folder for the PNGs (default: RUN/plots)")
    pl.set_defaults(func=_plot)

    x = sub.add_parser("export", help="write a run as a packed checkpoint, a transformers folder or GGUF")
    x.add_argument("run", help="run folder or checkpoint folder")
    x.add_argument("--format", required=True, choices=["packed", "packed-base3", "hf", "gguf"])
    x.add_argument("--out", required=True, help="folder (packed, hf) or .gguf file to create; must not exist")
    x.add_argument("--gguf-type", default="TQ2_0", choices=["TQ2_0", "TQ1_0"], help="ternary GGUF type")
    x.set_defaults(func=_export)

    cv = sub.add_parser("convert", help="import a Hugging Face folder or .gguf file as a run at step 0")
    cv.add_argument("source", help="local Hugging Face folder or .gguf file (llama, mistral, qwen2, smollm)")
    cv.add_argument("--out", required=True, help="run folder to create")
    cv.add_argument("--quant", default="ternary", choices=["ternary", "none"], help="model.quant of the run")
    cv.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    cv.set_defaults(func=_convert)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dp = dsub.add_parser("prepare", help="tokenize a corpus into memory-mapped shards")
    dp.add_argument("source", help="shakespeare | file | folder | .jsonl | .parquet | hf:NAME[:CONFIG]")
    dp.add_argument("--out", required=True, help="dataset folder to create")
    dp.add_argument(
        "--tokenizer", default="byte", help="byte | bpe | local Hugging Face tokenizer path or .gguf"
    )
    dp.add_argument("--vocab-size", type=int, default=8192, help="for --tokenizer bpe")
    dp.add_argument(
        "--tokenizer-sample-mb", type=int, default=256, help="MiB of train text a BPE tokenizer learns from"
    )
    dp.add_argument("--val-fraction", type=float, default=0.05)
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--text-field", default="text", help="JSONL/Parquet/HF field holding the text")
    dp.add_argument("--overwrite", action="store_true")
    dp.add_argument("--quiet", action="store_true")
    dp.set_defaults(func=_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # bare `bittern`: its help, exit 0
        parser.print_help()
        return 0
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "allow_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args, extra)
    except BitternError as e:
        print(f"bittern: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except TrainingStopped as e:
        print(f"bittern: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("bittern: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
