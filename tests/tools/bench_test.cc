// Tests of `blkrep bench` as a user runs it (the real binary from
// $BLKREP_BIN, real trackers, receivers, qemu-nbd and rsync when present)
// and of its SVG chart (parsed as XML by python3's xml.etree).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/core/temp_dir.h"
#include "tests/tools/cli_test_util.h"
#include "tools/bench_chart.h"
#include "tracker/trace.h"

extern char** environ;

namespace blkrep::tools {
namespace {

using namespace cli_test;  // NOLINT: the shared runner

using core::test_support::TempDir;
using nlohmann::json;

// A run of the bench whose scratch directory is made inside the test's own.
std::vector<std::string> Small(const TempDir& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"bench", "--size", "8M", "--dirty", "0.02,0.2", "--duration", "1", "--dir",
                                   dir.path() + "/scratch"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

bool IsNumber(const json& j) { return j.is_number() && j.get<double>() >= 0; }

void ExpectCycleConsistent(const json& c, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(c.is_object());
  EXPECT_TRUE(c["ok"].get<bool>());
  EXPECT_TRUE(c["error"].is_null());
  for (const char* key : {"seconds", "blocks_sent", "data_blocks", "zero_blocks", "raw_bytes", "payload_bytes",
                          "bytes_sent", "bytes_received", "wire_bytes", "receiver_bytes"}) {
    EXPECT_TRUE(IsNumber(c[key])) << key;
  }
  EXPECT_GT(c["bytes_sent"].get<std::uint64_t>(), 0u);
  // The wire bytes the shipper counted are the receiver's own count (ACK).
  EXPECT_EQ(c["receiver_bytes"].get<std::uint64_t>(), c["bytes_sent"].get<std::uint64_t>());
  EXPECT_TRUE(c["wire_bytes_match"].get<bool>());
  EXPECT_EQ(c["blocks_sent"].get<std::uint64_t>(),
            c["data_blocks"].get<std::uint64_t>() + c["zero_blocks"].get<std::uint64_t>() +
                c["kept_blocks"].get<std::uint64_t>());
}

// Python that parses an SVG and prints "panel series x y" per point; the
// chart's text must hold every word of `words` and none of `absent`.
std::string SvgPoints(const TempDir& dir, const std::string& svg_path,
                      const std::vector<std::string>& words = {"dirty fraction", "blkrep", "rsync"},
                      const std::vector<std::string>& absent = {}) {
  std::string word_list, absent_list;
  for (const auto& w : words) word_list += "'" + w + "', ";
  for (const auto& w : absent) absent_list += "'" + w + "', ";
  std::string script = dir.path() + "/points.py";
  std::ofstream(script) << "import sys, xml.etree.ElementTree as ET\n"
                           "root = ET.parse(sys.argv[1]).getroot()\n"
                           "ns = '{http://www.w3.org/2000/svg}'\n"
                           "assert root.tag == ns + 'svg', root.tag\n"
                           "assert root.find(ns + 'title') is not None\n"
                           "texts = ' '.join(t.text or '' for t in root.iter(ns + 'text'))\n"
                           "for word in ('Cycle time', 'Bytes on the wire', " + word_list + "):\n"
                           "    assert word in texts, word\n"
                           "for word in (" + absent_list + "):\n"
                           "    assert word not in texts, word\n"
                           "assert len(list(root.iter(ns + 'line'))) >= 8\n"
                           "for c in root.iter(ns + 'circle'):\n"
                           "    print(c.get('data-panel'), c.get('data-series'), c.get('data-x'), c.get('data-y'))\n";
  std::string out = dir.path() + "/points.out";
  std::string cmd = "/usr/bin/python3 " + script + " " + svg_path + " > " + out + " 2>&1";
  int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << Slurp(out);
  return Slurp(out);
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The processes whose command line mentions `text` (leftovers of a run).
std::vector<std::string> ProcessesMentioning(const std::string& text) {
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = Slurp(entry.path().string() + "/cmdline");
    for (char& c : cmdline) {
      if (c == '\0') c = ' ';
    }
    if (Contains(cmdline, text)) found.push_back(name + ": " + cmdline);
  }
  return found;
}

TEST(BenchTest, EndToEndJsonIsCompleteAndSelfConsistent) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  const std::string svg = dir.path() + "/chart.svg";
  RunResult r = Blkrep(dir, Small(dir, {"--json", "--svg", svg, "--write-size", "4K:3,128K:1", "--zero-fraction",
                                        "0.2", "--skew", "80/20"}));
  ASSERT_EQ(r.exit_status, 0) << r.err;
  json doc = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  EXPECT_TRUE(doc["checks"]["ok"].get<bool>()) << doc["checks"].dump();
  EXPECT_EQ(doc["options"]["volume_bytes"].get<std::uint64_t>(), 8u << 20);

  // Tracker overhead: direct and blkrep measured; qemu-nbd measured or skipped with a reason.
  const json& o = doc["overhead"];
  for (const char* side : {"direct", "blkrep", "qemu_nbd"}) {
    SCOPED_TRACE(side);
    if (std::string(side) == "qemu_nbd" && o[side]["skipped"].is_string()) {
      EXPECT_FALSE(o[side]["skipped"].get<std::string>().empty());
      continue;
    }
    EXPECT_TRUE(o[side]["skipped"].is_null());
    EXPECT_GT(o[side]["writes"].get<std::uint64_t>(), 0u);
    EXPECT_GT(o[side]["mb_per_s"].get<double>(), 0);
    EXPECT_GT(o[side]["iops"].get<double>(), 0);
    // The same deterministic workload on every side.
    EXPECT_EQ(o[side]["workload_digest"], o["direct"]["workload_digest"]);
  }
  EXPECT_GT(o["ratio_blkrep_direct_mb_per_s"].get<double>(), 0);

  // Full sync: every block of the volume.
  const json& full = doc["full_sync"];
  ExpectCycleConsistent(full, "full sync");
  EXPECT_EQ(full["mode"], "full");
  EXPECT_EQ(full["blocks_sent"].get<std::uint64_t>(), (8u << 20) / 65536);
  EXPECT_GT(full["mb_per_s"].get<double>(), 0);

  // Incremental cycles: one row per dirty fraction; the journal and the
  // cycle saw exactly the blocks the generator wrote.
  const json& inc = doc["incremental"];
  ASSERT_EQ(inc.size(), 2u);
  std::uint64_t previous = 0;
  for (const json& row : inc) {
    const double f = row["dirty_fraction"].get<double>();
    ExpectCycleConsistent(row["cycle"], "incremental " + std::to_string(f));
    EXPECT_EQ(row["cycle"]["mode"], "incremental");
    const auto dirtied = row["dirtied_blocks"].get<std::uint64_t>();
    EXPECT_GE(dirtied, row["target_blocks"].get<std::uint64_t>());
    EXPECT_DOUBLE_EQ(row["achieved_dirty_fraction"].get<double>(), static_cast<double>(dirtied) / 128);
    EXPECT_GT(dirtied, previous);
    previous = dirtied;
    EXPECT_EQ(row["journal_dirty_blocks"].get<std::uint64_t>(), dirtied);
    EXPECT_TRUE(row["journal_matches_workload"].get<bool>());
    EXPECT_EQ(row["cycle"]["blocks_sent"].get<std::uint64_t>(), dirtied);
    EXPECT_FALSE(row["workload"]["capped_by_duration"].get<bool>());
    if (row["rsync"]["skipped"].is_null()) {
      EXPECT_GT(row["rsync"]["seconds"].get<double>(), 0);
      EXPECT_GT(row["rsync"]["bytes_sent"].get<std::uint64_t>(), 0u);
      EXPECT_GT(row["ratio_wire_bytes_blkrep_rsync"].get<double>(), 0);
    } else {
      EXPECT_TRUE(row["rsync"]["skipped"].is_string());
    }
  }
  // 20% of the writes were all zeroes: some zero blocks went as such.
  EXPECT_GT(inc[1]["cycle"]["zero_blocks"].get<std::uint64_t>() + inc[0]["cycle"]["zero_blocks"].get<std::uint64_t>(),
            0u);

  // Resync: the damaged blocks and only those.
  const json& rs = doc["resync"];
  ExpectCycleConsistent(rs["cycle"], "resync");
  EXPECT_EQ(rs["cycle"]["mode"], "resync");
  EXPECT_EQ(rs["cycle"]["blocks_sent"], rs["damaged_blocks"]);
  EXPECT_EQ(rs["compared_blocks"].get<std::uint64_t>(), (8u << 20) / 65536);
  EXPECT_GT(rs["hash_bytes_per_s"].get<double>(), 0);

  // The scratch directory is gone and no process of the run is left.
  EXPECT_FALSE(std::filesystem::exists(doc["meta"]["scratch_dir"].get<std::string>()));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path() + "/scratch"));
  EXPECT_TRUE(ProcessesMentioning(dir.path() + "/scratch").empty());

