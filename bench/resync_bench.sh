#!/usr/bin/env bash
# resync_bench.sh: blkrep's checksum resync against reading both volumes once,
# rsync, bdsync (or an emulation of it) and xxhsum, in one run, on one file
# system. See bench/README.md, "Resync (issue 5)".
#
# One volume of random data (AES-CTR output: incompressible, reproducible) is
# replicated by a full cycle of `blkrep run` to a receiver on this machine
# (`blkrep target add --exec 'blkrep receive --stdio ...'`), the tracker not
# running (the journal was made by starting and stopping it once). Then, per
# round, 1% of the replica's 64 KiB blocks are overwritten behind blkrep's
# back with other random data, and each method runs from a cold page cache,
# in this order (the resync between the two reads that are its reference):
#   read-conc  dd iflag=direct bs=8M of the volume and of the replica, at once
#   read-fio   the same with fio, 4 reads of 8 MiB in flight per file (io_uring;
#              as blkrep's receiver reads), when fio is there; fio's own
#              runtime, without its ~0.4 s start
#   resync     blkrep resync JOBID --now --json (sends the differing blocks)
#   read-seq   the same two dd's, one after the other
#   verify     blkrep verify JOBID --json (compares, sends nothing; exit 1)
#   rsync      rsync --inplace --no-whole-file volume -> replica, + fsync
#              (rsync, bdsync and xxhsum are slow: they run in the first
#              --peer-rounds rounds only, 1 by default; the other rounds undo
#              the damage with a copy of the damaged blocks)
#   bdsync     bdsync 'bdsync --server' volume replica | bdsync --patch=replica
#              + fsync when bdsync is installed; otherwise an emulation of
#              it (md5 of 32 KiB blocks on both sides at once, compare the
#              lists, dd the differing blocks), labelled as such
#   xxhsum     xxhsum -H2 (xxh128) of the volume, cold and warm
# The damage is re-applied (same blocks, same bytes) after every method that
# repaired the replica; after each, the replica must equal the volume (cmp),
# and blkrep's reports must count exactly the damaged blocks. A measurement,
# not a test: exit 0 when every step ran and verified, whether or not the
# target (resync <= 1.25x the time to read both volumes) was met; 1 when a
# step failed or a check failed; 2 on bad arguments.
#
# Environment: BLKREP (default: build/bin/blkrep under the repository),
# RSYNC (default: rsync), XXHSUM (default: xxhsum), FIO (default: fio),
# BDSYNC (default: bdsync if installed), PYTHON (default: python3).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/resync_bench.sh [--size SIZE] [--dir DIR] [--rounds N] [--peer-rounds N]
                             [--damage-percent P] [--no-install] [--json]
  --size SIZE          volume size, K/M/G suffixes (powers of 1024; default 4G, at least 64M)
  --dir DIR            the scratch directory is made inside DIR (default ${TMPDIR:-/tmp});
                       volume, replica and blkrep's state all live there (needs ~2.1x SIZE)
  --rounds N           rounds; the table holds medians over them (default 3)
  --peer-rounds N      rounds (the first N) that also run the peers rsync, bdsync and
                       xxhsum (default 1; at most --rounds)
  --damage-percent P   share of the replica's blocks overwritten per round (default 1)
  --no-install         never install a missing tool (by default, as root, a missing
                       rsync, xxhsum, openssl or fio is installed with apt-get install -y;
                       without fio its row is left out)
  --json               print one JSON document instead of the table
EOF
}

die_usage() { echo "resync_bench: $*" >&2; usage >&2; exit 2; }
die() { echo "resync_bench: $*" >&2; exit 1; }

# Everything runs inside main (called on the last line): bash reads a script
# as it goes, so an edit of this file during a run would otherwise change what
# the running shell executes.
main() {
script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
# shellcheck source=bench/bench_lib.sh
. "$script_dir/bench_lib.sh"
BLKREP=${BLKREP:-$repo_dir/build/bin/blkrep}
RSYNC=${RSYNC:-rsync}
XXHSUM=${XXHSUM:-xxhsum}
FIO=${FIO:-fio}
BDSYNC=${BDSYNC:-}
PYTHON=${PYTHON:-python3}

size_arg=4G
parent_dir=${TMPDIR:-/tmp}
rounds=3
peer_rounds=1
damage_percent=1
install=1
json=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) [ $# -ge 2 ] || die_usage "$1 needs a value"; size_arg=$2; shift 2 ;;
    --dir) [ $# -ge 2 ] || die_usage "$1 needs a value"; parent_dir=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die_usage "$1 needs a value"; rounds=$2; shift 2 ;;
    --peer-rounds) [ $# -ge 2 ] || die_usage "$1 needs a value"; peer_rounds=$2; shift 2 ;;
    --damage-percent) [ $# -ge 2 ] || die_usage "$1 needs a value"; damage_percent=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    --json) json=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
size=$(numfmt --from=iec "$size_arg" 2>/dev/null) || die_usage "--size: expected e.g. 1G or 4G, got '$size_arg'"
is_uint "$size" || die_usage "--size: expected e.g. 1G or 4G, got '$size_arg'"
[ "$size" -ge $((64 << 20)) ] || die_usage "--size: at least 64M"
[ $((size % (8 << 20))) -eq 0 ] || die_usage "--size: a multiple of 8M"
[ -d "$parent_dir" ] || die_usage "--dir $parent_dir is not a directory"
if ! is_uint "$rounds" || [ "$rounds" -lt 1 ]; then die_usage "--rounds must be a whole number >= 1"; fi
if ! is_uint "$peer_rounds" || [ "$peer_rounds" -gt "$rounds" ]; then
  die_usage "--peer-rounds must be a whole number <= --rounds"
fi
case "$damage_percent" in
  ''|*[!0-9.]*|*.*.*|.) die_usage "--damage-percent: a number in (0, 50]" ;;
