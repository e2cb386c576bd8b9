"""The decoder against hand references: attention (GQA, causal), RoPE, FFN, KV cache, counts."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bittern.models import Transformer
from bittern.models.transformer import apply_rope, rope_tables
from bittern.nn import BitLinear

ARCH_QUANT = [(a, q) for a in ("llama", "bitnet") for q in ("ternary", "none")]
PROJECTIONS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def build(make_config, seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(make_config(**kw)).eval()


def _ids(shape=(2, 12), seed=0, high=100):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def ref_rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate (B, T, H, hd) as complex numbers: pair (i, i + hd/2) turns by pos * theta^(-2i/hd)."""
    hd = x.shape[-1]
    freqs = theta ** (-np.arange(0, hd, 2) / hd)
    z = x[..., : hd // 2] + 1j * x[..., hd // 2 :]
    z = z * np.exp(1j * positions[None, :, None, None] * freqs)
    return np.concatenate([z.real, z.imag], axis=-1)


def ref_rmsnorm(x: np.ndarray, w: np.ndarray, eps=1e-5) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def ref_attention(attn, x: np.ndarray, theta: float) -> np.ndarray:
    """One full-precision attention layer by hand: GQA by head index, causal softmax."""
    B, T, _ = x.shape
    H, KV, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = (x @ _np(attn.q_proj.weight).T).reshape(B, T, H, hd)
    k = (x @ _np(attn.k_proj.weight).T).reshape(B, T, KV, hd)
    v = (x @ _np(attn.v_proj.weight).T).reshape(B, T, KV, hd)
    pos = np.arange(T, dtype=np.float64)
    q, k = ref_rope(q, pos, theta), ref_rope(k, pos, theta)
    out = np.zeros((B, T, H, hd))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    for h in range(H):
        kv = h // (H // KV)  # query head h reads kv head h // group
        scores = np.einsum("bid,bjd->bij", q[:, :, h], k[:, :, kv]) / math.sqrt(hd)
        scores = np.where(future, -np.inf, scores)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, h] = np.einsum("bij,bjd->bid", p, v[:, :, kv])
    y = out.reshape(B, T, H * hd)
    if attn.attn_sub_norm is not None:
        y = ref_rmsnorm(y, _np(attn.attn_sub_norm.weight))
    return y @ _np(attn.o_proj.weight).T


@pytest.mark.parametrize("arch,quant", ARCH_QUANT)
def test_output_shape_is_padded_vocab(make_config, arch, quant):
    model = build(make_config, arch=arch, quant=quant)
    with torch.no_grad():
        logits = model(_ids((3, 7)))
    assert logits.shape == (3, 7, 128)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch,quant", ARCH_QUANT)
def test_causal(make_config, arch, quant):
    model = build(make_config, arch=arch, quant=quant)
    ids = _ids()
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 13) % 100
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-5)
    assert (a[:, 7:] - b[:, 7:]).abs().amax() > 1e-3


@pytest.mark.parametrize("arch,quant", ARCH_QUANT)
def test_kv_cache_decoding_equals_full_forward(make_config, arch, quant):
    model = build(make_config, arch=arch, quant=quant)
    ids = _ids((2, 12))
    with torch.no_grad():
        full = model(ids)
        # prefill 5, then token by token
        cache = model.new_cache(batch=2, max_len=16)
        steps = [model(ids[:, :5], cache=cache, start=0)]
        for t in range(5, 12):
            steps.append(model(ids[:, t : t + 1], cache=cache, start=t))
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
        # prefill 4, then a chunk of 5 (several queries against the cache), then the rest
        cache = model.new_cache(batch=2)
        chunks = [
            model(ids[:, :4], cache=cache, start=0),
            model(ids[:, 4:9], cache=cache, start=4),
            model(ids[:, 9:], cache=cache, start=9),
        ]
        torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_max_seq_len_rejected(make_config):
    model = build(make_config, max_seq_len=8)
    with pytest.raises(ValueError):
        model(_ids((1, 9)))


def _block_projections(model):
    for block in model.layers:
        for part, names in PROJECTIONS.items():
            for name in names:
                yield getattr(getattr(block, part), name)


