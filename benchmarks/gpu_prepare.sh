#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before benchmarks/gpu_check.sh: builds .gpu/ (ignored by git via
# .git/info/exclude), which the device tool carries (`carry: [".gpu"]`, under its 64 MiB limit):
#   .gpu/whl/               CPython 3.12 wheels of benchmarks/gpu_wheels.txt + jieba (built from its sdist)
#   .gpu/reference/         the reference implementation's GPT_SoVITS/ sources, for vs_reference.py
#                           (its text dictionaries left out)
#   .gpu/shared-reference/  a copy of ../shared/reference (weights writer, manifests, equivalence cases),
#                           which does not travel with the checkout
# Usage: bash benchmarks/gpu_prepare.sh /work/.mirror/RVC-Boss+GPT-SoVITS/repo
#   (the git dir that the search tool's `fetch github:RVC-Boss/GPT-SoVITS` returns)
set -euo pipefail
cd "$(dirname "$0")/.."
REF_GIT=${1:?usage: gpu_prepare.sh REFERENCE_GIT_DIR}
GPU=.gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf "$GPU" && mkdir -p "$GPU/whl" "$GPU/reference"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
    -d "$GPU/whl" -r benchmarks/gpu_wheels.txt
python3 -m pip wheel -q --no-deps -w "$GPU/whl" jieba==0.42.1
# the reference's Python sources, file by file (a mirror may lack large blobs, on which `git archive`
# stops): what vs_reference.py imports is all Python
git --git-dir="$REF_GIT" ls-tree -r --name-only HEAD GPT_SoVITS | grep '\.py$' | while read -r f; do
  mkdir -p "$GPU/reference/$(dirname "$f")"
  git --git-dir="$REF_GIT" show "HEAD:$f" > "$GPU/reference/$f" 2>/dev/null || rm -f "$GPU/reference/$f"
done
test -f "$GPU/reference/GPT_SoVITS/text/symbols.py" || { echo "no reference sources from $REF_GIT" >&2; exit 2; }
cp -r ../shared/reference "$GPU/shared-reference"
du -sh "$GPU"/* "$GPU"
echo 'then, on the device: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=540)'