  // The chart holds the values of the report (rsync only where measured).
  const bool rsync_ran = inc[0]["rsync"]["skipped"].is_null();
  std::string points = rsync_ran ? SvgPoints(dir, svg) : SvgPoints(dir, svg, {"dirty fraction", "blkrep"}, {"rsync"});
  for (const json& row : inc) {
    char x[64];
    // At the fraction asked for; a row --duration stopped, at the one reached.
    std::snprintf(x, sizeof x, "%.15g",
                  row["workload"]["capped_by_duration"].get<bool>() ? row["achieved_dirty_fraction"].get<double>()
                                                                     : row["dirty_fraction"].get<double>());
    const auto wire = row["cycle"]["wire_bytes"].get<std::uint64_t>();
    EXPECT_TRUE(Contains(points, "wire_bytes blkrep " + std::string(x) + " " + std::to_string(wire))) << points;
    EXPECT_TRUE(Contains(points, "seconds blkrep " + std::string(x) + " ")) << points;
    if (row["rsync"]["skipped"].is_null()) {
      const auto rwire = row["rsync"]["wire_bytes"].get<std::uint64_t>();
      EXPECT_TRUE(Contains(points, "wire_bytes rsync " + std::string(x) + " " + std::to_string(rwire))) << points;
    }
  }
}