esac
awk -v p="$damage_percent" 'BEGIN { exit !(p > 0 && p <= 50) }' || die_usage "--damage-percent: a number in (0, 50]"

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
can_drop=0
[ "$is_root" = 1 ] && [ -w /proc/sys/vm/drop_caches ] && can_drop=1

log() { [ "$json" = 1 ] || echo "$*" >&2; }

# --- tools -----------------------------------------------------------------
# try_tool VAR PACKAGE WHAT: whether the command in $VAR exists; as root (and
# without --no-install) a missing one is installed with apt-get, said loudly.
try_tool() {
  local var=$1 pkg=$2 what=$3 cmd
  cmd=${!var}
  command -v "$cmd" >/dev/null && return 0
  [ "$install" = 1 ] && [ "$is_root" = 1 ] && command -v apt-get >/dev/null || return 1
  echo "resync_bench: $cmd not found ($what); installing it: apt-get install -y $pkg" >&2
  if ! apt-get install -y -q "$pkg" >&2; then
    apt-get update -q >&2 && apt-get install -y -q "$pkg" >&2 || return 1
  fi
  command -v "$cmd" >/dev/null
}
need_tool() {  # need_tool VAR PACKAGE WHAT: the same, and the tool is required
  try_tool "$@" || die "${!1} not found ($3; apt-get install $2, or set $1=)"
}
[ -x "$BLKREP" ] || die "blkrep binary not found at $BLKREP (set BLKREP= or build it: \
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && make -C build blkrep)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (python3 writes the damage and the report)"
"$PYTHON" -c 'import random; random.Random(1).randbytes(1)' 2>/dev/null || die "$PYTHON is older than 3.9"
need_tool RSYNC rsync "peer (b)"
need_tool XXHSUM xxhash "peer (d), xxh128"
OPENSSL=openssl
need_tool OPENSSL openssl "the volume's random data"
# fio: a deeper reader than dd for the read-both reference (4 x 8 MiB in
# flight per file, as blkrep's receiver reads); its row is left out without it.
fio_engine=
if try_tool FIO fio "the io_uring read-both reference"; then
  fio_engine=libaio
  "$FIO" --enghelp=io_uring >/dev/null 2>&1 && fio_engine=io_uring
else
  echo "resync_bench: fio not found: the row 'read both at once (fio QD4)' is left out" >&2
  FIO=
fi
for t in cmp dd sync numfmt df awk; do command -v "$t" >/dev/null || die "$t not found"; done
# bdsync: the real one when it is installed (or installable: not in Debian 12),
# else the emulation.
if [ -z "$BDSYNC" ]; then
  if command -v bdsync >/dev/null; then
    BDSYNC=bdsync
  elif [ "$install" = 1 ] && [ "$is_root" = 1 ] && command -v apt-get >/dev/null &&
       apt-cache show bdsync >/dev/null 2>&1; then
    echo "resync_bench: bdsync not found; installing it: apt-get install -y bdsync" >&2
    if apt-get install -y -q bdsync >&2; then BDSYNC=bdsync; fi
  fi
fi
[ -z "$BDSYNC" ] || command -v "$BDSYNC" >/dev/null || die "BDSYNC=$BDSYNC not found"

# Volume + replica + a little: the staging of a resync holds only the
# damaged blocks; the emulated bdsync's hash lists are 32 B per 32 KiB.
need=$(( size * 2 + size / 16 + (256 << 20) ))
avail=$(df --output=avail -B1 "$parent_dir" | tail -1 | tr -d ' ')
[ "$avail" -ge "$need" ] || die "$parent_dir has $(numfmt --to=iec "$avail") free, the run needs \
about $(numfmt --to=iec "$need")"

# --- scratch directory and cleanup ------------------------------------------
work=$(mktemp -d "$parent_dir/resync-bench.XXXXXX")
tracker_pid=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_gracefully "$tracker_pid"
  tracker_pid=
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

