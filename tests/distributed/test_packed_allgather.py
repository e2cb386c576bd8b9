"""dist.packed_all_gather: FSDP2 gathers ternary codes 2 bits each, and trains as the plain gather does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import bittern
from bittern.config import config_from_dict
from bittern.distributed.packed import (
    ShardScale,
    TernaryShard,
    install,
    pack_shard,
    pack_shard_per_channel,
    unpack_weight,
)
from bittern.errors import BitternError
from bittern.export.pack import pack_2bit_rows, unpack_2bit_rows
from bittern.nn import BitLinear
from bittern.quant.core import dequantize_weight, ternarize, ternary_codes, weight_scale
from bittern.train import Trainer, train
from tests.cli.test_cli import run_error, write_config
from tests.conftest import tiny_config_dict
from tests.distributed.test_distributed import losses, torchrun

# Trains each (config, out folder, resume) of argv[1] in turn in the same two processes. Each rank
# records what every packed weight hands FSDP2 to all-gather, and the weights a resumed run restored.
RUNNER = """
import faulthandler; faulthandler.dump_traceback_later(150, exit=True)
import json, sys, tomllib
from pathlib import Path
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from bittern.config import config_from_dict
from bittern.distributed.packed import TernaryShard
from bittern.train import Trainer

gathered = []
real = TernaryShard.fsdp_pre_all_gather
def spy(self, mesh, outer_size, outer_stride, module, mp_policy):
    inputs, meta = real(self, mesh, outer_size, outer_stride, module, mp_policy)
    gathered.append({"inputs": [[str(t.dtype), t.numel()] for t in inputs], "shard": self.numel(),
                     "shape": list(outer_size)})
    return inputs, meta
TernaryShard.fsdp_pre_all_gather = spy

trainers = []
for config, out, resume in json.loads(sys.argv[1]):
    cfg = config_from_dict(tomllib.loads(Path(config).read_text()))
    t = Trainer(cfg, Path(out), resume=resume, progress=False)
    if resume:
        sd = get_model_state_dict(t.wrapped, options=StateDictOptions(full_state_dict=True))
        torch.save({k: v.clone() for k, v in sd.items()}, Path(out) / f"restored_rank{t.rank}.pt")
    gathered.clear()
    t.run()
    (Path(out) / f"gathered_rank{t.rank}.json").write_text(json.dumps(gathered))
    t.forward = t.wrapped = None
    trainers.append(t)
