#!/usr/bin/env bash
# The prepared GPU session: one device call, results as files under $OUT (benchmarks/NOTES.md, "The prepared
# GPU session"; the steps are in benchmarks/gpu_session.py).
#
#   bash benchmarks/gpu_session.sh --prepare    # here, once: build .gpu/ (carried wheels, MiniLM as bf16, IMDB as xz)
#   bash benchmarks/gpu_session.sh              # on the device machine (the tool sets OUT); carry: [".gpu"]
#   bash benchmarks/gpu_session.sh --dry-run    # here, on the CPU: every size shrunk, nothing installed
#
# Extra arguments go to `gpu_session.py run` (--no-compile, --budget S, --steps setup,tests,..., --tests ARGS).
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if [ "${1:-}" = "--prepare" ]; then
  shift
  exec "${GS_PYTHON:-.venv/bin/python}" benchmarks/gpu_session.py prepare "$@"
fi

if [ "${1:-}" = "--dry-run" ]; then
  # The checkout's own venv; OUT a fresh temporary folder unless given. Nice'd: the cores here are shared.
  PY=${GS_PYTHON:-$PWD/.venv/bin/python}
  OUT=${OUT:-$(mktemp -d /tmp/gpu_session_out.XXXXXX)}
  export OUT
  exec nice -n 10 "$PY" benchmarks/gpu_session.py run --python "$PY" "$@"
fi

# The device machine: its python3 holds torch (KINDS.md); everything else comes from .gpu/.
PY=${GS_PYTHON:-python3}
if [ ! -f .gpu/manifest.json ]; then
  echo "gpu_session: .gpu/manifest.json is missing: run 'bash benchmarks/gpu_session.sh --prepare' here and carry .gpu" >&2
fi
OUT=${OUT:-$PWD/gpu_session_out}
export OUT
exec "$PY" benchmarks/gpu_session.py run --python "$PY" --work /tmp/gpu_session "$@"
