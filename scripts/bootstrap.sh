#!/usr/bin/env bash
# Create or reuse .venv with everything vizloc_ros needs (runtime, built-in plugins, training, tests,
# and the example third-party plugin of docs/plugins.md, which `vizloc-smoke` / `make demo-smoke` runs).
# Idempotent: re-running only installs what changed. Uses only the project's own files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.vizloc-installed"
inputs=(requirements.txt requirements-dev.txt setup.py plugins/pyproject.toml training/pyproject.toml
        examples/example_plugin/pyproject.toml)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
want=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
# Real photographs for the pretrained-weights test (Debian's opencv-doc ships OpenCV's sample images).
samples=/usr/share/doc/opencv-doc/examples/data/baboon.jpg
if [ ! -f "$samples" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[bootstrap] installing opencv-doc (sample photographs for the tests)"
  { apt-get install -y -q opencv-doc || { apt-get update -q && apt-get install -y -q opencv-doc; }; } >/dev/null 2>&1 \
    || echo "[bootstrap] warning: could not install opencv-doc; the pretrained-weights test will fail" >&2
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[bootstrap] $VENV is up to date"
  exit 0
fi
echo "[bootstrap] installing dependencies into $VENV (torch from the local wheel cache)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . -e ./plugins -e ./training \
  -e ./examples/example_plugin 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import rclpy, onnxruntime, torch, vizloc_ros, vizloc_plugins, vizloc_training, vizloc_example_plugin" \
  || { echo "[bootstrap] import check failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] done"
