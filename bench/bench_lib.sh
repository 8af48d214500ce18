# shellcheck shell=bash
# Shell helpers shared by the benchmark scripts (sourced, not run).

# Stops the child process $1: SIGTERM, then up to 30 s for it to exit
# (blkrep flushes the volume and seals its journal on SIGTERM), then
# SIGKILL; reaps it. Nothing happens for an empty argument.
stop_gracefully() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