shquote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
# A deterministic stream of random bytes (AES-128-CTR of zeroes, keyed by $1).
# Its reader stops reading when it has enough: openssl then dies of SIGPIPE.
random_stream() { "$OPENSSL" enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$1" -in /dev/zero 2>/dev/null || true; }
blkrep() { "$BLKREP" "$@" --state-dir "$state"; }

vol=$work/vol.img
state=$work/state
rdir=$work/replicas
guest=vm1
job=vm1-1
replica=$rdir/$guest/disk0.img
results=$work/results.tsv
: >"$results"
mkdir "$rdir"

# --- helpers written as files ------------------------------------------------
cat >"$work/damage.py" <<'EOF'
# damage.py PATH BLOCK_SIZE NBLOCKS COUNT SEED: overwrites COUNT distinct
# blocks of PATH, chosen at random from SEED, with random bytes from SEED
# (the same blocks and bytes for the same SEED), each different from what the
# block held; fsyncs. Prints the sorted block numbers as JSON.
import json, os, random, sys
path, bs, nblocks, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = random.Random(seed)
blocks = sorted(r.sample(range(nblocks), count))
fd = os.open(path, os.O_RDWR)
for b in blocks:
    data = r.randbytes(bs)
    if os.pread(fd, bs, b * bs) == data:
        sys.exit("damage: block %d already holds the damage of seed %s" % (b, seed))
    if os.pwrite(fd, data, b * bs) != bs:
        sys.exit("damage: short write")
os.fsync(fd)
os.close(fd)
json.dump(blocks, sys.stdout)
EOF

cat >"$work/restore.py" <<'EOF'
# restore.py VOLUME REPLICA BLOCK_SIZE BLOCKS_JSON: copies the listed blocks
# from VOLUME to REPLICA (undoes damage.py); fsyncs.
import json, os, sys
vol, rep, bs, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.load(open(sys.argv[4]))
src, dst = os.open(vol, os.O_RDONLY), os.open(rep, os.O_WRONLY)
for b in blocks:
    data = os.pread(src, bs, b * bs)
    if len(data) != bs or os.pwrite(dst, data, b * bs) != bs:
        sys.exit("restore: short read or write at block %d" % b)
os.fsync(dst)
EOF

cat >"$work/bdsync_emul.py" <<'EOF'
# The emulation of bdsync's comparison (its defaults: MD5 of 32 KiB blocks).
#   bdsync_emul.py hash FILE BLOCK_SIZE > LIST: the 16-byte MD5 of every
#     block, in order; buffered 1 MiB reads, as bdsync reads its devices.
#   bdsync_emul.py diff LIST_A LIST_B: the runs of blocks whose MD5s differ,
#     one "first count" line each.
import hashlib, mmap, os, sys
if sys.argv[1] == "hash":
    path, bs = sys.argv[2], int(sys.argv[3])
    out = sys.stdout.buffer
    buf = mmap.mmap(-1, 1 << 20)  # page-aligned: copies from the page cache run at full speed
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            while n % bs and n < len(buf):  # a short read inside the file
                m = f.readinto(view[n:])
                if not m:
                    break
                n += m
            for i in range(0, n, bs):
                out.write(hashlib.md5(view[i:min(i + bs, n)]).digest())
else:
    a, b = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
    if len(a) != len(b):
        sys.exit("bdsync_emul: the hash lists differ in length")
    first = None
    for i in range(0, len(a) // 16 + 1):
        differs = i < len(a) // 16 and a[i * 16:i * 16 + 16] != b[i * 16:i * 16 + 16]
        if differs and first is None:
            first = i
        elif not differs and first is not None:
            print(first, i - first)
            first = None
EOF

cat >"$work/check.py" <<'EOF'
# check.py KIND REPORT BLOCKS_JSON NBLOCKS: checks blkrep's JSON report of a
# full cycle (KIND full), a resync (resync) or a verify (verify) against the
# damaged blocks; prints nothing, exits non-zero with the reason.
import json, sys
kind, report, blocks_path, nblocks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
doc = json.load(open(report))
if isinstance(doc, list):
    if len(doc) != 1:
        sys.exit("expected one job in the report, got %d" % len(doc))
    doc = doc[0]
damaged = json.load(open(blocks_path)) if blocks_path != "-" else []
def need(cond, what):
    if not cond:
        sys.exit("%s report: %s: %s" % (kind, what, json.dumps(doc)))
if kind == "verify":
    need(doc.get("compared_blocks") == nblocks, "compared_blocks != %d" % nblocks)
    need(doc.get("differing_blocks") == len(damaged), "differing_blocks != %d damaged" % len(damaged))
    found = []
    for v in doc["volumes"]:
        for first, count in v["differing_ranges"]:
            found += range(first, first + count)
    need(found == damaged, "differing_ranges are not the damaged blocks")
else:
    need(doc.get("state") == "ok", "state is not ok")
    need(doc.get("mode") == kind, "mode is not %s" % kind)
    if kind == "full":
        need(doc.get("data_blocks") == nblocks, "data_blocks != %d" % nblocks)
    else:
        need(doc.get("compared_blocks") == nblocks, "compared_blocks != %d" % nblocks)
        need(doc.get("data_blocks") == len(damaged),
             "data_blocks = %s, but %d blocks were damaged" % (doc.get("data_blocks"), len(damaged)))
        need(doc.get("matched_blocks") == nblocks - len(damaged), "matched_blocks != %d" % (nblocks - len(damaged)))
EOF

# --- timing and the page cache -----------------------------------------------
# make_cold FILE...: write back what is dirty and drop the page cache; without
# root, evict just FILE... (posix_fadvise DONTNEED, through dd iflag=nocache).
make_cold() {
  sync
  if [ "$can_drop" = 1 ]; then
    echo 3 >/proc/sys/vm/drop_caches
  else
    local f
    for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done
  fi
}

# timed NAME COMMAND...: runs COMMAND with stdout/stderr in $work/NAME.out/.err;
# sets t_real, t_cpu (user + sys of it and every process it waited for) and
# t_rc. Exit statuses other than 0 fail the run unless listed in $ok_rc.
ok_rc=0
timed() {
  local name=$1; shift
  local TIMEFORMAT='%R %U %S' u s
  t_rc=0
  { time "$@" >"$work/$name.out" 2>"$work/$name.err" || t_rc=$?; } 2>"$work/$name.time"
  case " $ok_rc " in
    *" $t_rc "*) ;;
    *) cat "$work/$name.err" >&2; die "$name: '$*' exited with $t_rc" ;;
  esac
  read -r t_real u s <"$work/$name.time"
  t_cpu=$(awk -v a="$u" -v b="$s" 'BEGIN { printf "%.3f", a + b }')
}
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }

