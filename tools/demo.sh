#!/bin/sh
# The README's demonstration: installs what is missing, builds, and shows the
# journal at work on a file-backed volume — tracked writes, a crash (SIGKILL)
# with no lost change and no resync, and the cases that do force a resync.
# Everything happens in a temporary directory that is removed at the end.
set -eu
cd "$(dirname "$0")/.."
./tools/install-deps.sh
./tools/build.sh
blkrep="$(pwd)/build/bin/blkrep"

work=$(mktemp -d "${TMPDIR:-/tmp}/blkrep-demo.XXXXXX")
writer=""
cleanup() {
  if [ -n "$writer" ]; then kill -9 "$writer" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
export BLKREP_STATE_DIR="$work/state"
vol="$work/vm100-disk0.img"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

step "A 256 MiB file-backed volume holding an ext4 file system"
truncate -s 256M "$vol"
mkfs.ext4 -q -F "$vol"
run "$blkrep" version

step "Writes through the tracking layer (4 KiB blocks): each is journaled before it reaches the volume"
run "$blkrep" journal write vm100 disk0="$vol" --block-size 4K --offset 1M --length 64K --count 4 >/dev/null
run "$blkrep" journal write vm100 disk0="$vol" --offset 100M --length 1 --pattern 7 >/dev/null
run "$blkrep" journal write vm100 disk0="$vol" --offset 200M --length 1M --trim >/dev/null
run "$blkrep" journal inspect vm100

step "A writer killed with SIGKILL mid-stream: every acknowledged write is still dirty, no resync"
: > "$work/acks"
"$blkrep" journal write vm100 disk0="$vol" --offset 8M --length 16K --count 15000 > "$work/acks" &
writer=$!
while [ "$(wc -l < "$work/acks")" -lt 3000 ] && kill -0 "$writer" 2>/dev/null; do sleep 0.01; done
kill -9 "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
writer=""
acked=$(wc -l < "$work/acks")
echo "acknowledged before the kill: $acked writes of 16 KiB from 8 MiB on"
last=$(tail -n 1 "$work/acks" | cut -d' ' -f2)
echo "the last acknowledged write ends at block $(( (last + 16384) / 4096 - 1 )); the journal says:"
run "$blkrep" journal inspect vm100

step "The volume modified while nobody tracked it: the next start requires a resync"
run "$blkrep" journal write vm100 disk0="$vol" --offset 0 --length 0 >/dev/null  # restart and seal
printf 'x' | dd of="$vol" bs=1 seek=5000000 conv=notrunc status=none
sleep 0.01
run "$blkrep" journal write vm100 disk0="$vol" --offset 0 --length 0 >/dev/null
run "$blkrep" journal inspect vm100 | grep -E "resync required"

step "A corrupted journal: detected, reported with the reason, and the volume still served"
journal="$BLKREP_STATE_DIR/journal/vm100/disk0.journal"
printf '\377' | dd of="$journal" bs=1 seek=4200 conv=notrunc status=none
run "$blkrep" journal inspect vm100 | grep -E "resync required"
run "$blkrep" journal write vm100 disk0="$vol" --offset 4K --length 4K >/dev/null
echo "the write went through; the journal stays resync-required until a resync"

step "Done: the demonstration removed $work"
