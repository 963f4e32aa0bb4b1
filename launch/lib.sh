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

# Flags. Before `parse_flags "$@"` the caller declares, for each command, the flags that
# take a value (ALLOWED[command]="name ...") and those that take none
# (SWITCHES[command]="name ..."), and the defaults (FLAG[name]=value). parse_flags sets
# FLAG[name], SWITCH[name]=1, DRY_RUN=1 for --dry-run and EXTRA (what follows `--`).
# Flags take --flag=value or --flag value; dashes and underscores are interchangeable.
declare -A ALLOWED=() SWITCHES=() FLAG=() SWITCH=()
DRY_RUN=0
EXTRA=()

# has_flag value|switch NAME: whether COMMAND takes the flag NAME (with a value or without).
has_flag() {
  local names=${SWITCHES[$COMMAND]:-}
  [[ $1 == switch ]] || names=${ALLOWED[$COMMAND]:-}
  [[ " $names " == *" $2 "* ]]
}

# shellcheck disable=SC2034  # EXTRA and SWITCH are read by the caller
parse_flags() {
  local name
  while (($#)); do
    name=${1%%=*}
    name=${name#--}
    name=${name//-/_}
    case $1 in
      --) shift; EXTRA=("$@"); return ;;
      --dry-run | --dry_run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      --*=*)
        has_flag value "$name" || usage_error "unknown flag for '$COMMAND': ${1%%=*}"
        FLAG[$name]=${1#*=}
        ;;
      --*)
        if has_flag switch "$name"; then
          SWITCH[$name]=1
        else
          has_flag value "$name" || usage_error "unknown flag for '$COMMAND': $1"
          (($# >= 2)) && [[ $2 != --* ]] || flag_error "$1 needs a value"
          FLAG[$name]=$2
          shift
        fi
        ;;
      *) usage_error "unexpected argument: $1" ;;
    esac
    shift
  done
}