same_as_volume() {  # same_as_volume WHAT: the replica must equal the volume
  cmp -s -- "$vol" "$replica" || die "CHECK FAILED: $1: the replica $replica differs from the volume"
}

# record ROUND METHOD SECONDS CPU [DETAIL_JSON]
record() {
  local detail=${5:-}
  [ -n "$detail" ] || detail='{}'
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(printf '%s' "$detail" | tr -d '\n')" >>"$results"
}

# The two read peers: O_DIRECT, 8 MiB requests, as blkrep's receiver reads.
# shellcheck disable=SC2317  # run through `timed`
read_one() { dd if="$1" of=/dev/null iflag=direct bs=8M status=none; }
# shellcheck disable=SC2317  # run through `timed`
read_both_fio() {
  "$FIO" --output-format=terse --terse-version=3 --direct=1 --rw=read --bs=8M --iodepth=4 \
    --ioengine="$fio_engine" --name=volume --filename="${vol//:/\\:}" --name=replica --filename="${replica//:/\\:}"
}
# shellcheck disable=SC2317  # run through `timed`
read_both_at_once() {
  read_one "$vol" & local p=$!
  read_one "$replica" || { wait "$p"; return 1; }
  wait "$p"
}
# The emulated bdsync, its two phases: both sides hash at once (bdsync's
# client and server), then the differing runs are copied with dd.
# shellcheck disable=SC2317  # run through `timed`
bdsync_emul_hash() {
  "$PYTHON" "$work/bdsync_emul.py" hash "$vol" "$emul_bs" >"$work/src.md5" & local p=$!
  "$PYTHON" "$work/bdsync_emul.py" hash "$replica" "$emul_bs" >"$work/rep.md5" || { wait "$p"; return 1; }
  wait "$p"
}
# shellcheck disable=SC2317  # run through `timed`
bdsync_emul_patch() {
  local first count
  "$PYTHON" "$work/bdsync_emul.py" diff "$work/src.md5" "$work/rep.md5" >"$work/emul.runs" || return 1
  while read -r first count; do
    dd if="$vol" of="$replica" bs="$emul_bs" skip="$first" seek="$first" count="$count" conv=notrunc status=none \
      || return 1
  done <"$work/emul.runs"
}
# shellcheck disable=SC2317  # run through `timed`
bdsync_real() {
  "$BDSYNC" "$(shquote "$BDSYNC") --server" "$vol" "$replica" | "$BDSYNC" --patch="$replica"
}
emul_bs=32768

fs_type=$(df --output=fstype "$work" 2>/dev/null | tail -1 || true)
fs_type=${fs_type:-unknown}
cache_note=$([ "$can_drop" = 1 ] && echo "page cache dropped before every cold step" ||
  echo "NOT root: drop_caches skipped; the step's files evicted with posix_fadvise(DONTNEED) instead")
log "resync_bench: $work ($fs_type), $(numfmt --to=iec "$size") volume, $rounds round(s) \
($peer_rounds with rsync and bdsync), \
$damage_percent% of the blocks damaged per round; $cache_note"
log "  blkrep: $BLKREP"
log "  bdsync: ${BDSYNC:-not installed, emulated (md5 of 32 KiB blocks, dd of the differing runs)}"
started=$(date +%s.%N)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the volume, the journal, the full cycle ---------------------------------
t0=$(date +%s.%N)
random_stream "blkrep-resync-bench" | head -c "$size" >"$vol"
[ "$(stat -c %s "$vol")" = "$size" ] || die "could not write the volume"
sync "$vol"
log "  volume written in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"

