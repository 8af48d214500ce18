// journal_bench: what tracking a write costs, measured on a real file system.
//
// Design note. The journal promises (tracker/journal.h) that MarkDirty into
// an extent already in the activity log (AL) costs one mutex and a few bit
// operations, and that a write into a cold extent costs one durable AL_SWAP
// record, i.e. one fdatasync. This program measures both, in one run, and
// prints a table (or, with --json, one JSON document); bench/README.md says
// how to read it.
//
// The fdatasync baseline is taken twice: appending 4 KiB (a new file system
// block every time) and appending 128 bytes, about one AL_SWAP record (a new
// block every ~32 appends), which is what the journal's own appends look
// like to the file system. The two baselines and the cold MarkDirty phase
// take turns in 50 ms slices, so that the drift of a shared disk does not
// skew their ratios. The hot phases are CPU-bound and run on their own.
//
// It is a measurement, not a test: it asserts no timing. It does check that
// each phase measured what it claims, through a FileSystem decorator that
// counts the journal's I/O (nbdkit-filter style): the hot phases must write
// nothing and leave exactly the hot set dirty, the cold phase must sync once
// per call, the journal must not degrade. A failed check is reported and
// makes the exit status 1.
//
// Everything lives in a fresh mkdtemp directory (under --dir, else $TMPDIR,
// else /tmp) that is removed at the end; the journal tracks a memory-kind
// volume that is never touched.
#include <sched.h>
#include <stdlib.h>
#include <sys/statfs.h>
#include <sys/utsname.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "core/block_device.h"
#include "core/file_system.h"
#include "core/json.h"
#include "core/status.h"
#include "tracker/journal.h"

namespace blkrep::bench {
namespace {

using core::Result;
using core::Status;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: journal_bench [--dir DIR] [--seconds S] [--json]\n"
    "\n"
    "  --dir DIR     make the scratch directory inside DIR (default $TMPDIR or /tmp);\n"
    "                DIR should be on the file system the journal will live on\n"
    "  --seconds S   time per measurement (default 2; 5 measurements)\n"
    "  --json        print one JSON document instead of the table\n";

// One guest write, and the big fdatasync append.
constexpr std::uint64_t kWriteBytes = 4096;
// The small fdatasync append: about one AL_SWAP record with 2 targets.
constexpr std::uint64_t kRecordSizedAppendBytes = 128;
constexpr std::uint64_t kVolumeSizeBytes = 64ULL << 30;
constexpr std::uint64_t kHotExtents = 64;  // well under the 1024 AL slots
constexpr double kHotTargetCallsPerSecond = 5e6;
constexpr int kCallsPerClockCheck = 1024;
// Bounds for file systems whose fdatasync returns at once (tmpfs and the
// like), so that a run keeps its memory and disk use small.
constexpr std::size_t kMaxSyncSamples = 1'000'000;
constexpr std::uint64_t kSyncFileWrapBytes = 64ULL << 20;
constexpr std::size_t kMaxColdCalls = 1'000'000;
constexpr std::size_t kIoAlignmentBytes = 4096;  // PERF-NOTES.md

struct Options {
  std::string parent_dir;  // where the scratch directory is made
  double seconds = 2.0;
  bool json = false;
};

Result<Options> ParseOptions(int argc, char** argv) {
  Options options;
  const char* tmpdir = std::getenv("TMPDIR");
  options.parent_dir = tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const std::string& name) -> Result<std::string> {
      if (arg.rfind(name + "=", 0) == 0) return arg.substr(name.size() + 1);
      if (i + 1 >= argc) return Status::InvalidArgument(name + " needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--json") {
      options.json = true;
    } else if (arg == "--dir" || arg.rfind("--dir=", 0) == 0) {
      BLKREP_ASSIGN_OR_RETURN(options.parent_dir, value("--dir"));
      if (options.parent_dir.empty()) return Status::InvalidArgument("--dir is empty");
    } else if (arg == "--seconds" || arg.rfind("--seconds=", 0) == 0) {
      BLKREP_ASSIGN_OR_RETURN(std::string text, value("--seconds"));
      char* end = nullptr;
      double seconds = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(seconds) ||
          seconds <= 0 || seconds > 3600) {
        return Status::InvalidArgument("--seconds wants a number of seconds in (0, 3600], not '" +
                                       text + "'");
      }
      options.seconds = seconds;
    } else {
      return Status::InvalidArgument("unknown argument '" + arg + "'");
    }
  }
  return options;
}

