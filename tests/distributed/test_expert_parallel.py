"""Expert parallelism on 2 CPU processes (gloo): the dispatch against one process's MoE layer,
and MoE training with experts sharded over the ranks against the single-process run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import bittern
from bittern.checkpoint import latest_checkpoint
from bittern.checkpoint.sharded import is_sharded
from bittern.errors import BitternError
from bittern.monitor import read_metrics
from bittern.train import Trainer, train
from tests.distributed.test_distributed import config, losses, torchrun  # noqa: F401
from tests.distributed.test_moe_distributed import MOE, assert_close_losses, router_metrics

# Each rank runs its own tokens through an expert-parallel MoE layer; one process (the same
# layer, all experts, the loop path) runs every rank's tokens. Rank 1 routes nothing to rank 0's
# experts when skewed (empty all-to-all splits) and expert 3 gets rank 1's tokens only.
DISPATCH = """
import sys
import torch, torch.distributed as dist
from bittern.distributed.expert_parallel import expert_parameters, shard_experts
from bittern.models import ModelConfig
from bittern.models.moe import MoE, active_params
from bittern.models.transformer import FeedForward

skewed = sys.argv[1] == "skewed"
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = ModelConfig(
    preset="tiny", vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32, max_seq_len=16,
    moe_experts=4, moe_top_k=2, moe_ffn_dim=8, moe_balance="bias",
).resolved()

def layer():
    torch.manual_seed(0)
    return MoE(cfg, "mlp", lambda name, width: FeedForward(cfg, name, width))

biases = [torch.zeros(4)] * 2
if skewed:
    biases = [torch.tensor([0.0, 0, 0, -10]), torch.tensor([-10.0, -10, 0, 0])]


def rows(r, seed):  # rank r has 5 + 3r tokens
    return torch.randn(5 + 3 * r, 16, generator=torch.Generator().manual_seed(seed))

tokens, targets = [rows(r, r) for r in range(world)], [rows(r, 10 + r) for r in range(world)]

ref = layer()
ref.expert_path = "loop"
ref_x = [t.clone().requires_grad_() for t in tokens]
ref_y = []
for r in range(world):
    ref.expert_bias.copy_(biases[r])
    ref_y.append(ref(ref_x[r]))
(sum((y * t).sum() for y, t in zip(ref_y, targets)) / world).backward()  # the mean of the ranks' losses

ep = layer()
names = shard_experts(ep, rank, world)
ep.expert_bias.copy_(biases[rank])
x = tokens[rank].clone().requires_grad_()
y = ep(x)
(y * targets[rank]).sum().backward()

local = [str(e) for e in range(4)][rank * 2 : rank * 2 + 2]
assert [n for n, _ in ep.experts.named_children()] == local, list(ep.experts.named_children())
assert all(n.startswith(tuple(f"experts.{e}." for e in local)) for n in names), names
assert len(expert_parameters(ep)) == len(list(ep.experts.parameters())) > 0
assert active_params(ep) == active_params(ref)  # what MFU counts, from the experts held
torch.testing.assert_close(y, ref_y[rank], rtol=1e-5, atol=1e-6)
torch.testing.assert_close(x.grad, ref_x[rank].grad * world, rtol=1e-5, atol=1e-6)
ref_params = dict(ref.named_parameters())
for name, p in ep.named_parameters():
    g = p.grad
    if not name.startswith("experts."):  # replicated: DDP's mean over ranks
        dist.all_reduce(g)
        g = g / world
    torch.testing.assert_close(g, ref_params[name].grad, rtol=1e-5, atol=1e-6, msg=name)
dist.destroy_process_group()
print("ok", rank)
"""


@pytest.mark.parametrize("routing", ["even", "skewed"])
def test_dispatch_and_combine_equal_one_process(routing, tmp_path):
    script = tmp_path / "dispatch.py"
    script.write_text(DISPATCH)
    proc = torchrun([routing], str(script), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok") == 2


# Each rank writes which experts its model holds once the trainer is set up.
HOLDER = """
import json, sys
from bittern.cli import main
from bittern.train.trainer import Trainer
real_init = Trainer.__init__
def init(self, *a, **k):
    real_init(self, *a, **k)
    names = [n for n, _ in self.model.named_parameters() if ".experts." in n]
    held = sorted({n.split(".experts.")[1].split(".")[0] for n in names})
    (self.out / f"experts_rank{self.rank}.json").write_text(json.dumps(held))
