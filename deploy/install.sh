#!/usr/bin/env bash
# Create the venv and install fetcher with Pillow-SIMD built from source.
# Installs the Debian -dev packages Pillow-SIMD needs when they are missing (needs root or sudo).
set -euo pipefail
VENV=${1:-.venv}
EXTRAS=${2-dev}  # "" = runtime only (deploy/Dockerfile)
PY=${PYTHON:-python3}

debs=(libjpeg62-turbo-dev zlib1g-dev libpng-dev libwebp-dev libtiff-dev libfreetype-dev liblcms2-dev)
# Test tools (dev installs only): strace traces the fsync -> rename -> marker order in tests/test_atomicity.py;
# redis-server is the fleet politeness store of tests/test_fleet.py.
if [[ -n "$EXTRAS" ]]; then debs+=(strace redis-server); fi
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
fi
if ((${#missing[@]})); then
  echo "install: Debian packages needed (Pillow-SIMD build, test tools): ${missing[*]}"
  if [[ $(id -u) == 0 ]]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install: error: run as root or install them: apt-get install ${missing[*]}" >&2; exit 1; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The dev install runs every test: promtool checks the metrics exposition and the deploy/ rules, and a
# real Prometheus scrapes a running fetcher (tests fail, not skip, without them: tests/skipguard.py).
if [[ $EXTRAS == *dev* ]] && ! { command -v promtool && command -v prometheus; } >/dev/null 2>&1; then
  echo "install: Debian package needed by the tests: prometheus (promtool, prometheus)"
  if [[ $(id -u) == 0 ]]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install: error: run as root or install it: apt-get install prometheus" >&2; exit 1; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
# Build Pillow-SIMD from source (its SIMD resize is the point), then everything else.
"$VENV/bin/python" -m pip install -q --no-binary pillow-simd "pillow-simd>=9" || {
  echo "install: error: Pillow-SIMD failed to build; install a C compiler, python3-dev and: apt-get install ${debs[*]}" >&2
  exit 1
}
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# Some packages pull stock Pillow, which would overwrite PIL/ silently: remove it and rebuild SIMD.
if "$VENV/bin/python" -m pip show -q pillow >/dev/null 2>&1; then
  echo "install: removing stock Pillow pulled in by a dependency"
  "$VENV/bin/python" -m pip uninstall -q -y pillow
  "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps --no-binary pillow-simd "pillow-simd>=9"
fi
"$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md, sys
from PIL import features
names = {d.metadata["Name"].lower() for d in md.distributions()}
if "pillow-simd" not in names or "pillow" in names:
    sys.exit("install: error: PIL is not Pillow-SIMD (found: %s)" % sorted(n for n in names if "pillow" in n))
missing = [f for f in ("jpg", "zlib", "webp", "libtiff") if not features.check(f)]
if missing:
    sys.exit("install: error: Pillow-SIMD built without %s; install the matching -dev packages" % missing)
print("install: Pillow-SIMD", md.version("pillow-simd"), "ok")
PYEOF