// A mkdtemp directory, removed with its contents on destruction.
class ScratchDir {
 public:
  static Result<std::unique_ptr<ScratchDir>> Make(const std::string& parent) {
    std::string pattern = parent + "/journal-bench-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      return core::ErrnoStatus(errno, "create a scratch directory in " + parent);
    }
    return std::unique_ptr<ScratchDir>(new ScratchDir(pattern));
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  explicit ScratchDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// The journal's I/O, counted. Thread-safe (relaxed atomics; the counts are
// read between phases, when no call is in flight).
struct IoCounts {
  std::atomic<std::uint64_t> syncs{0};
  std::atomic<std::uint64_t> bytes_written{0};
  std::atomic<std::uint64_t> renames{0};  // one per checkpoint rewrite
};

class CountingFile final : public core::File {
 public:
  CountingFile(std::unique_ptr<core::File> next, IoCounts& counts)
      : next_(std::move(next)), counts_(counts) {}
  Result<std::size_t> ReadAt(std::uint64_t offset_bytes, std::span<std::byte> out) override {
    return next_->ReadAt(offset_bytes, out);
  }
  Status WriteAt(std::uint64_t offset_bytes, std::span<const std::byte> data) override {
    counts_.bytes_written.fetch_add(data.size(), std::memory_order_relaxed);
    return next_->WriteAt(offset_bytes, data);
  }
  Status Sync() override {
    counts_.syncs.fetch_add(1, std::memory_order_relaxed);
    return next_->Sync();
  }
  Result<std::uint64_t> Size() override { return next_->Size(); }
  Status Truncate(std::uint64_t size_bytes) override { return next_->Truncate(size_bytes); }

 private:
  std::unique_ptr<core::File> next_;
  IoCounts& counts_;
};

// Forwards to `next`, counting what the journal writes. REQUIRES: `next`
// and `counts` outlive this object and every File it opened.
class CountingFileSystem final : public core::FileSystem {
 public:
  CountingFileSystem(core::FileSystem& next, IoCounts& counts) : next_(next), counts_(counts) {}
  Result<std::unique_ptr<core::File>> Open(const std::string& path, core::OpenMode mode) override {
    BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, next_.Open(path, mode));
    return std::unique_ptr<core::File>(new CountingFile(std::move(file), counts_));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    counts_.renames.fetch_add(1, std::memory_order_relaxed);
    return next_.Rename(from, to);
  }
  Status Remove(const std::string& path) override { return next_.Remove(path); }
  Result<bool> Exists(const std::string& path) override { return next_.Exists(path); }
  Status CreateDirectories(const std::string& path) override {
    return next_.CreateDirectories(path);
  }
  Status SyncDir(const std::string& path) override { return next_.SyncDir(path); }
  Result<std::vector<std::string>> List(const std::string& path) override {
    return next_.List(path);
  }
  Result<std::unique_ptr<core::FileLock>> Lock(const std::string& path) override {
    return next_.Lock(path);
  }

 private:
  core::FileSystem& next_;
  IoCounts& counts_;
};

struct IoSnapshot {
  std::uint64_t syncs = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t renames = 0;

  static IoSnapshot Of(const IoCounts& c) {
    return {c.syncs.load(std::memory_order_relaxed),
            c.bytes_written.load(std::memory_order_relaxed),
            c.renames.load(std::memory_order_relaxed)};
  }
  IoSnapshot operator-(const IoSnapshot& before) const {
    return {syncs - before.syncs, bytes_written - before.bytes_written, renames - before.renames};
  }
};

// Sorted latencies in nanoseconds, summarized.
struct LatencySummary {
  std::uint64_t samples = 0;
  double mean_us = 0;
  double median_us = 0;
  double p99_us = 0;
};

LatencySummary Summarize(std::vector<std::uint64_t>& ns) {
  LatencySummary s;
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  long double total = 0;
  for (auto v : ns) total += static_cast<long double>(v);
  s.samples = ns.size();
  s.mean_us = static_cast<double>(total / static_cast<long double>(ns.size())) / 1e3;
  s.median_us = static_cast<double>(ns[ns.size() / 2]) / 1e3;
  std::size_t p99 = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(ns.size()))) - 1;
  s.p99_us = static_cast<double>(ns[std::min(p99, ns.size() - 1)]) / 1e3;
  return s;
}

std::uint64_t ElapsedNs(Clock::time_point from, Clock::time_point to) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count());
}

