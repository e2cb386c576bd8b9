"""bittern.kernels sits below bittern.nn: it imports nothing from nn, models, train or distributed."""

import ast
from pathlib import Path

import bittern.kernels

UPPER = ("bittern.nn", "bittern.models", "bittern.train", "bittern.distributed", "bittern.inference")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_kernels_import_no_upper_layer():
    files = sorted(Path(bittern.kernels.__file__).parent.glob("*.py"))
    assert len(files) > 10
    upward = {f.name: sorted(m for m in _imports(f) if m.startswith(UPPER)) for f in files}
    assert {name: mods for name, mods in upward.items() if mods} == {}