TEST(BenchTest, TableNamesEveryMeasurement) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  RunResult r = Blkrep(dir, Small(dir, {"--no-peers", "--dirty", "0.05"}));
  ASSERT_EQ(r.exit_status, 0) << r.err;
  for (const char* row : {"writes through blkrep's NBD: MB/s", "writes through blkrep's NBD: IOPS", "full sync: time",
                          "incremental 5%: cycle time", "incremental 5%: wire", "incremental 5%: compression",
                          "resync: time", "resync: hash throughput", "checks: ok"}) {
    EXPECT_TRUE(Contains(r.out, row)) << row << "\n" << r.out;
  }
  EXPECT_TRUE(Contains(r.out, "qemu-nbd skipped: --no-peers")) << r.out;
}

TEST(BenchTest, SameSeedWritesTheSameBlocks) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  auto digests = [&](const std::string& seed) {
    RunResult r = Blkrep(dir, Small(dir, {"--no-peers", "--json", "--seed", seed, "--skew", "1.2", "--write-size",
                                          "4K:1,64K:1"}));
    EXPECT_EQ(r.exit_status, 0) << r.err;
    json doc = json::parse(r.out, nullptr, false);
    std::vector<std::string> out;
    if (doc.is_discarded()) return out;
    out.push_back(doc["overhead"]["blkrep"]["workload_digest"].get<std::string>());
    for (const json& row : doc["incremental"]) {
      out.push_back(row["workload"]["workload_digest"].get<std::string>() + "/" +
                    std::to_string(row["dirtied_blocks"].get<std::uint64_t>()) + "/" +
                    std::to_string(row["cycle"]["blocks_sent"].get<std::uint64_t>()));
    }
    return out;
  };
  auto a = digests("7"), b = digests("7"), c = digests("8");
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  ASSERT_EQ(c.size(), 3u);
  EXPECT_NE(a[0], c[0]);
  EXPECT_NE(a[1], c[1]);
}

// --volume without --allow-writes: the bench runs on a copy; the volume's
// bytes (and its zero blocks, sent as such in the full sync) are as before.
TEST(BenchTest, AGivenVolumeIsOnlyReadWithoutAllowWrites) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  const std::string volume = dir.path() + "/given.img";
  {
    std::ofstream out(volume, std::ios::binary);
    std::string data(4u << 20, '\0');
    for (std::size_t i = 0; i < (1u << 20); ++i) data[i] = static_cast<char>(i * 7 + 1);
    out << data;
  }
  const std::string before = Slurp(volume);
  RunResult r = Blkrep(dir, {"bench", "--volume", volume, "--dirty", "0.1", "--duration", "1", "--no-peers", "--json",
                             "--dir", dir.path() + "/scratch"});
  ASSERT_EQ(r.exit_status, 0) << r.err;
  json doc = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  EXPECT_TRUE(doc["checks"]["ok"].get<bool>()) << doc["checks"].dump();
  EXPECT_EQ(doc["options"]["volume_bytes"].get<std::uint64_t>(), 4u << 20);
  EXPECT_EQ(doc["full_sync"]["zero_blocks"].get<std::uint64_t>(), (3u << 20) / 65536);
  EXPECT_EQ(doc["full_sync"]["data_blocks"].get<std::uint64_t>(), (1u << 20) / 65536);
  EXPECT_TRUE(Slurp(volume) == before) << "the given volume was written";
}

// Writes `trace` (one 8 MiB volume "disk0") with records at the given times.
std::string WriteTrace(const TempDir& dir, const std::string& name, const std::vector<tracker::TraceRecord>& records) {
  tracker::Trace trace;
  trace.volumes = {{"disk0", 8u << 20}};
  trace.records = records;
  auto bytes = tracker::EncodeTrace(trace);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  const std::string path = dir.path() + "/" + name;
  std::ofstream out(path, std::ios::binary);
  if (bytes.ok()) out.write(reinterpret_cast<const char*>(bytes->data()), static_cast<std::streamsize>(bytes->size()));
  return path;
}

constexpr std::uint64_t kMs = 1'000'000;

