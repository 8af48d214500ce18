#!/usr/bin/env bash
# nbd_bench.sh: blkrep's tracked NBD export against qemu-nbd, alternated in one run.
#
# For every workload and round, each server in turn serves a fresh preallocated
# raw file (fallocate, or written zeroes with --prealloc full; in a scratch
# directory on one file system) on a unix socket, and fio's nbd engine
# (libnbd) drives it for --seconds after a --ramp warm-up. Order within a
# round: blkrep, then qemu-nbd (A B A B ...). The server's CPU time (all its
# threads) is read from /proc around fio. The table holds the median over the
# rounds of each server's IOPS and MB/s and the ratio of the medians. A measurement, not a test: exit 0 when every
# run completed, 1 when a run failed, 2 on bad arguments. See bench/README.md.
#
# Environment: BLKREP (default: build/bin/blkrep under the repository),
# QEMU_NBD (default: qemu-nbd), FIO (default: fio).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/nbd_bench.sh [--seconds N] [--ramp N] [--size SIZE] [--prealloc falloc|full]
                          [--rounds N] [--workloads LIST] [--dir DIR] [--blkrep-args 'ARGS']
                          [--json]
  --seconds N       timed seconds per run (default 5)
  --ramp N          untimed warm-up seconds before each run (fio ramp_time, default 1)
  --size SIZE       size of each served file, fallocate syntax (default 1G)
  --prealloc MODE   falloc: fallocate (unwritten extents, like qemu-img preallocation=falloc;
                    the default); full: zeroes written and synced first (a disk whose
                    blocks were all written before, like preallocation=full)
  --rounds N        rounds of (blkrep, qemu-nbd) per workload; medians are reported (default 3)
  --workloads LIST  comma-separated subset of: randwrite-4k-qd16, randwrite-4k-qd32,
                    write-1m-seq-qd16, randread-4k-qd16 (default: all)
  --dir DIR         the scratch directory is made inside DIR (default ${TMPDIR:-/tmp});
                    both servers' files and blkrep's state directory live there
  --blkrep-args S   extra arguments for `blkrep track`, e.g. '--io-engine threads'
  --json            print one JSON document instead of the table
EOF
}

die_usage() { echo "nbd_bench: $*" >&2; usage >&2; exit 2; }
die() { echo "nbd_bench: $*" >&2; exit 1; }

# Everything runs inside main (called on the last line): bash reads a script
# as it goes, so an edit of this file during a run would otherwise change what
# the running shell executes.
main() {
script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
# shellcheck source=bench/bench_lib.sh
. "$script_dir/bench_lib.sh"
BLKREP=${BLKREP:-$repo_dir/build/bin/blkrep}
QEMU_NBD=${QEMU_NBD:-qemu-nbd}
FIO=${FIO:-fio}

seconds=5
ramp=1
size=1G
prealloc=falloc
rounds=3
workloads_arg=
parent_dir=${TMPDIR:-/tmp}
blkrep_args=
json=0

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || die_usage "$1 needs a value"; seconds=$2; shift 2 ;;
    --ramp) [ $# -ge 2 ] || die_usage "$1 needs a value"; ramp=$2; shift 2 ;;
    --size) [ $# -ge 2 ] || die_usage "$1 needs a value"; size=$2; shift 2 ;;
    --prealloc) [ $# -ge 2 ] || die_usage "$1 needs a value"; prealloc=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die_usage "$1 needs a value"; rounds=$2; shift 2 ;;
    --workloads) [ $# -ge 2 ] || die_usage "$1 needs a value"; workloads_arg=$2; shift 2 ;;
    --dir) [ $# -ge 2 ] || die_usage "$1 needs a value"; parent_dir=$2; shift 2 ;;
    --blkrep-args) [ $# -ge 2 ] || die_usage "$1 needs a value"; blkrep_args=$2; shift 2 ;;
    --json) json=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
if ! is_uint "$seconds" || [ "$seconds" -lt 1 ]; then die_usage "--seconds must be a whole number >= 1"; fi
is_uint "$ramp" || die_usage "--ramp must be a whole number >= 0"
if ! is_uint "$rounds" || [ "$rounds" -lt 1 ]; then die_usage "--rounds must be a whole number >= 1"; fi
[ -d "$parent_dir" ] || die_usage "--dir $parent_dir is not a directory"
case "$prealloc" in falloc|full) ;; *) die_usage "--prealloc: falloc or full" ;; esac

