#!/usr/bin/env bash
# replication_bench.sh: blkrep's replication cycles against cp (full) and
# rsync (incremental), in one run, on one file system. See bench/README.md.
#
# One volume file of mixed content (random, text-like, repeated patterns,
# written zeroes and holes, in interleaved 256 KiB-2 MiB regions) is tracked
# by `blkrep track` and replicated to a receiver on this machine
# (`blkrep target add --exec 'blkrep receive --stdio ...'`):
#   1. full cycles, one per level of --levels (a new job and replica each):
#      `auto` is blkrep's default (no --zstd-level: adaptive compression), a
#      number a fixed zstd level; each followed by `cp` of the volume to a new
#      file + fsync of that file;
#   2. incremental rounds: 1% of the volume's blocks rewritten with random
#      data through the tracker's NBD socket (libnbd), then `blkrep run` of the
#      `auto` job (or of the first level's), at its level, then
#      `rsync --inplace --no-whole-file` from the volume to the last cp copy +
#      fsync of it.
# Before every timed step the page cache is dropped (root) or the files of the
# step are read into it (--cache). Every copy is compared with the volume
# (cmp) after its step; any difference is an error. A measurement, not a
# test: exit 0 when every step ran and verified, whether or not the targets
# were met; 1 when a step failed or a copy differs; 2 on bad arguments.
#
# Environment: BLKREP (default: build/bin/blkrep under the repository),
# RSYNC (default: rsync), PYTHON (default: /usr/bin/python3, needs the libnbd
# binding `nbd`, package python3-libnbd).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/replication_bench.sh [--size SIZE] [--dir DIR] [--json] [--levels LIST]
                                  [--rounds N] [--change-percent P] [--cache cold|warm]
  --size SIZE         volume size, K/M/G suffixes (powers of 1024; default 4G, at least 64M)
  --dir DIR           the scratch directory is made inside DIR (default ${TMPDIR:-/tmp});
                      volume, copies, replicas and blkrep's state all live there
  --json              print one JSON document instead of the table
  --levels LIST       levels of the full cycles, comma-separated (default auto,0,1):
                      auto = blkrep's default (no --zstd-level: adaptive compression),
                      or a zstd level -7..19 (--zstd-level N; 0 = no compression); the
                      incremental rounds run the job of auto (or of the first level)
                      at its level
  --rounds N          incremental rounds (default 2)
  --change-percent P  share of the volume's blocks rewritten per round (default 1)
  --cache MODE        cold: sync + drop the page cache before every timed step (needs
                      root; the default when root); warm: read the step's files into the
                      page cache right before it (the default otherwise)
EOF
}

die_usage() { echo "replication_bench: $*" >&2; usage >&2; exit 2; }
die() { echo "replication_bench: $*" >&2; exit 1; }

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
PYTHON=${PYTHON:-/usr/bin/python3}

size_arg=4G
parent_dir=${TMPDIR:-/tmp}
json=0
levels_arg=auto,0,1
rounds=2
change_percent=1
cache=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) [ $# -ge 2 ] || die_usage "$1 needs a value"; size_arg=$2; shift 2 ;;
    --dir) [ $# -ge 2 ] || die_usage "$1 needs a value"; parent_dir=$2; shift 2 ;;
    --json) json=1; shift ;;
    --levels) [ $# -ge 2 ] || die_usage "$1 needs a value"; levels_arg=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die_usage "$1 needs a value"; rounds=$2; shift 2 ;;
    --change-percent) [ $# -ge 2 ] || die_usage "$1 needs a value"; change_percent=$2; shift 2 ;;
    --cache) [ $# -ge 2 ] || die_usage "$1 needs a value"; cache=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
size=$(numfmt --from=iec "$size_arg" 2>/dev/null) || die_usage "--size: expected e.g. 256M or 4G, got '$size_arg'"
is_uint "$size" || die_usage "--size: expected e.g. 256M or 4G, got '$size_arg'"
[ "$size" -ge $((64 << 20)) ] || die_usage "--size: at least 64M"
[ $((size % (1 << 20))) -eq 0 ] || die_usage "--size: a multiple of 1M"
[ -d "$parent_dir" ] || die_usage "--dir $parent_dir is not a directory"
if ! is_uint "$rounds" || [ "$rounds" -lt 1 ]; then die_usage "--rounds must be a whole number >= 1"; fi
case "$change_percent" in
  ''|*[!0-9.]*|*.*.*|.) die_usage "--change-percent: a number in (0, 100]" ;;