TEST(BenchTest, BadFlagsExitTwoWithOneLine) {
  TempDir dir;
  const std::vector<std::vector<std::string>> bad = {
      {"bench", "--size", "0"},
      {"bench", "--size", "1000"},
      {"bench", "--size", "16M", "--volume", "x"},
      {"bench", "--block-size", "3K"},
      {"bench", "--dirty", "0"},
      {"bench", "--dirty", "0.5,0.1"},
      {"bench", "--dirty", "1.5"},
      {"bench", "--write-size", "100"},
      {"bench", "--write-size", "4K:0"},
      {"bench", "--write-size", "64M"},
      {"bench", "--skew", "-1"},
      {"bench", "--skew", "100/20"},
      {"bench", "--compressibility", "101"},
      {"bench", "--zero-fraction", "2"},
      {"bench", "--duration", "0"},
      {"bench", "--zstd-level", "30"},
      {"bench", "--seed", "x"},
      {"bench", "--dir", "/nonexistent-dir-of-the-bench-test"},
      {"bench", "--allow-writes"},
      {"bench", "--speed", "2"},
      {"bench", "--replay", dir.path() + "/no-such-trace"},
      {"bench", "--replay", "t", "--size", "16M"},
      {"bench", "--bogus"},
      {"bench", "extra"},
  };
  for (const auto& args : bad) {
    RunResult r = Blkrep(dir, args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.exit_status, 2) << joined << r.err;
    EXPECT_EQ(r.err.rfind("blkrep: error: ", 0), 0u) << joined << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << joined << r.err;
    EXPECT_TRUE(r.out.empty()) << joined;
  }
  // --help describes every knob.
  RunResult help = Blkrep(dir, {"bench", "--help"});
  EXPECT_EQ(help.exit_status, 0) << help.err;
  for (const char* knob : {"--size", "--volume", "--block-size", "--dirty", "--write-size", "--skew",
                           "--compressibility", "--zero-fraction", "--duration", "--damage", "--zstd-level",
                           "--seed", "--json", "--svg", "--replay", "--speed", "--cycle-every"}) {
    EXPECT_TRUE(Contains(help.out, std::string("\n  ") + knob) || Contains(help.out, std::string(" ") + knob + " "))
        << knob << "\n" << help.out;
  }
  EXPECT_TRUE(Contains(help.out, "bench/README.md")) << help.out;
  // With a real trace, each refusal is for the flag itself.
  const std::string trace = WriteTrace(dir, "ok.trace", {{kMs, 0, 4096, 0, tracker::TraceOp::kWrite}});
  const std::vector<std::pair<std::vector<std::string>, std::string>> replay_bad = {
      {{"--size", "16M"}, "--size does not apply"},
      {{"--volume", "x"}, "--volume does not apply"},
      {{"--dirty", "0.1"}, "--dirty does not apply"},
      {{"--write-size", "8K"}, "--write-size does not apply"},
      {{"--skew", "1.2"}, "--skew does not apply"},
      {{"--duration", "5"}, "--duration does not apply"},
      {{"--damage", "0.1"}, "--damage does not apply"},
      {{"--no-peers"}, "--no-peers does not apply"},
      {{"--allow-writes"}, "--allow-writes does not apply"},
      {{"--cycle-every", "0.5ms"}, "--cycle-every: expected from 1ms to 366 days"},
      {{"--cycle-every", "367d"}, "--cycle-every: expected from 1ms to 366 days"},
      {{"--cycle-every", "5x"}, "--cycle-every: expected a duration above 0"},
      {{"--speed", "0"}, "--speed: expected a factor above 0"},
  };
  for (const auto& [extra, message] : replay_bad) {
    std::vector<std::string> args = {"bench", "--replay", trace};
    args.insert(args.end(), extra.begin(), extra.end());
    RunResult r = Blkrep(dir, args);
    EXPECT_EQ(r.exit_status, 2) << message << ": " << r.err;
    EXPECT_TRUE(Contains(r.err, message)) << message << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

// Starts a bench that writes for 30 s (a Zipf skew of 5 keeps hitting the
// same few regions: the incremental phase cannot reach 90% dirty) in
// `scratch`, and waits until the run's own tracker serves (its socket
// exists). 0 if it did not come up.
pid_t StartLongBench(const TempDir& dir, const std::string& scratch, const std::string& tag) {
  std::filesystem::create_directory(scratch);
  pid_t pid = Spawn(dir,
                    {Binary(), "bench", "--size", "8M", "--duration", "30", "--dirty", "0.9", "--skew", "5",
                     "--no-peers", "--dir", scratch},
                    tag);
  if (pid <= 0) return 0;
  for (int i = 0; i < 3000; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (const auto& d : std::filesystem::directory_iterator(scratch)) {
      if (std::filesystem::exists(d.path() / "nbd.sock")) return pid;
    }
  }
  ::kill(pid, SIGKILL);
  Wait(dir, pid, tag);
  return 0;
}

TEST(BenchTest, InterruptStopsEveryProcessAndRemovesTheScratchDirectory) {
  TempDir dir;
  const std::string scratch = dir.path() + "/scratch";
  pid_t pid = StartLongBench(dir, scratch, "interrupted");
  ASSERT_GT(pid, 0) << Slurp(dir.path() + "/interrupted.stderr");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::kill(pid, SIGINT);
  RunResult r = Wait(dir, pid, "interrupted");
  EXPECT_EQ(r.exit_status, 130) << r.err;
  EXPECT_TRUE(Contains(r.err, "interrupted by SIGINT")) << r.err;
  EXPECT_TRUE(std::filesystem::is_empty(scratch));
  EXPECT_TRUE(ProcessesMentioning(scratch).empty());
}

// A bench killed outright cannot stop its processes itself: they get
// SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop on their own.
TEST(BenchTest, AKilledBenchLeavesNoProcessBehind) {
  TempDir dir;
  const std::string scratch = dir.path() + "/scratch";
  pid_t pid = StartLongBench(dir, scratch, "killed");
  ASSERT_GT(pid, 0) << Slurp(dir.path() + "/killed.stderr");
  std::vector<std::string> before = ProcessesMentioning(scratch);
  EXPECT_TRUE(std::any_of(before.begin(), before.end(),
                          [](const std::string& p) { return p.find(" track bench ") != std::string::npos; }))
      << "the run's tracker is not running";
  ::kill(pid, SIGKILL);
  RunResult r = Wait(dir, pid, "killed");
  EXPECT_EQ(r.exit_status, 128 + SIGKILL);
  std::vector<std::string> left = ProcessesMentioning(scratch);
  for (int i = 0; i < 600 && !left.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    left = ProcessesMentioning(scratch);
  }
  EXPECT_TRUE(left.empty()) << left.front();
}

bool OnPath(const std::string& program) {
  return std::system(("command -v " + program + " >/dev/null 2>&1").c_str()) == 0;
}

// A trace recorded by `blkrep track --trace` of known writes (qemu-io through
// the tracker's NBD export), replayed: before the cycle the journal marks
// exactly the traced blocks, and the cycle sends exactly those.
TEST(BenchTest, AReplayedTraceMarksAndSendsExactlyTheTracedBlocks) {
  if (!OnPath("qemu-io")) GTEST_SKIP() << "qemu-io not found (apt-get install qemu-utils)";
  TempDir dir;
  const std::string volume = dir.path() + "/disk0.img", trace = dir.path() + "/guest.trace";
  const std::string socket = dir.path() + "/nbd.sock", state = dir.path() + "/state";
  std::filesystem::create_directory(dir.path() + "/scratch");
  std::filesystem::resize_file((std::ofstream(volume), volume), 8u << 20);
  pid_t tracker = Spawn(dir, {Binary(), "track", "g", "disk0=" + volume, "--nbd-socket", socket, "--trace", trace,
                              "--state-dir", state},
                        "track");
  ASSERT_GT(tracker, 0);
  for (int i = 0; i < 500 && !std::filesystem::exists(socket); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(std::filesystem::exists(socket)) << Slurp(dir.path() + "/track.stderr");
  // Blocks of 64 KiB: 0 (a partial write), 16-17, 48 (write-zeroes), 80 (trim),
  // 100 written twice.
  RunResult io = Wait(dir,
                      Spawn(dir, {"qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", "-c", "write -P 0x22 1M 128k",
                                  "-c", "write -z 3M 64k", "-c", "discard 5M 64k", "-c", "write -P 0x33 6400k 4k",
                                  "-c", "write -P 0x44 6400k 64k", "nbd+unix:///disk0?socket=" + socket},
                            "qemu-io"),
                      "qemu-io");
  ::kill(tracker, SIGTERM);
  RunResult stopped = Wait(dir, tracker, "track");
  ASSERT_EQ(io.exit_status, 0) << io.err << io.out;
  ASSERT_EQ(stopped.exit_status, 0) << stopped.err;

  RunResult r = Blkrep(dir, {"bench", "--replay", trace, "--json", "--keep", "--dir", dir.path() + "/scratch"});
  ASSERT_EQ(r.exit_status, 0) << r.err << r.out;
  json doc = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  EXPECT_TRUE(doc["checks"]["ok"].get<bool>()) << doc["checks"].dump();
  const json& replay = doc["replay"];
  EXPECT_GE(replay["records"].get<std::uint64_t>(), 6u);
  ASSERT_EQ(replay["volumes"].size(), 1u);
  EXPECT_EQ(replay["volumes"][0]["name"], "disk0");
  EXPECT_EQ(replay["volumes"][0]["size_bytes"].get<std::uint64_t>(), 8u << 20);
  ASSERT_EQ(replay["cycles"].size(), 1u);
  const json& c = replay["cycles"][0];
  EXPECT_EQ(c["traced_blocks"].get<std::uint64_t>(), 6u);
  EXPECT_EQ(c["journal_dirty_blocks"].get<std::uint64_t>(), 6u);
  EXPECT_TRUE(c["journal_matches_trace"].get<bool>());
  ExpectCycleConsistent(c["cycle"], "replay cycle");
  EXPECT_EQ(c["cycle"]["mode"], "incremental");
  EXPECT_EQ(c["cycle"]["blocks_sent"].get<std::uint64_t>(), 6u);
  EXPECT_GE(c["cycle"]["zero_blocks"].get<std::uint64_t>(), 2u);  // the write-zeroes and the trim

  // What `blkrep journal inspect` said before the cycle, kept in the scratch
  // directory: exactly the traced blocks, as ranges.
  const std::string kept = doc["meta"]["scratch_dir"].get<std::string>();
  json inspect = json::parse(Slurp(kept + "/logs/replay-cycle-1-inspect.out"), nullptr, false);
  ASSERT_FALSE(inspect.is_discarded());
  json expected = json::parse("[[0,1],[16,2],[48,1],[80,1],[100,1]]");
  bool found = false;
  for (const json& t : inspect["volumes"][0]["targets"]) {
    if (t["name"] == "bench-1") {
      EXPECT_EQ(t["dirty_ranges"], expected) << t.dump();
      found = true;
    }
  }
  EXPECT_TRUE(found) << inspect.dump();
  // And the kept state agrees now: nothing is left dirty after the cycle.
  RunResult after = Blkrep(dir, {"journal", "inspect", "bench", "--json", "--state-dir", kept + "/state"});
  ASSERT_EQ(after.exit_status, 0) << after.err;
  json now = json::parse(after.out, nullptr, false);
  ASSERT_FALSE(now.is_discarded());
  EXPECT_EQ(now["targets"][0]["dirty_blocks"].get<std::uint64_t>(), 0u) << now.dump();
  EXPECT_TRUE(ProcessesMentioning(kept).empty());
}

// --cycle-every runs a cycle at each boundary of trace time that had
// records (each sending exactly the blocks traced since the last), skips
// quiet intervals, and charts the cycles; a torn tail is named in the table.
TEST(BenchTest, ReplayCyclesEveryIntervalOfTraceTime) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  using tracker::TraceOp;
  // 64 KiB blocks: 0-1 and 2 (zeroes) before 1 s; 5 before 2 s; nothing from
  // 2 s to 3 s; 0 and 7 (trim) at 3.7 s.
  const std::string trace = WriteTrace(dir, "cycles.trace",
                                       {{100 * kMs, 0, 128 << 10, 0, TraceOp::kWrite},
                                        {200 * kMs, 2 << 16, 4096, 0, TraceOp::kWriteZeroes},
                                        {1500 * kMs, 5 << 16, 512, 0, TraceOp::kWrite},
                                        {3700 * kMs, 0, 4096, 0, TraceOp::kWrite},
                                        {3700 * kMs, 7 << 16, 65536, 0, TraceOp::kTrim}});
  const std::string svg = dir.path() + "/replay.svg";
  RunResult r = Blkrep(dir, {"bench", "--replay", trace, "--cycle-every", "1s", "--json", "--svg", svg, "--dir",
                             dir.path() + "/scratch"});
  ASSERT_EQ(r.exit_status, 0) << r.err << r.out;
  json doc = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  EXPECT_TRUE(doc["checks"]["ok"].get<bool>()) << doc["checks"].dump();
  const json& replay = doc["replay"];
  EXPECT_EQ(replay["records"].get<std::uint64_t>(), 5u);
  EXPECT_EQ(replay["quiet_intervals"].get<std::uint64_t>(), 1u);
  EXPECT_TRUE(replay["torn_tail"].is_null());
  const json& cycles = replay["cycles"];
  ASSERT_EQ(cycles.size(), 3u) << cycles.dump();
  const std::uint64_t blocks[3] = {3, 1, 2};
  const double at[3] = {1.0, 2.0, 3.7};
  const std::uint64_t records[3] = {2, 1, 2};
  for (std::size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_DOUBLE_EQ(cycles[i]["trace_time_seconds"].get<double>(), at[i]);
    EXPECT_EQ(cycles[i]["records"].get<std::uint64_t>(), records[i]);
    EXPECT_EQ(cycles[i]["traced_blocks"].get<std::uint64_t>(), blocks[i]);
    EXPECT_EQ(cycles[i]["journal_dirty_blocks"].get<std::uint64_t>(), blocks[i]);
    EXPECT_TRUE(cycles[i]["journal_matches_trace"].get<bool>());
    ExpectCycleConsistent(cycles[i]["cycle"], "replay cycle");
    EXPECT_EQ(cycles[i]["cycle"]["blocks_sent"].get<std::uint64_t>(), blocks[i]);
    EXPECT_DOUBLE_EQ(cycles[i]["dirty_fraction"].get<double>(), static_cast<double>(blocks[i]) / 128);
  }
  // The chart: one blkrep point per cycle at its trace time, no rsync.
  std::string points = SvgPoints(dir, svg, {"trace time", "blkrep"}, {"rsync", "dirty fraction"});
  for (std::size_t i = 0; i < 3; ++i) {
    char x[64];
    std::snprintf(x, sizeof x, "%.15g", at[i]);
    EXPECT_TRUE(Contains(points, "wire_bytes blkrep (replay cycles) " + std::string(x) + " " +
                                     std::to_string(cycles[i]["cycle"]["wire_bytes"].get<std::uint64_t>())))
        << points;
  }
  EXPECT_EQ(std::count(points.begin(), points.end(), '\n'), 6) << points;

  // The same records in batches of two, cut inside the last batch (a
  // tracker killed while writing): the table names the torn tail.
  tracker::Trace two;
  two.volumes = {{"disk0", 8u << 20}};
  auto whole = tracker::ReadTrace(trace);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  two.records = whole->records;
  auto encoded = tracker::EncodeTrace(two, 2);
  ASSERT_TRUE(encoded.ok());
  const std::string torn = dir.path() + "/torn.trace";
  std::ofstream(torn, std::ios::binary)
      .write(reinterpret_cast<const char*>(encoded->data()), static_cast<std::streamsize>(encoded->size() - 10));
  RunResult t = Blkrep(dir, {"bench", "--replay", torn, "--dir", dir.path() + "/scratch"});
  EXPECT_EQ(t.exit_status, 0) << t.err << t.out;
  EXPECT_TRUE(Contains(t.out, "4 records")) << t.out;
  EXPECT_TRUE(Contains(t.out, "torn tail (the tracker stopped while writing; not replayed): ")) << t.out;
  EXPECT_TRUE(Contains(t.out, "checks: ok")) << t.out;
  // Cut inside its only batch: no records, refused.
  const std::string cut = dir.path() + "/cut.trace";
  std::ofstream(cut, std::ios::binary) << Slurp(trace).substr(0, Slurp(trace).size() - 10);
  RunResult c = Blkrep(dir, {"bench", "--replay", cut, "--dir", dir.path() + "/scratch"});
  EXPECT_EQ(c.exit_status, 2) << c.err << c.out;
  EXPECT_TRUE(Contains(c.err, "the trace holds no records (nothing to replay); torn tail: ")) << c.err;
  const std::string empty = WriteTrace(dir, "empty.trace", {});
  RunResult e = Blkrep(dir, {"bench", "--replay", empty, "--dir", dir.path() + "/scratch"});
  EXPECT_EQ(e.exit_status, 2) << e.err << e.out;
  EXPECT_EQ(e.err, "blkrep: error: bench: --replay " + empty +
                       ": the trace holds no records (nothing to replay)\n");
  EXPECT_TRUE(std::filesystem::is_empty(dir.path() + "/scratch"));
}

// A cycle boundary is the decimal --cycle-every in whole nanoseconds, not a
// nanosecond short of it (2.01 * 1e9 is 2009999999.99... in binary).
TEST(BenchTest, ReplayCycleBoundariesAreExactNanoseconds) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  const std::string trace = WriteTrace(dir, "edge.trace",
                                       {{2'009'999'999, 0, 4096, 0, tracker::TraceOp::kWrite},
                                        {2'010'000'000, 1 << 16, 4096, 0, tracker::TraceOp::kWrite}});
  RunResult r = Blkrep(dir, {"bench", "--replay", trace, "--cycle-every", "2.01", "--json", "--dir",
                             dir.path() + "/scratch"});
  ASSERT_EQ(r.exit_status, 0) << r.err << r.out;
  json doc = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  const json& cycles = doc["replay"]["cycles"];
  ASSERT_EQ(cycles.size(), 2u) << cycles.dump();
  EXPECT_DOUBLE_EQ(cycles[0]["trace_time_seconds"].get<double>(), 2.01);
  EXPECT_EQ(cycles[0]["records"].get<std::uint64_t>(), 1u);
  EXPECT_EQ(cycles[1]["records"].get<std::uint64_t>(), 1u);
  EXPECT_EQ(doc["replay"]["quiet_intervals"].get<std::uint64_t>(), 0u);
}

// Requests in flight are not ordered by NBD: a write and a write-zeroes of
// the same block, traced in that order, must land in that order on every
// replay. The replica ends all zeroes, twice.
TEST(BenchTest, ReplayIsDeterministicForOverlappingRequests) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  std::vector<tracker::TraceRecord> records;
  for (std::uint64_t i = 0; i < 120; ++i) {
    records.push_back({i * kMs, i << 16, 65536, 0, tracker::TraceOp::kWrite});
    records.push_back({i * kMs, i << 16, 65536, 0, tracker::TraceOp::kWriteZeroes});
  }
  const std::string trace = WriteTrace(dir, "pairs.trace", records);
  std::string replicas[2];
  for (int run = 0; run < 2; ++run) {
    RunResult r = Blkrep(dir, {"bench", "--replay", trace, "--compressibility", "0", "--json", "--keep", "--dir",
                               dir.path() + "/scratch"});
    ASSERT_EQ(r.exit_status, 0) << r.err << r.out;
    json doc = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << r.out;
    EXPECT_TRUE(doc["checks"]["ok"].get<bool>()) << doc["checks"].dump();
    ASSERT_EQ(doc["replay"]["cycles"].size(), 1u);
    const json& c = doc["replay"]["cycles"][0]["cycle"];
    EXPECT_EQ(c["blocks_sent"].get<std::uint64_t>(), 120u);
    EXPECT_EQ(c["zero_blocks"].get<std::uint64_t>(), 120u) << c.dump();
    const std::string kept = doc["meta"]["scratch_dir"].get<std::string>();
    replicas[run] = Slurp(kept + "/replicas/bench/disk0.img");
    std::filesystem::remove_all(kept);
  }
  ASSERT_EQ(replicas[0].size(), 8u << 20);
  EXPECT_TRUE(replicas[0] == replicas[1]) << "two replays of one trace left different replicas";
  for (int run = 0; run < 2; ++run) {
    const std::size_t data = replicas[run].find_first_not_of('\0');
    EXPECT_EQ(data, std::string::npos) << "replay " << run << ": a write landed after its write-zeroes (byte " << data
                                       << ")";
  }
}

// A row that --duration stops before its dirty fraction is named, charted
// and reported at the fraction it reached, and flagged.
TEST(BenchTest, ARowCappedByDurationIsReportedAtTheFractionItReached) {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/scratch");
  const std::string svg = dir.path() + "/capped.svg";
  // A Zipf skew of 5 keeps hitting a few regions: 90% is out of reach.
  RunResult r = Blkrep(dir, {"bench", "--size", "8M", "--dirty", "0.9", "--skew", "5", "--duration", "0.5",
                             "--no-peers", "--svg", svg, "--dir", dir.path() + "/scratch"});
  ASSERT_EQ(r.exit_status, 0) << r.err << r.out;
  EXPECT_TRUE(Contains(r.out, "incremental 90% (capped: ")) << r.out;
  EXPECT_TRUE(Contains(r.out, "note: incremental 90% stopped at --duration with ")) << r.out;
  EXPECT_TRUE(Contains(r.out, "checks: ok")) << r.out;
  std::string points = SvgPoints(dir, svg, {"dirty fraction", "blkrep"}, {"rsync"});
  EXPECT_FALSE(Contains(points, " 0.9 ")) << points;
  RunResult j = Blkrep(dir, {"bench", "--size", "8M", "--dirty", "0.9", "--skew", "5", "--duration", "0.5",
                             "--no-peers", "--json", "--dir", dir.path() + "/scratch"});
  ASSERT_EQ(j.exit_status, 0) << j.err;
  json doc = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << j.out;
  const json& row = doc["incremental"][0];
  EXPECT_TRUE(row["workload"]["capped_by_duration"].get<bool>());
  EXPECT_DOUBLE_EQ(row["dirty_fraction"].get<double>(), 0.9);
  const auto dirtied = row["dirtied_blocks"].get<std::uint64_t>();
  EXPECT_LT(dirtied, row["target_blocks"].get<std::uint64_t>());
  EXPECT_DOUBLE_EQ(row["achieved_dirty_fraction"].get<double>(), static_cast<double>(dirtied) / 128);
  EXPECT_EQ(row["cycle"]["blocks_sent"].get<std::uint64_t>(), dirtied);
}

TEST(BenchChartTest, SvgParsesAndHoldsEverySeriesValue) {
  TempDir dir;
  std::vector<bench::ChartSeries> series(2);
  series[0].name = "blkrep";
  series[1].name = "rsync";
  series[0].points = {{0.001, 0.25, 1000.0}, {0.01, 0.5, 123456.0}, {0.2, 2.125, 98765432.0}};
  series[1].points = {{0.001, 1.5, 2000.0}, {0.01, std::nullopt, std::nullopt}, {0.2, 7.75, 55555555.0}};
  std::string svg = bench::RenderCycleChart("title <&> \"quoted\"", "sub & title", series);
  const std::string path = dir.path() + "/chart.svg";
  std::ofstream(path) << svg;
  std::string points = SvgPoints(dir, path);
  for (const char* line : {"seconds blkrep 0.001 0.25", "seconds blkrep 0.01 0.5", "seconds blkrep 0.2 2.125",
                           "wire_bytes blkrep 0.01 123456", "wire_bytes blkrep 0.2 98765432",
                           "seconds rsync 0.001 1.5", "seconds rsync 0.2 7.75", "wire_bytes rsync 0.2 55555555"}) {
    EXPECT_TRUE(Contains(points, line)) << line << "\n" << points;
  }
  // The missing rsync point is left out, not drawn at 0.
  EXPECT_FALSE(Contains(points, "rsync 0.01")) << points;
  EXPECT_EQ(std::count(points.begin(), points.end(), '\n'), 10);
}

TEST(BenchChartTest, TraceTimeAxisIsLinearFromZero) {
  TempDir dir;
  std::vector<bench::ChartSeries> series(1);
  series[0].name = "blkrep";
  series[0].points = {{0, 0.5, 100.0}, {900, 0.75, 2000.0}, {1800, 1.0, 3000.0}, {-1, 9.0, 9.0}};
  std::string svg = bench::RenderCycleChart("t", "s", series, bench::ChartX::kTraceSeconds);
  const std::string path = dir.path() + "/time.svg";
  std::ofstream(path) << svg;
  std::string points = SvgPoints(dir, path, {"trace time", "blkrep", "1000 s"}, {"dirty fraction", "%"});
  for (const char* line : {"seconds blkrep 0 0.5", "seconds blkrep 900 0.75", "wire_bytes blkrep 1800 3000"}) {
    EXPECT_TRUE(Contains(points, line)) << line << "\n" << points;
  }
  EXPECT_FALSE(Contains(points, "blkrep -1")) << points;  // a negative time is left out
  EXPECT_EQ(std::count(points.begin(), points.end(), '\n'), 6);
  // Evenly spaced: 900 s is halfway between 0 and 1800 s.
  auto cx = [&](const std::string& x) {
    const std::string key = "data-panel=\"seconds\" data-series=\"blkrep\" data-x=\"" + x + "\"";
    std::size_t at = svg.find(key);
    std::size_t c = svg.rfind("cx=\"", at);
    return std::stod(svg.substr(c + 4));
  };
  EXPECT_NEAR(cx("900") - cx("0"), cx("1800") - cx("900"), 0.2);
}

}  // namespace
}  // namespace blkrep::tools
