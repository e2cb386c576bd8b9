"""Sweep of int8 GEMM kernels against cuBLAS bf16: can a Triton int8 kernel reach 1.5x bf16 on Hopper?

C = (A @ B^T) * col[n] / row[m] in bfloat16, A (M, K) int8 activation codes, B (N, K) int8 ternary
codes, both K-contiguous (the BitLinear forward). For each shape (M = tokens, N = out_features,
K = in_features of the 1B model's linears) this times, with triton.testing.do_bench (median, L2
flushed between repeats):

1. cuBLAS bf16 `a @ b.t()`, the baseline every ratio is taken against;
2. cuBLAS int8 `torch._int_mm` (int32 out), alone and with the rescale done afterwards in PyTorch;
3. `bittern.kernels.int8_mm.int8_mm` (pointer loads, one program per tile), autotuned and with each
   of its GPU_CONFIGS forced, plus a wider set of tiles (BLOCK_K 256, more stages, 64..256 tiles);
4. a Hopper-style variant defined here: a persistent kernel whose loads (and optionally stores) go
   through TMA tensor descriptors (`tl.make_tensor_descriptor`, or host-side TensorDescriptor), with
   the same fused epilogue, over a few tiles, epilogue subtiling, loop flattening and
   `tl.range(..., warp_specialize=True)` variants.

Every kernel's first output is checked against an exact reference (int64-exact product via a
float64 GEMM, then the rescale of `int8_mm_reference`); a config that fails to compile, runs out of
shared memory or gives a wrong answer is recorded as such and the sweep goes on. A table per shape
goes to stdout, everything (with the best correct fused int8 kernel per shape and its ratio to bf16)
to --out as JSON, rewritten after every shape so that a crash keeps what was measured.

    PYTHONPATH=. python benchmarks/int8_gemm_sweep.py --out results.json

Needs a CUDA GPU (the TMA variant needs sm_90+); without one it exits with code 2. The TMA kernel
itself also runs under TRITON_INTERPRET=1 on CPU tensors (tests/kernels/test_int8_gemm_sweep.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from bittern.kernels.common import INTERPRET, round_to
from bittern.kernels.int8_mm import GPU_CONFIGS, int8_mm, int8_mm_reference

# (M, N, K): 4 x 2048 tokens through q/o, gate/up, down and k/v projections, then 8 x 2048 tokens
SHAPES = [(8192, 2048, 2048), (8192, 5632, 2048), (8192, 2048, 5632), (8192, 256, 2048), (16384, 2048, 2048)]
TARGET_RATIO = 1.5  # the int8 speed-up over cuBLAS bf16 we are looking for

# More tiles for the existing pointer-load kernel (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages);
# shared memory is (BLOCK_M + BLOCK_N) * BLOCK_K bytes per stage, 227 KB at most on Hopper.
EXTRA_CONFIGS = (
    (128, 256, 128, 8, 4),  # 192 KB
    (256, 128, 128, 8, 4),  # 192 KB
    (128, 256, 64, 8, 5),  # 120 KB
    (128, 128, 256, 8, 3),  # 192 KB
    (128, 256, 256, 8, 2),  # 192 KB
    (128, 128, 128, 4, 5),  # 160 KB, one warpgroup
    (64, 128, 256, 4, 4),  # 192 KB, many small tiles for N = 256
    (128, 64, 256, 4, 4),  # 192 KB
)


@dataclass(frozen=True)
class TmaConfig:
    """One launch of the TMA kernel: tile, warps, pipeline stages and the structural switches."""

    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int
    subtile: bool = False  # store the tile as two BLOCK_N / 2 halves (half the epilogue's smem)
    ws: bool = False  # tl.range(..., warp_specialize=True) on the tile loop (see TMA_CONFIGS)
    host_desc: bool = False  # descriptors built on the host (TensorDescriptor) instead of in-kernel
    tma_store: bool = True  # the output through a TMA descriptor, else masked pointer stores
    persistent: bool = True  # min(#SMs, #tiles) programs looping over tiles, else one per tile
    flatten: bool = True  # tl.range(..., flatten=True): pipeline across the tile boundary

    def label(self) -> str:
        base = f"{self.block_m}x{self.block_n}x{self.block_k} w{self.warps} s{self.stages}"
        flags = [
            name
            for name, on in [
                ("subtile", self.subtile),
                ("ws", self.ws),
                ("hostdesc", self.host_desc),
                ("ptrstore", not self.tma_store),
                ("1tile/prog", not self.persistent),
                ("noflatten", not self.flatten),
            ]
            if on
        ]
        return " ".join([base, *flags])


# TMA-kernel shared memory: stages * (BLOCK_M + BLOCK_N) * BLOCK_K + the bf16 output tile (or half).
# Compiled offline for sm_90 with Triton 3.6 (ptxas of the wheel), all of these fit (at most 225 KB)
# and none spills. Warp specialization on Hopper: the compiler applies it only to a loop that is not
# flattened and with num_warps=4 (which it turns into 12 warps: a TMA producer warpgroup and two
# consumer warpgroups sharing the tile); with flatten=True or num_warps=8 it silently does nothing,
# and with the subtiled epilogue or host-side descriptors its pass crashes (so those are left out).
TMA_CONFIGS = (
    TmaConfig(128, 256, 128, 8, 3),  # 144 + 64 KB
    TmaConfig(128, 256, 128, 8, 3, subtile=True),  # 144 + 32 KB
    TmaConfig(128, 256, 128, 8, 4, subtile=True),  # 192 + 32 KB: at the limit
    TmaConfig(256, 128, 128, 8, 3, subtile=True),  # 144 + 32 KB
    TmaConfig(128, 128, 128, 8, 4),  # 128 + 32 KB
    TmaConfig(128, 128, 256, 8, 3, subtile=True),  # 192 + 16 KB
    TmaConfig(128, 256, 64, 8, 5, subtile=True),  # 120 + 32 KB
    TmaConfig(64, 256, 128, 4, 4, subtile=True),  # 160 + 16 KB: more tiles for N = 256
    TmaConfig(128, 256, 128, 8, 3, host_desc=True),
    TmaConfig(128, 256, 128, 8, 3, tma_store=False),
    TmaConfig(128, 256, 128, 8, 3, persistent=False),
    TmaConfig(128, 256, 128, 8, 4, subtile=True, flatten=False),
    # warp-specialized: num_warps is per partition (12 warps in all)
    TmaConfig(128, 256, 128, 4, 3, ws=True, flatten=False),  # 144 + 64 KB
    TmaConfig(256, 128, 128, 4, 3, ws=True, flatten=False),
    TmaConfig(128, 256, 64, 4, 6, ws=True, flatten=False),  # 144 + 64 KB
    TmaConfig(128, 128, 128, 4, 4, ws=True, flatten=False),
    TmaConfig(128, 128, 256, 4, 3, ws=True, flatten=False),  # 192 + 32 KB
    TmaConfig(128, 256, 128, 4, 4, ws=True, flatten=False, tma_store=False),  # 192 KB + layout scratch
    TmaConfig(128, 256, 128, 4, 3, ws=True, flatten=False, persistent=False),
    TmaConfig(64, 256, 128, 4, 4, ws=True, flatten=False),  # for N = 256
)
TMA_GROUP_M = 8
DEVICE = "cuda"  # the sweep's device; only a dry run of this script's logic sets it to "cpu"

# ---- the TMA persistent kernel -----------------------------------------------------------


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
def _epilogue(
    acc,
    c_desc,
    C,
    ROW,
    COL,
    off_m,
    off_n,
    M,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TMA_STORE: tl.constexpr,
    SUBTILE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """acc * col[n] / row[m] rounded to bfloat16 (as int8_mm_reference), stored at (off_m, off_n)."""
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    col = tl.load(COL + offs_n, mask=offs_n < N, other=0.0)
    row = tl.load(ROW + offs_m, mask=offs_m < M, other=1.0)
    c = tl.math.div_rn(acc.to(tl.float32) * col[None, :], row[:, None])
    if TMA_STORE:  # the descriptor clips the rows and columns past the end
        if SUBTILE:
            halves = tl.permute(tl.reshape(c, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            c0, c1 = tl.split(halves)
            c_desc.store([off_m, off_n], round_to(c0, tl.bfloat16, INTERPRET))
            c_desc.store([off_m, off_n + BLOCK_N // 2], round_to(c1, tl.bfloat16, INTERPRET))
        else:
            c_desc.store([off_m, off_n], round_to(c, tl.bfloat16, INTERPRET))
    else:
        c_ptrs = C + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        tl.store(c_ptrs, round_to(c, tl.bfloat16, INTERPRET), mask=mask)


@triton.jit(do_not_specialize=["NUM_PROGRAMS"])
def _int8_mm_tma_kernel(
    A,
    B,
    C,
    ROW,
    COL,
    A_DESC,
    B_DESC,
    C_DESC,
    M,
    N,
    K,
    NUM_PROGRAMS,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    HOST_DESC: tl.constexpr,
    TMA_STORE: tl.constexpr,
    SUBTILE: tl.constexpr,
    FLATTEN: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Persistent int8 GEMM with TMA loads: program p computes tiles p, p + NUM_PROGRAMS, ...

    A (M, K) and B (N, K) are read through tensor descriptors (zero padding past the ends); the
    int32 accumulator gets the fused rescale of `_epilogue`. Under the interpreter the loops are
    while loops (its `range` cannot take a run-time bound under numpy 2); the body is the same.
    """
    if HOST_DESC:
        a_desc = A_DESC
        b_desc = B_DESC
        c_desc = C_DESC
    else:
        a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
        b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
        c_desc = C_DESC  # None unless stored through TMA
        if TMA_STORE:
            c_desc = tl.make_tensor_descriptor(
                C, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N // 2 if SUBTILE else BLOCK_N]
            )
    start = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_m * num_n
    k_tiles = tl.cdiv(K, BLOCK_K)

    if INTERPRET:
        tile_id = start
        while tile_id < num_tiles:
            off_m, off_n = _tile_offsets(tile_id, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            ki = 0
            while ki < k_tiles:
                a = a_desc.load([off_m, ki * BLOCK_K])
                b = b_desc.load([off_n, ki * BLOCK_K])
                acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
                ki += 1
            _epilogue(
                acc, c_desc, C, ROW, COL, off_m, off_n, M, N, BLOCK_M, BLOCK_N, TMA_STORE, SUBTILE, True
            )
            tile_id += NUM_PROGRAMS
    else:
        # the epilogue recomputes its tile from its own counter, as Triton's persistent-matmul
        # tutorial does, so that the flattened, pipelined loop keeps prologue and epilogue apart
        tile_id_c = start - NUM_PROGRAMS
        for tile_id in tl.range(
            start, num_tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE
        ):
            off_m, off_n = _tile_offsets(tile_id, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            for ki in range(k_tiles):
                a = a_desc.load([off_m, ki * BLOCK_K])
                b = b_desc.load([off_n, ki * BLOCK_K])
                acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
            tile_id_c += NUM_PROGRAMS
            off_m_c, off_n_c = _tile_offsets(tile_id_c, num_m, num_n, BLOCK_M, BLOCK_N, GROUP_M)
            _epilogue(
                acc, c_desc, C, ROW, COL, off_m_c, off_n_c, M, N, BLOCK_M, BLOCK_N, TMA_STORE, SUBTILE, False
            )


_ALLOCATOR_DEVICE: list[torch.device] = []


def _ensure_allocator(device: torch.device) -> None:
    """In-kernel descriptors need a global-memory scratch buffer per launch: let torch allocate it."""
    if _ALLOCATOR_DEVICE != [device]:
        triton.set_allocator(
            lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device)
        )
        _ALLOCATOR_DEVICE[:] = [device]


def tma_int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    cfg: TmaConfig,
    num_sms: int | None = None,
) -> torch.Tensor:
    """(a @ b^T) * col_scale[n] / row_scale[m] in bfloat16 through `_int8_mm_tma_kernel`.

    a (M, K) and b (N, K) contiguous int8; row_scale (M,) and col_scale (N,) float32. TMA needs
    16-byte aligned rows: K a multiple of 16 and N of 8. `num_sms` caps the persistent grid
    (default: the device's multiprocessor count; on the CPU, for the interpreter, 3).
    """
    assert a.dtype == b.dtype == torch.int8 and a.is_contiguous() and b.is_contiguous()
    (M, K), (N, K2) = a.shape, b.shape
    assert K == K2 and K % 16 == 0 and N % 8 == 0, f"TMA needs K % 16 == 0 and N % 8 == 0, got N={N}, K={K}"
    assert row_scale.shape == (M,) and col_scale.shape == (N,)
    c = torch.empty((M, N), dtype=torch.bfloat16, device=a.device)
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    num_tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    if num_sms is None:
        num_sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 3
    programs = min(num_sms, num_tiles) if cfg.persistent else num_tiles
    descs = (None, None, None)
    if cfg.host_desc:
        c_block = [bm, bn // 2 if cfg.subtile else bn]
        descs = (
            TensorDescriptor(a, [M, K], [K, 1], [bm, bk]),
            TensorDescriptor(b, [N, K], [K, 1], [bn, bk]),
            TensorDescriptor(c, [M, N], [N, 1], c_block) if cfg.tma_store else None,
        )
    else:
        _ensure_allocator(a.device)
    _int8_mm_tma_kernel[(programs,)](
        a,
        b,
        c,
        row_scale,
        col_scale,
        *descs,
        M,
        N,
        K,
        programs,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=TMA_GROUP_M,
        HOST_DESC=cfg.host_desc,
        TMA_STORE=cfg.tma_store,
        SUBTILE=cfg.subtile,
        FLATTEN=cfg.flatten,
        WARP_SPECIALIZE=cfg.ws,
        INTERPRET=INTERPRET,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
    )
    return c


# ---- measurement ---------------------------------------------------------------------------


class FatalCudaError(RuntimeError):
    """The CUDA context is broken (a kernel faulted): nothing after this can be trusted."""


def _short(err: BaseException, limit: int = 300) -> str:
    """One line naming an exception, at most `limit` characters."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:limit]


def _is_fatal(err: BaseException) -> bool:
    text = str(err).lower()
    return any(
        s in text for s in ("illegal memory access", "unspecified launch failure", "misaligned address")
    )


def reference(a: torch.Tensor, b: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> tuple:
    """(exact int32 product, rescaled bfloat16 product) as `int8_mm_reference` computes them.

    On the GPU the product is a float64 GEMM (exact: every partial sum is an integer below 2**53,
    and CUDA has no int64 matmul); the rescale is the reference's, in float32.
    """
    if not a.is_cuda:
        acc = a.long() @ b.long().t()
        return acc.int(), int8_mm_reference(a, b, row, col, torch.bfloat16)
    acc = (a.double() @ b.double().t()).long()
    scaled = (acc.float() * col / row[:, None]).to(torch.bfloat16)
    return acc.int(), scaled


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """'ok' when bit-identical to the reference, else the mismatch count and largest error."""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return {"check": f"bad output {tuple(out.shape)} {out.dtype}"}
    if torch.equal(out, ref):
        return {"check": "ok", "max_abs_err": 0.0}
    diff = (out.double() - ref.double()).abs()
    diff[torch.isnan(diff)] = float("inf")
    rel = float(diff.max() / ref.double().abs().max().clamp(min=1e-30))
    return {
        "check": "mismatch",
        "max_abs_err": float(diff.max()),
        "max_rel_err": rel,
        "mismatches": int((diff > 0).sum()),
    }


def poison(shape: tuple[int, int], dtype: torch.dtype, device: str) -> None:
    """Fill the block the caching allocator will most likely hand out next (NaN / int minimum), so
    that a kernel that writes nothing cannot pass by finding an earlier kernel's correct output."""
    t = torch.empty(shape, dtype=dtype, device=device)
    t.fill_(float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min)
    del t


def measure(
    fn: Callable[[], torch.Tensor],
    check: Callable[[torch.Tensor], dict],
    out_spec: tuple,
    warmup_ms: int,
    rep_ms: int,
) -> dict:
    """Run fn once (compile + check), then time it; failures become an 'error' string."""
    from triton.testing import do_bench

    start = time.perf_counter()
    try:
        poison(*out_spec)
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        result = {"first_call_s": round(time.perf_counter() - start, 3), **check(out)}
        del out
        result["ms"] = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    except Exception as err:  # a config that does not compile or fit is a result, not a crash
        if _is_fatal(err):
            raise FatalCudaError(_short(err)) from err
        return {"error": _short(err), "first_call_s": round(time.perf_counter() - start, 3)}
    return result


def sweep_shape(M: int, N: int, K: int, args, deadline: float) -> dict:
    """Every kernel and config on one shape: a list of result rows plus the best int8 config."""
    dev = DEVICE
    gen = torch.Generator(device=dev).manual_seed(M * 31 + N * 7 + K)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=dev, generator=gen)
    b = torch.randint(-1, 2, (N, K), dtype=torch.int8, device=dev, generator=gen)  # ternary codes
    row = torch.rand(M, device=dev, generator=gen) * 100 + 1  # s_x
    col = torch.rand(N, device=dev, generator=gen) * 0.1 + 1e-3  # gamma, per output feature
    a_bf = torch.randn(M, K, device=dev, generator=gen, dtype=torch.bfloat16)
    b_bf = torch.randn(N, K, device=dev, generator=gen, dtype=torch.bfloat16)
    ref_int, ref_bf16 = reference(a, b, row, col)
    ref_float = (a_bf.double() @ b_bf.double().t()).float()

    def check_bf16_gemm(out):
        err = (out.float() - ref_float).norm() / ref_float.norm()
        return {
            "check": f"rel_err {float(err):.1e}",
            "max_abs_err": float((out.float() - ref_float).abs().max()),
        }

    def check_int(out):
        return compare(out, ref_int)

    def check_scaled(out):
        return compare(out, ref_bf16)

    try:
        torch._int_mm(a, b.t())
        b_kn = b.t()  # column-major (K, N) view: cuBLASLt takes it as is
    except RuntimeError:
        b_kn = b.t().contiguous()

    jobs: list[tuple[str, str, bool, Callable, Callable, torch.dtype]] = [
        ("cublas_bf16", "a @ b.t()", False, lambda: a_bf @ b_bf.t(), check_bf16_gemm, torch.bfloat16),
        ("torch._int_mm", "int32 out", False, lambda: torch._int_mm(a, b_kn), check_int, torch.int32),
        (
            "torch._int_mm+scale",
            "unfused rescale",
            False,
            lambda: (torch._int_mm(a, b_kn).float() * col / row[:, None]).to(torch.bfloat16),
            check_scaled,
            torch.bfloat16,
        ),
        (
            "int8_mm",
            "autotuned",
            True,
            lambda: int8_mm(a, b, row, col, torch.bfloat16),
            check_scaled,
            torch.bfloat16,
        ),
    ]
    for cfg in GPU_CONFIGS:
        fn = lambda cfg=cfg: int8_mm(a, b, row, col, torch.bfloat16, config=cfg)
        jobs.append(("int8_mm", _ptr_label(cfg, "GPU_CONFIGS"), True, fn, check_scaled, torch.bfloat16))
    tma_ok = dev != "cuda" or torch.cuda.get_device_capability()[0] >= 9
    for cfg in TMA_CONFIGS:
        fn = lambda cfg=cfg: tma_int8_mm(a, b, row, col, cfg)
        jobs.append(
            ("tma_persistent", cfg.label(), True, fn if tma_ok else None, check_scaled, torch.bfloat16)
        )
    for cfg in EXTRA_CONFIGS:
        fn = lambda cfg=cfg: int8_mm(a, b, row, col, torch.bfloat16, config=cfg)
        jobs.append(("int8_mm", _ptr_label(cfg, "extra"), True, fn, check_scaled, torch.bfloat16))

    ops = 2 * M * N * K
    rows = []
    fatal = None
    for kernel, config, fused, fn, check, out_dtype in jobs:
        row_out = {"kernel": kernel, "config": config, "fused_epilogue": fused}
        if fatal:
            row_out["error"] = "skipped: CUDA context lost"
        elif fn is None:
            row_out["error"] = "skipped: TMA needs compute capability 9.0+"
        elif time.perf_counter() > deadline:
            row_out["error"] = "skipped: time budget spent (--budget-s)"
        else:
            try:
                row_out.update(measure(fn, check, ((M, N), out_dtype, dev), args.warmup_ms, args.rep_ms))
            except FatalCudaError as err:
                fatal = row_out["error"] = f"fatal: {err}"
        if "ms" in row_out:
            row_out["tops"] = ops / (row_out["ms"] * 1e-3) / 1e12
        rows.append(row_out)

    base = rows[0].get("ms")
    for r in rows:
        if "ms" in r and base:
            r["ratio_vs_bf16"] = base / r["ms"]
    good = [r for r in rows if r.get("check") == "ok" and "ms" in r]
    fused = [r for r in good if r["fused_epilogue"]]
    pick = lambda rs: min(rs, key=lambda r: r["ms"]) if rs else None
    summary = lambda r: (
        {k: r.get(k) for k in ("kernel", "config", "ms", "tops", "ratio_vs_bf16")} if r else None
    )
    return {
        "M": M,
        "N": N,
        "K": K,
        "gop": ops / 1e9,
        "bf16_ms": base,
        "best_int8": summary(pick(fused)),  # correct, with the rescale fused: what a BitLinear would use
        "best_int8_any": summary(pick([r for r in good if r["kernel"] != "cublas_bf16"])),
        "fatal_error": fatal,
        "results": rows,
    }