Clock::duration Seconds(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// A zeroed heap buffer aligned for I/O.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(std::size_t size_bytes)
      : size_(size_bytes),
        data_(static_cast<std::byte*>(std::aligned_alloc(kIoAlignmentBytes, size_bytes))) {
    if (data_ != nullptr) std::fill(data_, data_ + size_, std::byte{0x5a});
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  bool ok() const { return data_ != nullptr; }
  std::span<const std::byte> span() const { return {data_, size_}; }

 private:
  std::size_t size_;
  std::byte* data_;
};

// Geometry of the journal under test, from its report.
struct Geometry {
  std::uint64_t block_size_bytes = 0;
  std::uint64_t extent_size_bytes = 0;
  std::uint64_t extent_count = 0;
  std::uint32_t al_slots = 0;
  std::uint64_t hot_bytes = 0;  // [0, hot_bytes) is the hot set
  // Distance between consecutive hot writes: one extent and 17 writes, so
  // consecutive calls land in different extents and blocks. The hot set is
  // a power-of-two number of writes and the step an odd one, so the walk
  // visits every 4 KiB of the hot set before it repeats.
  std::uint64_t hot_step_bytes = 0;
};

struct HotResult {
  int threads = 0;
  std::uint64_t calls = 0;
  double seconds = 0;
  double calls_per_second = 0;
  double ns_per_call = 0;  // wall time per call per thread
  IoSnapshot io;
};

struct ColdResult {
  std::uint64_t calls = 0;
  double seconds = 0;
  double calls_per_second = 0;
  LatencySummary latency;
  IoSnapshot io;
};

// Problems that make a measurement not what it claims to be.
struct Checks {
  std::vector<std::string> problems;
  void Fail(std::string problem) { problems.push_back(std::move(problem)); }
};

// Makes every extent of the hot set hot (one AL_SWAP each) and checks that
// the journal's report lists them.
Status WarmHotSet(tracker::Journal& journal, const Geometry& g, Checks& checks) {
  for (std::uint64_t e = 0; e < kHotExtents; ++e) {
    BLKREP_RETURN_IF_ERROR(journal.MarkDirty(e * g.extent_size_bytes, kWriteBytes));
  }
  tracker::JournalReport report = journal.Report();
  std::vector<bool> hot(kHotExtents, false);
  for (std::uint64_t e : report.hot_extents) {
    if (e < kHotExtents) hot[e] = true;
  }
  if (std::count(hot.begin(), hot.end(), true) != static_cast<std::ptrdiff_t>(kHotExtents)) {
    checks.Fail("after warming, the activity log lacks some of the " + std::to_string(kHotExtents) +
                " hot extents");
  }
  return Status::Ok();
}

// (2) and (4): `threads` threads call MarkDirty into the hot set for
// `seconds`; thread t starts t/threads of the way into it.
HotResult MeasureHot(tracker::Journal& journal, const Geometry& g, int threads, double seconds,
                     IoCounts& counts, Checks& checks) {
  struct alignas(64) Worker {  // one cache line each: no false sharing
    std::uint64_t calls = 0;
    std::uint64_t failures = 0;
    Status first_failure;
  };
  std::vector<Worker> workers(static_cast<std::size_t>(threads));
  std::atomic<bool> stop{false};
  std::latch start(threads + 1);
  std::vector<std::thread> pool;
  const std::uint64_t hot_writes = g.hot_bytes / kWriteBytes;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      Worker& w = workers[static_cast<std::size_t>(t)];
      std::uint64_t offset = hot_writes * static_cast<std::uint64_t>(t) /
                             static_cast<std::uint64_t>(threads) * kWriteBytes;
      start.arrive_and_wait();
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < kCallsPerClockCheck; ++i) {
          Status s = journal.MarkDirty(offset, kWriteBytes);
          if (!s.ok()) [[unlikely]] {
            if (w.failures++ == 0) w.first_failure = s;
          }
          offset += g.hot_step_bytes;
          if (offset >= g.hot_bytes) offset -= g.hot_bytes;
        }
        w.calls += kCallsPerClockCheck;
      }
    });
  }
  IoSnapshot before = IoSnapshot::Of(counts);
  start.arrive_and_wait();
  Clock::time_point t0 = Clock::now();
  std::this_thread::sleep_for(Seconds(seconds));
  stop.store(true, std::memory_order_relaxed);
  for (auto& th : pool) th.join();
  Clock::time_point t1 = Clock::now();

  HotResult r;
  r.threads = threads;
  r.io = IoSnapshot::Of(counts) - before;
  r.seconds = static_cast<double>(ElapsedNs(t0, t1)) / 1e9;
  std::uint64_t failures = 0;
  for (const auto& w : workers) {
    r.calls += w.calls;
    if (w.failures > 0 && failures == 0) {
      checks.Fail("hot MarkDirty failed: " + w.first_failure.ToString());
    }
    failures += w.failures;
  }
  r.calls_per_second = static_cast<double>(r.calls) / r.seconds;
  r.ns_per_call = r.seconds * 1e9 * threads / static_cast<double>(r.calls);
  std::string name =
      "hot MarkDirty (" + std::to_string(threads) + " thread" + (threads == 1 ? "" : "s") + ")";
  if (r.io.syncs != 0 || r.io.bytes_written != 0) {
    checks.Fail(name + " wrote to the journal (" + std::to_string(r.io.syncs) + " syncs, " +
                std::to_string(r.io.bytes_written) + " bytes): some calls were not hot");
  }
  return r;
}

