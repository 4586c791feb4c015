# Shared by the launch/ scripts (sourced, not run).

quote() {  # one shell-quoted line, readable and copy-pasteable (like shlex.join)
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$arg")
    else out+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