def _ptr_label(cfg: tuple, origin: str) -> str:
    bm, bn, bk, warps, stages = cfg
    return f"{bm}x{bn}x{bk} w{warps} s{stages} ({origin})"


def print_table(shape: dict) -> None:
    """One line per kernel/config: ms, T(FL)OP/s, speed-up over cuBLAS bf16, check or error."""
    print(f"\nM={shape['M']} N={shape['N']} K={shape['K']}  ({shape['gop']:.1f} GOP)")
    print(f"{'kernel':<20} {'config':<44} {'ms':>8} {'TOP/s':>7} {'x bf16':>7}  check")
    for r in shape["results"]:
        if "ms" in r:
            nums = f"{r['ms']:>8.4f} {r['tops']:>7.0f} {r.get('ratio_vs_bf16', float('nan')):>7.2f}"
            note = r.get("check", "")
            if r.get("check") == "mismatch":
                note += f" ({r['mismatches']} differ, max abs {r['max_abs_err']:.3g})"
        else:
            nums = f"{'-':>8} {'-':>7} {'-':>7}"
            note = r.get("error", "")[:120]
        print(f"{r['kernel']:<20} {r['config']:<44} {nums}  {note}")
    best = shape["best_int8"]
    if best:
        print(f"best fused int8: {best['kernel']} {best['config']}: {_ratio(best)} cuBLAS bf16")


