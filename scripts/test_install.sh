#!/usr/bin/env bash
# A user's install: plain `pip install .` (no extras) into a fresh virtual environment
# outside the repository, then the first commands a user runs. Exits non-zero on any failure.
#   bash scripts/test_install.sh            # a few minutes (mostly pip)
# torch==2.13.0 goes first, as in scripts/bootstrap.sh: anything else pulls a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/ticgrpo-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() { echo "[test_install] $*" >&2; }

# Install from a copy of the working tree (tracked and untracked, not ignored files): pip's
# in-tree build would otherwise leave build/ and *.egg-info in the repository.
mkdir "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
   | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
   | tar --null -T - -cf -) | tar -xf - -C "$work/src"

step "fresh venv in $work/venv"
"$py" -m venv "$work/venv"
# pip's exit status is kept; only the noise of this machine's unused local index locations is dropped
pip_install() {
  "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v '^WARNING: Location' >&2)
}
pip_install --upgrade pip
pip_install "torch==2.13.0"
step "pip install . (no extras)"
pip_install "$work/src" "torch==2.13.0"

# Run from an empty folder so that nothing is imported from the source tree.
mkdir "$work/cwd"
cd "$work/cwd"
export PATH="$work/venv/bin:$PATH"
export TICGRPO_CACHE="$work/cache"
step "every module of the installed package imports (integrations.trl needs the bench extra)"
python - <<'EOF'
import importlib
import pkgutil
import sys

import ticgrpo

if not ticgrpo.__file__.startswith(sys.prefix):
    sys.exit(f"ticgrpo was imported from {ticgrpo.__file__}, not from the fresh venv {sys.prefix}")
optional = {"ticgrpo.integrations.trl"}
names = [m.name for m in pkgutil.walk_packages(ticgrpo.__path__, "ticgrpo.") if m.name not in optional]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules")
EOF
step "ticgrpo --help"
ticgrpo --help >/dev/null
step "ticgrpo lab bias --help"
ticgrpo lab bias --help >/dev/null
step "ticgrpo train --config configs/tiny.yaml"
ticgrpo train --config "$work/src/configs/tiny.yaml" --output-dir "$work/run" --set logging.progress_bar=false
test -s "$work/run/metrics.jsonl"
step "ok"
