"""The packed W2A8 kernels (fused GEMV, GEMV, dot) and fused groups against their references, interpreted."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.inference import StaticDecoder, fuse, generate, pack, plan  # noqa: E402
from bittern.inference.prepare import freeze  # noqa: E402
from bittern.kernels import ternary_gemv as tg  # noqa: E402
from bittern.models import ModelConfig, build_model  # noqa: E402
from bittern.nn.bitlinear import apply_shared  # noqa: E402
from bittern.nn.packed_linear import PackedTernaryGroup, PackedTernaryLinear, fuse_packed  # noqa: E402
from bittern.nn.ternary_linear import TernaryLinear  # noqa: E402


def _layer(k, n, seed, norm=True, bias=False, channel=False, dtype=torch.float32) -> TernaryLinear:
    g = torch.Generator().manual_seed(seed)
    layer = TernaryLinear(k, n, (n, 1) if channel else (), bias, norm)
    layer.codes.copy_(torch.randint(-1, 2, (n, k), generator=g).to(torch.int8))
    layer.scale.copy_(torch.rand(layer.scale.shape, generator=g) * 0.05 + 0.01)
    if norm:
        layer.norm.weight.data.copy_(torch.rand(k, generator=g) + 0.5)
    if bias:
        layer.bias.data.copy_(torch.randn(n, generator=g))
    for p in layer.parameters():
        p.data = p.data.to(dtype)
    return layer


def _x(m, k, seed, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_word_layout():
    codes = torch.tensor([[-1, 0, 1] * 6], dtype=torch.int8)  # 18 codes: one full word and a padded one
    words = tg.pack_words(codes)
    assert words.shape == (1, 2) and words.dtype == torch.int32
    stored = [c + 1 for c in codes[0].tolist()]
    first = sum(d << (2 * i) for i, d in enumerate(stored[:16]))
    assert words[0, 0].item() == first - (1 << 32 if first >= 1 << 31 else 0)
    assert words[0, 1].item() == stored[16] | stored[17] << 2
    assert torch.equal(tg.unpack_words(words, 18), codes)


@pytest.mark.parametrize("m", [1, 3, 17])  # GEMV (decode), GEMV with several tokens, GEMM (prefill)
@pytest.mark.parametrize("k", [64, 88, 160])  # whole words; a padded last word; two K blocks
def test_kernel_equals_reference_exactly_without_norm(m, k):
    layer = _layer(k, 40, seed=m + k, norm=False, bias=True)
    words, scale = tg.pack_words(layer.codes), layer.scale.expand(40).contiguous()
    x = _x(m, k, seed=1)
    y = tg.ternary_linear(x, words, scale, None, layer.bias, 1e-5)
    assert torch.equal(y, tg.ternary_linear_reference(x, words, scale, None, layer.bias))
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [2, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_layer_equals_ternary_linear(m, dtype):
    """Norm inside, per-channel gamma: the packed layer computes TernaryLinear's output."""
    layer = _layer(96, 24, seed=m, norm=True, channel=True, dtype=dtype)
    packed = layer.to_packed()
    assert isinstance(packed, PackedTernaryLinear) and torch.equal(packed.codes, layer.codes)
    x = _x(m, 96, seed=2, dtype=dtype).view(2, m // 2, 96)
    want, got = layer(x), packed(x)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:  # the same float32 result up to rounding order, then one rounding to bfloat16
        assert (got.float() - want.float()).abs().max() <= want.float().abs().max() * 2**-7


def test_group_scales_stay_unpacked():
    layer = TernaryLinear(64, 8, (8, 2, 1))
    assert layer.to_packed() is layer


def test_packed_decode_equals_ternary_linear_decode():
    """A frozen model decoded greedily on packed kernels picks TernaryLinear's tokens, grouped or not."""
    cfg = ModelConfig(preset="tiny", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=64)
    torch.manual_seed(0)
    model = freeze(build_model(cfg.resolved()).eval())
    for layer in model.modules():  # distinct inside norms, so the groups quantize once per member
        if isinstance(layer, TernaryLinear) and layer.norm is not None:
            layer.norm.weight.data.uniform_(0.5, 1.5)
    prompts = [[1, 2, 3, 4], [5, 6]]
    _, _, need = plan(prompts, 3, model.config.max_seq_len, None)
    want = generate(StaticDecoder(model, 2, need), prompts, 3).tokens
    pack(model)
    assert any(isinstance(m, PackedTernaryLinear) for m in model.modules())
    assert generate(StaticDecoder(model, 2, need), prompts, 3).tokens == want
    fuse(model)
    groups = [m for m in model.modules() if isinstance(m, PackedTernaryGroup)]
    assert len(groups) == 2 and all(g.norm_weight.dim() == 2 for g in groups)  # q/k/v and gate/up
    assert generate(StaticDecoder(model, 2, need), prompts, 3).tokens == want


@pytest.mark.parametrize(
    ("m", "k", "variant"),
    [
        (1, 88, "fused"),
        (1, 88, "gemv"),
        (1, 88, "dot"),
        (2, 300, "fused"),  # K over several word chunks, a padded last word
        (3, 300, "gemv-int"),
        (4, 40, "fused-int"),
        (5, 300, "dot"),  # the dot's K over two chunks
        (20, 40, "dot"),  # past one 16-token tile
    ],
)
def test_variants_equal_reference_exactly(m, k, variant):
    """Each kernel variant, with bias and per-channel gamma, N not a multiple of the row block."""
    layer = _layer(k, 36, seed=m + k, norm=False, bias=True, channel=True)
    words, scale = tg.pack_words(layer.codes), layer.scale.reshape(-1).contiguous()
    x = _x(m, k, seed=3)
    y = tg.ternary_linear(x, words, scale, None, layer.bias, 1e-5, variant=variant)
    assert torch.equal(y, tg.ternary_linear_reference(x, words, scale, None, layer.bias))


@pytest.mark.parametrize("variant", ["fused", "gemv", "dot"])
def test_variants_with_norm_equal_ternary_linear(variant):
    layer = _layer(72, 20, seed=5, norm=True, dtype=torch.bfloat16)
    packed = layer.to_packed()
    packed.variant = variant
    x = _x(3, 72, seed=4, dtype=torch.bfloat16)
    got, want = packed(x), layer(x)
    assert (got.float() - want.float()).abs().max() <= want.float().abs().max() * 2**-7


def _members(norms: str, bias: bool, seed: int = 0) -> list[TernaryLinear]:
    """q/k/v-like TernaryLinears (24, 8, 8 rows) over K = 40 with `norms` inside norms: none, same, own."""
    layers = [
        _layer(40, n, seed + i, norm=norms != "none", bias=bias, channel=i == 0)
        for i, n in enumerate((24, 8, 8))
    ]
    if norms == "same":
        for layer in layers[1:]:
            layer.norm.weight.data.copy_(layers[0].norm.weight)
    return layers


@pytest.mark.parametrize(
    ("norms", "bias", "m"), [("none", True, 1), ("same", False, 2), ("own", True, 3), ("own", False, 17)]
)
def test_group_equals_separate_layers(norms, bias, m):
    """A fused group gives each member's own output bitwise, and its members still run alone."""
    packed = [layer.to_packed() for layer in _members(norms, bias)]
    x = _x(m, 40, seed=6).view(1, m, 40)
    alone = [layer(x) for layer in packed]
    group = fuse_packed(packed)
    assert group is not None and packed[0].shared_group is group
    want_norms = {"none": None, "same": 1, "own": 2}[norms]
    assert (None if group.norm_weight is None else group.norm_weight.dim()) == want_norms
    together = apply_shared(packed, x)
    for a, b, layer in zip(alone, together, packed, strict=True):
        assert torch.equal(a, b)
        assert layer.words.data_ptr() in range(
            group.words.data_ptr(), group.words.data_ptr() + group.words.nbytes
        )
    assert all(torch.equal(a, layer(x)) for a, layer in zip(alone, packed, strict=True))
    if norms == "none":
        ref = tg.ternary_linear_group_reference(
            x[0], group.words, group.scale, None, group.bias, 1e-5, group.starts
        )
        assert torch.equal(torch.cat(together, -1)[0], ref)


def test_groups_only_of_matching_layers():
    a, b = (layer.to_packed() for layer in _members("own", False)[:2])
    c = _layer(48, 8, 9, norm=True).to_packed()  # another input width
    d = _layer(40, 8, 9, norm=False).to_packed()  # no inside norm beside normed ones
    assert fuse_packed([a, c]) is None and fuse_packed([a, d]) is None and fuse_packed([a]) is None
    assert a.shared_group is None
    assert fuse_packed([a, b]) is not None
    x = _x(1, 40, 1)
    ya, yd = apply_shared([a, d], x)  # not its group (same sizes as a, b): layer by layer
    assert torch.equal(ya, a(x)) and torch.equal(yd, d(x))
    assert apply_shared([b, a], x)[0].shape == (1, 8)
