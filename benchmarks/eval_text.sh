#!/usr/bin/env bash
# The held-out evaluation text of the quality benchmarks: the Python 3.11 documentation's tutorial,
# FAQ and language reference (reStructuredText sources, about 870 KB of English), from Debian's
# python3.11-doc. Packages whose name begins with "python" are kept out of every training corpus
# (benchmarks/build_corpus.sh), so this text is another source than anything the models saw.
#
#     bash benchmarks/eval_text.sh OUT.txt
set -euo pipefail
out=${1:?usage: eval_text.sh OUT.txt}
[ -e "$out" ] && { echo "eval_text.sh: $out exists; not overwritten" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download python3.11-doc=3.11.2-6+deb12u8 >/dev/null 2>&1 || apt-get download python3.11-doc >/dev/null)
dpkg -x "$work"/python3.11-doc_*.deb "$work/x"
src="$work/x/usr/share/doc/python3.11/html/_sources"
find "$src/tutorial" "$src/faq" "$src/reference" -name '*.rst.txt' | LC_ALL=C sort | xargs cat >"$work/eval.txt"
mv "$work/eval.txt" "$out"
echo "wrote $out: $(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16)"