// The disk measurements, (1) and (3), run in turns of kSliceDuration so that
// a shared disk's drift (other tenants, writeback) hits all of them alike:
// their ratios are what this program is for.
constexpr auto kSliceDuration = std::chrono::milliseconds(50);

// (1): appends `append_bytes` and fdatasyncs, over and over, through the
// same FileSystem the journal uses. REQUIRES: append_bytes <= kWriteBytes.
class SyncAppender {
 public:
  SyncAppender(core::FileSystem& fs, std::string path, std::uint64_t append_bytes)
      : fs_(fs), path_(std::move(path)), append_bytes_(append_bytes), buffer_(kWriteBytes) {}

  Status Open() {
    if (!buffer_.ok()) return Status::ResourceExhausted("cannot allocate an I/O buffer");
    BLKREP_ASSIGN_OR_RETURN(file_, fs_.Open(path_, core::OpenMode::kCreateTruncate));
    return Status::Ok();
  }

  // Appends and syncs until `slice` has passed (at least once).
  Status RunFor(Clock::duration slice) {
    const Clock::time_point start = Clock::now();
    Clock::time_point t1 = start;
    do {
      if (ns_.size() >= kMaxSyncSamples) break;
      if (size_bytes_ >= kSyncFileWrapBytes) {  // untimed: keep the file small
        BLKREP_RETURN_IF_ERROR(file_->Truncate(0));
        BLKREP_RETURN_IF_ERROR(file_->Sync());
        size_bytes_ = 0;
      }
      Clock::time_point t0 = Clock::now();
      BLKREP_RETURN_IF_ERROR(file_->WriteAt(size_bytes_, buffer_.span().first(append_bytes_)));
      BLKREP_RETURN_IF_ERROR(file_->Sync());
      t1 = Clock::now();
      ns_.push_back(ElapsedNs(t0, t1));
      size_bytes_ += append_bytes_;
    } while (t1 - start < slice);
    return Status::Ok();
  }

  // Closes and removes the file; the samples, summarized.
  Result<LatencySummary> Finish() {
    file_.reset();
    BLKREP_RETURN_IF_ERROR(fs_.Remove(path_));
    return Summarize(ns_);
  }

 private:
  core::FileSystem& fs_;
  const std::string path_;
  const std::uint64_t append_bytes_;
  AlignedBuffer buffer_;
  std::unique_ptr<core::File> file_;
  std::uint64_t size_bytes_ = 0;
  std::vector<std::uint64_t> ns_;
};

// (3): each call writes into an extent outside the activity log. Extents
// are taken in order above the hot set; with many more extents than AL
// slots, an extent is long evicted before the walk comes back to it.
class ColdWalker {
 public:
  ColdWalker(tracker::Journal& journal, const Geometry& g, IoCounts& counts)
      : journal_(journal), g_(g), counts_(counts), before_(IoSnapshot::Of(counts)) {}

  // Marks cold extents dirty until `slice` has passed (at least once).
  void RunFor(Clock::duration slice) {
    const Clock::time_point start = Clock::now();
    Clock::time_point t1 = start;
    do {
      if (ns_.size() >= kMaxColdCalls) break;
      std::uint64_t offset = extent_ * g_.extent_size_bytes + (ns_.size() % 16) * kWriteBytes;
      Clock::time_point t0 = Clock::now();
      Status s = journal_.MarkDirty(offset, kWriteBytes);
      t1 = Clock::now();
      if (!s.ok() && failures_++ == 0) first_failure_ = s;
      ns_.push_back(ElapsedNs(t0, t1));
      if (++extent_ == g_.extent_count) extent_ = kHotExtents;
    } while (t1 - start < slice);
    busy_ns_ += ElapsedNs(start, t1);
  }

  ColdResult Finish(Checks& checks) {
    ColdResult r;
    r.io = IoSnapshot::Of(counts_) - before_;
    r.calls = ns_.size();
    r.seconds = static_cast<double>(busy_ns_) / 1e9;
    r.calls_per_second = r.seconds > 0 ? static_cast<double>(r.calls) / r.seconds : 0;
    r.latency = Summarize(ns_);
    if (failures_ > 0) checks.Fail("cold MarkDirty failed: " + first_failure_.ToString());
    // One durable record per call, plus one sync per compaction (a
    // checkpoint rewrite when the journal reaches its cap).
    if (r.io.syncs != r.calls + r.io.renames) {
      checks.Fail("cold MarkDirty made " + std::to_string(r.io.syncs) + " syncs for " +
                  std::to_string(r.calls) + " calls and " + std::to_string(r.io.renames) +
                  " compactions; expected one per call and per compaction");
    }
    return r;
  }