@pytest.mark.parametrize("arch", ["llama", "bitnet"])
def test_quant_none_has_no_bitlinear(make_config, arch):
    model = build(make_config, arch=arch, quant="none")
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    assert all(type(p) is nn.Linear for p in _block_projections(model))


@pytest.mark.parametrize("arch", ["llama", "bitnet"])
def test_ternary_has_bitlinear_in_every_block_projection(make_config, arch):
    model = build(make_config, arch=arch, quant="ternary")
    projections = list(_block_projections(model))
    assert len(projections) == 2 * 7
    assert all(isinstance(p, BitLinear) and p.quantized for p in projections)
    n_bitlinear = sum(isinstance(m, BitLinear) for m in model.modules())
    assert n_bitlinear == len(projections)
    assert type(model.lm_head) is nn.Linear
    assert type(model.embed_tokens) is nn.Embedding
    # llama: the paper's norm inside BitLinear; bitnet: sub-layer norms instead
    assert all((p.norm is not None) == (arch == "llama") for p in projections)


def test_full_precision_option_keeps_named_modules(make_config):
    model = build(make_config, full_precision=["layers.0.*", "*.down_proj"])
    assert type(model.layers[0].self_attn.q_proj) is nn.Linear
    assert type(model.layers[1].mlp.down_proj) is nn.Linear
    assert isinstance(model.layers[1].self_attn.q_proj, BitLinear)


def test_weight_granularity_reaches_the_layers(make_config):
    model = build(make_config, weight_granularity="group", group_size=16, gamma_multiplier=1.5)
    for p in _block_projections(model):
        assert p.options.granularity == "group" and p.options.group_size == 16
        assert p.options.gamma_multiplier == 1.5
    with torch.no_grad():
        assert torch.isfinite(model(_ids((1, 4)))).all()


@pytest.mark.parametrize("arch", ["llama", "bitnet"])
def test_sub_norms_only_in_bitnet(make_config, arch):
    model = build(make_config, arch=arch)
    for block in model.layers:
        has = arch == "bitnet"
        assert (block.self_attn.attn_sub_norm is not None) == has
        assert (block.mlp.ffn_sub_norm is not None) == has
        if has:
            assert block.self_attn.attn_sub_norm.weight.shape == (32,)
            assert block.mlp.ffn_sub_norm.weight.shape == (48,)


@pytest.mark.parametrize("arch", ["llama", "bitnet"])
def test_feed_forward_by_hand(make_config, arch):
    model = build(make_config, arch=arch, quant="none")
    mlp = model.layers[0].mlp
    if mlp.ffn_sub_norm is not None:
        with torch.no_grad():
            mlp.ffn_sub_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    xd = _np(x)
    gate = xd @ _np(mlp.gate_proj.weight).T
    up = xd @ _np(mlp.up_proj.weight).T
    if arch == "bitnet":
        h = np.maximum(gate, 0.0) ** 2 * up  # gated squared ReLU
        h = ref_rmsnorm(h, _np(mlp.ffn_sub_norm.weight))
    else:
        h = gate / (1.0 + np.exp(-gate)) * up  # SwiGLU
    ref = h @ _np(mlp.down_proj.weight).T
    with torch.no_grad():
        y = mlp(x)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("arch", ["llama", "bitnet"])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_attention_by_hand_with_gqa(make_config, arch, n_kv_heads):
    model = build(make_config, arch=arch, quant="none", n_kv_heads=n_kv_heads)
    attn = model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (n_kv_heads * 8, 32)
    with torch.no_grad():  # larger weights so the attention pattern is far from uniform
        for p in (attn.q_proj, attn.k_proj, attn.v_proj):
            p.weight.normal_(0.0, 0.3)
    T = 9
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = attn(x, model.rope_cos[:T], model.rope_sin[:T])
    ref = ref_attention(attn, _np(x), model.config.rope_theta)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_rope_matches_complex_rotation(make_config):
    cfg = make_config(rope_theta=500.0)
    cos, sin = rope_tables(cfg, 20)
    assert cos.shape == sin.shape == (20, cfg.head_dim) and cos.dtype == torch.float32
    x = torch.randn(2, 20, 3, cfg.head_dim, generator=torch.Generator().manual_seed(5))
    got = apply_rope(x, cos, sin)
    ref = ref_rope(_np(x), np.arange(20, dtype=np.float64), 500.0)
    np.testing.assert_allclose(_np(got), ref, rtol=1e-5, atol=2e-5)
    # a slice of the table is the same rotation at an offset (what decoding with a cache uses)
    got = apply_rope(x[:, :4], cos[11:15], sin[11:15])
    ref = ref_rope(_np(x[:, :4]), np.arange(11, 15, dtype=np.float64), 500.0)
    np.testing.assert_allclose(_np(got), ref, rtol=1e-5, atol=2e-5)


