"""convert(): swapping nn.Linear for BitLinear in a Hugging Face Llama and in plain modules."""

import pytest
import torch
from torch import nn

from bittern.nn import BitLinear, bitlinear_layers, convert, set_quant_lambda

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _ids():
    return torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))


def _linear_weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _logits(model):
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def test_convert_hf_llama_quant_none_keeps_logits_identical():
    model = tiny_llama()
    before = _logits(model)
    convert(model, quant="none")
    n_swapped = sum(isinstance(m, BitLinear) for m in model.modules())
    assert n_swapped == 2 * len(PROJECTIONS)
    assert torch.equal(_logits(model), before)


def test_convert_hf_llama_ternary_swaps_every_projection_but_not_the_head():
    model = tiny_llama()
    weights = _linear_weights(model)
    before = _logits(model)
    assert convert(model) is model
    for i in range(2):
        for proj in PROJECTIONS:
            part = "self_attn" if proj in PROJECTIONS[:4] else "mlp"
            name = f"model.layers.{i}.{part}.{proj}"
            layer = model.get_submodule(name)
            assert isinstance(layer, BitLinear) and layer.quantized, name
            assert torch.equal(layer.weight, weights[name])
            assert layer.norm is not None  # default: the paper's norm inside BitLinear
    assert type(model.lm_head) is nn.Linear
    assert torch.equal(model.lm_head.weight, weights["lm_head"])
    assert type(model.model.embed_tokens) is nn.Embedding
    assert len(bitlinear_layers(model)) == 2 * len(PROJECTIONS)
    after = _logits(model)
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert not torch.allclose(after, before, atol=1e-4)  # the quantization is really in the path
    # lambda 0 with the inside norm disabled gives the original model back
    fp = tiny_llama()
    convert(fp, norm=False)
    set_quant_lambda(fp, 0.0)
    assert torch.equal(_logits(fp), before)


def test_convert_exclude_glob_leaves_layer_zero_alone():
    model = tiny_llama()
    convert(model, exclude=["model.layers.0.*"])
    for proj in PROJECTIONS:
        part = "self_attn" if proj in PROJECTIONS[:4] else "mlp"
        assert type(model.get_submodule(f"model.layers.0.{part}.{proj}")) is nn.Linear
        assert isinstance(model.get_submodule(f"model.layers.1.{part}.{proj}"), BitLinear)


def test_convert_exclude_by_suffix_name():
    model = tiny_llama()
    convert(model, exclude=["down_proj"])
    for i in range(2):
        assert type(model.model.layers[i].mlp.down_proj) is nn.Linear
        assert isinstance(model.model.layers[i].mlp.up_proj, BitLinear)


def test_convert_keep_head_false_quantizes_the_head():
    model = tiny_llama()
    convert(model, keep_head=False)
    assert isinstance(model.lm_head, BitLinear)


def test_convert_passes_options_through():
    model = tiny_llama()
    convert(model, granularity="channel", gamma_multiplier=1.5, norm=False)
    for _, layer in bitlinear_layers(model):
        assert layer.options.granularity == "channel"
        assert layer.options.gamma_multiplier == 1.5
        assert layer.norm is None


def test_convert_sequential_of_linears():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    bias0 = model[0].bias.detach().clone()
    x = torch.randn(3, 8)
    with torch.no_grad():
        y_fp = model(x)
    convert(model, quant="none")
    with torch.no_grad():
        assert torch.equal(model(x), y_fp)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    model.train()
    convert(model)
    assert isinstance(model[0], BitLinear) and isinstance(model[2], BitLinear)
    assert torch.equal(model[0].weight, weights[0]) and torch.equal(model[0].bias, bias0)
    assert torch.equal(model[2].weight, weights[1]) and model[2].bias is None
    assert model[0].training
    # the converted network is the composition of its BitLinears
    with torch.no_grad():
        assert torch.equal(model(x), model[2](torch.relu(model[0](x))))


def test_convert_twice_does_not_rewrap():
    model = nn.Sequential(nn.Linear(8, 8))
    convert(model)
    first = model[0]
    convert(model)
    assert model[0] is first


def test_convert_keeps_eval_mode_and_new_params_trainable():
    model = tiny_llama()
    convert(model)
    layer = model.model.layers[0].self_attn.q_proj
    assert not layer.training
    assert layer.weight.requires_grad


def test_convert_bfloat16_model_with_bias_runs():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(torch.bfloat16)
    convert(model)
    y = model(torch.randn(3, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
