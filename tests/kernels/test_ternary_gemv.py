"""The packed W2A8 kernels (GEMV and GEMM) against their PyTorch reference and TernaryLinear, interpreted."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.inference import StaticDecoder, generate, pack, plan  # noqa: E402
from bittern.inference.prepare import freeze  # noqa: E402
from bittern.kernels import ternary_gemv as tg  # noqa: E402
from bittern.models import ModelConfig, build_model  # noqa: E402
from bittern.nn.packed_linear import PackedTernaryLinear  # noqa: E402
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
    """A frozen model decoded greedily on packed kernels picks TernaryLinear's tokens."""
    cfg = ModelConfig(preset="tiny", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=64)
    torch.manual_seed(0)
    model = freeze(build_model(cfg.resolved()).eval())
    prompts = [[1, 2, 3, 4], [5, 6]]
    _, _, need = plan(prompts, 3, model.config.max_seq_len, None)
    want = generate(StaticDecoder(model, 2, need), prompts, 3).tokens
    pack(model)
    assert any(isinstance(m, PackedTernaryLinear) for m in model.modules())
    assert generate(StaticDecoder(model, 2, need), prompts, 3).tokens == want