Trainer.__init__ = init
sys.exit(main(sys.argv[1:]))
"""


def optimizer_state(cfg, run) -> dict[str, dict]:
    """The optimizer state a one-process resume of `run` restores, by parameter name."""
    trainer = Trainer(cfg, run, resume=True, progress=False)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    state = {names[id(p)]: dict(s) for p, s in trainer.optimizer.state.items()}
    trainer.close()
    return state


def grad_norms(run) -> dict[int, float]:
    return {r["step"]: r["grad_norm"] for r in read_metrics(run / "metrics.jsonl") if "grad_norm" in r}


# 8 steps on 2 ranks with expert parallelism, checkpoints at 4 and 8
EP_RUN = {
    "model": MOE,
    "train": {"micro_batch_size": 2, "steps": 8, "eval_every": 0},
    "checkpoint": {"every": 4},
    "dist": {"mode": "ddp", "expert_parallel": True},
}


def test_expert_parallel_training_equals_single_process(tiny_config, config, tmp_path):  # noqa: F811
    cfg = EP_RUN
    single, two = tmp_path / "single", tmp_path / "two"
    train(tiny_config(**cfg), single, progress=False)
    toml, holder = config(**cfg), tmp_path / "holder.py"
    holder.write_text(HOLDER)
    proc = torchrun(["train", "--config", toml, "--out", str(two), "--quiet"], script=str(holder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = [json.loads((two / f"experts_rank{r}.json").read_text()) for r in (0, 1)]
    assert held == [["0", "1"], ["2", "3"]]  # each rank holds its half of every layer's experts
    assert_close_losses(losses(two), losses(single))
    # the clipped norm counts every expert once, wherever it lives
    for step, norm in grad_norms(single).items():
        if step <= 3:
            assert grad_norms(two)[step] == pytest.approx(norm, rel=1e-5), step
    one_loads, two_loads = router_metrics(single), router_metrics(two)
    assert one_loads.keys() == two_loads.keys() and one_loads
    for key, value in one_loads.items():
        if key[0] <= 3:
            assert two_loads[key] == pytest.approx(value, abs=1e-6), key
    # saved by 2 ranks, each its own experts (DCP); read back whole in 1 process
    assert is_sharded(latest_checkpoint(two))
    # step 4's weights: routing choices amplify the float-order drift past it (measured: within
    # 6.7e-5 at step 4, 1.7e-3 at step 8 on the test corpus)
    at_one, _ = bittern.load(single / "checkpoints" / "step_00000004")
    at_two, _ = bittern.load(two / "checkpoints" / "step_00000004")
    for (name, p), (other, q) in zip(at_one.state_dict().items(), at_two.state_dict().items(), strict=True):
        assert name == other
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-4, msg=name)
    # resumed on 2 ranks from step 4, it retraces the run exactly (optimizer and RNG restored)
    straight = losses(two)
    shutil.rmtree(latest_checkpoint(two))
    proc = torchrun(["train", "--config", toml, "--out", str(two), "--resume", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(two) == straight
    # ... and in 1 process, every expert's optimizer state is back too (float summation order apart;
    # at step 4, before routing amplifies it)
    for run in (single, two):
        shutil.rmtree(latest_checkpoint(run))
    one_state, two_state = (
        optimizer_state(tiny_config(**cfg), single),
        optimizer_state(tiny_config(**cfg), two),
    )
    assert one_state.keys() == two_state.keys() and any(".experts." in n for n in one_state)
    for name, state in one_state.items():
        for key, value in state.items():
            torch.testing.assert_close(two_state[name][key], value, atol=1e-4, rtol=1e-4, msg=(name, key))


# Each rank writes the weights and optimizer state it restored, by name.
RESTORED = """
import sys
import torch
from bittern.cli import main
from bittern.train.trainer import Trainer
real_init = Trainer.__init__
def init(self, *a, **k):
    real_init(self, *a, **k)
    names = {id(p): n for n, p in self.model.named_parameters()}
    optim = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in self.optimizer.state.items()}
    model = {k: v.clone() for k, v in self.model.state_dict().items()}
    state = {"model": model, "optim": optim, "params": list(names.values())}
    torch.save(state, str(self.out / f"restored_rank{self.rank}.pt"))
Trainer.__init__ = init
sys.exit(main(sys.argv[1:]))
"""


def test_one_process_checkpoint_resumes_expert_parallel(tiny_config, config, tmp_path):  # noqa: F811
    cfg = EP_RUN
    run, script = tmp_path / "run", tmp_path / "restored.py"
    trainer = Trainer(tiny_config(**cfg), run, progress=False)
    trainer.run(until=4)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    saved_optim = {names[id(p)]: s for p, s in trainer.optimizer.state.items()}
    saved = trainer.model.state_dict()
    trainer.close()
    script.write_text(RESTORED)
    proc = torchrun(
        ["train", "--config", config(**cfg), "--out", str(run), "--resume", "--quiet"], str(script)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank, held in ((0, ("0", "1")), (1, ("2", "3"))):
        restored = torch.load(run / f"restored_rank{rank}.pt")
        experts = {k.split(".experts.")[1].split(".")[0] for k in restored["model"] if ".experts." in k}
        assert experts == set(held)
        assert restored["model"].keys() <= saved.keys()
        for name, tensor in restored["model"].items():  # every tensor this rank holds, exactly as saved
            assert torch.equal(tensor, saved[name]), (rank, name)
        assert restored["optim"].keys() == set(restored["params"])  # the state of every parameter held
        for name, state in restored["optim"].items():
            for key, value in state.items():
                assert torch.equal(value, saved_optim[name][key]), (rank, name, key)
    assert max(losses(run)) == 8


@pytest.mark.parametrize(
    ("dist", "model", "message"),
    [
        ({"mode": "fsdp", "expert_parallel": True}, MOE, "needs dist.mode = 'ddp'"),
        ({"expert_parallel": True}, {}, "needs a mixture-of-experts model"),
    ],
)
def test_expert_parallel_refuses_what_it_cannot_do(dist, model, message, tiny_config, tmp_path):
    with pytest.raises(BitternError, match=message):
        Trainer(tiny_config(dist=dist, model=model), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
