# shellcheck shell=bash
# Helpers shared by the ntl-jax launch and training scripts. Sourced, never run on its own.
#
# Every script takes --dry_run: `run` then prints each command as one copy-pasteable shell line prefixed with
# "+ " (words single-quoted where needed) instead of running it, so a dry run needs none of the tools it would call.

DRY_RUN=0

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

die() {
  log "error: $*"
  exit 2
}

# One word as shell input: as is when it holds only safe characters, else in single quotes.
quote_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The words of a command as one shell line.
quote_cmd() {
  local line="" word
  for word in "$@"; do
    line+="$(quote_word "$word") "
  done
  printf '%s' "${line% }"
}

# Run a command, or print it under --dry_run.
run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '+ %s\n' "$(quote_cmd "$@")"
  else
    "$@"
  fi
}

# Start a command in the background (printed under --dry_run); its pid is appended to BACKGROUND_PIDS.
BACKGROUND_PIDS=()
run_bg() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '+ %s &\n' "$(quote_cmd "$@")"
  else
    "$@" &
    BACKGROUND_PIDS+=("$!")
  fi
}

# Wait for every run_bg command; fail if any failed.
wait_bg() {
  local pid status=0
  for pid in "${BACKGROUND_PIDS[@]}"; do
    wait "${pid}" || status=$?
  done
  BACKGROUND_PIDS=()
  return "${status}"
}

# `need_value OPTION "$#"`: fail unless the option has a value after it.
need_value() {
  [[ "$2" -ge 2 ]] || die "$1 needs a value"
}

# An absolute path for a path given relative to the caller's working directory.
abspath() {
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "${PWD}" "$1" ;;
  esac
}

# Gin string literals are single-quoted: refuse values that would break out of them.
gin_string_ok() {
  [[ "$1" != *[\'\\]* ]] || die "$2=$1 contains a quote or backslash; allowed: paths without them"
}

require_tool() {
  [[ "${DRY_RUN}" == 1 ]] || command -v "$1" >/dev/null 2>&1 || die "$1 is not installed; $2"
}
