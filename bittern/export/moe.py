"""Which export formats hold a bittern mixture of experts exactly, and the one-line refusal for the rest.

The packed format (and `load_packed`, `bittern.load`) holds any MoE: its experts are ordinary
ternary layers by name, the routers and routing biases float32 tensors, the routing choices in
config.json. The transformers and llama.cpp MoE architectures do not:

- transformers' Mixtral, Qwen2-MoE and OLMoE keep each layer's experts as fused 3-D parameters
  (gate_up_proj, down_proj), which its BitNet quantization (which swaps nn.Linear) never reaches,
  and have no place for a BitLinear's own RMSNorm before every projection;
- llama.cpp's MoE architectures (llama/Mixtral ffn_*_exps, qwen2moe, olmoe, and maple, added for
  DeepGrove's ternary Maple: hyper-connections, clamped SwiGLU, alternating sliding-window
  layers) likewise have no per-projection quantizer norm, nor a routing bias.
"""

from __future__ import annotations

from pathlib import Path

from bittern.errors import BitternError

EXACT_FORMATS = ("packed", "packed-base3")


def check_moe_export(run: str | Path, fmt: str) -> None:
    """Raise BitternError (one line) if `run` is a mixture of experts and `fmt` cannot hold it."""
    from bittern.checkpoint.load import load_run_config, resolve_checkpoint

    cfg = load_run_config(resolve_checkpoint(Path(run))[0]).model
    if cfg.moe_experts and fmt not in EXACT_FORMATS:
        raise BitternError(
            f"{run} is a mixture of experts: export it as packed (bittern.load reads it); no {fmt} "
            "architecture holds bittern's experts exactly (see bittern/export/moe.py)"
        )