# The tracker makes the journal; the cycles then run without it (offline).
"$BLKREP" track "$guest" "disk0=$vol" --nbd-socket "$work/nbd.sock" --state-dir "$state" 2>"$work/tracker.log" &
tracker_pid=$!
for _ in $(seq 1 200); do
  if ! kill -0 "$tracker_pid" 2>/dev/null; then
    cat "$work/tracker.log" >&2
    die "blkrep track exited before serving"
  fi
  [ -S "$work/nbd.sock" ] && break
  sleep 0.05
done
[ -S "$work/nbd.sock" ] || die "blkrep track did not create its socket within 10 s"
stop_gracefully "$tracker_pid"
tracker_pid=
block_size=$(blkrep journal inspect "$guest" --json | "$PYTHON" -c \
  'import json, sys; print(json.load(sys.stdin)["volumes"][0]["block_size"])') \
  || die "blkrep journal inspect failed"
nblocks=$(( (size + block_size - 1) / block_size ))
damage_blocks=$(awk -v n="$nblocks" -v p="$damage_percent" 'BEGIN { c = int(n * p / 100 + 0.5); print (c < 1 ? 1 : c) }')

blkrep target add local --exec "$(shquote "$BLKREP") receive --stdio --replica-dir $(shquote "$rdir")" >/dev/null \
  || die "blkrep target add failed"
blkrep create-local-job "$job" local >/dev/null || die "blkrep create-local-job failed"
make_cold "$vol"
timed full blkrep run --id "$job" --json
"$PYTHON" "$work/check.py" full "$work/full.out" - "$nblocks" || die "CHECK FAILED: the full cycle"
same_as_volume "full cycle"
full_real=$t_real
log "  full cycle: $t_real s ($nblocks blocks of $block_size B)"

