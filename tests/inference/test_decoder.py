"""StaticDecoder and batched generation against `bittern.generate.sample`, and on-device sampling."""

import pytest
import torch

from bittern.generate import sample
from bittern.inference import Sampling, StaticDecoder, freeze, generate, next_token, plan
from bittern.models import ModelConfig, build_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]


def _model(arch="llama", n_kv=2, **kw):
    cfg = ModelConfig(
        preset="tiny",
        arch=arch,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=n_kv,
        ffn_dim=128,
        vocab_size=96,
        **kw,
    )
    torch.manual_seed(0)
    return build_model(cfg.resolved()).eval()


def _decode(model, prompts, n, **kw):
    _, _, need = plan(prompts, n, model.config.max_seq_len, kw.get("eos_id"))
    return generate(StaticDecoder(model, len(prompts), need), prompts, n, **kw)


@pytest.mark.parametrize(
    ("arch", "n_kv", "quant"),
    [("llama", 2, "ternary"), ("bitnet", 2, "ternary"), ("llama", 4, "none")],
)
def test_greedy_equals_sample_for_every_row(arch, n_kv, quant):
    model = _model(arch, n_kv, quant=quant, init_std=0.2)
    want = [sample(model, p, 12, temperature=0) for p in PROMPTS]
    got = _decode(model, PROMPTS, 12)
    assert got.tokens == want and got.steps == 12


def test_frozen_model_equals_sample_of_the_frozen_model():
    model = freeze(_model(init_std=0.2))
    want = [sample(model, p, 8, temperature=0) for p in PROMPTS[:2]]
    assert _decode(model, PROMPTS[:2], 8).tokens == want


def test_budget_and_eos_follow_sample():
    """Rows stop at eos (dropped) or the model's max_seq_len, as `sample` stops them."""
    model = _model(init_std=0.2, max_seq_len=16)
    full = [sample(model, p, 12, temperature=0) for p in PROMPTS]
    eos = full[0][3]
    got = _decode(model, PROMPTS, 12, eos_id=eos)
    assert got.tokens == [sample(model, p, 12, temperature=0, eos_id=eos) for p in PROMPTS]
    assert len(full[2]) == 16 - len(PROMPTS[2])


def test_decoder_refuses_a_cache_longer_than_the_model():
    with pytest.raises(ValueError, match="max_seq_len"):
        StaticDecoder(_model(max_seq_len=16), 1, 17)


def test_greedy_and_degenerate_filters_pick_the_argmax():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    noise = Sampling(1.0).noise(4, 50, "cpu", torch.Generator().manual_seed(1))
    best = logits.argmax(-1)
    assert torch.equal(next_token(logits, Sampling(), None), best)
    assert torch.equal(next_token(logits, Sampling(0.7, top_k=1), noise), best)
    assert torch.equal(next_token(logits, Sampling(1.3, top_p=1e-6), noise), best)


def test_draws_follow_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    n = 8000

    def freq(sampling):
        noise = sampling.noise(n, 4, "cpu", gen)
        return torch.bincount(next_token(logits.expand(n, 4), sampling, noise), minlength=4).float() / n

    for sampling, want in [
        (Sampling(1.0), [0.5, 0.3, 0.15, 0.05]),
        (Sampling(1.0, top_k=2), [0.625, 0.375, 0, 0]),
        (Sampling(1.0, top_p=0.7), [0.625, 0.375, 0, 0]),  # 0.5 < 0.7: the second token is needed too
        (Sampling(2.0), torch.softmax(logits / 2, -1).tolist()),
    ]:
        assert (freq(sampling) - torch.tensor(want)).abs().max() < 0.02, sampling


def test_sampled_generation_is_seeded():
    model = _model(init_std=0.2)
    _, _, need = plan(PROMPTS, 6, model.config.max_seq_len, None)

    def run(seed):
        dec = StaticDecoder(model, 3, need, Sampling(1.0, top_k=20))
        return generate(dec, PROMPTS, 6, generator=torch.Generator().manual_seed(seed)).tokens

    assert run(0) == run(0) and run(0) != run(1)


def test_freeze_swaps_only_layers_at_lambda_one_as_their_buffers_say():
    from bittern.nn import BitLinear
    from bittern.nn.ternary_linear import TernaryLinear

    model = _model()
    q = model.layers[0].self_attn.q_proj
    q.weight_lambda.fill_(0.5)  # written behind the layer's back, as load_state_dict does
    up = model.layers[1].mlp.up_proj
    up.set_lambda(1.0, 0.25)
    freeze(model)
    assert isinstance(model.layers[0].self_attn.q_proj, BitLinear)
    assert isinstance(model.layers[1].mlp.up_proj, BitLinear)
    frozen = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    assert len(frozen) == 2 * 7 - 2