trainers[-1].close()
"""
# lr 3e-4: the float-rounding gap (see test_packed_trains_as_plain_fsdp_and_one_process) stays near
# 1e-5 over 6 steps, where at 3e-3 Adam and the ternary rounding compound it to 1e-3.
RUN = {"train": {"device": "cpu", "micro_batch_size": 2, "steps": 6, "eval_every": 3}, "optim": {"lr": 3e-4}}
PACKED = {"dist": {"mode": "fsdp", "packed_all_gather": True}}
PLAIN = {"dist": {"mode": "fsdp"}}
CHANNEL = {"model": {"weight_granularity": "channel"}}


def config_dict(dataset, **sections) -> dict:
    """The tiny config with RUN's settings and `sections` on top."""
    merged = {k: dict(v) for k, v in RUN.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return tiny_config_dict(dataset, **merged)


def conf(dataset, tmp: Path, name: str, **sections) -> str:
    return write_config(tmp / f"{name}.toml", config_dict(dataset, **sections))


def launch(tmp: Path, runs: list[tuple[str, Path, bool]]) -> None:
    """RUNNER on 2 ranks over (config, out folder, resume) triples."""
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    proc = torchrun([json.dumps([[c, str(o), r] for c, o, r in runs])], script=str(script))
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(run: Path) -> dict[str, torch.Tensor]:
    model, _ = bittern.load(run)
    return model.state_dict()


# ---- the math, in one process -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (5, 7), (2, 13)])
def test_pack_rows_matches_plain_math(shape):
    g = torch.Generator().manual_seed(sum(shape))
    codes = torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)
    packed = pack_2bit_rows(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], -(-shape[1] // 4))
    for r, row in enumerate(codes.tolist()):
        row = row + [-1] * (-len(row) % 4)  # pad: stored 0
        expected = [
            sum((c + 1) << (2 * k) for k, c in enumerate(row[i : i + 4])) for i in range(0, len(row), 4)
        ]
        assert packed[r].tolist() == expected
    assert torch.equal(unpack_2bit_rows(packed, shape[1]), codes)


class _Owner:
    """What fsdp_pre_all_gather reads of the module (the sharded weight's version)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_shards_give_the_whole_weights_ternary_weight(granularity, dtype):
    w = torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    w[3] *= 5  # rows with very different scales: per channel, each keeps its own
    gamma = weight_scale(w, "tensor", gamma_multiplier=1.2)  # what pack_shards all-reduces
    owner = _Owner(torch.zeros(1))
    pieces, meta = [], None
    for shard in w.chunk(3):  # FSDP2 gives each of 3 ranks whole rows
        scale = ShardScale(granularity, 1.2, w.numel())
        scale.gamma = gamma
        scale.pack(shard, owner.weight._version)
        inputs, meta = TernaryShard(shard, scale).fsdp_pre_all_gather(None, w.shape, w.stride(), owner, None)
        assert inputs[0].dtype == torch.uint8 and inputs[0].shape == (4, 3)
        pieces.append(inputs)
    gathered = [torch.cat(p) for p in zip(*pieces, strict=True)]
    expected = dequantize_weight(*ternarize(w, granularity, gamma_multiplier=1.2)).to(dtype)
    weight, buffers = TernaryShard(w, scale).fsdp_post_all_gather(gathered, meta, dtype)
    assert weight.dtype == dtype and torch.equal(weight, expected) and buffers[0] is weight
    out = torch.nn.Parameter(torch.zeros_like(weight))
    assert TernaryShard(w, scale).fsdp_post_all_gather(gathered, meta, dtype, out=out) is None
    assert torch.equal(out, expected) and out._version == 0  # refilled in place, not a new version


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the packers are compiled on CUDA only")
@pytest.mark.parametrize("rows, cols", [(256, 2048), (96, 5632), (7, 130)])
def test_compiled_packers_equal_the_eager_math_on_cuda(rows, cols):
    g = torch.Generator(device="cuda").manual_seed(rows)
    w = torch.randn(rows, cols, device="cuda", generator=g) * torch.rand(rows, 1, device="cuda", generator=g)
    gamma = weight_scale(w, "tensor")
    assert torch.equal(pack_shard(w, gamma), pack_2bit_rows(ternary_codes(w, gamma)))
    packed, row_gamma = pack_shard_per_channel(w, 1.2)
    codes, expected_gamma = ternarize(w, "channel", gamma_multiplier=1.2)
    torch.testing.assert_close(row_gamma, expected_gamma, rtol=1e-6, atol=0)  # reduction order
    mismatched = (unpack_2bit_rows(packed, cols) != codes).sum().item()
    assert mismatched <= 1e-5 * codes.numel()  # only a value on a rounding boundary may differ
    for dtype in (torch.float32, torch.bfloat16):
        expected = dequantize_weight(unpack_2bit_rows(packed, cols), row_gamma).to(dtype)
        assert torch.equal(unpack_weight(packed, row_gamma, cols, dtype), expected)


def test_stale_or_missing_codes_are_refused():
    w = torch.nn.Parameter(torch.randn(4, 4))
    scale = ShardScale("tensor", 1.0, w.numel())
    with pytest.raises(RuntimeError, match="pack_shards"):  # never packed
        TernaryShard(w.detach(), scale).fsdp_pre_all_gather(None, w.shape, w.stride(), _Owner(w), None)
    scale.gamma = torch.tensor(1.0)
    scale.pack(w.detach(), w._version)
    TernaryShard(w.detach(), scale).fsdp_pre_all_gather(None, w.shape, w.stride(), _Owner(w), None)
    with torch.no_grad():
        w.add_(1.0)  # written after it was packed
    with pytest.raises(RuntimeError, match="pack_shards"):
        TernaryShard(w.detach(), scale).fsdp_pre_all_gather(None, w.shape, w.stride(), _Owner(w), None)


@pytest.mark.parametrize("fused", [False, True])
def test_shard_steps_and_saves_as_its_plain_tensor(fused, tmp_path):
    torch.manual_seed(0)
    plain = torch.nn.Parameter(torch.randn(8, 4))
    wrapped = torch.nn.Parameter(TernaryShard(plain.detach().clone(), ShardScale("tensor", 1.0, 32)))
    opts = [torch.optim.AdamW([p], lr=0.1, weight_decay=0.1, fused=fused or None) for p in (plain, wrapped)]
    for _ in range(3):
        for p, opt in zip((plain, wrapped), opts, strict=True):
            p.grad = torch.arange(32.0).reshape(8, 4).sin()
            opt.step()
    assert isinstance(wrapped.data, TernaryShard)
    assert torch.equal(wrapped.data._tensor, plain.detach())
    torch.save({"w": wrapped.detach()}, tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)["w"]  # what DCP writes: a plain tensor
    assert type(loaded) is torch.Tensor and torch.equal(loaded, plain.detach())


def test_install_refuses_what_it_cannot_pack():
    block = torch.nn.Sequential(BitLinear(8, 6), torch.nn.Linear(8, 6))
    with pytest.raises(BitternError, match="split evenly"):
        install(block, world=4)  # 6 rows over 4 ranks: FSDP2 would pad, the codes cannot follow
    with pytest.raises(BitternError, match="granularity 'group'"):
        install(torch.nn.Sequential(BitLinear(8, 8, granularity="group", group_size=4)), world=2)
    install(block, world=2)
    assert isinstance(block[0].weight.data, TernaryShard) and block[0].weight_prequantized
    assert type(block[1].weight.data) is torch.Tensor


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--dist.mode=ddp"], "needs dist.mode = 'fsdp'"),
        (["--model.weight_granularity=group", "--model.group_size=16"], "granularity"),
        (["--progressive.schedule=linear"], "progressive.schedule"),
        (["--init.strategy=layerwise"], "init.strategy"),
        (["--guard.plateau_patience=2"], "plateau_patience"),
    ],
)
def test_cli_refuses_settings_it_cannot_honour(overrides, message, capsys, dataset, tmp_path):
    path = conf(dataset, tmp_path, "c", **PACKED)
    argv = ["train", "--config", path, "--out", str(tmp_path / "run")]
    err = run_error(capsys, argv + overrides)
    assert "dist.packed_all_gather" in err and message in err


# ---- two ranks (gloo) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """The same 6 steps on one process, on 2 ranks with the plain FSDP2 gather and with the packed
    one; and per channel, on one process and packed."""
    tmp = tmp_path_factory.mktemp("packed")
    train(config_from_dict(config_dict(dataset, **PACKED)), tmp / "single", progress=False)
    train(config_from_dict(config_dict(dataset, **PACKED, **CHANNEL)), tmp / "single_channel", progress=False)
    plain, packed = conf(dataset, tmp, "plain", **PLAIN), conf(dataset, tmp, "packed", **PACKED)
    channel = conf(dataset, tmp, "packed_channel", **PACKED, **CHANNEL)
    launch(
        tmp,
        [
            (plain, tmp / "plain", False),
            (packed, tmp / "packed", False),
            (channel, tmp / "packed_channel", False),
        ],
    )
    return tmp


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_packed_trains_as_plain_fsdp_and_one_process(runs, granularity):
    # One process ignores the key (as it does dist.mode) and runs the reference layer. The packed
    # run is that run up to float rounding: gamma is summed shard by shard, and codes * gamma is
    # not bit for bit W + (codes * gamma - W). One ulp of a weight moves an int8 activation that
    # sits on a rounding boundary, about 1e-6 of the loss; steps compound it to about 1e-5.
    suffix = "_channel" if granularity == "channel" else ""
    single, packed = losses(runs / f"single{suffix}"), losses(runs / f"packed{suffix}")
    plain = single if suffix else losses(runs / "plain")  # the plain gather equals one process
    assert packed.keys() == single.keys() == set(range(1, 7))
    assert packed[1] == pytest.approx(single[1], rel=1e-6)
    for step in single:
        assert packed[step] == pytest.approx(single[step], rel=3e-5), step
        assert packed[step] == pytest.approx(plain[step], rel=3e-5), step
    # Adam moves a weight by about lr a step whatever the size of its gradient: where a gradient
    # is near zero that gap may flip its sign. Most weights agree to rounding, the rest within 2 lr a step.
    one = weights(runs / f"single{suffix}")  # the packed run's DCP checkpoint, read back on one process
    bound = 2 * RUN["optim"]["lr"] * RUN["train"]["steps"]
    for name, tensor in weights(runs / f"packed{suffix}").items():
        gap = (tensor - one[name]).abs()
        assert (gap > 1e-5).float().mean() < 0.05 and gap.max() <= bound, name


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_what_is_gathered_is_packed_codes(runs, granularity):
    model, _ = bittern.load(runs / "single")
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    shapes = {tuple(m.weight.shape) for m in layers}
    folder = runs / ("packed_channel" if granularity == "channel" else "packed")
    for rank in (0, 1):
        calls = json.loads((folder / f"gathered_rank{rank}.json").read_text())
        assert {tuple(c["shape"]) for c in calls} == shapes  # every BitLinear weight, ...
        assert len(calls) >= 6 * 2 * len(layers)  # ... on every micro-batch of every step
        for c in calls:  # a quarter byte per element (in_features % 4 == 0); per channel, a float per row
            codes = [["torch.uint8", c["shard"] // 4]]
            rows = [["torch.float32", c["shape"][0] // 2]] if granularity == "channel" else []
            assert c["inputs"] == codes + rows, c
        assert json.loads((runs / "plain" / f"gathered_rank{rank}.json").read_text()) == []


def test_checkpoints_round_trip_between_packed_and_plain(runs, dataset, tmp_path):
    at_6 = weights(runs / "packed")
    # the packed run's DCP checkpoint (step 6), resumed by one plain process: the same weights
    for name in ("packed", "mixed"):
        shutil.copytree(runs / "packed", tmp_path / name)
    one = Trainer(
        config_from_dict(config_dict(dataset, train={"steps": 9})),
        tmp_path / "mixed",
        resume=True,
        progress=False,
    )
    assert one.step == 6
    for name, tensor in one.model.state_dict().items():
        assert torch.equal(tensor, at_6[name]), name
    one.run()  # ... on to a single-file checkpoint at step 9
    one.close()
    at_9 = weights(tmp_path / "mixed")
    shutil.copytree(tmp_path / "mixed", tmp_path / "reference")
    # back on 2 packed ranks: the DCP step 6 itself, and the single-file step 9 (run on to 12)
    packed_7 = conf(dataset, tmp_path, "packed_7", train={"steps": 7}, **PACKED)
    packed_12 = conf(dataset, tmp_path, "packed_12", train={"steps": 12}, **PACKED)
    launch(tmp_path, [(packed_7, tmp_path / "packed", True), (packed_12, tmp_path / "mixed", True)])
    for rank in (0, 1):
        for run, expected in ((tmp_path / "packed", at_6), (tmp_path / "mixed", at_9)):
            restored = torch.load(run / f"restored_rank{rank}.pt")
            for name, tensor in expected.items():
                assert torch.equal(restored[name], tensor), (run.name, rank, name)
    # the forward right after a load runs on the loaded weights' gamma: steps 10-12 as one process
    reference = Trainer(
        config_from_dict(config_dict(dataset, train={"steps": 12})),
        tmp_path / "reference",
        resume=True,
        progress=False,
    )
    reference.run()
    reference.close()
    two, one = losses(tmp_path / "mixed"), losses(tmp_path / "reference")
    for step in (10, 11, 12):
        assert two[step] == pytest.approx(one[step], rel=3e-5), step
