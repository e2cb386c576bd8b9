"""`bittern generate` with several prompts: the static decoder's path (taken on CPU for --top-p)."""

from __future__ import annotations

import pytest

from bittern.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset):
    from bittern.config import config_from_dict
    from bittern.train import train
    from tests.conftest import tiny_config_dict

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(config_from_dict(tiny_config_dict(dataset, train={"steps": 10})), out, progress=False)
    return out


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["generate", *args, "--device", "cpu", "--max-new-tokens", "12", "--temperature", "0"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prompt_file_through_the_static_decoder_matches_one_by_one(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO.\n\nJULIET. The\n")
    code, batched, err = _generate(capsys, str(run), "--prompt-file", str(prompts), "--top-p", "0.9")
    assert code == 0 and "tokens/s" in err
    singles = [_generate(capsys, str(run), "--prompt", p)[1].rstrip("\n") for p in ("ROMEO.", "JULIET. The")]
    assert batched == "".join(f"--- sample {i + 1}\n{t}\n" for i, t in enumerate(singles))


def test_empty_prompt_file_is_refused(run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = _generate(capsys, str(run), "--prompt-file", str(empty))
    assert code == 2 and "no prompts" in err
