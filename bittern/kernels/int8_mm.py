"""int8 x int8 -> int32 GEMM with the dequantizing rescale fused in the epilogue.

C[m, n] = (sum_k A[m, k] * B[n, k]) * col[n] / row[m], with A (M, K) and B (N, K) both
K-contiguous (Hopper's int8 tensor-core instructions take K-major operands only:
docs/design.md, section 5). Without scales C is the exact int32 product. For the forward,
A = activation codes, B = ternary codes, row = s_x and col = gamma; the backward's int8
options reuse it.
The int32 sum is exact for K < 2**17 (|A| <= 128, |B| <= 127).

Two kernels compute it, with the same product and the same float32 epilogue (`_rescale`):

- `_int8_mm_tma_kernel`, the default on Hopper (compute capability 9.0+) when no `config` is
  given (`kernel="pointer"`, the run config's `kernels.int8_mm`, turns it off): persistent
  (one program per multiprocessor, each looping over output tiles), its loads through TMA
  tensor descriptors made in the kernel (`tl.make_tensor_descriptor`, whose scratch memory
  `triton.set_allocator` provides) and its tile loop warp-specialized (a TMA producer
  warpgroup feeding two consumer warpgroups). Measured on an H100 (2026-11-23,
  benchmarks/int8_gemm_sweep.py), against cuBLAS bf16 `a @ b.t()`: 1.26-1.27x at M = 8192 / 16384
  with N, K in {2048, 5632} and 1.75x at (8192, 2048, 5632), 1.06x for the narrow k/v shape
  (8192, 256, 2048); the pointer kernel below was only at parity. TMA needs 16-byte aligned base
  pointers and row strides: shapes where K % 16 or N * out_itemsize % 16 is not 0, or misaligned
  tensors, take the pointer kernel.
- `_int8_mm_kernel`, one program per tile with pointer loads: pre-Hopper GPUs, every shape
  TMA cannot take, every `config=` call (those tiles are pointer-kernel tiles) and the
  interpreter's default path. The choice is an argument of every call (and of the torch ops
  over it, `bittern.kernels.ops`), so a compiled graph is traced with the kernel it names.

Inside a training step (benchmarks/gpu_selfcheck.py and profile_model.py, H100, 2026-11-23) the
TMA kernel is exact, eager and launched by Inductor from a per-block compiled model, and takes
15.9 ms of a 1B step's GEMM time against the pointer kernel's 20.0 ms.

`_int8_mm_tma` runs the TMA kernel with a given `TmaConfig` on any device, the interpreter's
CPU tensors included (the tests' hook).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime import _allocation

from bittern.errors import BitternError
from bittern.kernels.common import INTERPRET, bucket, launch, round_to, sm_count, tracing

# Tile shapes tried by the pointer kernel's autotuner (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages);
# shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K bytes, at most 227 KB in all on Hopper.
GPU_CONFIGS = (
    (128, 256, 128, 8, 3),
    (256, 128, 128, 8, 3),
    (128, 128, 128, 8, 4),
    (64, 256, 128, 4, 4),  # more tiles for the narrow k/v projections
)
INTERPRETER_CONFIG = (32, 32, 32, 4, 1)
GROUP_M = 8


# What `int8_mm(kernel=...)` takes on a Hopper GPU without `config`: "tma" (TMA where it can) or
# "pointer" (the pointer kernel always); the run config's `kernels.int8_mm`
KERNELS = ("tma", "pointer")


def check_kernel(kernel: str) -> str:
    """`kernel` if it is one of `KERNELS`, else a BitternError naming it."""
    if kernel not in KERNELS:
        raise BitternError(f"the int8 GEMM kernel must be 'tma' or 'pointer', not {kernel!r}")
    return kernel


class TmaConfig(NamedTuple):
    """One launch of the TMA kernel: tile, warps, pipeline stages and the structural switches."""

    block_m: int
    block_n: int
    block_k: int
    warps: int  # with ws: per consumer warpgroup (the compiler adds a producer: 12 warps for 4)
    stages: int
    ws: bool = False  # warp-specialized tile loop: needs flatten=False and warps=4 to take effect
    flatten: bool = True  # pipeline across the tile boundary (tl.range(..., flatten=True))
    subtile: bool = False  # store the tile as two BLOCK_N / 2 halves (half the epilogue's smem)
    tma_store: bool = True  # the output through a TMA descriptor, else masked pointer stores


# The TMA kernel's autotuned configs: the best of the H100 sweep (2026-11-23), for 2-byte outputs.
# Shared memory: stages * (BLOCK_M + BLOCK_N) * BLOCK_K + the output tile staged for the store
# (a TMA store's, or the layout conversion before pointer stores), which a 4-byte output doubles:
# those take their own set, with fewer stages or smaller tiles. Every config of both sets compiles
# for sm_90 within 227 KB (checked offline with Triton 3.6 and its ptxas: 208 KB each for 2-byte
# outputs, 192-224 KB for 4-byte ones; only the ptrstore one has a stack frame, 128-136 bytes, the
# config measured at 1.75x). Left out: warp specialization with subtiled stores or host-side
# descriptors (crashes Triton's compiler), and 128x256x64 w4 s6 ws (wrong results on the H100).
# ws needs flatten=False and 4 warps, or Triton silently does not apply it.
TMA_CONFIGS = (
    TmaConfig(128, 256, 128, 4, 3, ws=True, flatten=False),  # 1.26-1.27x bf16 at K = 2048
    TmaConfig(128, 256, 128, 4, 4, ws=True, flatten=False, tma_store=False),  # 1.75x at K = 5632
    TmaConfig(256, 128, 128, 4, 3, ws=True, flatten=False),  # 1.27x at M = 16384
    TmaConfig(128, 128, 256, 8, 3, subtile=True),  # narrow N (k/v, N = 256): 1.06x
)
TMA_CONFIGS_4BYTE = (  # int32 / float32 outputs: fit, not measured (the sweep stored bfloat16)
    TmaConfig(128, 256, 128, 4, 2, ws=True, flatten=False),  # 96 + 128 KB
    TmaConfig(128, 128, 128, 4, 4, ws=True, flatten=False),  # 128 + 64 KB
    TmaConfig(128, 256, 128, 8, 3, subtile=True),  # 144 + 64 KB
    TmaConfig(128, 128, 256, 8, 3, subtile=True),  # 192 + 32 KB: narrow N
)

# ---- reference -------------------------------------------------------------------------


def int8_mm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """(a @ b^T) exactly in int64, then * col_scale / row_scale[:, None] in float32, cast to out_dtype."""
    acc = a.long() @ b.long().t()
    if row_scale is None and col_scale is None:
        return acc.to(out_dtype)
    c = acc.float()
    if col_scale is not None:
        c = c * (col_scale if col_scale.numel() > 1 else col_scale.reshape(()))
    if row_scale is not None:
        c = c / row_scale[:, None]
    return c.to(out_dtype)


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _rescale(
    acc,
    ROW,
    COL,
    offs_m,
    offs_n,
    M,
    N,
    DTYPE: tl.constexpr,
    HAS_ROW: tl.constexpr,
    HAS_COL: tl.constexpr,
    COL_PER_N: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """The epilogue of both kernels: acc * col / row in float32 rounded to DTYPE, or acc itself."""
    if HAS_ROW or HAS_COL:
        c = acc.to(tl.float32)
        if HAS_COL:
            if COL_PER_N:
                c = c * tl.load(COL + offs_n, mask=offs_n < N, other=0.0)[None, :]
            else:
                c = c * tl.load(COL)
        if HAS_ROW:
            c = tl.math.div_rn(c, tl.load(ROW + offs_m, mask=offs_m < M, other=1.0)[:, None])
        c = round_to(c, DTYPE, INTERPRET)
    else:
        c = acc
    return c


@triton.jit
def _int8_mm_kernel(
    A,
    B,
    C,
    ROW,
    COL,
    M,
    N,
    M_BUCKET,  # the autotuner's key for M: next power of two (prompts of every length share a tile)
    K: tl.constexpr,
    HAS_ROW: tl.constexpr,
    HAS_COL: tl.constexpr,
    COL_PER_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # grouped launch order: GROUP_M row-tiles share each column-tile while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # rows past the end read a valid row (wrapped) and are masked at the store
    a_ptrs = A + (offs_m % M)[:, None].to(tl.int64) * K + offs_k[None, :]
    b_ptrs = B + (offs_n % N)[None, :].to(tl.int64) * K + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        if K % BLOCK_K == 0:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    c = _rescale(
        acc, ROW, COL, offs_m, offs_n, M, N, C.dtype.element_ty, HAS_ROW, HAS_COL, COL_PER_N, INTERPRET
    )
    c_ptrs = C + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _tile_offsets(tile_id, num_m, num_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """First row and column of tile `tile_id` in grouped order (GROUP_M row-tiles per column sweep)."""
    per_group = GROUP_M * num_n
    first_m = (tile_id // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % per_group) % group_size
    pid_n = (tile_id % per_group) // group_size
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def _tma_tile_product(
    a_desc,
    b_desc,
    tile_id,
    num_m,
    num_n,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """The exact int32 product of one output tile (the descriptors read zeros past the ends)."""
    off_m, off_n = _tile_offsets(tile_id, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for ki in range(tl.cdiv(K, BLOCK_K)):  # a constexpr bound: the interpreter runs it too
        a = a_desc.load([off_m, ki * BLOCK_K])
        b = b_desc.load([off_n, ki * BLOCK_K])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _tma_epilogue(
    acc,
    c_desc,
    C,
    ROW,
    COL,
    tile_id,
    num_m,
    num_n,
    M,
    N,
    HAS_ROW: tl.constexpr,
    HAS_COL: tl.constexpr,
    COL_PER_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
    SUBTILE: tl.constexpr,
    TMA_STORE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """`_rescale` of tile `tile_id`, stored through the descriptor (which clips the ends) or pointers."""
    off_m, off_n = _tile_offsets(tile_id, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    c = _rescale(
        acc, ROW, COL, offs_m, offs_n, M, N, C.dtype.element_ty, HAS_ROW, HAS_COL, COL_PER_N, INTERPRET
    )
    if TMA_STORE:
        if SUBTILE:
            c0, c1 = tl.split(tl.permute(tl.reshape(c, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            c_desc.store([off_m, off_n], c0)
            c_desc.store([off_m, off_n + BLOCK_N // 2], c1)
        else:
            c_desc.store([off_m, off_n], c)
    else:
        c_ptrs = C + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _int8_mm_tma_kernel(
    A,
    B,
    C,
    ROW,
    COL,
    M,
    N,
    M_BUCKET,  # the autotuner's key for M, as in _int8_mm_kernel
    K: tl.constexpr,
    HAS_ROW: tl.constexpr,
    HAS_COL: tl.constexpr,
    COL_PER_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    FLATTEN: tl.constexpr,
    SUBTILE: tl.constexpr,
    TMA_STORE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Persistent int8 GEMM with TMA loads: program p computes tiles p, p + programs, p + 2 programs, ...

    The same body runs under the interpreter, whose loops cannot take a run-time bound (numpy 2):
    there the tile loop is a while loop, on the GPU a `tl.range` (warp-specialized per config).
    """
    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    if TMA_STORE:
        c_desc = tl.make_tensor_descriptor(
            C, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N // 2 if SUBTILE else BLOCK_N]
        )
    else:
        c_desc = None
    start = tl.program_id(0)
    programs = tl.num_programs(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_m * num_n
    # the epilogue recomputes its tile from its own counter, as Triton's persistent-matmul tutorial
    # does, so that a flattened, pipelined loop keeps the product and the epilogue apart
    tile_id_c = start - programs
    if INTERPRET:
        tile_id = start
        while tile_id < num_tiles:
            acc = _tma_tile_product(
                a_desc, b_desc, tile_id, num_m, num_n, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M
            )
            tile_id_c += programs
            _tma_epilogue(
                acc,
                c_desc,
                C,
                ROW,
                COL,
                tile_id_c,
                num_m,
                num_n,
                M,
                N,
                HAS_ROW,
                HAS_COL,
                COL_PER_N,
                BLOCK_M,
                BLOCK_N,
                GROUP_M,
                SUBTILE,
                TMA_STORE,
                INTERPRET,
            )
            tile_id += programs
    else:
        for tile_id in tl.range(start, num_tiles, programs, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
            acc = _tma_tile_product(
                a_desc, b_desc, tile_id, num_m, num_n, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M
            )
            tile_id_c += programs
            _tma_epilogue(
                acc,
                c_desc,
                C,
                ROW,
                COL,
                tile_id_c,
                num_m,
                num_n,
                M,
                N,
                HAS_ROW,
                HAS_COL,
                COL_PER_N,
                BLOCK_M,
                BLOCK_N,
                GROUP_M,
                SUBTILE,
                TMA_STORE,
                INTERPRET,
            )


def _config(block_m, block_n, block_k, warps, stages) -> triton.Config:
    kwargs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": GROUP_M}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


def _tma_meta(cfg: TmaConfig) -> dict:
    """The TMA kernel's constexpr tile arguments of `cfg`."""
    assert not (cfg.ws and (cfg.subtile or cfg.flatten)), f"Triton cannot warp-specialize {cfg}"
    return {
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
        "GROUP_M": GROUP_M,
        "WARP_SPECIALIZE": cfg.ws,
        "FLATTEN": cfg.flatten,
        "SUBTILE": cfg.subtile,
        "TMA_STORE": cfg.tma_store,
    }


def _tma_config(cfg: TmaConfig) -> triton.Config:
    return triton.Config(_tma_meta(cfg), num_warps=cfg.warps, num_stages=cfg.stages)


_KEY = ["M_BUCKET", "N", "K"]
_int8_mm_autotuned = triton.autotune(configs=[_config(*c) for c in GPU_CONFIGS], key=_KEY)(_int8_mm_kernel)
# (M bucket, N, K, flags, output dtype) -> the pointer tile the autotuner chose; eager calls then
# launch that tile directly: the autotuner's own per-call work cost ~200 us of host time per
# call on an H100 (benchmarks/host_overhead.py), against ~35 us for a direct launch
_TUNED: dict[tuple, tuple[int, int, int, int, int]] = {}


def _tile(cfg: triton.Config) -> tuple[int, int, int, int, int]:
    """A pointer-kernel `triton.Config` as the (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of `config=`."""
    kw = cfg.kwargs
    return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], cfg.num_warps, cfg.num_stages


# by the output's element size: a 4-byte output tile staged for a TMA store does not fit beside the
# pipeline's buffers (the autotuners' keys include the dtypes too)
_int8_mm_tma_autotuned = {
    2: triton.autotune(configs=[_tma_config(c) for c in TMA_CONFIGS], key=_KEY)(_int8_mm_tma_kernel),
    4: triton.autotune(configs=[_tma_config(c) for c in TMA_CONFIGS_4BYTE], key=_KEY)(_int8_mm_tma_kernel),
}


# ---- launchers -------------------------------------------------------------------------


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global memory for the descriptors a kernel makes (on the current device, like the launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Give Triton `_scratch` unless an allocator is set already.

    Triton keeps its allocator in a ContextVar: a thread that has not set one (autograd's backward
    threads, for one) has none, so this is checked before every launch, not once per process.
    """
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


# device index -> its multiprocessor count if it has TMA (compute capability 9.0+), else None
_TMA_DEVICES: dict[int, int | None] = {}


def _tma_sms(device: torch.device) -> int | None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _TMA_DEVICES:
        major, _ = torch.cuda.get_device_capability(index)
        _TMA_DEVICES[index] = sm_count(torch.device("cuda", index)) if major >= 9 else None
    return _TMA_DEVICES[index]


def _tma_ok(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> bool:
    """TMA's terms: 16-byte aligned base pointers and row strides (K int8 codes, N outputs)."""
    K, N, size = a.shape[1], b.shape[0], c.element_size()
    if K % 16 or N * size % 16 or size not in _int8_mm_tma_autotuned:
        return False
    if tracing():  # no data pointers; where Inductor allocates, the storage itself is aligned
        return all(t.storage_offset() * t.element_size() % 16 == 0 for t in (a, b, c))
    return a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0 and c.data_ptr() % 16 == 0


def _use_tma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, kernel: str) -> int | None:
    """The persistent grid's size (the multiprocessor count) if the TMA kernel takes this call, else None."""
    if kernel != "tma":
        return None
    programs = _tma_sms(a.device)
    return programs if programs is not None and _tma_ok(a, b, c) else None


def _prepare(a, b, row_scale, col_scale, out_dtype):
    """The output, and the kernels' tensor arguments and flags (None where the output is done)."""
    assert a.dtype == b.dtype == torch.int8 and a.is_contiguous() and b.is_contiguous()
    (M, K), (N, K2) = a.shape, b.shape
    assert K == K2, f"inner dimensions differ: {K} and {K2}"
    scaled = row_scale is not None or col_scale is not None
    assert scaled or out_dtype == torch.int32, "an unscaled product is int32"
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c, None, None
    if K == 0:
        return c.zero_(), None, None
    # an absent scale is never read: any read-only pointer stands in (not c: no aliasing of the output)
    args = (a, b, c, row_scale if row_scale is not None else a, col_scale if col_scale is not None else a)
    flags = dict(
        HAS_ROW=row_scale is not None,
        HAS_COL=col_scale is not None,
        COL_PER_N=col_scale is not None and col_scale.numel() > 1,
    )
    return c, args, flags


def _launch_tma(args, flags, programs: int, cfg: TmaConfig | None) -> None:
    """The TMA kernel over at most `programs` programs: autotuned (cfg None) or with `cfg`."""
    a, b, c = args[:3]
    (M, K), N = a.shape, b.shape[0]
    if not INTERPRET:
        _ensure_allocator()
    grid = lambda meta: (
        torch.sym_min(programs, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),
    )
    if cfg is None:
        kernel = _int8_mm_tma_autotuned[c.element_size()]
        launch(kernel)[grid](*args, M, N, bucket(M), K, **flags, INTERPRET=INTERPRET)
    else:
        launch(_int8_mm_tma_kernel)[grid](
            *args,
            M,
            N,
            bucket(M),
            K,
            **flags,
            **_tma_meta(cfg),
            INTERPRET=INTERPRET,
            num_warps=cfg.warps,
            num_stages=cfg.stages,
        )


def _int8_mm_tma(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None,
    col_scale: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: TmaConfig,
    programs: int | None = None,
) -> torch.Tensor:
    """`int8_mm` through the TMA kernel with `config`, on any device (the interpreter's included).

    For tests and benchmarks; the caller sees to TMA's alignment (K % 16, N * out_itemsize % 16).
    `programs` caps the persistent grid (default: the multiprocessor count; 2 on the CPU).
    """
    c, args, flags = _prepare(a, b, row_scale, col_scale, out_dtype)
    if args is not None:
        _launch_tma(args, flags, programs or sm_count(a.device), config)
    return c


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.int32,
    config: tuple[int, int, int, int, int] | None = None,
    kernel: str = "tma",
) -> torch.Tensor:
    """Kernel version of `int8_mm_reference`; `config` fixes the pointer kernel's tile.

    Without `config`, on the GPU: the TMA kernel, autotuned, where `kernel` is "tma" and the
    device (Hopper+), the shape and the alignment allow it; else (`kernel="pointer"` too) the
    pointer kernel, autotuned on the first eager call of each shape and launched with that tile
    afterwards.
    """
    check_kernel(kernel)
    c, args, flags = _prepare(a, b, row_scale, col_scale, out_dtype)
    if args is None:
        return c
    M, K = a.shape
    N = b.shape[0]
    if config is None and a.device.type == "cuda" and not INTERPRET:
        if programs := _use_tma(a, b, c, kernel):
            _launch_tma(args, flags, programs, None)
            return c
        traced = tracing()  # Inductor then autotunes the kernel itself
        key = (bucket(M), N, K, tuple(sorted(flags.items())), out_dtype)
        config = None if traced else _TUNED.get(key)
        if config is None:
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
            launch(_int8_mm_autotuned)[grid](*args, M, N, bucket(M), K, **flags, INTERPRET=False)
            if not traced:
                _TUNED[key] = _tile(_int8_mm_autotuned.best_config)
            return c
    bm, bn, bk, warps, stages = config or INTERPRETER_CONFIG
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    launch(_int8_mm_kernel)[grid](
        *args,
        M,
        N,
        bucket(M),
        K,
        **flags,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=GROUP_M,
        INTERPRET=INTERPRET,
        num_warps=warps,
        num_stages=stages,
    )
    return c