# name:rw:bs:iodepth
all_workloads="randwrite-4k-qd16:randwrite:4k:16 randwrite-4k-qd32:randwrite:4k:32 \
write-1m-seq-qd16:write:1m:16 randread-4k-qd16:randread:4k:16"
selected=
if [ -z "$workloads_arg" ]; then
  selected=$all_workloads
else
  for want in $(echo "$workloads_arg" | tr ',' ' '); do
    found=
    for w in $all_workloads; do
      if [ "${w%%:*}" = "$want" ]; then found=$w; fi
    done
    [ -n "$found" ] || die_usage "unknown workload '$want'"
    selected="$selected $found"
  done
fi

# --- tools -----------------------------------------------------------------
[ -x "$BLKREP" ] || die "blkrep binary not found at $BLKREP (set BLKREP= or build it: \
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && make -C build blkrep)"
command -v "$QEMU_NBD" >/dev/null || die "qemu-nbd not found (apt-get install qemu-utils)"
command -v "$FIO" >/dev/null || die "fio not found (apt-get install fio)"
command -v fallocate >/dev/null || die "fallocate not found (util-linux)"
if ! "$FIO" --enghelp=nbd 2>/dev/null | grep -q '^uri'; then
  die "this fio has no nbd engine (fio --enghelp=nbd); install a fio built with libnbd"
fi
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3) || die "python3 not found (used for the report)"

