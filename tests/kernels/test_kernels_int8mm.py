"""The int8 GEMMs (pointer kernel, and the TMA persistent kernel through `_int8_mm_tma`) against an exact
int64 matmul, with and without the fused rescale."""

import contextvars

import pytest
import torch

triton = pytest.importorskip("triton")

import bittern.kernels.int8_mm as int8_mm_module  # noqa: E402
from bittern.errors import BitternError  # noqa: E402
from bittern.kernels.int8_mm import (  # noqa: E402
    TMA_CONFIGS,
    TMA_CONFIGS_4BYTE,
    TmaConfig,
    _int8_mm_tma,
    int8_mm,
    int8_mm_reference,
)


def _flags(cfg: TmaConfig) -> str:
    names = [
        ("ws", cfg.ws),
        ("noflatten", not cfg.flatten),
        ("subtile", cfg.subtile),
        ("ptrstore", not cfg.tma_store),
    ]
    return "-".join(name for name, on in names if on) or "plain"


def _codes(rows: int, cols: int, low: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (rows, cols), generator=g).to(torch.int8)


@pytest.mark.parametrize("k", [64, 80])  # a whole number of K tiles, and a masked last tile
def test_int32_product_is_exact(k):
    a, b = _codes(37, k, -128, 127, 0), _codes(45, k, -128, 127, 1)
    out = int8_mm(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out, int8_mm_reference(a, b))


def test_extreme_values_do_not_overflow():
    a = torch.full((4, 96), -128, dtype=torch.int8)
    b = torch.full((3, 96), -128, dtype=torch.int8)
    assert (int8_mm(a, b) == 128 * 128 * 96).all()


@pytest.mark.parametrize("per_n", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_rescale(per_n, out_dtype):
    a, b = _codes(33, 72, -128, 127, 2), _codes(20, 72, -1, 1, 3)
    g = torch.Generator().manual_seed(4)
    row = torch.rand(33, generator=g) * 100 + 1
    col = torch.rand(20 if per_n else 1, generator=g) * 0.1
    out = int8_mm(a, b, row, col, out_dtype)
    assert torch.equal(out, int8_mm_reference(a, b, row, col, out_dtype))


def test_row_scale_only_and_explicit_tiles():
    a, b = _codes(50, 96, -128, 127, 5), _codes(70, 96, -128, 127, 6)
    row = torch.rand(50, generator=torch.Generator().manual_seed(7)) + 0.5
    ref = int8_mm_reference(a, b, row, None, torch.float32)
    for config in [(16, 64, 32, 4, 1), (64, 16, 64, 4, 1)]:
        assert torch.equal(int8_mm(a, b, row, None, torch.float32, config=config), ref)


def test_empty_inner_dimension():
    out = int8_mm(torch.empty(3, 0, dtype=torch.int8), torch.empty(2, 0, dtype=torch.int8))
    assert torch.equal(out, torch.zeros(3, 2, dtype=torch.int32))


# ---- the TMA persistent kernel (Hopper's default), forced on the CPU through `_int8_mm_tma` ----

TMA_TEST_CONFIGS = [
    TmaConfig(32, 32, 32, 4, 1),
    TmaConfig(32, 32, 32, 4, 1, ws=True, flatten=False),  # the interpreter runs the same loop body
    TmaConfig(32, 32, 32, 4, 1, subtile=True),
    TmaConfig(16, 32, 64, 4, 1, tma_store=False),
]
# (row scale, col scale, out dtype): unscaled int32, per-channel and per-tensor gamma, row only, col only
SCALINGS = {
    "int32": (False, None, torch.int32),
    "bf16-per-n": (True, "n", torch.bfloat16),
    "fp32-per-tensor": (True, "1", torch.float32),
    "bf16-row-only": (True, None, torch.bfloat16),
    "fp16-col-only": (False, "n", torch.float16),
    "fp32-per-n": (True, "n", torch.float32),
}


def _operands(M, N, K, scaling, seed=0):
    has_row, col_kind, out_dtype = SCALINGS[scaling]
    a, b = _codes(M, K, -128, 127, seed), _codes(N, K, -128, 127, seed + 1)
    a[0], b[0] = -128, -128  # the extremes (b's -128 is not a weight code; the product must stay exact)
    g = torch.Generator().manual_seed(seed + 2)
    row = torch.rand(M, generator=g) * 100 + 1 if has_row else None
    col_max = 0.1 if has_row else 0.01  # float16 without a row scale: stay finite (|product| < 2**21)
    col = None if col_kind is None else torch.rand(N if col_kind == "n" else 1, generator=g) * col_max
    return a, b, row, col, out_dtype


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("cfg", TMA_TEST_CONFIGS, ids=lambda c: "x".join(map(str, c[:3])) + "-" + _flags(c))
def test_tma_kernel_matches_reference(cfg, scaling):
    # M, N, K past whole tiles (K = 80 ends in a partial K tile: the descriptor pads it with zeros),
    # 3 programs for 9 tiles or more: each loops over several tiles
    a, b, row, col, out_dtype = _operands(70, 72, 80, scaling)
    out = _int8_mm_tma(a, b, row, col, out_dtype, cfg, programs=3)
    assert out.dtype == out_dtype
    assert torch.equal(out, int8_mm_reference(a, b, row, col, out_dtype))


@pytest.mark.parametrize("programs", [1, 2, 64])  # one program doing every tile, and more programs than tiles
def test_tma_kernel_persistent_grid(programs):
    a, b, row, col, out_dtype = _operands(45, 40, 48, "bf16-per-n", seed=10)
    out = _int8_mm_tma(a, b, row, col, out_dtype, TmaConfig(16, 16, 16, 4, 1), programs=programs)
    assert torch.equal(out, int8_mm_reference(a, b, row, col, out_dtype))


AUTOTUNED = [(c, torch.bfloat16) for c in TMA_CONFIGS] + [(c, torch.float32) for c in TMA_CONFIGS_4BYTE]


@pytest.mark.parametrize(
    ("cfg", "out_dtype"),
    AUTOTUNED,
    ids=[
        f"{str(d)[6:]}-{'x'.join(map(str, c[:3]))}-w{c.warps}-s{c.stages}-{_flags(c)}" for c, d in AUTOTUNED
    ],
)
def test_tma_autotune_configs_are_exact(cfg, out_dtype):
    # the GPU tiles themselves (the interpreter ignores warps, stages and warp specialization),
    # on a shape smaller than one tile; and the structure Triton needs for each of them
    assert not (cfg.ws and (cfg.subtile or cfg.flatten or cfg.warps != 4)), "ws needs noflatten, 4 warps"
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.stages, cfg.ws) != (128, 256, 64, 6, True), (
        "wrong on H100"
    )
    a, b, row, col, _ = _operands(37, 24, 96, "bf16-per-n", seed=20)
    out = _int8_mm_tma(a, b, row, col, out_dtype, cfg)
    assert torch.equal(out, int8_mm_reference(a, b, row, col, out_dtype))


