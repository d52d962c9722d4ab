#!/usr/bin/env bash
# Runs the pipeline as N local processes under jax.distributed (coordinator on 127.0.0.1), each with
# DEVICES fake CPU devices: the command a pod's workers run, on one machine.
#
#   bash launch/local_multihost.sh N CONFIG WORKDIR [--config.x=y ...]
#   DEVICES=4 bash launch/local_multihost.sh 2 configs/tiny.py /tmp/tiny-2x4
#
# WORKDIR may be a gs:// path (every process must reach it). Process 0 prints to this terminal; the
# others log to LOG_DIR (default: a new temporary folder, printed). If one process fails, the others are
# stopped and the script exits with its status; rerunning the same command resumes the run.
set -euo pipefail
N="$1"; CONFIG="$2"; WORKDIR="$3"; shift 3
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
DEVICES="${DEVICES:-4}"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t drift-multihost-XXXXXX)}"
mkdir -p "$LOG_DIR"
echo "local_multihost: $N processes x $DEVICES devices, coordinator 127.0.0.1:$PORT, logs of processes 1.. in $LOG_DIR" >&2
pids=()
for ((i = 0; i < N; i++)); do
  log="$LOG_DIR/process-$i.log"
  (
    cd "$ROOT"
    export DRIFT_COORDINATOR="127.0.0.1:$PORT" DRIFT_NUM_PROCESSES="$N" DRIFT_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
      XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES ${XLA_FLAGS:-}"
    if [ "$i" -eq 0 ]; then
      "$PYTHON" -m drift_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" 2>&1 | tee "$log"
    else
      exec "$PYTHON" -m drift_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" >"$log" 2>&1
    fi
  ) &
  pids+=("$!")
done
for ((k = 0; k < N; k++)); do
  set +e; wait -n; status=$?; set -e
  if [ "$status" -ne 0 ]; then
    echo "local_multihost: a process failed (status $status); stopping the others (logs in $LOG_DIR)" >&2
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
    exit "$status"
  fi
done
