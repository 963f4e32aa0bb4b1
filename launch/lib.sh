# Helpers shared by launch/tpu.sh and launch/gpu.sh (sourced; $PROG names the caller).
# shellcheck shell=bash

usage_error() {
  echo "${PROG}: $*" >&2
  usage >&2
  exit 2
}

flag_error() {
  echo "${PROG}: $*" >&2
  echo "Run launch/${PROG} --help for the usage." >&2
  exit 2
}

# Shell-quote one word so that a POSIX shell reads it back unchanged.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_words() {
  local words=() word
  for word in "$@"; do
    words+=("$(quote "$word")")
  done
  printf '%s' "${words[*]}"
}

# Runs a command, or prints it with --dry-run. Real runs echo it to stderr first.
run() {
  if ((DRY_RUN)); then
    quote_words "$@"
    echo
  else
    echo "+ $(quote_words "$@")" >&2
    "$@"
  fi
}

# Fails naming the first of the given flags that is unset (reads FLAG and COMMAND).
require() {
  local name
  for name in "$@"; do
    [[ -n ${FLAG[$name]:-} ]] || flag_error "--$name is required for '$COMMAND'"
  done
}