# --- rounds ------------------------------------------------------------------
for round in $(seq 1 "$rounds"); do
  seed="resync-bench-round-$round"
  blocks="$work/damage-$round.json"
  damage() { "$PYTHON" "$work/damage.py" "$replica" "$block_size" "$nblocks" "$damage_blocks" "$seed" >"$blocks" \
    || die "damaging the replica failed"; }
  damage

  # Order: the resync sits between the two ways of reading both volumes
  # (its reference), so that the disk's drift (other tenants) hits them alike.
  # (a) read both volumes once, at once.
  make_cold "$vol" "$replica"
  timed "r$round.read-conc" read_both_at_once
  record "$round" read_conc "$t_real" "$t_cpu"
  log "  round $round: read both at once $t_real s"
  if [ -n "$FIO" ]; then
    make_cold "$vol" "$replica"
    timed "r$round.read-fio" read_both_fio
    # fio's own runtime (the longer job's): its start-up, ~0.4 s of parsing
    # and job setup, is not reading.
    fio_s=$(awk -F';' 'NF > 9 && $9 > m { m = $9 } END { printf "%.3f", m / 1000 }' "$work/r$round.read-fio.out")
    awk -v s="$fio_s" 'BEGIN { exit !(s > 0) }' || die "fio printed no runtime: $(cat "$work/r$round.read-fio.out")"
    record "$round" read_fio "$fio_s" "$t_cpu" "{\"wall_seconds\": $t_real}"
    log "  round $round: read both at once, fio QD4, $fio_s s (wall $t_real s)"
  fi

  # blkrep resync.
  make_cold "$vol" "$replica"
  timed "r$round.resync" blkrep resync "$job" --now --json
  "$PYTHON" "$work/check.py" resync "$work/r$round.resync.out" "$blocks" "$nblocks" || die "CHECK FAILED: resync"
  same_as_volume "resync, round $round"
  record "$round" resync "$t_real" "$t_cpu" "$(cat "$work/r$round.resync.out")"
  log "  round $round: blkrep resync $t_real s (cpu $t_cpu s)"

  # (a) read both volumes once, one after the other.
  make_cold "$vol" "$replica"
  timed "r$round.read-vol" read_one "$vol"
  a_real=$t_real a_cpu=$t_cpu
  timed "r$round.read-rep" read_one "$replica"
  record "$round" read_seq "$(add "$a_real" "$t_real")" "$(add "$a_cpu" "$t_cpu")" \
    "{\"volume_seconds\": $a_real, \"replica_seconds\": $t_real}"
  log "  round $round: read one after the other $a_real + $t_real s"

  # blkrep verify: the comparison alone (exit 1: blocks differ). It leaves
  # the damage in place for rsync.
  damage
  make_cold "$vol" "$replica"
  ok_rc="0 1" timed "r$round.verify" blkrep verify "$job" --json
  [ "$t_rc" = 1 ] || die "CHECK FAILED: verify exited $t_rc, expected 1 (blocks differ)"
  "$PYTHON" "$work/check.py" verify "$work/r$round.verify.out" "$blocks" "$nblocks" || die "CHECK FAILED: verify"
  record "$round" verify "$t_real" "$t_cpu" "$(cat "$work/r$round.verify.out")"
  log "  round $round: blkrep verify $t_real s (cpu $t_cpu s)"

  if [ "$round" -le "$peer_rounds" ]; then
    # (b) rsync onto the damaged replica, then fsync it (the receiver commits
    # durably before it acknowledges).
    make_cold "$vol" "$replica"
    timed "r$round.rsync" "$RSYNC" --inplace --no-whole-file --ignore-times --stats -- "$vol" "$replica"
    rs_real=$t_real rs_cpu=$t_cpu
    timed "r$round.rsync-sync" sync -- "$replica"
    literal=$(awk -F': ' '/^Literal data:/ { gsub(/[^0-9]/, "", $2); print $2 + 0 }' "$work/r$round.rsync.out")
    record "$round" rsync "$(add "$rs_real" "$t_real")" "$(add "$rs_cpu" "$t_cpu")" \
      "{\"rsync_seconds\": $rs_real, \"fsync_seconds\": $t_real, \"literal_bytes\": ${literal:-null}}"
    same_as_volume "rsync, round $round"
    log "  round $round: rsync $rs_real s + fsync $t_real s"

    # (c) bdsync, or its emulation, then fsync.
    damage
    make_cold "$vol" "$replica"
    if [ -n "$BDSYNC" ]; then
      timed "r$round.bdsync" bdsync_real
      bd_real=$t_real bd_cpu=$t_cpu
      timed "r$round.bdsync-sync" sync -- "$replica"
      record "$round" bdsync "$(add "$bd_real" "$t_real")" "$(add "$bd_cpu" "$t_cpu")" \
        "{\"bdsync_seconds\": $bd_real, \"fsync_seconds\": $t_real}"
      log "  round $round: bdsync $bd_real s + fsync $t_real s"
    else
      timed "r$round.emul-hash" bdsync_emul_hash
      h_real=$t_real h_cpu=$t_cpu
      timed "r$round.emul-patch" bdsync_emul_patch
      p_real=$t_real p_cpu=$t_cpu
      timed "r$round.emul-sync" sync -- "$replica"
      runs=$(wc -l <"$work/emul.runs")
      differing=$(awk '{ n += $2 } END { print n + 0 }' "$work/emul.runs")
      [ "$differing" -eq $((damage_blocks * block_size / emul_bs)) ] || die "CHECK FAILED: the bdsync emulation \
found $differing differing blocks of $emul_bs B, expected $((damage_blocks * block_size / emul_bs))"
      record "$round" bdsync_emul "$(add "$(add "$h_real" "$p_real")" "$t_real")" \
        "$(add "$(add "$h_cpu" "$p_cpu")" "$t_cpu")" "{\"hash_seconds\": $h_real, \"hash_cpu_seconds\": $h_cpu, \
\"patch_seconds\": $p_real, \"fsync_seconds\": $t_real, \"differing_blocks\": $differing, \"dd_runs\": $runs}"
      log "  round $round: bdsync emulation: hash $h_real s + patch $p_real s ($runs dd's) + fsync $t_real s"
    fi
    same_as_volume "bdsync, round $round"
  else
    # No slow peers this round: put the damaged blocks back as they were (the
    # next round's checks count exactly its own damage).
    "$PYTHON" "$work/restore.py" "$vol" "$replica" "$block_size" "$blocks" || die "restoring the replica failed"
  fi

  # (d) xxhsum -H2 (xxh128) of the volume: cold, then warm (read right
  # before); in the peer rounds only (page-cache reads are slow to fill on
  # some VMs, this one included).
  if [ "$round" -le "$peer_rounds" ]; then
    make_cold "$vol"
    timed "r$round.xxh-cold" "$XXHSUM" -H2 "$vol"
    record "$round" xxhsum_cold "$t_real" "$t_cpu"
    cat -- "$vol" >/dev/null
    timed "r$round.xxh-warm" "$XXHSUM" -H2 "$vol"
    record "$round" xxhsum_warm "$t_real" "$t_cpu"
    [ "$(cut -d' ' -f1 "$work/r$round.xxh-cold.out")" = "$(cut -d' ' -f1 "$work/r$round.xxh-warm.out")" ] \
      || die "CHECK FAILED: xxhsum gave two hashes of the one volume"
    log "  round $round: xxhsum -H2 cold $(awk -F'\t' -v r="$round" '$1 == r && $2 == "xxhsum_cold" { print $3 }' \
"$results") s, warm $t_real s"
  fi
done
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')

# --- report ------------------------------------------------------------------
mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
"$PYTHON" - "$results" "$json" "$size" "$block_size" "$nblocks" "$damage_blocks" "$damage_percent" "$rounds" \
  "$fs_type" "$(nproc)" "$(uname -r)" "$(date +%F)" "$elapsed" "$can_drop" "$load_start" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$("$RSYNC" --version | head -1)" "$("$XXHSUM" --version 2>&1 | head -1)" \
  "${BDSYNC:+$("$BDSYNC" --version 2>&1 | head -1)}" "$full_real" "$mem" "$cpu_model" "$emul_bs" <<'EOF'