esac
awk -v p="$change_percent" 'BEGIN { exit !(p > 0 && p <= 100) }' || die_usage "--change-percent: a number in (0, 100]"
# Each level: `auto` or a whole number -7..19, written canonically (01 -> 1,
# -0 -> 0), each at most once (a level is a row of the report).
levels=
for l in $(echo "$levels_arg" | tr ',' ' '); do
  if [ "$l" != auto ]; then
    if ! is_uint "${l#-}" || [ "${#l}" -gt 4 ]; then die_usage "--levels: auto or zstd levels -7 to 19 (0: off), got '$l'"; fi
    case "$l" in -*) l=$(( -10#${l#-} )) ;; *) l=$(( 10#$l )) ;; esac
    if [ "$l" -gt 19 ] || [ "$l" -lt -7 ]; then die_usage "--levels: auto or zstd levels -7 to 19 (0: off), got '$l'"; fi
  fi
  case " $levels " in *" $l "*) die_usage "--levels: level $l given twice" ;; esac
  levels="${levels:+$levels }$l"
done
[ -n "$levels" ] || die_usage "--levels: at least one level"
is_root=0
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then is_root=1; fi
[ -n "$cache" ] || { if [ "$is_root" = 1 ]; then cache=cold; else cache=warm; fi; }
case "$cache" in
  cold) [ "$is_root" = 1 ] || die_usage "--cache cold needs root (writes /proc/sys/vm/drop_caches)" ;;
  warm) ;;
  *) die_usage "--cache: cold or warm" ;;
esac

# --- tools -----------------------------------------------------------------
[ -x "$BLKREP" ] || die "blkrep binary not found at $BLKREP (set BLKREP= or build it: \
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && make -C build blkrep)"
command -v "$RSYNC" >/dev/null || die "rsync not found (apt-get install rsync)"
command -v openssl >/dev/null || die "openssl not found (the random data comes from AES-CTR; apt-get install openssl)"
for t in cmp cp sync numfmt df; do command -v "$t" >/dev/null || die "$t not found"; done
[ -x "$PYTHON" ] || PYTHON=$(command -v python3) || die "python3 not found"
"$PYTHON" -c 'import nbd' 2>/dev/null || die "$PYTHON has no libnbd binding (apt-get install python3-libnbd; \
or set PYTHON= to a python3 that has it)"

# ~3.5x the volume: volume, one cp copy, two replicas (zero blocks are
# punched in replicas, holes stay holes in copies), and some slack.
need=$(( size * 7 / 2 + (512 << 20) ))
avail=$(df --output=avail -B1 "$parent_dir" | tail -1 | tr -d ' ')
[ "$avail" -ge "$need" ] || die "$parent_dir has $(numfmt --to=iec "$avail") free, the run needs \
about $(numfmt --to=iec "$need")"