 private:
  tracker::Journal& journal_;
  const Geometry& g_;
  IoCounts& counts_;
  const IoSnapshot before_;
  std::uint64_t extent_ = kHotExtents;
  std::vector<std::uint64_t> ns_;
  std::uint64_t busy_ns_ = 0;
  std::uint64_t failures_ = 0;
  Status first_failure_;
};

struct Environment {
  std::string dir;
  std::string fs_type;
  int cpus = 0;
  std::string kernel;
};

std::string FileSystemType(const std::string& path) {
  struct statfs st {};
  if (::statfs(path.c_str(), &st) != 0) return "unknown";
  switch (static_cast<std::uint64_t>(st.f_type)) {
    case 0xEF53:
      return "ext4";  // also ext2/ext3
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794C7630:
      return "overlayfs";
    case 0xF2F52010:
      return "f2fs";
    case 0x2FC12FC1:
      return "zfs";
    case 0x6969:
      return "nfs";
    case 0x65735546:
      return "fuse";
    default: {
      char hex[32];
      std::snprintf(hex, sizeof hex, "0x%" PRIx64, static_cast<std::uint64_t>(st.f_type));
      return hex;
    }
  }
}

Environment DescribeEnvironment(const std::string& dir) {
  Environment env;
  env.dir = dir;
  env.fs_type = FileSystemType(dir);
  cpu_set_t set;
  CPU_ZERO(&set);
  env.cpus = ::sched_getaffinity(0, sizeof set, &set) == 0
                 ? CPU_COUNT(&set)
                 : static_cast<int>(std::thread::hardware_concurrency());
  struct utsname u {};
  env.kernel = ::uname(&u) == 0 ? std::string(u.sysname) + " " + u.release : "unknown";
  return env;
}

struct Results {
  Environment env;
  Options options;
  Geometry geometry;
  std::uint64_t targets = 0;
  LatencySummary fdatasync;        // 4 KiB appends
  LatencySummary fdatasync_small;  // record-sized appends
  HotResult hot1;
  HotResult hot2;
  ColdResult cold;
  std::uint64_t hot_blocks_dirty = 0;  // base bitmap after the hot phases
  Checks checks;
};

// --- output ---------------------------------------------------------------

std::string Fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

// 12345678 -> "12,345,678".
std::string Grouped(double value) {
  std::string digits = Fixed(std::round(value), 0);
  std::string out;
  int n = static_cast<int>(digits.size());
  for (int i = 0; i < n; ++i) {
    out += digits[static_cast<std::size_t>(i)];
    if ((n - 1 - i) % 3 == 0 && i != n - 1) out += ',';
  }
  return out;
}

std::string Ratio(double value) { return Fixed(value, 2) + "x"; }

