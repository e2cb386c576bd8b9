"""ModelConfig: one dataclass for both architectures, and the size presets."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from bittern.errors import BitternError
from bittern.quant.core import GRANULARITIES
from bittern.quant.ste import STE_FORMS

ARCHS = ("llama", "bitnet")
NORM_PLACEMENTS = ("inside", "sublayer", "none")  # none: only the pre-norms (lambda 0 == the source model)
MOE_BALANCE = ("aux_loss", "bias", "none")  # bias: DeepSeek-V3's auxiliary-loss-free balancing

# Llama-style shapes; "2b" is the released BitNet b1.58 2B4T shape (gated squared ReLU).
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=352, max_seq_len=512),
    "50m": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, ffn_dim=1536),  # recipe sweeps
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048),
    "350m": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_dim=2816),
    "1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632),
    "3b": dict(dim=3200, n_layers=26, n_heads=32, n_kv_heads=32, ffn_dim=8640),
    "2b": dict(
        arch="bitnet",
        dim=2560,
        n_layers=30,
        n_heads=20,
        n_kv_heads=5,
        ffn_dim=6912,
        rope_theta=500000.0,
        max_seq_len=4096,
    ),
}


@dataclass
class ModelConfig:
    """Architecture and quantization of a decoder. Unset sizes come from `preset`."""

    preset: str = "tiny"
    arch: str | None = None  # llama (SwiGLU) | bitnet (gated squared ReLU); preset decides if unset
    quant: str = "ternary"  # ternary | none (the plain nn.Linear full-precision twin)
    vocab_size: int = 0  # 0: the tokenizer's
    vocab_multiple: int = 64  # pad the embedding table to a multiple of this
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    bias: bool = False
    norm_placement: str | None = None  # inside (paper) | sublayer (2B model) | none; arch decides if unset
    weight_granularity: str = "tensor"  # tensor | channel | group
    group_size: int = 128
    gamma_multiplier: float = 1.0
    ste: str = "detach"  # detach | function
    full_precision: list[str] = field(default_factory=list)  # extra modules kept in full precision
    init_std: float = 0.02
    # Mixture of experts (bittern.models.moe): moe_experts > 0 swaps the dense FFN of the chosen layers
    moe_experts: int = 0  # routed experts per MoE layer; 0: a dense model
    moe_top_k: int = 2  # experts each token is sent to
    moe_shared_experts: int = 0  # always-on experts (one FFN of this many expert widths), added to the routed
    moe_ffn_dim: int = 0  # each expert's FFN width; 0: model.ffn_dim
    moe_layers: str = "all"  # all | every_N (layers N-1, 2N-1, ...) | a comma list of layer indices
    moe_balance: str = "aux_loss"  # aux_loss (Switch) | bias (DeepSeek-V3, loss-free) | none
    moe_aux_loss: float = 0.01  # weight of the Switch load-balancing loss (balance = aux_loss)
    moe_z_loss: float = 0.001  # weight of the router z-loss, mean(logsumexp(logits)^2)
    moe_bias_rate: float = 0.001  # balance = bias: per-step update of each expert's routing bias
    moe_norm_topk: bool = True  # renormalize the top-k routing weights to sum to 1 (Mixtral)

    def resolved(self, vocab_size: int | None = None) -> ModelConfig:
        """A copy with preset sizes filled in and every choice made explicit."""
        if self.preset not in PRESETS:
            raise BitternError(f"model.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        base = dict(arch="llama", max_seq_len=2048, rope_theta=10000.0) | PRESETS[self.preset]
        filled = {k: v for k, v in base.items() if getattr(self, k) is None}
        cfg = replace(self, **filled)
        if vocab_size and not cfg.vocab_size:
            cfg = replace(cfg, vocab_size=vocab_size)
        if cfg.norm_placement is None:
            cfg = replace(cfg, norm_placement="sublayer" if cfg.arch == "bitnet" else "inside")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise BitternError(f"model.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.quant not in ("ternary", "none"):
            raise BitternError(f"model.quant must be 'ternary' or 'none', got {self.quant!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise BitternError(f"model.norm_placement must be one of {NORM_PLACEMENTS}")
        if self.dim % self.n_heads:
            raise BitternError(f"model.dim {self.dim} is not divisible by model.n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise BitternError("model.n_heads must be a multiple of model.n_kv_heads")
        if self.weight_granularity not in GRANULARITIES:
            raise BitternError(f"model.weight_granularity must be one of {GRANULARITIES}")
        if self.weight_granularity == "group" and (
            self.group_size <= 0 or self.dim % self.group_size or self.ffn_dim % self.group_size
        ):
            raise BitternError(f"model.group_size {self.group_size} must divide model.dim and model.ffn_dim")
        if self.ste not in STE_FORMS:
            raise BitternError(f"model.ste must be one of {STE_FORMS}, got {self.ste!r}")
        if self.gamma_multiplier <= 0:
            raise BitternError("model.gamma_multiplier must be positive")
        if self.vocab_size <= 0:
            raise BitternError("model.vocab_size is unknown: set it or give a tokenizer")
        if self.moe_experts:
            self._validate_moe()

    def _validate_moe(self) -> None:
        if self.moe_experts < 0 or not 1 <= self.moe_top_k <= self.moe_experts:
            raise BitternError("model.moe_top_k must be in [1, model.moe_experts]")
        if self.moe_shared_experts < 0 or self.moe_ffn_dim < 0:
            raise BitternError("model.moe_shared_experts and model.moe_ffn_dim must be >= 0")
        if self.moe_balance not in MOE_BALANCE:
            raise BitternError(f"model.moe_balance must be one of {MOE_BALANCE}, got {self.moe_balance!r}")
        if min(self.moe_aux_loss, self.moe_z_loss, self.moe_bias_rate) < 0:
            raise BitternError("model.moe_aux_loss, moe_z_loss and moe_bias_rate must be >= 0")
        if self.weight_granularity == "group" and self.expert_ffn_dim % self.group_size:
            raise BitternError(f"model.group_size {self.group_size} must divide the expert FFN width")
        if not self.moe_layer_indices():
            raise BitternError(f"model.moe_layers {self.moe_layers!r} selects no layer")

    @property
    def expert_ffn_dim(self) -> int:
        return self.moe_ffn_dim or self.ffn_dim

    def moe_layer_indices(self) -> list[int]:
        """The blocks whose FFN is a mixture of experts (none for a dense model)."""
        if not self.moe_experts:
            return []
        spec, n = self.moe_layers.strip(), self.n_layers
        if spec == "all":
            return list(range(n))
        try:
            if spec.startswith("every_"):
                every = int(spec.removeprefix("every_"))
                return list(range(every - 1, n, every)) if every > 0 else []
            picked = sorted({int(i) for i in spec.split(",") if i.strip()})
        except ValueError:
            raise BitternError(
                f"model.moe_layers must be all, every_N or a list like '1,3': {spec!r}"
            ) from None
        if any(not 0 <= i < n for i in picked):
            raise BitternError(f"model.moe_layers {spec!r} names a layer outside 0..{n - 1}")
        return picked

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.vocab_multiple)
        return -(-self.vocab_size // m) * m


def model_config_keys() -> list[str]:
    return [f.name for f in fields(ModelConfig)]