import json, statistics, sys
(path, as_json, size, block_size, nblocks, damage_blocks, damage_percent, rounds, fs_type, nproc, kernel, date,
 elapsed, can_drop, load_start, load_end, rsync_version, xxhsum_version, bdsync_version, full_seconds, mem,
 cpu_model, emul_bs) = sys.argv[1:24]
size, block_size, nblocks, damage_blocks = int(size), int(block_size), int(nblocks), int(damage_blocks)
runs = {}  # method -> [per-round dict]
for line in open(path):
    rnd, method, real, cpu, detail = line.rstrip("\n").split("\t")
    detail = json.loads(detail)
    if isinstance(detail, list):  # `run --json` and `resync --now --json`: an array of the jobs run
        detail = detail[0]
    d = dict(round=int(rnd), seconds=float(real), cpu_seconds=float(cpu), detail=detail)
    runs.setdefault(method, []).append(d)
rounds_n = len(runs["resync"])
# The reference of every ratio: the faster way of reading both volumes once,
# in the same round.
read_methods = [m for m in ("read_seq", "read_conc", "read_fio") if m in runs]
ref = {}
for m in read_methods:
    for r in runs[m]:
        ref[r["round"]] = min(ref.get(r["round"], float("inf")), r["seconds"])
labels = dict(
    read_seq="read both, one after the other (dd iflag=direct bs=8M)",
    read_conc="read both at once (2 dd iflag=direct bs=8M)",
    read_fio="read both at once (fio, 4 x 8 MiB in flight each; runtime)",
    verify="blkrep verify (compare only)",
    resync="blkrep resync --now",
    rsync="rsync --inplace --no-whole-file + fsync",
    bdsync="bdsync | bdsync --patch + fsync",
    bdsync_emul="bdsync EMULATION (md5/32K, dd) + fsync",
    xxhsum_cold="xxhsum -H2, volume only, cold",
    xxhsum_warm="xxhsum -H2, volume only, warm")
# Bytes each method reads: both volumes, except xxhsum (the volume).
read_bytes = {m: (size if m.startswith("xxhsum") else 2 * size) for m in labels}
rows = []
for m in labels:
    if m not in runs:
        continue
    rs = runs[m]
    secs = [r["seconds"] for r in rs]
    ratios = [r["seconds"] / ref[r["round"]] for r in rs]
    rows.append(dict(method=m, label=labels[m], seconds_median=statistics.median(secs), seconds_min=min(secs),
                     seconds_max=max(secs), cpu_seconds_median=statistics.median(r["cpu_seconds"] for r in rs),
                     ratio_to_read_both_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                     read_mb_per_s=read_bytes[m] / statistics.median(secs) / 1e6,
                     rounds=rs))
by = {r["method"]: r for r in rows}
# Hash throughput: bytes hashed per second of wall time and per CPU-second.
# blkrep hashes every block on both sides (compared_blocks x block size, x2);
# its CPU-seconds are all the work of both processes (reads, frames, hashing),
# so the per-CPU-second figure is a lower bound of its hashing speed.
hash_rows = []
for m, bytes_hashed, what in (
        ("resync", 2 * size, "blkrep resync: 2 x volume (both sides) / time"),
        ("verify", 2 * size, "blkrep verify: 2 x volume (both sides) / time"),
        ("xxhsum_cold", size, "xxhsum -H2 (xxh128) cold: volume / time"),
        ("xxhsum_warm", size, "xxhsum -H2 (xxh128) warm: volume / time")):
    if m in by:
        r = by[m]
        hash_rows.append(dict(method=m, label=what, mb_per_s=bytes_hashed / r["seconds_median"] / 1e6,
                              mb_per_cpu_second=bytes_hashed / r["cpu_seconds_median"] / 1e6
                              if r["cpu_seconds_median"] > 0 else None))
# The target, judged against the fastest read-both row of each round, and
# for comparison against each read-both row alone.
target = dict(target=1.25, measured=by["resync"]["ratio_to_read_both_median"], reference="fastest read-both row")
target["met"] = target["measured"] <= target["target"]
seconds_of = {m: {r["round"]: r["seconds"] for r in runs[m]} for m in read_methods}
target["against_each"] = {m: statistics.median(r["seconds"] / seconds_of[m][r["round"]] for r in runs["resync"])
                          for m in read_methods}
meta = dict(date=date, nproc=int(nproc), cpu=cpu_model, memory=mem, kernel=kernel, filesystem=fs_type,
            volume_bytes=size, block_size=block_size, blocks=nblocks, damaged_blocks=damage_blocks,
            damage_percent=float(damage_percent), rounds=rounds_n,
            page_cache="dropped (sync; drop_caches 3) before every cold step" if can_drop == "1" else
            "not root: the step's files evicted with posix_fadvise(DONTNEED)",
            full_cycle_seconds=float(full_seconds), elapsed_seconds=int(elapsed), loadavg_start=load_start,
            loadavg_end=load_end, rsync=rsync_version, xxhsum=xxhsum_version,
            bdsync=bdsync_version or "not installed: emulated (md5 of %s-byte blocks on both sides at once, "
                                     "then dd of the differing runs)" % emul_bs,
            reference="per round, the fastest of the read-both rows (read_seq, read_conc, read_fio); ratio = "
                      "method seconds / reference (median over rounds)")