# --- scratch directory and cleanup ------------------------------------------
work=$(mktemp -d "$parent_dir/nbd-bench.XXXXXX")
server_pid=
stop_server() {
  stop_gracefully "$server_pid"
  server_pid=
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

log() { [ "$json" = 1 ] || echo "$*" >&2; }

# User + system CPU time of a process and all its threads (io_uring's io-wq
# workers included), in clock ticks.
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

export_name=vol
results=$work/results.tsv
: >"$results"

# start_server KIND RUN_DIR: starts KIND (blkrep|qemu-nbd) serving RUN_DIR/vol.raw
# on RUN_DIR/nbd.sock; sets server_pid; returns once the export answers.
start_server() {
  local kind=$1 dir=$2
  fallocate -l "$size" "$dir/vol.raw" || die "fallocate -l $size in $dir failed"
  if [ "$prealloc" = full ]; then
    local bytes
    bytes=$(stat -c %s "$dir/vol.raw")
    dd if=/dev/zero of="$dir/vol.raw" bs=1M count=$(( (bytes + 1048575) / 1048576 )) \
      conv=notrunc,fsync status=none || die "writing zeroes to $dir/vol.raw failed"
    truncate -s "$bytes" "$dir/vol.raw"
  fi
  if [ "$kind" = blkrep ]; then
    # shellcheck disable=SC2086  # --blkrep-args is split into words on purpose
    "$BLKREP" track bench "$export_name=$dir/vol.raw" --nbd-socket "$dir/nbd.sock" \
      --state-dir "$dir/state" $blkrep_args 2>"$dir/server.log" &
  else
    "$QEMU_NBD" --socket "$dir/nbd.sock" --format raw --export-name "$export_name" \
      --persistent --shared 8 "$dir/vol.raw" 2>"$dir/server.log" &
  fi
  server_pid=$!
  for _ in $(seq 1 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$dir/server.log" >&2
      die "$kind exited before serving"
    fi
    [ -S "$dir/nbd.sock" ] && return 0
    sleep 0.05
  done
  die "$kind did not create $dir/nbd.sock within 10 s"
}

# run_one WORKLOAD_SPEC KIND ROUND
run_one() {
  local spec=$1 kind=$2 round=$3
  local name rw bs qd
  IFS=: read -r name rw bs qd <<<"$spec"
  local dir="$work/$name.$kind.$round"
  local t0 t1 t2 t3 t4
  mkdir -p "$dir"
  t0=$(date +%s.%N)
  start_server "$kind" "$dir"
  local uri="nbd+unix:///$export_name?socket=$dir/nbd.sock"
  local ticks0 ticks1
  ticks0=$(cpu_ticks "$server_pid")
  t1=$(date +%s.%N)
  # fio runs in the run's scratch directory: it may leave state files there.
  if ! (cd "$dir" && "$FIO" --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
      --iodepth="$qd" --time_based=1 --runtime="$seconds" --ramp_time="$ramp" \
      --norandommap=1 --randrepeat=1 --output-format=json --output="$dir/fio.json" \
      >"$dir/fio.log" 2>&1); then
    cat "$dir/fio.log" >&2
    die "fio failed: $name against $kind (round $round)"
  fi
  t2=$(date +%s.%N)
  ticks1=$(cpu_ticks "$server_pid")
  kill -0 "$server_pid" 2>/dev/null || die "$kind died during the run (see $dir/server.log)"
  stop_server
  t3=$(date +%s.%N)
  local dir_key="write"
  if [ "$rw" = randread ]; then dir_key="read"; fi
  "$PYTHON" - "$dir/fio.json" "$dir_key" "$name" "$kind" "$round" "$((ticks1 - ticks0))" \
    "$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')" "$clk_tck" >>"$results" <<'EOF'
import json, sys
path, key, name, kind, rnd, ticks, wall, clk_tck = sys.argv[1:9]
with open(path) as f:
    text = f.read()
doc = json.loads(text[text.index("{"):])  # fio may print notes before the JSON
job = doc["jobs"][0]
if job.get("error", 0):
    sys.exit("fio reported error %s" % job["error"])
d = job[key]
pct = d.get("clat_ns", {}).get("percentile", {})
p99 = pct.get("99.000000", 0)
cpu_percent = 100.0 * int(ticks) / int(clk_tck) / float(wall)
print("\t".join(str(x) for x in (name, kind, rnd, d["iops"], d["bw_bytes"],
                                  d["lat_ns"]["mean"], p99, d["total_ios"], cpu_percent)))
EOF
  local iops
  iops=$(awk -F'\t' -v n="$name" -v k="$kind" -v r="$round" \
    '$1==n && $2==k && $3==r {printf "%.0f", $4}' "$results")
  # Deleting the file drops its dirty pages; on ext4 a fallocated file that
  # took random 4 KiB writes has ~100 K extents and takes 10-15 s to delete.
  # Not timed, and done before the next server starts so it cannot overlap.
  rm -rf "$dir"
  t4=$(date +%s.%N)
  log "  round $round  $name  $kind: $iops IOPS ($(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" \
    'BEGIN { printf "start %.1f s, fio %.1f s, stop %.1f s, delete %.1f s", b - a, c - b, d - c, e - d }'))"
}

fs_type=$(df --output=fstype "$work" 2>/dev/null | tail -1 || true)
fs_type=${fs_type:-unknown}
log "nbd_bench: $work ($fs_type), ${size} files ($prealloc), ${seconds} s per run after ${ramp} s ramp, $rounds rounds"
log "  blkrep: $BLKREP ${blkrep_args:+($blkrep_args)}"
started=$(date +%s)
for round in $(seq 1 "$rounds"); do
  for spec in $selected; do
    run_one "$spec" blkrep "$round"
    run_one "$spec" qemu-nbd "$round"
  done
done
elapsed=$(( $(date +%s) - started ))

# --- report ------------------------------------------------------------------
"$PYTHON" - "$results" "$json" "$seconds" "$ramp" "$size" "$rounds" "$fs_type" \
  "$(nproc)" "$(uname -r)" "$(date +%F)" "$elapsed" "$BLKREP" "$blkrep_args" \
  "$("$FIO" --version)" "$("$QEMU_NBD" --version | head -1)" "$selected" "$prealloc" <<'EOF'
import json, statistics, sys
(path, as_json, seconds, ramp, size, rounds, fs_type, nproc, kernel, date, elapsed,
 blkrep, blkrep_args, fio_version, qemu_version, selected, prealloc) = sys.argv[1:18]