def _ratio(best: dict) -> str:
    """'1.23x', or '?x' where cuBLAS bf16 itself failed."""
    return f"{best['ratio_vs_bf16']:.2f}x" if best.get("ratio_vs_bf16") else "?x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="int8_gemm_sweep.json", help="JSON results file")
    parser.add_argument("--shapes", nargs="*", help="subset of shapes as MxNxK (default: all five)")
    parser.add_argument("--budget-s", type=float, default=220.0, help="stop starting new kernels after this")
    parser.add_argument("--warmup-ms", type=int, default=15, help="do_bench warmup per kernel")
    parser.add_argument("--rep-ms", type=int, default=60, help="do_bench measuring time per kernel")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or INTERPRET:
        print(
            "int8_gemm_sweep: needs a CUDA GPU (and TRITON_INTERPRET unset); nothing measured.",
            file=sys.stderr,
        )
        return 2
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes] if args.shapes else SHAPES

    started = time.perf_counter()
    deadline = started + args.budget_s
    report = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "target_ratio": TARGET_RATIO,
        "timing": f"triton.testing.do_bench median, warmup {args.warmup_ms} ms, rep {args.rep_ms} ms",
        "shapes": [],
    }
    out = Path(args.out)
    fatal = None
    for M, N, K in shapes:
        shape = sweep_shape(M, N, K, args, deadline)
        report["shapes"].append(shape)
        print_table(shape)
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(report, indent=1))
        if shape["fatal_error"]:  # a kernel faulted: the CUDA context cannot run anything else
            fatal = shape["fatal_error"]
            print(f"\nCUDA context lost ({fatal}); stopping", file=sys.stderr)
            break

    report["fatal_error"] = fatal
    report["tma_configs"] = [asdict(c) for c in TMA_CONFIGS]
    report["summary"] = [
        {
            "shape": f"{s['M']}x{s['N']}x{s['K']}",
            "bf16_ms": s["bf16_ms"],
            "best_int8": s["best_int8"],
            "reaches_target": bool(s["best_int8"] and (s["best_int8"]["ratio_vs_bf16"] or 0) >= TARGET_RATIO),
        }
        for s in report["shapes"]
    ]
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nsummary (target {TARGET_RATIO}x cuBLAS bf16), {report['elapsed_s']} s in all:")
    for s in report["summary"]:
        best = s["best_int8"]
        text = f"{_ratio(best)} with {best['kernel']} {best['config']}" if best else "no correct int8"
        print(f"  {s['shape']:<18} {text}{'  <- target reached' if s['reaches_target'] else ''}")
    print(f"wrote {out}")
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