if as_json == "1":
    json.dump(dict(meta=meta, methods=rows, hash_throughput=hash_rows,
                   target=dict(resync_vs_read_both=target)), sys.stdout, indent=2)
    print()
    sys.exit(0)
gib = lambda n: "%.2f GiB" % (n / 2**30)
print("resync_bench: %s, %s CPUs (%s), %s RAM, Linux %s; %s volume of random data on %s, %d KiB blocks, "
      "%d of %d blocks (%s%%) damaged per round; %d round(s), medians; %s s in all" % (
          date, nproc, cpu_model, mem, kernel, gib(size), fs_type, block_size // 1024, damage_blocks, nblocks,
          damage_percent, rounds_n, elapsed))
print("page cache: %s; load average (1, 5, 15 min): %s at the start, %s at the end" % (
    meta["page_cache"], load_start, load_end))
print()
head = ["method", "rounds", "seconds", "range", "vs read-both", "MB/s read", "cpu s"]
table = []
for r in rows:
    rng = "%.2f-%.2f" % (r["seconds_min"], r["seconds_max"]) if len(r["rounds"]) > 1 else ""
    table.append([r["label"], str(len(r["rounds"])), "%.2f" % r["seconds_median"], rng,
                  "%.2fx" % r["ratio_to_read_both_median"], "%.0f" % r["read_mb_per_s"],
                  "%.2f" % r["cpu_seconds_median"]])
widths = [max(len(x[i]) for x in [head] + table) for i in range(len(head))]
fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
print(fmt(head))
print("-+-".join("-" * w for w in widths))
for t in table:
    print(fmt(t))
print()
print("vs read-both = seconds / (the fastest read-both row of the same round), median over rounds;")
print("MB/s read = bytes the method reads (both volumes; xxhsum: the volume) / seconds.")
print()
head = ["hash throughput", "MB/s", "MB per CPU-second"]
table = [[h["label"], "%.0f" % h["mb_per_s"],
          "%.0f" % h["mb_per_cpu_second"] if h["mb_per_cpu_second"] else "-"] for h in hash_rows]
widths = [max(len(x[i]) for x in [head] + table) for i in range(len(head))]
print(fmt(head))
print("-+-".join("-" * w for w in widths))
for t in table:
    print(fmt(t))
print("(blkrep's CPU-seconds cover all the work of shipper and receiver, so its per-CPU-second figure is a lower")
print(" bound of its hashing speed)")
print()
for r in rows:
    for x in r["rounds"]:
        d = x["detail"]
        extra = ""
        if r["method"] == "read_fio":
            extra = "fio's runtime; wall %.2f s with its start" % d["wall_seconds"]
        elif r["method"] == "read_seq":
            extra = "volume %.2f s + replica %.2f s" % (d["volume_seconds"], d["replica_seconds"])
        elif r["method"] in ("resync", "verify"):
            extra = "job %.2f s, compared %d, %s, received %s B, sent %s B" % (
                d["duration"], d["compared_blocks"],
                "differing %d" % d["differing_blocks"] if r["method"] == "verify" else
                "data %d, matched %d" % (d["data_blocks"], d["matched_blocks"]),
                "{:,}".format(d["bytes_received"]), "{:,}".format(d["bytes_sent"]))
        elif r["method"] == "rsync":
            extra = "rsync %.2f s + fsync %.2f s, literal %s B" % (d["rsync_seconds"], d["fsync_seconds"],
                                                                 "{:,}".format(d["literal_bytes"] or 0))
        elif r["method"] == "bdsync":
            extra = "bdsync %.2f s + fsync %.2f s" % (d["bdsync_seconds"], d["fsync_seconds"])
        elif r["method"] == "bdsync_emul":
            extra = "hash %.2f s (cpu %.2f s) + patch %.2f s (%d dd's, %d blocks of %s B) + fsync %.2f s" % (
                d["hash_seconds"], d["hash_cpu_seconds"], d["patch_seconds"], d["dd_runs"], d["differing_blocks"],
                emul_bs, d["fsync_seconds"])
        print("  #%d %-12s %6.2f s, cpu %5.2f s%s" % (x["round"], r["method"], x["seconds"], x["cpu_seconds"],
                                                      ", " + extra if extra else ""))
print("  full cycle before the rounds: %.2f s" % float(full_seconds))
if not bdsync_version:
    print("bdsync is not installed (no Debian 12 package): its row is an EMULATION of its method, not bdsync.")
print("target: resync <= %.2fx the time to read both volumes once (the fastest way, per round): %.2fx: %s" % (
    target["target"], target["measured"], "met" if target["met"] else "MISSED"))
print("        resync / each read-both row alone (median over rounds): " + ", ".join(
    "%s %.2fx" % (m, x) for m, x in target["against_each"].items()))
EOF
}

main "$@"; exit $?