// Display width of UTF-8 text (code points; our text has no wide ones).
std::size_t Width(std::string_view text) {
  std::size_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

std::string PadRight(const std::string& text, std::size_t width) {
  std::size_t w = Width(text);
  return w >= width ? text : text + std::string(width - w, ' ');
}

std::string PadLeft(const std::string& text, std::size_t width) {
  std::size_t w = Width(text);
  return w >= width ? text : std::string(width - w, ' ') + text;
}

void PrintTable(const Results& r) {
  const Geometry& g = r.geometry;
  std::printf("journal_bench: %s on %s, %d CPUs, %s, %s s per measurement\n", r.env.dir.c_str(),
              r.env.fs_type.c_str(), r.env.cpus, r.env.kernel.c_str(),
              Fixed(r.options.seconds, 1).c_str());
  std::printf("journal: %" PRIu64 " GiB memory volume, %" PRIu64 " KiB blocks, %" PRIu64
              " MiB extents, %u AL slots, %" PRIu64 " targets (%" PRIu64
              " bitmaps per mark); 4 KiB marks; hot set %" PRIu64 " extents (%" PRIu64 " MiB)\n\n",
              kVolumeSizeBytes >> 30, g.block_size_bytes >> 10, g.extent_size_bytes >> 20,
              g.al_slots, r.targets, r.targets + 1, kHotExtents, g.hot_bytes >> 20);

  struct Row {
    std::string measurement, value, unit, versus;
  };
  const LatencySummary& f = r.fdatasync;
  const LatencySummary& fs = r.fdatasync_small;
  const LatencySummary& c = r.cold.latency;
  auto vs = [](double value, double reference, const std::string& what) {
    return reference > 0 ? Ratio(value / reference) + " " + what : std::string("-");
  };
  // Cold latencies against both baselines.
  auto vs_sync = [&](double value, double big, double small, const std::string& stat) {
    return vs(value, big, "4 KiB-append " + stat) + ", " + vs(value, small, "128 B-append");
  };
  std::vector<Row> rows = {
      {"fdatasync, 4 KiB append: median", Fixed(f.median_us, 1), "µs",
       Grouped(static_cast<double>(f.samples)) + " samples"},
      {"fdatasync, 4 KiB append: p99", Fixed(f.p99_us, 1), "µs", ""},
      {"fdatasync, 4 KiB append: mean", Fixed(f.mean_us, 1), "µs", ""},
      {"fdatasync, 128 B append: median", Fixed(fs.median_us, 1), "µs",
       Grouped(static_cast<double>(fs.samples)) + " samples"},
      {"fdatasync, 128 B append: p99", Fixed(fs.p99_us, 1), "µs", ""},
      {"fdatasync, 128 B append: mean", Fixed(fs.mean_us, 1), "µs", ""},
      {"MarkDirty hot, 1 thread", Grouped(r.hot1.calls_per_second), "calls/s",
       Ratio(r.hot1.calls_per_second / kHotTargetCallsPerSecond) + " target (5 M/s)"},
      {"MarkDirty hot, 1 thread", Fixed(r.hot1.ns_per_call, 1), "ns/call", ""},
      {"MarkDirty cold, 1 thread", Grouped(r.cold.calls_per_second), "calls/s",
       Grouped(static_cast<double>(r.cold.calls)) + " calls"},
      {"MarkDirty cold: mean", Fixed(c.mean_us, 1), "µs",
       vs_sync(c.mean_us, f.mean_us, fs.mean_us, "mean")},
      {"MarkDirty cold: median", Fixed(c.median_us, 1), "µs",
       vs_sync(c.median_us, f.median_us, fs.median_us, "median")},
      {"MarkDirty cold: p99", Fixed(c.p99_us, 1), "µs",
       vs_sync(c.p99_us, f.p99_us, fs.p99_us, "p99")},
      {"MarkDirty hot, 2 threads", Grouped(r.hot2.calls_per_second), "calls/s",
       vs(r.hot2.calls_per_second, r.hot1.calls_per_second, "1 thread")},
      {"MarkDirty hot, 2 threads", Fixed(r.hot2.ns_per_call, 1), "ns/call", "per call per thread"},
  };
  std::vector<std::string> header = {"measurement", "value", "unit", "vs fdatasync / target"};
  std::size_t w0 = Width(header[0]), w1 = Width(header[1]), w2 = Width(header[2]);
  for (const Row& row : rows) {
    w0 = std::max(w0, Width(row.measurement));
    w1 = std::max(w1, Width(row.value));
    w2 = std::max(w2, Width(row.unit));
  }
  auto line = [&](const std::string& a, const std::string& b, const std::string& c,
                  const std::string& d) {
    std::string text =
        PadRight(a, w0) + " | " + PadLeft(b, w1) + " | " + PadRight(c, w2) + " | " + d;
    while (!text.empty() && text.back() == ' ') text.pop_back();
    std::printf("%s\n", text.c_str());
  };
  line(header[0], header[1], header[2], header[3]);
  std::printf("%s-+-%s-+-%s-+-%s\n", std::string(w0, '-').c_str(), std::string(w1, '-').c_str(),
              std::string(w2, '-').c_str(), std::string(Width(header[3]), '-').c_str());
  for (const Row& row : rows) line(row.measurement, row.value, row.unit, row.versus);

  std::printf("\nchecks: hot phases wrote %" PRIu64 " bytes / %" PRIu64
              " syncs to the journal; cold phase: %" PRIu64 " syncs for %" PRIu64 " calls (%" PRIu64
              " compactions), %s journal bytes per call\n",
              r.hot1.io.bytes_written + r.hot2.io.bytes_written, r.hot1.io.syncs + r.hot2.io.syncs,
              r.cold.io.syncs, r.cold.calls, r.cold.io.renames,
              r.cold.calls > 0 ? Fixed(static_cast<double>(r.cold.io.bytes_written) /
                                           static_cast<double>(r.cold.calls),
                                       0)
                                     .c_str()
                               : "-");
  if (f.median_us < 20) {
    std::printf(
        "note: fdatasync takes %s µs here: this file system (%s) does not seem to reach "
        "stable storage; cold figures say little about a real disk\n",
        Fixed(f.median_us, 1).c_str(), r.env.fs_type.c_str());
  }
  if (r.env.cpus < 2) {
    std::printf(
        "note: only %d CPU available: the 2-thread row measures time slicing, not "
        "contention\n",
        r.env.cpus);
  }
  for (const auto& p : r.checks.problems) std::printf("CHECK FAILED: %s\n", p.c_str());
}

void WriteLatency(core::JsonWriter& j, const LatencySummary& s) {
  j.Key("samples").Uint(s.samples);
  j.Key("mean_us").Double(s.mean_us);
  j.Key("median_us").Double(s.median_us);
  j.Key("p99_us").Double(s.p99_us);
}

void WriteIo(core::JsonWriter& j, const IoSnapshot& io) {
  j.Key("journal_syncs").Uint(io.syncs);
  j.Key("journal_bytes_written").Uint(io.bytes_written);
  j.Key("journal_compactions").Uint(io.renames);
}

void WriteHot(core::JsonWriter& j, const HotResult& h) {
  j.BeginObject();
  j.Key("threads").Int(h.threads);
  j.Key("calls").Uint(h.calls);
  j.Key("seconds").Double(h.seconds);
  j.Key("calls_per_second").Double(h.calls_per_second);
  j.Key("ns_per_call_per_thread").Double(h.ns_per_call);
  WriteIo(j, h.io);
  j.EndObject();
}

void PrintJson(const Results& r) {
  core::JsonWriter j(core::JsonStyle::kPretty);
  j.BeginObject();
  j.Key("environment").BeginObject();
  j.Key("dir").String(r.env.dir);
  j.Key("file_system").String(r.env.fs_type);
  j.Key("cpus").Int(r.env.cpus);
  j.Key("kernel").String(r.env.kernel);
  j.Key("seconds_per_measurement").Double(r.options.seconds);
  j.EndObject();
  j.Key("journal").BeginObject();
  j.Key("volume_size_bytes").Uint(kVolumeSizeBytes);
  j.Key("block_size_bytes").Uint(r.geometry.block_size_bytes);
  j.Key("extent_size_bytes").Uint(r.geometry.extent_size_bytes);
  j.Key("al_slots").Uint(r.geometry.al_slots);
  j.Key("targets").Uint(r.targets);
  j.Key("mark_bytes").Uint(kWriteBytes);
  j.Key("hot_extents").Uint(kHotExtents);
  j.EndObject();
  j.Key("fdatasync").BeginObject();
  j.Key("append_bytes").Uint(kWriteBytes);
  WriteLatency(j, r.fdatasync);
  j.EndObject();
  j.Key("fdatasync_record_sized_append").BeginObject();
  j.Key("append_bytes").Uint(kRecordSizedAppendBytes);
  WriteLatency(j, r.fdatasync_small);
  j.EndObject();
  j.Key("mark_dirty_hot_1_thread");
  WriteHot(j, r.hot1);
  j.Key("mark_dirty_hot_2_threads");
  WriteHot(j, r.hot2);
  j.Key("mark_dirty_hot_target_calls_per_second").Double(kHotTargetCallsPerSecond);
  j.Key("mark_dirty_cold").BeginObject();
  j.Key("calls").Uint(r.cold.calls);
  j.Key("seconds").Double(r.cold.seconds);
  j.Key("calls_per_second").Double(r.cold.calls_per_second);
  WriteLatency(j, r.cold.latency);
  j.Key("mean_vs_fdatasync_mean")
      .Double(r.fdatasync.mean_us > 0 ? r.cold.latency.mean_us / r.fdatasync.mean_us : NAN);
  j.Key("median_vs_fdatasync_median")
      .Double(r.fdatasync.median_us > 0 ? r.cold.latency.median_us / r.fdatasync.median_us : NAN);
  j.Key("mean_vs_record_sized_fdatasync_mean")
      .Double(r.fdatasync_small.mean_us > 0 ? r.cold.latency.mean_us / r.fdatasync_small.mean_us
                                            : NAN);
  j.Key("median_vs_record_sized_fdatasync_median")
      .Double(r.fdatasync_small.median_us > 0
                  ? r.cold.latency.median_us / r.fdatasync_small.median_us
                  : NAN);
  WriteIo(j, r.cold.io);
  j.EndObject();
  j.Key("checks").BeginObject();
  j.Key("ok").Bool(r.checks.problems.empty());
  j.Key("problems").BeginArray();
  for (const auto& p : r.checks.problems) j.String(p);
  j.EndArray();
  j.EndObject();
  j.EndObject();
  std::printf("%s\n", j.str().c_str());
}

// --- the run ----------------------------------------------------------------

Status Run(const Options& options, Results& r) {
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<ScratchDir> scratch,
                          ScratchDir::Make(options.parent_dir));
  r.options = options;
  r.env = DescribeEnvironment(scratch->path());
  core::FileSystem& posix = core::PosixFileSystemInstance();

  IoCounts counts;
  CountingFileSystem fs(posix, counts);
  tracker::VolumeDescriptor volume;
  volume.guest = "bench";
  volume.name = "vol0";
  volume.path = "memory:bench/vol0";
  volume.identity.kind = core::VolumeIdentity::Kind::kMemory;
  volume.identity.size_bytes = kVolumeSizeBytes;
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<tracker::Journal> journal,
                          tracker::Journal::Open(fs, scratch->path() + "/vol0.journal", volume,
                                                 tracker::JournalOptions{}));
  BLKREP_RETURN_IF_ERROR(journal->AddTarget("replica-a"));
  BLKREP_RETURN_IF_ERROR(journal->AddTarget("replica-b"));

  {
    tracker::JournalReport report = journal->Report();
    Geometry& g = r.geometry;
    g.block_size_bytes = report.block_size_bytes;
    g.extent_size_bytes = report.extent_size_bytes;
    g.al_slots = report.al_slots;
    g.extent_count = (kVolumeSizeBytes + g.extent_size_bytes - 1) / g.extent_size_bytes;
    g.hot_bytes = kHotExtents * g.extent_size_bytes;
    g.hot_step_bytes = g.extent_size_bytes + 17 * kWriteBytes;
    r.targets = report.targets.size();
    if (kHotExtents > g.al_slots) {
      return Status::InvalidArgument("the hot set does not fit in the activity log");
    }
    if (g.extent_count < 2 * g.al_slots + kHotExtents) {
      return Status::InvalidArgument("the volume has too few extents for the cold walk");
    }
  }

  BLKREP_RETURN_IF_ERROR(WarmHotSet(*journal, r.geometry, r.checks));
  r.hot1 = MeasureHot(*journal, r.geometry, 1, options.seconds, counts, r.checks);
  BLKREP_RETURN_IF_ERROR(WarmHotSet(*journal, r.geometry, r.checks));  // no-op if still hot
  r.hot2 = MeasureHot(*journal, r.geometry, 2, options.seconds, counts, r.checks);

  // The hot walk covers every block of the hot set and nothing else has been
  // written yet: the base bitmap holds exactly the hot set.
  r.hot_blocks_dirty = journal->Report().since_tracking_began.Count();
  std::uint64_t hot_blocks = r.geometry.hot_bytes / r.geometry.block_size_bytes;
  if (r.hot_blocks_dirty != hot_blocks) {
    r.checks.Fail("after the hot phases " + std::to_string(r.hot_blocks_dirty) +
                  " blocks are dirty where the hot set has " + std::to_string(hot_blocks));
  }

  // The disk measurements, in turns.
  SyncAppender big(posix, scratch->path() + "/fdatasync-4k.dat", kWriteBytes);
  SyncAppender small(posix, scratch->path() + "/fdatasync-128.dat", kRecordSizedAppendBytes);
  BLKREP_RETURN_IF_ERROR(big.Open());
  BLKREP_RETURN_IF_ERROR(small.Open());
  ColdWalker cold(*journal, r.geometry, counts);
  const Clock::duration per_measurement = Seconds(options.seconds);
  for (Clock::duration spent{0}; spent < per_measurement;) {
    Clock::duration slice = std::min<Clock::duration>(kSliceDuration, per_measurement - spent);
    BLKREP_RETURN_IF_ERROR(big.RunFor(slice));
    BLKREP_RETURN_IF_ERROR(small.RunFor(slice));
    cold.RunFor(slice);
    spent += slice;
  }
  BLKREP_ASSIGN_OR_RETURN(r.fdatasync, big.Finish());
  BLKREP_ASSIGN_OR_RETURN(r.fdatasync_small, small.Finish());
  r.cold = cold.Finish(r.checks);
  if (journal->degraded()) {
    r.checks.Fail("the journal is degraded: " + journal->Report().resync_reason);
  }
  BLKREP_RETURN_IF_ERROR(journal->Close(volume.identity));
  return Status::Ok();
}

}  // namespace
}  // namespace blkrep::bench

int main(int argc, char** argv) {
  using blkrep::bench::kUsage;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  auto options = blkrep::bench::ParseOptions(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "journal_bench: error: %s\n%s", options.status().ToString().c_str(),
                 kUsage);
    return 2;
  }
  blkrep::bench::Results results;
  blkrep::core::Status status = blkrep::bench::Run(*options, results);
  if (!status.ok()) {
    std::fprintf(stderr, "journal_bench: error: %s\n", status.ToString().c_str());
    return 1;
  }
  if (options->json) {
    blkrep::bench::PrintJson(results);
  } else {
    blkrep::bench::PrintTable(results);
  }
  if (!results.checks.problems.empty()) {
    for (const auto& p : results.checks.problems) {
      std::fprintf(stderr, "journal_bench: check failed: %s\n", p.c_str());
    }
    return 1;
  }
  return 0;
}
