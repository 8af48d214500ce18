#!/bin/sh
# The README's demonstration: installs what is missing, builds, and shows the
# tracker at work on a file-backed volume — served over NBD, written by a
# real NBD client (qemu-io), killed with SIGKILL without losing a change or
# needing a resync, and the cases that do force a resync. Everything happens
# in a temporary directory that is removed at the end.
set -eu
cd "$(dirname "$0")/.."
./tools/install-deps.sh
./tools/build.sh
blkrep="$(pwd)/build/bin/blkrep"

work=$(mktemp -d "${TMPDIR:-/tmp}/blkrep-demo.XXXXXX")
tracker=""
cleanup() {
  if [ -n "$tracker" ]; then kill -9 "$tracker" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
export BLKREP_STATE_DIR="$work/state"
vol="$work/vm100-disk0.img"
sock="$work/vm100.sock"
uri="nbd+unix:///disk0?socket=$sock"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }
start_tracker() {
  "$blkrep" track vm100 disk0="$vol" --nbd-socket "$sock" --block-size 4K &
  tracker=$!
  i=0
  while ! nbdinfo --can connect "nbd+unix:///disk0?socket=$sock" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "the tracker did not start" >&2; exit 1; }
    sleep 0.05
  done
}
stop_tracker() {  # $1: signal
  kill "-$1" "$tracker"
  wait "$tracker" 2>/dev/null || true
  tracker=""
}

step "A 256 MiB file-backed volume holding an ext4 file system, served by the tracker"
truncate -s 256M "$vol"
mkfs.ext4 -q -F -E nodiscard "$vol"
start_tracker
run nbdinfo --list "nbd+unix:///?socket=$sock" | grep -E 'export=|export-size'

step "A real NBD client writes: each change is journaled before it reaches the volume"
run qemu-io -f raw -c "write -P 0x5a 1M 64k" -c "write -P 0x07 100M 1" -c "discard 200M 1M" "$uri" | grep -v '^[0-9].*ops'
run "$blkrep" journal inspect vm100     # answered by the running tracker

step "The tracker is killed with SIGKILL mid-stream: every acknowledged write is still dirty, no resync"
qemu-io -f raw -c "write -P 0x33 8M 32M" "$uri" >/dev/null &
client=$!
sleep 0.2
stop_tracker 9
wait "$client" 2>/dev/null || true
run "$blkrep" journal inspect vm100     # read from the journal files
start_tracker
run qemu-io -f raw -c "read -P 0x5a 1M 64k" "$uri" | head -1
stop_tracker TERM
run "$blkrep" journal inspect vm100 --json | grep -E '^  "(clean_close|resync_required)"'

step "The volume modified while nobody tracked it: the next start requires a resync"
printf 'x' | dd of="$vol" bs=1 seek=5000000 conv=notrunc status=none
start_tracker
run "$blkrep" journal inspect vm100 | grep -E "resync required"
stop_tracker TERM

step "A corrupted journal: detected, reported with the reason, and the volume still served"
journal="$BLKREP_STATE_DIR/journal/vm100/disk0.journal"
printf '\377' | dd of="$journal" bs=1 seek=4200 conv=notrunc status=none
run "$blkrep" journal inspect vm100 | grep -E "resync required"
start_tracker
run qemu-io -f raw -c "write -P 0x44 4k 4k" "$uri" | head -1
echo "the guest's write went through; the volume stays resync-required until a resync"
stop_tracker TERM

step "Done: the demonstration removed $work"
