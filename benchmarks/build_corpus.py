"""Build a >=100M-token English + code corpus from Debian packages, prepare it, pack it for the GPU machine.

Reproducible: every package is pinned by name and version in PACKAGES below (Debian 12 "bookworm",
main component only; doc-rfc and the GNU manuals with invariant sections are non-free and left out).
No package whose name begins with "python" is used: those are kept for independent evaluation.
Each run writes MANIFEST.json beside the corpus with the SHA-256 of every .deb it used
(benchmarks/corpus_manifest.json is the one of the measured build: 520 MB of text, 160.2M tokens).

Stages (each skips work already done, so a stopped run continues):
  download  `apt-get download NAME=VERSION` into WORK/debs (a version that left the mirror is an error)
  text      `dpkg -x` each package, turn its documentation into UTF-8 text files under WORK/text/<package>/:
            reStructuredText, Markdown, plain text, POD, info as they are; HTML stripped of its tags;
            man pages rendered by groff; C sources of the Linux kernel as they are; English prose only
            (a stop-word test), identical files once, at most `cap_mb` MB per package
  prepare   `bittern data prepare WORK/text --tokenizer bpe --vocab-size 16384` into WORK/ds-bpe16k
  pack      with --pack-for-device DIR: the prepared dataset as one tar, zstd -12 --long=27, cut into parts of
            PART_MIB MiB (each under the 64 MiB a device call carries), plus SHA256SUMS and unpack.sh

Getting the data onto the GPU machine (no network there, at most 64 MiB carried per call): copy the
parts into an ignored folder of the checkout (e.g. `.device-data/`, listed in .git/info/exclude), then
run one device call per part within one lease, each with `carry: [".device-data/part_NN"]`; ignored
files already on the machine stay between calls of a lease, so the parts accumulate there. The last
call carries unpack.sh and SHA256SUMS and runs `bash .device-data/unpack.sh .device-data DEST`, which
checks every part's SHA-256, reassembles and decompresses the tar, and then checks every shard's
SHA-256 against meta.json. A fresh lease starts bare: carry again.

Usage: python benchmarks/build_corpus.py [--work /work/corpus] [--stages download,text,prepare]
           [--pack-for-device /work/corpus/packed]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from bittern.data.text import SAMPLE_BYTES, is_text

PART_MIB = 56
VOCAB_SIZE = 16384
LINUX_CODE_DIRS = ("kernel", "mm", "fs", "net", "lib", "block", "ipc", "init", "security", "crypto")


@dataclass(frozen=True)
class Package:
    """One pinned Debian package and how much of its text to keep."""

    name: str
    version: str
    cap_mb: int = 60


PACKAGES = (
    Package("linux-source-6.1", "6.1.192-3", cap_mb=400),
    Package("openjdk-17-doc", "17.0.21.1+2-1~deb12u1"),
    Package("rust-doc", "1.63.0+dfsg1-2"),
    Package("racket-doc", "8.7+dfsg1-1"),
    Package("erlang-doc", "1:25.2.3+dfsg-1+deb12u4"),
    Package("lilypond-doc-html", "2.24.1-2", cap_mb=20),
    Package("cppreference-doc-en-html", "20170409-2"),
    Package("qtbase5-doc-html", "5.15.8+dfsg-11+deb12u3"),
    Package("debian-handbook", "11.20220922"),
    Package("gimp-help-en", "2.10.34-2"),
    Package("cmake-doc", "3.25.1-1"),
    Package("sqlite3-doc", "3.40.1-2+deb12u2"),
    Package("apache2-doc", "2.4.71-1~deb12u1"),
    Package("libreoffice-help-en-us", "4:7.4.7-1+deb12u14"),
    Package("maxima-doc", "5.46.0-11"),
    Package("octave-doc", "7.3.0-2"),
    Package("ruby3.1-doc", "3.1.7+really3.1.2-0+deb12u1"),
    Package("dict-gcide", "0.48.5+nmu2"),
    Package("postgresql-doc-15", "15.20-0+deb12u1"),
    Package("nodejs-doc", "18.20.4+dfsg-1~deb12u3"),
    Package("perl-doc", "5.36.0-7+deb12u4"),
    Package("vim-doc", "2:9.0.1378-2+deb12u2"),
    Package("wireshark-doc", "4.0.17-0+deb12u3"),
    Package("git-doc", "1:2.39.5-0+deb12u3"),
    Package("gnuplot-doc", "5.4.4+dfsg1-2"),
    Package("sphinx-doc", "5.3.0-4"),
    Package("bind9-doc", "1:9.18.49-1~deb12u3"),
    Package("zsh-doc", "5.9-4"),
    Package("postfix-doc", "3.7.11-0+deb12u1"),
    Package("autoconf-doc", "2.71-3"),
    Package("debian-policy", "4.6.2.0"),
    Package("freebsd-manpages", "12.2-1"),
    Package("debian-reference-en", "2.100"),
    Package("exim4-doc-html", "4.96-1"),
    Package("manpages-dev", "6.03-2"),
    Package("manpages", "6.03-2"),
    Package("glibc-doc", "2.36-9+deb12u14"),
    Package("bash-doc", "5.2.15-2"),
    Package("r-doc-html", "4.2.2.20221110-2"),
    Package("developers-reference", "12.18"),
    Package("fortunes", "1:1.99.1-7.3"),
    Package("bible-kjv-text", "4.38"),
    Package("tcl8.6-doc", "8.6.13+dfsg-2"),
    Package("jargon-text", "4.4.7-4.1"),
    Package("libtool-doc", "2.4.7-7~deb12u1"),
)

PROSE_SUFFIXES = (".txt", ".rst", ".md", ".text", ".pod", ".info", ".tex", "")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
SKIP_NAMES = ("copyright", "changelog", "changelog.debian", "news.debian")
_STOPWORDS = frozenset("the of and to a in is that for it as with be on by this are or an from".split())
_WORD = re.compile(r"[A-Za-z']+")
_LANG_DIR = re.compile(
    r"/(de|fr|es|it|ja|zh[-_]?\w*|ru|pt[-_]?\w*|pl|cs|ko|nl|sv|da|fi|nb|hu|tr|uk|ca|el|ro|vi)(/|\.)"
)


def english(text: str) -> bool:
    """Whether `text` reads as English prose: enough of its words are common English stop words."""
    words = _WORD.findall(text[:200_000])
    if len(words) < 30:
        return False
    return sum(w.lower() in _STOPWORDS for w in words) / len(words) >= 0.06


class _HTMLText(html.parser.HTMLParser):
    """Collects the visible text of an HTML page, one line per block element."""

    SKIP = frozenset(("script", "style", "nav", "head", "noscript", "svg"))
    BLOCK = frozenset("p div br li tr h1 h2 h3 h4 h5 h6 pre dt dd table section article title".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.in_pre = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        if tag == "pre":
            self.in_pre += 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        if tag == "pre" and self.in_pre:
            self.in_pre -= 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data if self.in_pre else re.sub(r"\s+", " ", data))


def html_to_text(raw: str) -> str:
    """Visible text of an HTML page, blank runs squeezed."""
    parser = _HTMLText()
    parser.feed(raw)
    parser.close()
    lines = (line.strip() for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def render_man(path: Path) -> str | None:
    """A man page rendered to plain text by groff (no overstriking), or None if groff fails."""
    cmd = ["groff", "-mandoc", "-Tutf8", "-P-cbou"]
    result = subprocess.run(cmd, input=read_maybe_gz(path), capture_output=True, timeout=60)
    if result.returncode != 0 or not result.stdout:
        return None
    return result.stdout.decode("utf-8", errors="replace")


def read_maybe_gz(path: Path) -> bytes:
    """File bytes, gunzipped when the name ends in .gz or .dz (dictzip is gzip)."""
    data = path.read_bytes()
    if path.suffix in (".gz", ".dz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError):
            return b""
    return data


def convert(path: Path, rel: str) -> tuple[str, str] | None:
    """(kind, text) of one extracted file, or None to leave it out."""
    name = path.name.lower()
    stem = name[: -len(".gz")] if name.endswith(".gz") else name
    if stem in SKIP_NAMES or _LANG_DIR.search(rel) or "/_sources/" in rel:
        return None
    if "/man/man" in rel and re.search(r"\.\d\w*(\.gz)?$", name):
        text = render_man(path)
        return ("prose", text) if text else None
    if rel.endswith(".dict.dz"):
        return "prose", read_maybe_gz(path).decode("utf-8", errors="replace")
    suffix = Path(stem).suffix
    if suffix in HTML_SUFFIXES:
        return "prose", html_to_text(read_maybe_gz(path).decode("utf-8", errors="replace"))
    if suffix in PROSE_SUFFIXES or re.fullmatch(r".*\.info-\d+", stem):
        data = read_maybe_gz(path)
        if not is_text(data[:SAMPLE_BYTES]):
            return None
        return "prose", data.decode("utf-8", errors="replace")
    return None


def run(cmd: list[str], **kwargs) -> None:
    """Run a command at low priority, failing loudly."""
    subprocess.run(["nice", "-n", "19", *cmd], check=True, **kwargs)


def download(work: Path) -> dict:
    """Fetch every pinned .deb; return {package: {file, sha256}}."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES:
        if pkg.name.startswith("python"):
            raise SystemExit(f"{pkg.name}: packages named python* are reserved for evaluation")
        if not list(debs.glob(f"{pkg.name}_*.deb")):
            try:
                run(["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"], cwd=debs)
            except subprocess.CalledProcessError:
                raise SystemExit(
                    f"build_corpus: {pkg.name}={pkg.version} not found: run `apt-get update` "
                    "(the package lists may predate the pin), else that version left the mirror"
                ) from None
    manifest = {}
    for pkg in PACKAGES:
        (deb,) = debs.glob(f"{pkg.name}_*.deb")
        manifest[pkg.name] = {"version": pkg.version, "file": deb.name, "sha256": sha256_file(deb)}
    return manifest


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def extract_linux(root: Path, tarball: Path) -> None:
    """Unpack the kernel's Documentation/ and the C code of LINUX_CODE_DIRS from the source tarball."""
    top = tarball.name.removesuffix(".tar.xz")
    members = [f"{top}/Documentation", *(f"{top}/{d}" for d in LINUX_CODE_DIRS)]
    run(["tar", "-xJf", str(tarball), "-C", str(root), *members])


