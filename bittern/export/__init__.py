"""Exporters: bittern's packed checkpoint, Hugging Face transformers folders, GGUF for llama.cpp.

`load_any` reads each of them (and runs and checkpoints) back into a bittern model.
"""

from __future__ import annotations

from pathlib import Path

from bittern.errors import BitternError
from bittern.export.common import ExportResult
from bittern.export.load import load_any

FORMATS = ("packed", "packed-base3", "hf", "gguf")
GGUF_TYPES = ("TQ2_0", "TQ1_0")


def export_run(run: str | Path, out: str | Path, fmt: str, gguf_type: str = "TQ2_0") -> ExportResult:
    """Export a run (or checkpoint) folder to `out` in format `fmt`."""
    if fmt in FORMATS:
        from bittern.export.moe import check_moe_export

        check_moe_export(run, fmt)
    if fmt in ("packed", "packed-base3"):
        from bittern.export.packed import export_packed

        return export_packed(run, Path(out), base3=fmt == "packed-base3")
    if fmt == "hf":
        from bittern.export.hf import export_hf

        return export_hf(run, Path(out))
    if fmt == "gguf":
        from bittern.export.gguf_export import export_gguf

        return export_gguf(run, Path(out), gguf_type)
    raise BitternError(f"export format must be one of {FORMATS}, got {fmt!r}")


__all__ = ["FORMATS", "GGUF_TYPES", "ExportResult", "export_run", "load_any"]