def test_quant_none_llama_matches_hugging_face(make_config):
    transformers = pytest.importorskip("transformers")
    model = build(make_config, arch="llama", quant="none")
    cfg = model.config
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=cfg.padded_vocab_size,
            hidden_size=cfg.dim,
            intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=False,
        )
    ).eval()
    sd = {(k if k.startswith("lm_head") else "model." + k): v for k, v in model.state_dict().items()}
    hf.load_state_dict(sd, strict=True)  # same module names, one to one
    ids = _ids((2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def _hand_count(D, L, H, KV, F, V, hd, arch, quant):
    per_layer = D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * F  # projections
    per_layer += 2 * D  # input / post-attention norms
    if arch == "bitnet":
        per_layer += D + F  # attn_sub_norm, ffn_sub_norm
    elif quant == "ternary":
        per_layer += 3 * D + H * hd + 2 * D + F  # the norm inside each BitLinear
    return L * per_layer + D + V * D  # + final norm + lm_head (embedding excluded)


@pytest.mark.parametrize("arch,quant", ARCH_QUANT)
def test_num_params_by_hand(make_config, arch, quant):
    model = build(make_config, arch=arch, quant=quant)
    expected = _hand_count(32, 2, 4, 2, 48, 128, 8, arch, quant)
    assert model.num_params() == expected
    assert model.num_params(non_embedding=False) == expected + 128 * 32


def test_ternary_and_none_differ_only_by_inside_norms(make_config):
    for arch in ("llama", "bitnet"):
        t = build(make_config, arch=arch, quant="ternary")
        n = build(make_config, arch=arch, quant="none")
        inside = sum(m.norm.weight.numel() for m in t.modules() if isinstance(m, BitLinear) and m.norm)
        assert t.num_params() - n.num_params() == inside
        assert inside == (2 * (6 * 32 + 48) if arch == "llama" else 0)
        # same latent weights: the state dicts line up apart from those norm keys
        extra = {k for k in t.state_dict() if k.endswith("proj.norm.weight")}
        assert set(t.state_dict()) - extra == set(n.state_dict())


def test_tie_embeddings_shares_the_tensor(make_config):
    model = build(make_config, tie_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = build(make_config)
    assert model.num_params(non_embedding=False) == untied.num_params(False) - 128 * 32
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(_ids((1, 6))).sum().backward()
    opt.step()
    assert model.lm_head.weight is model.embed_tokens.weight


def test_init_scales_residual_projections(make_config):
    model = build(make_config, dim=64, n_heads=4, n_kv_heads=4, ffn_dim=128, n_layers=2)
    std = model.config.init_std
    for block in model.layers:
        assert block.self_attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.1)
        residual = std / math.sqrt(2 * 2)
        assert block.self_attn.o_proj.weight.std().item() == pytest.approx(residual, rel=0.1)
        assert block.mlp.down_proj.weight.std().item() == pytest.approx(residual, rel=0.1)
        assert torch.equal(block.self_attn.q_proj.norm.weight, torch.ones(64))
        assert torch.equal(block.input_layernorm.weight, torch.ones(64))


def test_gradients_reach_every_parameter(make_config):
    for arch in ("llama", "bitnet"):
        model = build(make_config, arch=arch).train()
        ids = _ids((2, 8))
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
