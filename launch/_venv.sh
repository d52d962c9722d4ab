# Sourced by the launch scripts: creates .venv if needed and installs a lock file (exact versions) into it.
# Re-installs only when that lock file changes (a hash stamp in .venv). The locks come from pyproject.toml
# through `bash tools/lock.sh`; torch in requirements-test.lock is the CPU build (see tools/lock.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DRIFT_VENV:-$ROOT/.venv}"
ensure_venv() {
  local lock="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
  local stamp="$VENV/.installed-$(basename "$lock")"
  local want
  want="$(sha256sum "$ROOT/$lock" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$VENV/bin/pip" install -q -r "$ROOT/$lock"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
  cd "$ROOT"
}
