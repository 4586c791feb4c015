#!/usr/bin/env bash
# N JAX processes on this machine, each with its own forced CPU devices, talking through
# gloo collectives: a real multi-process run (process_index, per-process data shards,
# Orbax multi-host checkpoints) without a cluster. Used by tests/test_multihost.py.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multihost.sh [options] N -- ARGS...

Starts N processes of `python -m jaxdistill.main ARGS...` on localhost; process i gets
--coordinator_address=localhost:PORT --num_processes=N --process_id=i, JAX_PLATFORMS=cpu,
K forced CPU devices (XLA_FLAGS) and gloo collectives. Process 0 prints to the console,
every process also writes LOG_DIR/process_I.log. The script waits for all of them, stops
the rest when one fails, and exits with the first non-zero status.

Options:
  --devices-per-process K   forced CPU devices per process (default 4)
  --port PORT               coordinator port (default: a free port)
  --log-dir DIR             per-process logs (default: a new temporary directory)
  --python PY               interpreter (default: $PYTHON, else .venv/bin/python, else python3)
  --dry-run                 print the exact commands and exit
  -h, --help                this help

Example:
  launch/local_multihost.sh 2 -- --config=configs/digits.py:smoke --workdir=/tmp/mh
EOF
}

devices=4
port=""
log_dir=""
python="${PYTHON:-}"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices-per-process) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [[ -z "${num:-}" ]]; then num="$1"; shift; else
         echo "error: unexpected argument $1: put the jaxdistill arguments after --" >&2
         exit 2
       fi ;;
  esac
done
if [[ -z "${num:-}" || ! "$num" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: give the number of processes N (a positive integer); see --help" >&2
  exit 2
fi
if [[ ! "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --devices-per-process=$devices must be a positive integer" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi
if [[ -z "$log_dir" ]]; then
  if [[ "$dry_run" == 1 ]]; then log_dir="/tmp/jaxdistill-multihost"; else log_dir="$(mktemp -d)"; fi
fi
# Other forced device counts in XLA_FLAGS (e.g. from a test session) would win or clash.
xla_flags="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$devices"

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # quote, host_memory_env
# The processes compute on the CPU: their --host_memory policy goes into their environment
# here (exported below), so each starts under it instead of restarting itself.
tunables="$(host_memory_env cpu "$@")"

command_for() {  # the command line of process $1 (then the jaxdistill ARGS), into `cmd`
  local id="$1"
  shift
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
       "$python" -m jaxdistill.main "--coordinator_address=localhost:$port"
       "--num_processes=$num" "--process_id=$id" "$@")
}

if [[ "$dry_run" == 1 ]]; then
  if [[ -n "$tunables" ]]; then
    echo "# exported for every process (started by hand, the CLI applies it itself): $tunables"
  fi
  for ((i = 0; i < num; i++)); do
    command_for "$i" "${@}"
    echo "cd $(quote "$root") && $(quote "${cmd[@]}") > $(quote "$log_dir/process_$i.log") 2>&1"
  done
  exit 0
fi

mkdir -p "$log_dir"
if [[ -n "$tunables" ]]; then export "${tunables?}"; fi
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM
cd "$root"
for ((i = 0; i < num; i++)); do
  command_for "$i" "${@}"
  if [[ "$i" == 0 ]]; then
    "${cmd[@]}" > >(tee "$log_dir/process_0.log") 2>&1 &
  else
    "${cmd[@]}" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  set +e
  wait -n -p finished "${remaining[@]}"
  rc=$?
  set -e
  left=()
  for pid in "${remaining[@]}"; do [[ "$pid" != "$finished" ]] && left+=("$pid"); done
  remaining=("${left[@]+"${left[@]}"}")
  if [[ "$rc" != 0 && "$status" == 0 ]]; then
    status=$rc
    for ((i = 0; i < num; i++)); do
      if [[ "${pids[$i]}" == "$finished" ]]; then
        echo "error: process $i exited with status $rc; the end of $log_dir/process_$i.log:" >&2
        tail -n 20 "$log_dir/process_$i.log" >&2 || true
      fi
    done
    stop_all
  fi
done
exit "$status"
