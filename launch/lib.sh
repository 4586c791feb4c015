# Shared by the launch/ scripts (sourced, not run).

quote() {  # one shell-quoted line, readable and copy-pasteable (like shlex.join)
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$arg")
    else out+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

# The CLI's --host_memory policy (jaxdistill/runtime/hostmem.py), applied where processes start, so the
# CLI need not restart itself: `reuse` is these glibc tunables (hostmem.TUNABLES; a test keeps
# them equal), read by glibc when a process starts.
HOST_MEMORY_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776

is_glibc() {  # ldd's banner names the C library (no pipe: pipefail and grep -q disagree)
  local banner
  banner="$(ldd --version 2>&1 || true)"
  [[ "$(uname -s)" == Linux && "${banner,,}" =~ glibc|gnu\ libc ]]
}

host_memory_env() {  # $1: the platform the processes compute on (cpu, gpu, tpu); then their args
  # Prints GLIBC_TUNABLES=... when their --host_memory (default auto: reuse on a CPU under
  # glibc) needs the tunables; nothing when the C library's defaults apply.
  local platform="$1" policy=auto arg
  shift
  for arg in "$@"; do
    case "$arg" in --host_memory=* | -host_memory=*) policy="${arg#*=}" ;; esac
  done
  if [[ "$policy" == reuse || ( "$policy" == auto && "$platform" == cpu ) ]] && is_glibc; then
    echo "GLIBC_TUNABLES=${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}$HOST_MEMORY_TUNABLES"
  fi
}
