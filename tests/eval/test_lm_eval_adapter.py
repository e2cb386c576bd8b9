"""The lm-evaluation-harness adapter against plain forward passes of the bittern model."""

from __future__ import annotations

import json

import pytest
import torch

import bittern
from bittern.eval.perplexity import text_nll
from tests.eval.conftest import HELD_OUT, direct_nll

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from bittern.eval.lm_eval_adapter import BitternLM  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    """Up to n argmax tokens before EOS, each from a full forward (no cache), over the real vocabulary."""
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out]))[0, -1, : model.config.vocab_size]
        if int(logits.argmax()) == eos:
            break
        out.append(int(logits.argmax()))
    return out


def continuation_nll(model, tok, context: str, continuation: str) -> float:
    """-log P(continuation | EOS + context) on the byte tokenizer, where the pieces encode apart;
    the context's trailing whitespace is scored with the continuation, as the harness's HF model does."""
    cut = len(context.rstrip())
    ctx, cont = tok.encode(context[:cut]), tok.encode(context[cut:] + continuation)
    return direct_nll(model, tok.eos_id, ctx + cont) - (direct_nll(model, tok.eos_id, ctx) if ctx else 0.0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_and_is_greedy(runs, batch_size):
    lm = BitternLM(run=str(runs["ternary"]), device="cpu", batch_size=batch_size)
    model, tok = bittern.load(runs["ternary"])
    context = "ROMEO.\nThou art"
    best_ids = greedy(model, [tok.eos_id, *tok.encode(context)], 4, tok.eos_id)
    best = tok.decode(best_ids)
    assert tok.encode(best) == best_ids  # plain text, so the pair encodes back to the greedy tokens
    other = " zq9"
    pairs = [(context, best), (context, other), ("", HELD_OUT[:30]), ("JULIET.\n", "Good night")]
    got = lm.loglikelihood(requests("loglikelihood", *pairs))
    for (ctx, cont), (ll, _) in zip(pairs, got, strict=True):
        assert ll == pytest.approx(-continuation_nll(model, tok, ctx, cont), rel=1e-4, abs=1e-4)
    assert got[0][1] is True and got[1][1] is False


def test_bpe_pair_is_split_from_the_whole_encoding(runs):
    lm = BitternLM(run=str(runs["bpe"]), device="cpu")
    model, tok = bittern.load(runs["bpe"])
    context, continuation = "ROMEO.\nThou art ", "not my friend"  # trailing space moves over
    whole = tok.encode(context + continuation)
    k = len(tok.encode(context.rstrip()))
    expected = direct_nll(model, tok.eos_id, whole) - direct_nll(model, tok.eos_id, whole[:k])
    ((ll, _),) = lm.loglikelihood(requests("loglikelihood", (context, continuation)))
    assert ll == pytest.approx(-expected, rel=1e-4)


def test_rolling_equals_perplexity_sum_and_harness_windows(runs):
    lm = BitternLM(run=str(runs["fp"]), device="cpu", max_length=8)
    model, tok = bittern.load(runs["fp"])
    ids = tok.encode(HELD_OUT)
    expected = 0.0  # the harness's own windowing, each window one plain forward
    for window in get_rolling_token_windows(ids, tok.eos_id, 8, 1):
        inputs, targets = make_disjoint_window(window)
        with torch.no_grad():
            logits = model(torch.tensor([inputs + targets[:-1]]))[0, -len(targets) :].float()
        expected += (
            torch.log_softmax(logits, -1)[torch.arange(len(targets)), torch.tensor(targets)].sum().item()
        )
    (rolling,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (HELD_OUT,)))
    assert rolling == pytest.approx(expected, rel=1e-5)
    assert rolling == pytest.approx(-text_nll(model, ids, 8, tok.eos_id), rel=1e-6)


def test_generate_until_is_greedy_and_stops(runs):
    lm = BitternLM(run=str(runs["ternary"]), device="cpu")
    model, tok = bittern.load(runs["ternary"])
    context = "ROMEO.\n"
    text = tok.decode(greedy(model, [tok.eos_id, *tok.encode(context)], 12, tok.eos_id))
    stop = text[len(text) // 2]
    got = lm.generate_until(
        requests(
            "generate_until",
            (context, {"max_gen_toks": 12}),
            (context, {"until": [stop], "max_gen_toks": 12}),
        )
    )
    assert got == [text, text.split(stop)[0]]


def test_simple_evaluate_on_a_local_multiple_choice_task(runs, tmp_path):
    from lm_eval.tasks import TaskManager

    docs = [
        {"question": "ROMEO.\nThou art", "choices": ["not", "zqx", "my friend"], "answer": 0},
        {"question": "JULIET.\nGood", "choices": ["qqq", "night"], "answer": 1},
        {"question": "NURSE.\nI am", "choices": ["the", "xkcd"], "answer": 1},
    ]
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: bittern_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'hf'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    results = lm_eval.simple_evaluate(
        model="bittern",
        model_args=f"run={runs['ternary']}",
        tasks=["bittern_tiny_mc"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        device="cpu",
        log_samples=True,
    )
    model, tok = bittern.load(runs["ternary"])
    correct = 0
    for doc, sample in zip(docs, results["samples"]["bittern_tiny_mc"], strict=True):
        lls = [-continuation_nll(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        assert [r[0][0] for r in sample["resps"]] == pytest.approx(lls, rel=1e-4)
        correct += max(range(len(lls)), key=lls.__getitem__) == doc["answer"]
    assert results["results"]["bittern_tiny_mc"]["acc,none"] == pytest.approx(correct / len(docs))