runs = {}
for line in open(path):
    name, kind, rnd, iops, bw, lat, p99, ios, cpu = line.rstrip("\n").split("\t")
    runs.setdefault(name, {}).setdefault(kind, []).append(
        dict(round=int(rnd), iops=float(iops), mb_per_s=float(bw) / 1e6,
             lat_mean_us=float(lat) / 1e3, clat_p99_us=float(p99) / 1e3, ios=int(ios),
             server_cpu_percent=float(cpu),
             server_cpu_us_per_request=float(cpu) * 1e4 / float(iops) if float(iops) else None))
order = [s.split(":") for s in selected.split()]
rows = []
for name, rw, bs, qd in order:
    row = dict(workload=name, rw=rw, bs=bs, iodepth=int(qd))
    for kind in ("blkrep", "qemu-nbd"):
        rs = runs[name][kind]
        row[kind] = dict(
            iops_median=statistics.median(r["iops"] for r in rs),
            mb_per_s_median=statistics.median(r["mb_per_s"] for r in rs),
            lat_mean_us_median=statistics.median(r["lat_mean_us"] for r in rs),
            clat_p99_us_median=statistics.median(r["clat_p99_us"] for r in rs),
            server_cpu_percent_median=statistics.median(r["server_cpu_percent"] for r in rs),
            server_cpu_us_per_request_median=statistics.median(
                r["server_cpu_us_per_request"] or 0 for r in rs),
            runs=rs)
    q = row["qemu-nbd"]["iops_median"]
    row["ratio"] = row["blkrep"]["iops_median"] / q if q else None
    rows.append(row)
meta = dict(date=date, nproc=int(nproc), kernel=kernel, filesystem=fs_type,
            seconds_per_run=int(seconds), ramp_seconds=int(ramp), size=size, prealloc=prealloc,
            rounds=int(rounds), elapsed_seconds=int(elapsed), blkrep=blkrep,
            blkrep_args=blkrep_args, fio=fio_version, qemu_nbd=qemu_version,
            order="per workload and round: blkrep, then qemu-nbd",
            target="ratio >= 0.9 on writes")
if as_json == "1":
    json.dump(dict(meta=meta, workloads=rows), sys.stdout, indent=2)
    print()
    sys.exit(0)
print("nbd_bench: %s, %s CPUs, Linux %s, %s; %s files (%s) on %s; %s s per run (+%s s ramp), "
      "median of %s rounds" % (date, nproc, kernel, fio_version, size, prealloc, fs_type,
                               seconds, ramp, rounds))
head = ["workload", "blkrep IOPS", "qemu-nbd IOPS", "blkrep MB/s", "qemu-nbd MB/s",
        "ratio blkrep/qemu-nbd"]
table = []
for r in rows:
    b, q = r["blkrep"], r["qemu-nbd"]
    ratio = "%.2f" % r["ratio"] if r["ratio"] is not None else "-"
    if r["rw"] != "randread" and r["ratio"] is not None and r["ratio"] < 0.9:
        ratio += " (< 0.9)"
    table.append([r["workload"], "{:,.0f}".format(b["iops_median"]),
                  "{:,.0f}".format(q["iops_median"]), "%.1f" % b["mb_per_s_median"],
                  "%.1f" % q["mb_per_s_median"], ratio])
widths = [max(len(x[i]) for x in [head] + table) for i in range(len(head))]
def fmt(cells):
    return " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(cells, widths)))
print(fmt(head))
print("-+-".join("-" * w for w in widths))
for t in table:
    print(fmt(t))
print()
print("per run IOPS (round order); medians of mean latency, p99 completion latency,")
print("server CPU (% of one CPU, all threads) and server CPU per request:")
for r in rows:
    for kind in ("blkrep", "qemu-nbd"):
        k = r[kind]
        print("  %-18s %-8s %-24s lat %7.1f µs  p99 %8.1f µs  cpu %4.0f%%  %6.1f µs/req" % (
            r["workload"], kind, " ".join("{:,.0f}".format(x["iops"]) for x in k["runs"]),
            k["lat_mean_us_median"], k["clat_p99_us_median"], k["server_cpu_percent_median"],
            k["server_cpu_us_per_request_median"]))
print("ratio = median blkrep IOPS / median qemu-nbd IOPS; target >= 0.9 on writes; %s s total"
      % elapsed)
EOF
}

main "$@"; exit $?