def test_tma_kernel_empty_shapes():
    cfg = TMA_TEST_CONFIGS[0]
    out = _int8_mm_tma(
        torch.empty(3, 0, dtype=torch.int8), torch.empty(8, 0, dtype=torch.int8), None, None, torch.int32, cfg
    )
    assert torch.equal(out, torch.zeros(3, 8, dtype=torch.int32))
    assert _int8_mm_tma(
        torch.empty(0, 16, dtype=torch.int8), _codes(8, 16, -1, 1, 0), None, None, torch.int32, cfg
    ).shape == (0, 8)


def test_tma_path_choice(monkeypatch):
    """Which calls the TMA kernel takes on a Hopper GPU (the device check stubbed: CPU tensors here)."""
    monkeypatch.setattr(int8_mm_module, "_tma_sms", lambda device: 132)

    def use(M, N, K, out_dtype=torch.bfloat16, offset=0, kernel="tma"):
        a = torch.zeros(M * K + offset, dtype=torch.int8)[offset:].view(M, K)
        b = torch.zeros(N, K, dtype=torch.int8)
        return int8_mm_module._use_tma(a, b, torch.empty(M, N, dtype=out_dtype), kernel)

    assert use(64, 72, 80) == 132
    assert use(64, 36, 80, torch.float32) == 132  # 36 * 4 bytes: aligned rows
    assert use(64, 72, 72) is None  # K % 16: the int8 rows of A and B are misaligned
    assert use(64, 36, 80) is None  # 36 * 2 bytes: bfloat16 output rows misaligned
    assert use(64, 72, 80, offset=1) is None  # A's base pointer misaligned
    assert use(64, 72, 80, kernel="pointer") is None  # kernels.int8_mm = "pointer"
    monkeypatch.setattr(int8_mm_module, "_tma_sms", lambda device: None)  # pre-Hopper
    assert use(64, 72, 80) is None


@pytest.mark.parametrize("kernel", ["tma", "pointer"])
def test_either_kernel_choice_is_exact(kernel):
    """Both choices compute the reference (the interpreter runs the pointer kernel for either)."""
    a, b = _codes(37, 64, -128, 127, 0), _codes(45, 64, -1, 1, 1)
    row = torch.rand(37, generator=torch.Generator().manual_seed(2)) + 0.5
    col = torch.rand(45, generator=torch.Generator().manual_seed(3)) + 0.5
    out = int8_mm(a, b, row, col, torch.bfloat16, kernel=kernel)
    assert torch.equal(out, int8_mm_reference(a, b, row, col, torch.bfloat16))


def test_unknown_kernel_choice_is_refused():
    a, b = _codes(4, 16, -1, 1, 0), _codes(8, 16, -1, 1, 1)
    assert int8_mm_module.KERNELS == ("tma", "pointer")
    with pytest.raises(BitternError, match="'tma' or 'pointer', not 'auto'"):
        int8_mm(a, b, kernel="auto")


def test_allocator_set_per_context_and_kept():
    """The descriptors' scratch allocator: set where none is (each thread has its own), else left alone."""
    from triton.runtime import _allocation

    def fresh():  # a context with nothing set, as a new thread's
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        int8_mm_module._ensure_allocator()
        return _allocation._allocator.get()

    assert contextvars.Context().run(fresh) is int8_mm_module._scratch

    def custom():
        mine = lambda size, alignment, stream: None  # noqa: E731
        triton.set_allocator(mine)
        int8_mm_module._ensure_allocator()
        return _allocation._allocator.get() is mine

    assert contextvars.Context().run(custom)


def test_tma_path_choice_while_tracing(monkeypatch):
    """Under torch.compile's tracing (fake tensors: no data pointers) alignment is the storage offset's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(int8_mm_module, "_tma_sms", lambda device: 132)
    with FakeTensorMode():
        flat = torch.empty(64 * 80 + 16, dtype=torch.int8)
        b, c = torch.empty(72, 80, dtype=torch.int8), torch.empty(64, 72, dtype=torch.bfloat16)
        assert int8_mm_module._use_tma(flat[16:].view(64, 80), b, c, "tma") == 132
        assert int8_mm_module._use_tma(flat[1 : 1 + 64 * 80].view(64, 80), b, c, "tma") is None