def linux_files(root: Path) -> list[tuple[Path, str]]:
    """(path, kind) of the kernel files to keep: documentation as prose, .c/.h as code."""
    (top,) = root.glob("linux-source-*")
    files = [(p, "prose") for p in sorted((top / "Documentation").rglob("*")) if p.suffix in (".rst", ".txt")]
    for d in LINUX_CODE_DIRS:
        files += [(p, "code") for p in sorted((top / d).rglob("*")) if p.suffix in (".c", ".h")]
    return files


def package_text(pkg: Package, work: Path) -> dict:
    """Extract one package and write its kept text files (each distinct text once); return its counts."""
    seen: set[str] = set()
    out = work / "text" / pkg.name
    done = out / ".done.json"
    if done.is_file():
        return json.loads(done.read_text())
    root = work / "root" / pkg.name
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    root.mkdir(parents=True)
    out.mkdir(parents=True)
    (deb,) = (work / "debs").glob(f"{pkg.name}_*.deb")
    run(["dpkg", "-x", str(deb), str(root)])
    if pkg.name.startswith("linux-source"):
        (tarball,) = (root / "usr/src").glob("linux-source-*.tar.xz")
        extract_linux(root, tarball)
        tarball.unlink()
        candidates = linux_files(root)
    else:
        candidates = [(p, "") for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    counts = {"files": 0, "prose_bytes": 0, "code_bytes": 0}
    cap = pkg.cap_mb * 1_000_000
    for path, kind in candidates:
        if counts["prose_bytes"] + counts["code_bytes"] >= cap:
            break
        rel = "/" + str(path.relative_to(root))
        if kind:
            text = path.read_bytes().decode("utf-8", errors="replace")
        else:
            converted = convert(path, rel)
            if converted is None:
                continue
            kind, text = converted
        if kind == "prose" and not english(text):
            continue
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen or not is_text(data[:SAMPLE_BYTES]):
            continue
        seen.add(digest)
        target = out / (rel.strip("/").replace("/", "__") + ".txt")
        target.write_bytes(data)
        counts["files"] += 1
        counts[f"{kind}_bytes"] += len(data)
    shutil.rmtree(root, ignore_errors=True)
    done.write_text(json.dumps(counts))
    return counts


def _package_job(args: tuple[Package, Path]) -> tuple[str, dict, float]:
    start = time.time()
    return args[0].name, package_text(*args), time.time() - start


def texts(work: Path, workers: int) -> dict:
    """Turn every package into text, `workers` at a time; then drop files repeated across packages."""
    report = {}
    with multiprocessing.Pool(workers) as pool:
        for name, counts, seconds in pool.imap_unordered(_package_job, [(p, work) for p in PACKAGES]):
            report[name] = counts
            print(f"{name}: {counts} ({seconds:.0f} s)", flush=True)
    seen: set[str] = set()
    dropped = 0
    for pkg in PACKAGES:  # in manifest order, so the copy kept does not depend on timing
        for path in sorted((work / "text" / pkg.name).glob("*.txt")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                dropped += path.stat().st_size
                path.unlink()
            seen.add(digest)
    report["_cross_package_duplicates_bytes"] = dropped
    return {name: report[name] for name in sorted(report)}


def prepare(work: Path) -> dict:
    """Run `bittern data prepare` on the text folder; return its timing and split sizes."""
    out = work / f"ds-bpe{VOCAB_SIZE // 1024}k"
    cmd = [sys.executable, "-m", "bittern", "data", "prepare", str(work / "text"), "--out", str(out)]
    cmd += ["--tokenizer", "bpe", "--vocab-size", str(VOCAB_SIZE), "--overwrite"]
    start = time.time()
    run(cmd)
    meta = json.loads((out / "meta.json").read_text())
    return {
        "dataset": str(out),
        "wall_s": round(time.time() - start, 1),
        **{s: {k: meta["splits"][s][k] for k in ("tokens", "bytes", "pieces")} for s in ("train", "val")},
    }


UNPACK_SH = """#!/usr/bin/env bash
# Reassemble a dataset packed by benchmarks/build_corpus.py: bash unpack.sh PARTS_DIR DEST
set -euo pipefail
parts=$1; dest=$2
(cd "$parts" && sha256sum -c --quiet SHA256SUMS)
mkdir -p "$dest"
cat "$parts"/part_* | zstd -d --long=27 -c | tar -x -C "$dest" --strip-components=1
python3 - "$dest" <<'PY'
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
meta = json.loads((root / "meta.json").read_text())
for split in meta["splits"].values():
    for shard in split["shards"]:
        digest = hashlib.sha256((root / shard["file"]).read_bytes()).hexdigest()
        assert digest == shard["sha256"], f"{shard['file']}: SHA-256 does not match meta.json"
PY
echo "dataset ready and verified: $dest"
"""


def pack(dataset: Path, dest: Path) -> dict:
    """The dataset as zstd-compressed tar parts of PART_MIB MiB, with SHA256SUMS and unpack.sh."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("part_*"):
        old.unlink()
    archive = dest / "dataset.tar.zst"
    with tarfile.open(dest / "dataset.tar", "w") as tar:
        tar.add(dataset, arcname=dataset.name)
    run(
        ["zstd", "-12", "--long=27", "-T2", "-q", "-f", "--rm", str(dest / "dataset.tar"), "-o", str(archive)]
    )
    run(["split", "-b", f"{PART_MIB}M", "-d", "-a", "2", str(archive), str(dest / "part_")])
    archive.unlink()
    parts = sorted(dest.glob("part_*"))
    sums = "".join(f"{sha256_file(p)}  {p.name}\n" for p in parts)
    (dest / "SHA256SUMS").write_text(sums)
    (dest / "unpack.sh").write_text(UNPACK_SH)
    return {"parts": len(parts), "bytes": sum(p.stat().st_size for p in parts), "dir": str(dest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/work/corpus"))
    parser.add_argument("--stages", default="download,text,prepare")
    parser.add_argument("--workers", type=int, default=2, help="packages converted at once")
    parser.add_argument("--pack-for-device", type=Path, help="write the packed parts into this folder")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    manifest_path = args.work / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if "download" in stages:
        manifest["packages"] = download(args.work)
    if "text" in stages:
        manifest["text"] = texts(args.work, args.workers)
    if "prepare" in stages:
        manifest["prepare"] = prepare(args.work)
    if args.pack_for_device:
        manifest["pack"] = pack(args.work / f"ds-bpe{VOCAB_SIZE // 1024}k", args.pack_for_device)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "packages"}, indent=2))


if __name__ == "__main__":
    main()