# --- scratch directory and cleanup ------------------------------------------
work=$(mktemp -d "$parent_dir/replication-bench.XXXXXX")
tracker_pid=
stop_tracker() {
  stop_gracefully "$tracker_pid"
  tracker_pid=
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_tracker
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

log() { [ "$json" = 1 ] || echo "$*" >&2; }
shquote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
# A deterministic stream of random bytes (AES-128-CTR of zeroes, keyed by $1).
# Its reader stops reading when it has enough: openssl then dies of SIGPIPE.
random_stream() { openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$1" -in /dev/zero 2>/dev/null || true; }

vol=$work/vol.img
sock=$work/nbd.sock
state=$work/state
guest=bench
results=$work/results.tsv
: >"$results"

# --- helpers written as files (their stdin is a random stream) --------------
cat >"$work/make_volume.py" <<'EOF'
# make_volume.py PATH SIZE: writes the mixed-content volume, random bytes from
# stdin; prints what it wrote (bytes per kind) as JSON.
import array, json, sys
path, size = sys.argv[1], int(sys.argv[2])
rnd = sys.stdin.buffer
def take(n):
    b = rnd.read(n)
    if len(b) != n:
        sys.exit("make_volume: the random stream ended")
    return b
# Text-like pool: words over a skewed alphabet, Zipf-like word frequencies,
# newlines and punctuation (zstd -1 compresses it ~2.9:1). Unique over the
# pool, which is far larger than any zstd window used, so slices of it do
# not compress against each other.
alpha = b"etaoinshrdlcumwfgypbvkjxqz"
letters = take(4096 * 12).translate(bytes(alpha[min(int((i / 256.0) ** 1.7 * 26), 25)] for i in range(256)))
lens = take(4096)
words, p = [], 0
for i in range(4096):
    n = 2 + lens[i] % 9
    words.append(letters[p:p + n])
    p += n
table = []
for k, w in enumerate(words):
    table += [w] * max(1, int(4000 / (k + 8)))
table += [b"\n"] * (len(table) // 12) + [b","] * (len(table) // 30) + [b"= 0x"] * (len(table) // 60)
table = (table * (65536 // len(table) + 1))[:65536]
pool_bytes = max(16 << 20, min(64 << 20, size // 64))
text = bytearray()
while len(text) < pool_bytes:
    text += b" ".join(map(table.__getitem__, array.array("H", take(2 << 20))))
text = bytes(text[:pool_bytes])
# Repeated patterns: 128-byte records (one of 16 templates + a counter), as
# in a table of fixed-size rows; zstd compresses them ~10:1 and more.
templates = [take(120) for _ in range(16)]
rec = [templates[i % 16] + i.to_bytes(8, "little") for i in range(65536)]
pattern = b"".join(rec)
zeroes = bytes(2 << 20)
kinds = ["random", "random", "text", "pattern", "zero", "hole"]
wrote = {k: 0 for k in set(kinds)}
regions = 0
with open(path, "wb") as f:
    pos = 0
    while pos < size:
        r = take(4)
        n = min(4096 * (64 + int.from_bytes(r[:2], "little") % 449), size - pos)  # 256 KiB .. 2 MiB
        kind = kinds[r[2] % 6]
        if kind == "random":
            f.write(take(n))
        elif kind in ("text", "pattern"):
            pool = text if kind == "text" else pattern
            at = (int.from_bytes(take(4), "little") % (len(pool) // 4096)) * 4096
            piece = pool[at:at + n]
            while len(piece) < n:
                piece += pool[:n - len(piece)]
            f.write(piece)
        elif kind == "zero":
            f.write(zeroes[:n])
        else:
            f.seek(n, 1)
        wrote[kind] += n
        pos += n
        regions += 1
    f.truncate(size)
print(json.dumps(dict(regions=regions, bytes=wrote)))
EOF

cat >"$work/change.py" <<'EOF'
# change.py URI BLOCK_SIZE NBLOCKS COUNT SEED: rewrites COUNT distinct blocks,
# chosen at random, with random data from stdin, through NBD; flushes.
import json, random, sys
import nbd
uri, bs, nblocks, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
blocks = random.Random(seed).sample(range(nblocks), count)
h = nbd.NBD()
h.connect_uri(uri)
for b in blocks:
    data = sys.stdin.buffer.read(bs)
    if len(data) != bs:
        sys.exit("change: the random stream ended")
    h.pwrite(data, b * bs)
h.flush()
h.shutdown()
print(json.dumps(dict(blocks=count, bytes=count * bs)))
EOF

cat >"$work/check_run.py" <<'EOF'
# check_run.py FILE MODE [DATA_BLOCKS]: checks `blkrep run --json`'s report;
# prints the bytes on the wire (sent + received).
import json, sys
doc = json.load(open(sys.argv[1]))
if not isinstance(doc, list) or len(doc) != 1:
    sys.exit("expected one job in the report, got: %s" % json.dumps(doc))
j = doc[0]
if j.get("state") != "ok" or j.get("mode") != sys.argv[2]:
    sys.exit("job %s: state %s, mode %s (expected ok, %s): %s" % (j.get("id"), j.get("state"), j.get("mode"),
                                                                   sys.argv[2], j.get("error")))
if not j.get("tracker_running"):
    sys.exit("job %s ran without the tracker" % j.get("id"))
if len(sys.argv) > 3 and j["data_blocks"] + j["zero_blocks"] + j["kept_blocks"] != int(sys.argv[3]):
    sys.exit("job %s sent %d blocks, expected %s" % (j["id"], j["blocks_sent"], sys.argv[3]))
print(j["bytes_sent"] + j["bytes_received"])
EOF

# --- timing and the page cache -----------------------------------------------
# prepare_cache FILE...: before a timed step. cold: write back everything
# dirty and drop the page cache (the files of the step are then read from
# the disk by whoever reads them); warm: read the step's files into the cache.
prepare_cache() {
  sync
  if [ "$cache" = cold ]; then
    echo 3 >/proc/sys/vm/drop_caches
  else
    local f
    for f in "$@"; do [ -e "$f" ] && cat -- "$f" >/dev/null; done
  fi
  return 0
}

# timed NAME COMMAND...: runs COMMAND with stdout/stderr in $work/NAME.out/.err;
# sets t_real, t_cpu (user + sys of it and every process it waited for).
timed() {
  local name=$1; shift
  local TIMEFORMAT='%R %U %S' u s
  if ! { time "$@" >"$work/$name.out" 2>"$work/$name.err"; } 2>"$work/$name.time"; then
    cat "$work/$name.err" >&2
    die "$name: '$*' failed"
  fi
  read -r t_real u s <"$work/$name.time"
  t_cpu=$(awk -v a="$u" -v b="$s" 'BEGIN { printf "%.3f", a + b }')
}

verify() {  # verify WHAT COPY: the copy must equal the volume, byte for byte
  cmp -s -- "$vol" "$2" || die "VERIFY FAILED: $1: $2 differs from the volume $vol"
}

blkrep() { "$BLKREP" "$@" --state-dir "$state"; }

# record ROW SIDE REAL CPU WIRE FILE [EXTRA]
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$results"; }

fs_type=$(df --output=fstype "$work" 2>/dev/null | tail -1 || true)
fs_type=${fs_type:-unknown}
log "replication_bench: $work ($fs_type), $(numfmt --to=iec "$size") volume, levels: $levels, \
$rounds incremental round(s) of $change_percent%, page cache: $cache"
log "  blkrep: $BLKREP"
started=$(date +%s.%N)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the volume ----------------------------------------------------------------
t0=$(date +%s.%N)
random_stream "blkrep-bench-volume" | "$PYTHON" "$work/make_volume.py" "$vol" "$size" >"$work/volume.json" \
  || die "could not write the volume"
sync
log "  volume written in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s: \
$(cat "$work/volume.json")"

"$BLKREP" track "$guest" "disk0=$vol" --nbd-socket "$sock" --state-dir "$state" 2>"$work/tracker.log" &
tracker_pid=$!
for _ in $(seq 1 200); do
  if ! kill -0 "$tracker_pid" 2>/dev/null; then
    cat "$work/tracker.log" >&2
    die "blkrep track exited before serving"
  fi
  [ -S "$sock" ] && break
  sleep 0.05
done
[ -S "$sock" ] || die "blkrep track did not create $sock within 10 s"
uri="nbd+unix:///disk0?socket=$sock"
block_size=$(blkrep journal inspect "$guest" --json | "$PYTHON" -c \
  'import json, sys; print(json.load(sys.stdin)["volumes"][0]["block_size"])') \
  || die "blkrep journal inspect failed"
nblocks=$(( (size + block_size - 1) / block_size ))
data_bytes=$(du -B1 "$vol" | cut -f1)  # what cp copies: holes are skipped

# --- full cycles, each followed by cp ----------------------------------------
job_n=0
incr_job=
incr_replica=
incr_level_args=()
copy=
for level in $levels; do
  # auto: blkrep's default (adaptive compression); a number: that level, fixed.
  level_args=()
  [ "$level" = auto ] || level_args=(--zstd-level "$level")
  job_n=$((job_n + 1))
  job="$guest-$job_n"
  rdir="$work/replicas-z$level-$job_n"
  mkdir "$rdir"
  blkrep target add "t$job_n" --exec "$(shquote "$BLKREP") receive --stdio --replica-dir $(shquote "$rdir")" \
    || die "blkrep target add failed"
  blkrep create-local-job "$job" "t$job_n" || die "blkrep create-local-job failed"
  replica="$rdir/$guest/disk0.img"
  row="full-z$level"

  prepare_cache "$vol"
  timed "$row.blkrep" blkrep run --id "$job" "${level_args[@]}" --json
  wire=$("$PYTHON" "$work/check_run.py" "$work/$row.blkrep.out" full "$nblocks") || die "$row: bad report"
  record "$row" blkrep "$t_real" "$t_cpu" "$wire" "$work/$row.blkrep.out" ""
  verify "full cycle at level $level" "$replica"
  log "  $row  blkrep: $t_real s, $wire bytes on the wire, cpu $t_cpu s"

  # The peer: cp to a new file on the same file system, then fsync it (the
  # receiver makes the replica durable before it acknowledges).
  prev_copy=$copy
  copy="$work/copy-$job_n.img"
  prepare_cache "$vol"
  timed "$row.cp" cp -- "$vol" "$copy"
  cp_real=$t_real cp_cpu=$t_cpu
  timed "$row.cp-sync" sync -- "$copy"
  record "$row" cp "$(awk -v a="$cp_real" -v b="$t_real" 'BEGIN { print a + b }')" \
    "$(awk -v a="$cp_cpu" -v b="$t_cpu" 'BEGIN { print a + b }')" "$data_bytes" "" "cp $cp_real s + fsync $t_real s"
  verify "cp" "$copy"
  [ -z "$prev_copy" ] || rm -f -- "$prev_copy"
  log "  $row  cp: $cp_real s + fsync $t_real s"

  # Keep one replica for the incremental rounds: auto's (blkrep's default),
  # or the first level's when auto is not among the levels.
  if [ -z "$incr_job" ] || [ "$level" = auto ]; then
    [ -z "$incr_replica" ] || rm -rf -- "$(dirname "$(dirname "$incr_replica")")"
    incr_job=$job incr_replica=$replica incr_level_args=("${level_args[@]}")
  else
    rm -rf -- "$rdir"
  fi
done

# --- incremental rounds --------------------------------------------------------
change_blocks=$(awk -v n="$nblocks" -v p="$change_percent" 'BEGIN { c = int(n * p / 100 + 0.5); print (c < 1 ? 1 : c) }')
for round in $(seq 1 "$rounds"); do
  row="incremental-$round"
  "$PYTHON" "$work/change.py" "$uri" "$block_size" "$nblocks" "$change_blocks" "round-$round" \
    < <(random_stream "blkrep-bench-change-$round") >"$work/$row.change.json" 2>"$work/$row.change.err" || {
    cat "$work/$row.change.err" >&2; die "$row: writing through NBD failed"; }

  prepare_cache "$vol" "$incr_replica"
  timed "$row.blkrep" blkrep run --id "$incr_job" "${incr_level_args[@]}" --json
  wire=$("$PYTHON" "$work/check_run.py" "$work/$row.blkrep.out" incremental "$change_blocks") \
    || die "$row: bad report"
  record "$row" blkrep "$t_real" "$t_cpu" "$wire" "$work/$row.blkrep.out" ""
  verify "incremental cycle $round" "$incr_replica"
  log "  $row  blkrep: $t_real s, $wire bytes on the wire ($change_blocks blocks of $block_size B changed)"

  # The peer: rsync's delta transfer from the volume (which holds the same
  # tracked writes) to the copy of the previous state, then fsync the copy.
  prepare_cache "$vol" "$copy"
  timed "$row.rsync" "$RSYNC" --inplace --no-whole-file --ignore-times --stats -- "$vol" "$copy"
  rs_real=$t_real rs_cpu=$t_cpu
  timed "$row.rsync-sync" sync -- "$copy"
  wire=$(awk -F': ' '/^Total bytes (sent|received):/ { gsub(/[^0-9]/, "", $2); n += $2 } END { print n + 0 }' \
    "$work/$row.rsync.out")
  record "$row" rsync "$(awk -v a="$rs_real" -v b="$t_real" 'BEGIN { print a + b }')" \
    "$(awk -v a="$rs_cpu" -v b="$t_cpu" 'BEGIN { print a + b }')" "$wire" "$work/$row.rsync.out" \
    "rsync $rs_real s + fsync $t_real s"
  verify "rsync round $round" "$copy"
  log "  $row  rsync: $rs_real s + fsync $t_real s, $wire bytes on the wire"
done
stop_tracker
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')

# --- report ------------------------------------------------------------------
"$PYTHON" - "$results" "$json" "$size" "$cache" "$fs_type" "$(nproc)" "$(uname -r)" "$(date +%F)" \
  "$elapsed" "$BLKREP" "$("$RSYNC" --version | head -1)" "$(cp --version | head -1)" "$work/volume.json" \
  "$block_size" "$change_blocks" "$change_percent" "$levels" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import json, statistics, sys
(path, as_json, size, cache, fs_type, nproc, kernel, date, elapsed, blkrep, rsync_version, cp_version,
 volume_json, block_size, change_blocks, change_percent, levels, load_start, load_end) = sys.argv[1:20]
size = int(size)
rows, order = {}, []
for line in open(path):
    row, side, real, cpu, wire, report, note = line.rstrip("\n").split("\t")
    if row not in rows:
        rows[row] = {}
        order.append(row)
    m = dict(seconds=float(real), cpu_seconds=float(cpu), wire_bytes=int(wire))
    if note:
        m["note"] = note
    if side == "blkrep":
        j = json.load(open(report))[0]
        m.update({k: j[k] for k in ("mode", "blocks_sent", "data_blocks", "zero_blocks", "kept_blocks", "raw_bytes",
                                    "payload_bytes", "bytes_sent", "bytes_received", "io_engine")})
        m["job_duration_seconds"] = j["duration"]
    elif side == "rsync":
        stats = {}
        for l in open(report):
            if ":" in l:
                k, v = l.split(":", 1)
                stats[k.strip()] = v.strip()
        num = lambda s: int("".join(c for c in s.split()[0] if c.isdigit())) if s else None
        m["literal_bytes"] = num(stats.get("Literal data"))
        m["matched_bytes"] = num(stats.get("Matched data"))
    rows[row][side] = m
out = []
for name in order:
    r = rows[name]
    peer = "cp" if "cp" in r else "rsync"
    b, p = r["blkrep"], r[peer]
    d = dict(workload=name, peer=peer, blkrep=b)
    d[peer] = p
    d["ratio"] = p["seconds"] / b["seconds"] if b["seconds"] else None  # > 1: blkrep faster
    if name.startswith("full-z"):
        d["zstd_level"] = "auto" if name[6:] == "auto" else int(name[6:])
        d["blkrep_mb_per_s"] = size / b["seconds"] / 1e6
        d["cp_mb_per_s"] = size / p["seconds"] / 1e6
        d["compression_ratio"] = b["raw_bytes"] / b["payload_bytes"] if b["payload_bytes"] else None
    out.append(d)
# The full-cycle target is judged on blkrep's default (auto), else on the first level.
full_default = [d for d in out if d.get("zstd_level") == "auto"] or [d for d in out if "zstd_level" in d][:1]
incr = [d["ratio"] for d in out if d["peer"] == "rsync"]
targets = dict(
    full_vs_cp=dict(target=0.8, measured=full_default[0]["ratio"] if full_default else None,
                    zstd_level=full_default[0]["zstd_level"] if full_default else None),
    incremental_vs_rsync=dict(target=20.0, measured=statistics.median(incr) if incr else None))
for t in targets.values():
    t["met"] = t["measured"] is not None and t["measured"] >= t["target"]
meta = dict(date=date, nproc=int(nproc), kernel=kernel, filesystem=fs_type, volume_bytes=size,
            block_size=int(block_size), change_blocks=int(change_blocks), change_percent=float(change_percent),
            page_cache=cache, elapsed_seconds=int(elapsed), loadavg_start=load_start, loadavg_end=load_end, blkrep=blkrep, rsync=rsync_version, cp=cp_version,
            volume=json.load(open(volume_json)),
            ratio="peer seconds / blkrep seconds (above 1: blkrep is faster); peer seconds include an fsync "
                  "of the copy",
            peer_wire_bytes="cp: the volume's data bytes (holes are skipped); rsync: total bytes sent + "
                            "received (--stats)")
if as_json == "1":
    json.dump(dict(meta=meta, workloads=out, targets=targets), sys.stdout, indent=2)
    print()
    sys.exit(0)
def gib(n):
    return "%.2f GiB" % (n / 2**30) if n >= 2**30 else "%.1f MiB" % (n / 2**20) if n >= 2**20 else \
        "%.1f KiB" % (n / 2**10)
vb = meta["volume"]["bytes"]
print("replication_bench: %s, %s CPUs, Linux %s; %s volume on %s, %d KiB blocks; page cache %s "
      "before every timed step; %s s in all" % (date, nproc, kernel, gib(size), fs_type,
                                                 int(block_size) // 1024,
                                                 "dropped" if cache == "cold" else "filled", elapsed))
print("load average (1, 5, 15 min): %s at the start, %s at the end (the machine is shared)" % (load_start, load_end))
print("volume: %d regions: random %s, text %s, pattern %s, written zeroes %s, holes %s" % (
    meta["volume"]["regions"], gib(vb["random"]), gib(vb["text"]), gib(vb["pattern"]), gib(vb["zero"]),
    gib(vb["hole"])))
print()
head = ["workload", "blkrep time", "peer time", "ratio", "blkrep wire bytes", "peer wire bytes"]
table = []
for d in out:
    b, p = d["blkrep"], d[d["peer"]]
    if "zstd_level" in d:
        label = ("full, adaptive (default) vs cp" if d["zstd_level"] == "auto" else
                 "full, zstd %d vs cp" % d["zstd_level"])
    else:
        label = "incremental %s%% #%s vs rsync" % (change_percent, d["workload"].split("-")[1])
    table.append([label, "%.2f s" % b["seconds"], "%.2f s" % p["seconds"], "%.2fx" % d["ratio"],
                  "{:,}".format(b["wire_bytes"]), "{:,}".format(p["wire_bytes"])])
widths = [max(len(x[i]) for x in [head] + table) for i in range(len(head))]
fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths)))
print(fmt(head))
print("-+-".join("-" * w for w in widths))
for t in table:
    print(fmt(t))
print()
print("ratio = peer time / blkrep time (above 1: blkrep faster); peer times include an fsync of the copy.")
for d in out:
    b, p = d["blkrep"], d[d["peer"]]
    line = "  %-14s blkrep: wall %.2f s (job %.2f s), cpu %.2f s, %d data / %d zero blocks, raw %s -> payload %s" % (
        d["workload"], b["seconds"], b["job_duration_seconds"], b["cpu_seconds"], b["data_blocks"],
        b["zero_blocks"], gib(b["raw_bytes"]), gib(b["payload_bytes"]))
    if "zstd_level" in d:
        line += " (%.2f:1); %.0f MB/s, cp %.0f MB/s" % (d["compression_ratio"] or 0, d["blkrep_mb_per_s"],
                                                        d["cp_mb_per_s"])
    print(line)
    extra = "" if d["peer"] == "cp" else ", literal %s, matched %s" % (gib(p["literal_bytes"] or 0),
                                                                        gib(p["matched_bytes"] or 0))
    print("  %-14s %s: %s, cpu %.2f s%s" % ("", d["peer"], p.get("note", ""), p["cpu_seconds"], extra))
full_level = targets["full_vs_cp"]["zstd_level"]
for key, label in (("full_vs_cp", "full cycle (default) vs cp" if full_level == "auto" else
                    "full cycle (zstd %s) vs cp" % full_level),
                   ("incremental_vs_rsync", "incremental vs rsync (median)")):
    t = targets[key]
    if t["measured"] is None:
        continue
    print("target: %s: %.2fx, target >= %gx: %s" % (label, t["measured"], t["target"],
                                                    "met" if t["met"] else "MISSED"))
EOF
}

main "$@"; exit $?
