// `blkrep bench`: a changed-block throughput benchmark, run end to end the
// way an operator would run blkrep.
//
// Design note. The bench orchestrates real processes of its own binary
// (/proc/self/exe): `track` serves the volume over NBD, `target add --exec
// '... receive --stdio'` and `create-local-job` make a local replication job,
// `run --id --json` and `resync --now --json` run its cycles, `journal
// inspect --json` tells what the journal saw. The writes come from a
// deterministic workload (tools/bench_workload.h) sent with libnbd, several
// requests in flight. Peers are measured in the same run, on the same files:
// the volume written directly (pwrite) and qemu-nbd for the tracker's
// overhead, cp for the full sync, rsync --inplace --no-whole-file for the
// incremental cycles and the resync.
//
// Everything lives in a private scratch directory (mkdtemp under --dir, else
// $TMPDIR or /tmp), removed at the end unless --keep. Every process started
// is stopped (SIGTERM, then SIGKILL after 30 s) before the bench returns,
// also when it is interrupted by SIGINT/SIGTERM (exit 130).
//
// Besides measuring, the bench checks that what it measured is consistent
// (wire bytes counted by the shipper == the receiver's count from the ACK;
// blocks the journal marked and the cycle sent == blocks the workload
// wrote); a failed check is reported and makes the exit status 1.
//
// --volume PATH without --allow-writes: PATH is only read (copied into the
// scratch directory; the bench runs on the copy). With --allow-writes the
// bench tracks and writes PATH itself: its content is lost.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/hash.h"
#include "core/json.h"
#include "core/units.h"
#include "tools/bench_chart.h"
#include "tools/bench_io.h"
#include "tools/bench_workload.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tracker/trace.h"

extern char** environ;

namespace blkrep::tools {

using core::Result;
using core::Status;
using nlohmann::json;

namespace {

constexpr const char* kUsage =
    "usage: blkrep bench [--size SIZE | --volume PATH [--allow-writes]] [--block-size SIZE] [--dirty LIST]\n"
    "                    [--write-size DIST] [--skew S] [--compressibility PCT] [--zero-fraction F]\n"
    "                    [--duration SECONDS] [--damage F] [--zstd-level N] [--seed N] [--dir DIR] [--keep]\n"
    "                    [--no-peers] [--json] [--svg FILE]\n"
    "                    [--replay TRACE [--speed X] [--cycle-every DURATION]]\n"
    "\n"
    "Measures, each beside a peer run on the same files: writes through blkrep's NBD export\n"
    "(against direct pwrite and qemu-nbd), the full sync (against cp), one incremental cycle per\n"
    "dirty fraction (against rsync) and a checksum resync (against rsync). Exit 1 if a self-check\n"
    "fails (wire bytes against the receiver's count; the journal and each cycle against the blocks\n"
    "written).\n"
    "\n"
    "  --size SIZE            scratch volume (default 1G); --volume PATH runs on a copy of PATH\n"
    "  --block-size SIZE      the tracker's block, 4K..1M (default 64K)\n"
    "  --dirty LIST           fractions of the blocks per incremental cycle (default 0.001,0.01,0.05,0.2)\n"
    "  --write-size DIST      a size or a weighted mix, e.g. 4K:60,64K:30,1M:10 (default 4K)\n"
    "  --skew S               0 (uniform), A/B (A% of writes in B% of the volume) or a Zipf exponent\n"
    "  --compressibility PCT  share of each 4 KiB that compresses (default 50)\n"
    "  --zero-fraction F      share of writes that are all zeroes (default 0)\n"
    "  --duration D           cap on each write phase (default 10s; units ms, s, m, h, d)\n"
    "  --damage F             share of replica blocks damaged before the resync (default 0.01)\n"
    "  --zstd-level N         fixed compression level (default: adaptive)\n"
    "  --seed N               the same seed writes the same blocks with the same bytes\n"
    "  --json, --svg FILE     one JSON document; a chart of cycle time and wire bytes\n"
    "  --replay TRACE         play a trace of `blkrep track --trace` instead: --speed X (default as\n"
    "                         fast as possible), --cycle-every D of trace time (default once at the end)\n"
    "\n"
    "bench/README.md tells how to read the results.";

constexpr const char* kGuest = "bench";
constexpr const char* kJob = "bench-1";
constexpr const char* kTarget = "t1";
constexpr int kQueueDepth = 16;

// The signal that interrupted the bench (0: none). A signal handler can only
// touch a lock-free global; everything else polls it.
std::atomic<int> g_interrupted{0};
extern "C" void OnBenchSignal(int sig) { g_interrupted.store(sig); }

Status CheckInterrupted() {
  int sig = g_interrupted.load();
  if (sig == 0) return Status::Ok();
  return Status::Aborted(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string FirstLine(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

// The executable `name` names: itself if it holds a '/', else the first
// executable of that name on $PATH (as execvp would find it).
Result<std::string> FindProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr && *path != '\0' ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    std::size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111) != 0 &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return core::ErrnoStatus(ENOENT, "start " + name + ": not found on PATH");
}

bool OnPath(const std::string& name) { return FindProgram(name).ok(); }

// --- progress on a terminal ------------------------------------------------

class Progress {
 public:
  explicit Progress(bool on) : on_(on) {}
  void Phase(const std::string& name) {
    if (!on_) return;
    Clear();
    std::fprintf(stderr, "bench: %s ...", name.c_str());
    phase_ = name;
    open_ = true;
  }
  void Percent(double fraction) {
    if (!on_ || !open_) return;
    int pct = static_cast<int>(std::clamp(fraction, 0.0, 1.0) * 100);
    if (pct == last_pct_) return;
    last_pct_ = pct;
    std::fprintf(stderr, "\r\033[Kbench: %s %3d%%", phase_.c_str(), pct);
  }
  void Done(const std::string& summary) {
    if (!on_) return;
    std::fprintf(stderr, "\r\033[Kbench: %s: %s\n", phase_.c_str(), summary.c_str());
    open_ = false;
    last_pct_ = -1;
  }
  void Clear() {
    if (on_ && open_) std::fprintf(stderr, "\n");
    open_ = false;
  }

 private:
  bool on_;
  bool open_ = false;
  int last_pct_ = -1;
  std::string phase_;
};

// --- child processes ---------------------------------------------------------

struct Ran {
  int exit_status = -1;
  std::string out;
  std::string err;
  double seconds = 0;
};

// Every process the bench starts. Owns them: the destructor stops those
// still running (SIGTERM, up to 30 s, then SIGKILL) and reaps them.
class Processes {
 public:
  explicit Processes(std::string log_dir) : log_dir_(std::move(log_dir)) {}
  ~Processes() {
    while (!running_.empty()) Stop(std::prev(running_.end())->first);
  }
  Processes(const Processes&) = delete;
  Processes& operator=(const Processes&) = delete;

  // Children get their own process group (a Ctrl-C reaches the bench,
  // which then stops them in order, the tracker last) and SIGTERM when the
  // bench dies without stopping them (SIGKILL, a crash): no tracker or
  // qemu-nbd outlives it.
  Result<pid_t> Start(const std::vector<std::string>& argv, const std::string& name) {
    const std::string out = log_dir_ + "/" + name + ".out", err = log_dir_ + "/" + name + ".err";
    BLKREP_ASSIGN_OR_RETURN(std::string program, FindProgram(argv[0]));
    // Everything the child needs is made before fork: after it, only
    // async-signal-safe calls.
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int exec_error[2];
    if (::pipe2(exec_error, O_CLOEXEC) != 0) return core::ErrnoStatus(errno, "pipe");
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int e = errno;
      ::close(exec_error[0]);
      ::close(exec_error[1]);
      return core::ErrnoStatus(e, "fork for " + argv[0]);
    }
    if (pid == 0) {
      ::close(exec_error[0]);
      // The bench's handlers only set a flag: a SIGTERM from PDEATHSIG
      // before execve must stop the child.
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      ::sigaction(SIGTERM, &dfl, nullptr);
      ::sigaction(SIGINT, &dfl, nullptr);
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);  // the bench died before prctl
      int in = ::open("/dev/null", O_RDONLY);
      int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (in >= 0 && o >= 0 && e >= 0 && ::dup2(in, 0) == 0 && ::dup2(o, 1) == 1 && ::dup2(e, 2) == 2) {
        for (int fd : {in, o, e}) {
          if (fd > 2) ::close(fd);
        }
        ::execve(program.c_str(), args.data(), environ);
      }
      const int code = errno;
      (void)!::write(exec_error[1], &code, sizeof code);
      ::_exit(127);
    }
    ::close(exec_error[1]);
    int code = 0;
    ssize_t n;
    do n = ::read(exec_error[0], &code, sizeof code);
    while (n < 0 && errno == EINTR);
    ::close(exec_error[0]);
    if (n == static_cast<ssize_t>(sizeof code)) {
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return core::ErrnoStatus(code, "start " + argv[0]);
    }
    running_[pid] = name;
    return pid;
  }

  // Waits for `pid` (polling, so that a signal to the bench is noticed).
  Result<int> Wait(pid_t pid) {
    while (true) {
      int status = 0;
      pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        running_.erase(pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (r < 0 && errno != EINTR) {
        running_.erase(pid);
        return core::ErrnoStatus(errno, "waitpid");
      }
      BLKREP_RETURN_IF_ERROR(CheckInterrupted());
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  bool Alive(pid_t pid) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      running_.erase(pid);
      return false;
    }
    return r == 0;
  }

  // Runs argv to completion; its stdout and stderr are returned.
  Result<Ran> Run(const std::vector<std::string>& argv, const std::string& name) {
    Ran ran;
    double t0 = Now();
    BLKREP_ASSIGN_OR_RETURN(pid_t pid, Start(argv, name));
    BLKREP_ASSIGN_OR_RETURN(ran.exit_status, Wait(pid));
    ran.seconds = Now() - t0;
    ran.out = Slurp(log_dir_ + "/" + name + ".out");
    ran.err = Slurp(log_dir_ + "/" + name + ".err");
    return ran;
  }

  void Stop(pid_t pid) {
    if (running_.count(pid) == 0) return;
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 3000; ++i) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) != 0) {
        running_.erase(pid);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    running_.erase(pid);
  }

  std::string LogOf(const std::string& name) { return FirstLine(Slurp(log_dir_ + "/" + name + ".err")); }

 private:
  std::string log_dir_;
  std::map<pid_t, std::string> running_;
};

// --- options -----------------------------------------------------------------

struct Options {
  std::optional<std::uint64_t> size_bytes;
  std::string volume;  // --volume
  bool allow_writes = false;
  std::uint32_t block_bytes = 65536;
  std::vector<double> dirty = {0.001, 0.01, 0.05, 0.2};
  std::string write_size_text = "4K";
  std::vector<bench::WriteSize> write_sizes = {{4096, 1}};
  bench::Skew skew;
  std::uint32_t compressibility_pct = 50;
  double zero_fraction = 0;
  double duration_s = 10;
  double damage = 0.01;
  std::optional<int> zstd_level;
  std::uint64_t seed = 1;
  std::string dir;
  bool keep = false;
  bool no_peers = false;
  bool json = false;
  std::string svg;
  std::string replay;
  double speed = 0;  // 0: as fast as possible
  double cycle_every_s = 0;  // 0: once at the end
};

Result<std::uint64_t> ParseUint(const std::string& text, std::uint64_t max, const std::string& what) {
  std::uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || v > max) {
    return Status::InvalidArgument(what + ": expected a whole number from 0 to " + std::to_string(max) + ", got '" +
                                   text + "'");
  }
  return v;
}

// "90", "1.5", "90s", "250ms", "5m", "1h", "2d": seconds.
Result<double> ParseDuration(const std::string& text, const std::string& what) {
  double scale = 1;
  std::string number = text;
  if (number.size() > 2 && number.compare(number.size() - 2, 2, "ms") == 0) {
    scale = 1e-3;
    number.resize(number.size() - 2);
  } else if (!number.empty() && std::string_view("smhd").find(number.back()) != std::string_view::npos) {
    scale = number.back() == 'd' ? 86400 : number.back() == 'h' ? 3600 : number.back() == 'm' ? 60 : 1;
    number.pop_back();
  }
  auto v = bench::ParseReal(number, 0, 1e7, what);
  if (!v.ok() || *v <= 0) {
    return Status::InvalidArgument(what + ": expected a duration above 0 (e.g. 10, 2.5s, 250ms, 5m, 1h, 1d), got '" + text +
                                   "'");
  }
  return *v * scale;
}

Result<Options> ParseOptions(const std::vector<std::string>& argv) {
  BLKREP_ASSIGN_OR_RETURN(
      Args args, ParseArgs(argv,
                           {"size", "volume", "block-size", "dirty", "write-size", "skew", "compressibility",
                            "zero-fraction", "duration", "damage", "zstd-level", "seed", "dir", "svg", "replay",
                            "speed", "cycle-every"},
                           {"allow-writes", "json", "no-peers", "keep"}));
  if (!args.positional.empty()) {
    return Status::InvalidArgument("bench: unexpected argument '" + args.positional[0] + "'");
  }
  Options o;
  if (args.Value("size") && args.Value("volume")) {
    return Status::InvalidArgument("bench: --size and --volume exclude each other");
  }
  if (args.Value("replay")) {
    // The trace says where, how much and when: the synthetic workload's
    // knobs would be ignored, so they are refused.
    for (const char* flag : {"size", "volume", "dirty", "write-size", "skew", "duration", "damage"}) {
      if (args.Value(flag)) {
        return Status::InvalidArgument(std::string("bench: --replay takes its volumes and writes from the trace: --") +
                                       flag + " does not apply (replay knobs: --block-size, --compressibility, "
                                       "--zero-fraction, --zstd-level, --seed, --speed, --cycle-every)");
      }
    }
    if (args.Flag("allow-writes") || args.Flag("no-peers")) {
      return Status::InvalidArgument(std::string("bench: --") + (args.Flag("allow-writes") ? "allow-writes" : "no-peers") +
                                     " does not apply to --replay (it uses scratch volumes and no peers)");
    }
  }
  if (auto v = args.Value("size")) {
    auto s = core::ParseSize(*v);
    if (!s.ok() || *s < (1u << 20) || *s % (1u << 20) != 0 || *s > (std::uint64_t{1} << 44)) {
      return Status::InvalidArgument("--size: expected a multiple of 1M from 1M to 16T (e.g. 256M, 1G), got '" + *v +
                                     "'");
    }
    o.size_bytes = *s;
  }
  if (auto v = args.Value("volume")) {
    if (v->empty()) return Status::InvalidArgument("--volume: empty path");
    o.volume = std::filesystem::absolute(*v).string();
  }
  o.allow_writes = args.Flag("allow-writes");
  if (o.allow_writes && o.volume.empty()) return Status::InvalidArgument("--allow-writes needs --volume");
  if (auto v = args.Value("block-size")) {
    auto s = core::ParseSize(*v);
    if (!s.ok() || *s < 4096 || *s > (1u << 20) || (*s & (*s - 1)) != 0) {
      return Status::InvalidArgument("--block-size must be a power of two from 4K to 1M, got '" + *v + "'");
    }
    o.block_bytes = static_cast<std::uint32_t>(*s);
  }
  if (auto v = args.Value("dirty")) {
    BLKREP_ASSIGN_OR_RETURN(o.dirty, bench::ParseFractions(*v));
  }
  if (auto v = args.Value("write-size")) {
    BLKREP_ASSIGN_OR_RETURN(o.write_sizes, bench::ParseWriteSizes(*v));
    o.write_size_text = *v;
  }
  BLKREP_ASSIGN_OR_RETURN(o.skew, bench::ParseSkew(args.Value("skew").value_or("0")));
  if (auto v = args.Value("compressibility")) {
    std::string t = *v;
    if (!t.empty() && t.back() == '%') t.pop_back();
    BLKREP_ASSIGN_OR_RETURN(std::uint64_t c, ParseUint(t, 100, "--compressibility"));
    o.compressibility_pct = static_cast<std::uint32_t>(c);
  }
  if (auto v = args.Value("zero-fraction")) {
    BLKREP_ASSIGN_OR_RETURN(o.zero_fraction, bench::ParseReal(*v, 0, 1, "--zero-fraction"));
  }
  if (auto v = args.Value("duration")) {
    BLKREP_ASSIGN_OR_RETURN(o.duration_s, ParseDuration(*v, "--duration"));
  }
  if (auto v = args.Value("damage")) {
    BLKREP_ASSIGN_OR_RETURN(o.damage, bench::ParseReal(*v, 0, 1, "--damage"));
    if (o.damage <= 0) return Status::InvalidArgument("--damage: expected a fraction above 0, got '" + *v + "'");
  }
  if (auto v = args.Value("zstd-level")) {
    int level = 0;
    auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), level);
    if (v->empty() || ec != std::errc() || ptr != v->data() + v->size() || level < -7 || level > 19) {
      return Status::InvalidArgument("--zstd-level: expected a level from -7 to 19 (0: off), got '" + *v + "'");
    }
    o.zstd_level = level;
  }
  if (auto v = args.Value("seed")) {
    BLKREP_ASSIGN_OR_RETURN(o.seed, ParseUint(*v, ~std::uint64_t{0}, "--seed"));
  }
  o.dir = args.Value("dir").value_or("");
  if (o.dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    o.dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  } else {
    struct stat st;
    if (::stat(o.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument("--dir " + o.dir + ": not a directory");
    }
  }
  o.keep = args.Flag("keep");
  o.no_peers = args.Flag("no-peers");
  o.json = args.Flag("json");
  o.svg = args.Value("svg").value_or("");
  if (args.Value("svg") && o.svg.empty()) return Status::InvalidArgument("--svg: empty path");
  o.replay = args.Value("replay").value_or("");
  if (args.Value("replay") && o.replay.empty()) return Status::InvalidArgument("--replay: empty path");
  if ((args.Value("speed") || args.Value("cycle-every")) && o.replay.empty()) {
    return Status::InvalidArgument("--speed and --cycle-every need --replay");
  }
  if (auto v = args.Value("speed")) {
    BLKREP_ASSIGN_OR_RETURN(o.speed, bench::ParseReal(*v, 0, 1e6, "--speed"));
    if (o.speed <= 0) return Status::InvalidArgument("--speed: expected a factor above 0, got '" + *v + "'");
  }
  if (auto v = args.Value("cycle-every")) {
    BLKREP_ASSIGN_OR_RETURN(o.cycle_every_s, ParseDuration(*v, "--cycle-every"));
    // Trace time in whole nanoseconds; more than a year is "once at the end".
    if (o.cycle_every_s < 1e-3 || o.cycle_every_s > 366.0 * 86400) {
      return Status::InvalidArgument("--cycle-every: expected from 1ms to 366 days of trace time, got '" + *v + "'");
    }
  }
  if (!o.size_bytes && o.volume.empty() && o.replay.empty()) o.size_bytes = std::uint64_t{1} << 30;
  return o;
}

// --- results -------------------------------------------------------------------

// What one `run --json` / `resync --now --json` reported.
struct CycleReport {
  bool ok = false;
  std::string error;
  double seconds = 0;      // wall clock of the process
  double job_duration = 0;  // the job's own duration
  std::string mode;
  std::uint64_t blocks_sent = 0, data_blocks = 0, zero_blocks = 0, kept_blocks = 0;
  std::uint64_t raw_bytes = 0, payload_bytes = 0, bytes_sent = 0, bytes_received = 0;
  std::optional<std::uint64_t> receiver_bytes;
  std::uint64_t compared_blocks = 0, matched_blocks = 0;
};

std::uint64_t U64(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

void WriteCycle(core::JsonWriter& w, const CycleReport& c) {
  w.Key("ok").Bool(c.ok).Key("error").StringOrNull(c.error);
  w.Key("seconds").Double(c.seconds).Key("job_duration").Double(c.job_duration).Key("mode").String(c.mode);
  w.Key("blocks_sent").Uint(c.blocks_sent).Key("data_blocks").Uint(c.data_blocks);
  w.Key("zero_blocks").Uint(c.zero_blocks).Key("kept_blocks").Uint(c.kept_blocks);
  w.Key("raw_bytes").Uint(c.raw_bytes).Key("payload_bytes").Uint(c.payload_bytes);
  w.Key("compression_ratio");
  if (c.payload_bytes > 0) w.Double(static_cast<double>(c.raw_bytes) / static_cast<double>(c.payload_bytes));
  else w.Null();
  w.Key("bytes_sent").Uint(c.bytes_sent).Key("bytes_received").Uint(c.bytes_received);
  w.Key("wire_bytes").Uint(c.bytes_sent + c.bytes_received);
  w.Key("receiver_bytes");
  if (c.receiver_bytes) w.Uint(*c.receiver_bytes);
  else w.Null();
  w.Key("wire_bytes_match").Bool(c.receiver_bytes && *c.receiver_bytes == c.bytes_sent);
}

struct WriteStats {
  std::uint64_t writes = 0, bytes = 0, zero_writes = 0;
  double seconds = 0;
  bool capped = false;  // stopped by --duration before its goal
  std::uint64_t digest = 0;
  double MBps() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e6 : 0; }
  double Iops() const { return seconds > 0 ? static_cast<double>(writes) / seconds : 0; }
};

struct Peer {
  std::optional<std::string> skipped;  // why it was not measured
  double seconds = 0;
  std::uint64_t bytes_sent = 0, bytes_received = 0;
  WriteStats writes;  // overhead peers
};

struct IncrementalRow {
  double fraction = 0;           // asked for (--dirty)
  double achieved_fraction = 0;  // dirtied / volume blocks: less when --duration stopped the writes
  std::uint64_t target_blocks = 0;
  std::uint64_t dirtied_blocks = 0;  // by the generator's own count
  WriteStats workload;
  std::optional<std::uint64_t> journal_dirty_blocks;
  bool journal_matches = false;  // the journal's dirty ranges == the workload's blocks
  CycleReport cycle;
  Peer rsync;
};

struct ResyncRow {
  std::uint64_t damaged_blocks = 0;
  CycleReport cycle;
  double hash_bytes_per_s = 0;
  Peer rsync;
};

struct ReplayCycle {
  double trace_time_s = 0;
  std::uint64_t records = 0;
  std::uint64_t traced_blocks = 0;  // distinct blocks the records touched since the last cycle
  std::optional<std::uint64_t> journal_dirty_blocks;
  bool journal_matches = false;
  double play_seconds = 0;
  CycleReport cycle;
};

std::string Fmt(const char* format, double v) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

double Ratio(double a, double b) { return b > 0 ? a / b : std::nan(""); }

void JsonRatio(core::JsonWriter& w, const char* key, double a, double b) {
  w.Key(key);
  double r = Ratio(a, b);
  if (std::isfinite(r)) w.Double(r);
  else w.Null();
}

void WriteWriteStats(core::JsonWriter& w, const WriteStats& s) {
  w.Key("writes").Uint(s.writes).Key("bytes").Uint(s.bytes).Key("zero_writes").Uint(s.zero_writes);
  w.Key("seconds").Double(s.seconds).Key("mb_per_s").Double(s.MBps()).Key("iops").Double(s.Iops());
  w.Key("capped_by_duration").Bool(s.capped);
  char digest[17];
  std::snprintf(digest, sizeof digest, "%016llx", static_cast<unsigned long long>(s.digest));
  w.Key("workload_digest").String(digest);
}

void WritePeerSkipOrOpen(core::JsonWriter& w, const Peer& p) {
  w.Key("skipped");
  if (p.skipped) w.String(*p.skipped);
  else w.Null();
}

// An rsync peer as an object: skipped (with the reason) or its figures.
void WriteRsync(core::JsonWriter& w, const Peer& rsync) {
  w.BeginObject();
  WritePeerSkipOrOpen(w, rsync);
  if (!rsync.skipped) {
    w.Key("seconds").Double(rsync.seconds).Key("bytes_sent").Uint(rsync.bytes_sent);
    w.Key("bytes_received").Uint(rsync.bytes_received).Key("wire_bytes").Uint(rsync.bytes_sent + rsync.bytes_received);
  }
  w.EndObject();
}

// --- the bench -------------------------------------------------------------------

class Bench {
 public:
  Bench(Options options, std::string self, std::string work)
      : o_(std::move(options)), self_(std::move(self)), work_(std::move(work)), procs_(work_ + "/logs"),
        progress_(::isatty(2) == 1) {}

  Status Run();
  std::string Json() const;
  std::string Table() const;
  std::string Svg() const;
  bool checks_ok() const { return failures_.empty(); }
  const std::vector<std::string>& failures() const { return failures_; }

 private:
  std::vector<std::string> Blkrep(std::vector<std::string> args, const std::string& state) const {
    args.insert(args.begin(), self_);
    args.push_back("--state-dir");
    args.push_back(state);
    return args;
  }
  bench::WorkloadOptions Workload(std::uint64_t volume_bytes) const {
    bench::WorkloadOptions w;
    w.volume_bytes = volume_bytes;
    w.block_bytes = o_.block_bytes;
    w.sizes = o_.write_sizes;
    w.skew = o_.skew;
    w.seed = o_.seed;
    w.compressibility_pct = o_.compressibility_pct;
    w.zero_fraction = o_.zero_fraction;
    return w;
  }
  std::uint32_t MaxWrite() const {
    std::uint32_t m = 4096;
    for (const auto& s : o_.write_sizes) m = std::max(m, s.size_bytes);
    return m;
  }
  void Fail(const std::string& what) { failures_.push_back(what); }
  // A replay cycle's traced blocks over all the trace's volumes' blocks.
  double ReplayFraction(const ReplayCycle& c) const {
    std::uint64_t blocks = 0;
    for (const auto& v : replay_volumes_) blocks += v.second / o_.block_bytes;
    return blocks > 0 ? static_cast<double>(c.traced_blocks) / static_cast<double>(blocks) : 0;
  }

  Status PrepareVolume();
  Status WaitForSocket(pid_t pid, const std::string& socket, const std::string& name);
  // `volumes`: NAME=PATH, as `track` takes them.
  Result<pid_t> StartTracker(const std::string& guest, const std::vector<std::string>& volumes,
                             const std::string& socket, const std::string& state, const std::string& name);
  Status MeasureOverhead();
  Status Overhead(const std::string& side, Peer* out);
  // Writes through `sink` until `goal` says stop or --duration passes.
  Status ApplyWorkload(bench::WriteSink& sink, bench::WorkloadGenerator& gen,
                       const std::function<bool(const bench::Write&)>& add_and_done, double cap_s,
                       WriteStats* stats);
  // The tracker of `volumes` (NAME=PATH), a target receiving into the
  // scratch replica directory, and the job between them.
  Status SetUpJob(const std::vector<std::string>& volumes);
  Result<CycleReport> RunCycle(const std::string& name, bool resync);
  Result<json> Inspect(const std::string& name);
  Status CompareJournal(const json& inspect, const bench::BlockSet& blocks, std::optional<std::uint64_t>* dirty,
                        bool* matches);
  Status RsyncPeer(const std::string& name, Peer* out);
  Status FullSync();
  Status Incremental(std::size_t i);
  Status Resync();
  Status Replay();

  Options o_;
  std::string self_, work_;
  Processes procs_;
  Progress progress_;
  std::string state_, vol_, rdir_, socket_, rsync_copy_;
  std::uint64_t volume_bytes_ = 0;
  std::string volume_source_;  // "scratch", "copy of PATH", "PATH (written)"
  pid_t tracker_ = 0;
  bool rsync_ok_ = false;
  std::optional<std::string> rsync_skip_;

  // Results.
  Peer direct_, blkrep_, qemu_;
  std::uint64_t overhead_goal_bytes_ = 0;
  std::uint64_t overhead_file_bytes_ = 0;
  CycleReport full_;
  Peer cp_;
  std::vector<IncrementalRow> incremental_;
  std::optional<ResyncRow> resync_;
  std::vector<ReplayCycle> replay_;
  std::vector<std::pair<std::string, std::uint64_t>> replay_volumes_;
  std::uint64_t replay_records_ = 0;
  std::string replay_torn_;
  std::uint64_t replay_quiet_intervals_ = 0;  // --cycle-every intervals without a record: no cycle run
  std::vector<std::string> failures_;
  double started_ = Now();
  double elapsed_ = 0;
};

Status Bench::WaitForSocket(pid_t pid, const std::string& socket, const std::string& name) {
  for (int i = 0; i < 1000; ++i) {
    struct stat st;
    if (::stat(socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return Status::Ok();
    if (!procs_.Alive(pid)) {
      return Status::IoError(name + " exited before serving " + socket + ": " + procs_.LogOf(name));
    }
    BLKREP_RETURN_IF_ERROR(CheckInterrupted());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Status::IoError(name + " did not create " + socket + " within 10 s");
}

Result<pid_t> Bench::StartTracker(const std::string& guest, const std::vector<std::string>& volumes,
                                  const std::string& socket, const std::string& state, const std::string& name) {
  std::vector<std::string> track = {"track", guest};
  track.insert(track.end(), volumes.begin(), volumes.end());
  track.insert(track.end(), {"--nbd-socket", socket, "--block-size", std::to_string(o_.block_bytes)});
  BLKREP_ASSIGN_OR_RETURN(pid_t pid, procs_.Start(Blkrep(track, state), name));
  BLKREP_RETURN_IF_ERROR(WaitForSocket(pid, socket, name));
  return pid;
}

Status MakeFile(const std::string& path, std::uint64_t size, bool allocate) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return core::ErrnoStatus(errno, "create " + path);
  int rc = ::ftruncate(fd, static_cast<off_t>(size));
  int err = errno;
  // Allocated like `qemu-img create -o preallocation=falloc`; best effort
  // (a file system without fallocate serves sparse files).
  if (rc == 0 && allocate) (void)::posix_fallocate(fd, 0, static_cast<off_t>(size));
  ::close(fd);
  if (rc != 0) return core::ErrnoStatus(err, "size " + path);
  return Status::Ok();
}

Status Fdatasync(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return core::ErrnoStatus(errno, "open " + path);
  int rc = ::fdatasync(fd);
  int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : core::ErrnoStatus(err, "fdatasync " + path);
}

Status CopyFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return Status::IoError("copy " + from + " to " + to + ": " + ec.message());
  return Status::Ok();
}

Status Bench::PrepareVolume() {
  vol_ = work_ + "/volume.img";
  if (!o_.volume.empty()) {
    struct stat st;
    if (::stat(o_.volume.c_str(), &st) != 0) return core::ErrnoStatus(errno, "--volume " + o_.volume);
    int fd = ::open(o_.volume.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return core::ErrnoStatus(errno, "open --volume " + o_.volume);
    off_t end = ::lseek(fd, 0, SEEK_END);
    ::close(fd);
    if (end <= 0 || end % o_.block_bytes != 0) {
      return Status::InvalidArgument("--volume " + o_.volume + ": size " + std::to_string(end) +
                                     " is not a positive multiple of the block size " +
                                     std::to_string(o_.block_bytes));
    }
    volume_bytes_ = static_cast<std::uint64_t>(end);
    if (o_.allow_writes) {
      vol_ = o_.volume;
      volume_source_ = o_.volume + " (written: --allow-writes)";
      return Status::Ok();
    }
    progress_.Phase("copying " + o_.volume);
    BLKREP_RETURN_IF_ERROR(CopyFile(o_.volume, vol_));
    volume_source_ = "copy of " + o_.volume;
    progress_.Done(core::FormatSize(volume_bytes_));
    return Status::Ok();
  }
  volume_bytes_ = *o_.size_bytes;
  if (volume_bytes_ % o_.block_bytes != 0) {
    return Status::InvalidArgument("--size " + std::to_string(volume_bytes_) +
                                   " is not a multiple of --block-size " + std::to_string(o_.block_bytes));
  }
  volume_source_ = "scratch";
  // The initial content: 1 MiB chunks of the workload's kind of data, the
  // zero fraction of them left as holes (zero blocks in the full sync).
  progress_.Phase("writing the scratch volume");
  BLKREP_RETURN_IF_ERROR(MakeFile(vol_, volume_bytes_, false));
  BLKREP_ASSIGN_OR_RETURN(auto sink, bench::OpenFileSink(vol_, 1u << 20));
  bench::WorkloadOptions wo = Workload(volume_bytes_);
  bench::WorkloadGenerator chooser(wo, 0);
  constexpr std::uint64_t kChunk = 1u << 20;
  for (std::uint64_t off = 0; off < volume_bytes_; off += kChunk) {
    BLKREP_RETURN_IF_ERROR(CheckInterrupted());
    const std::uint64_t index = off / kChunk;
    bench::Write w = chooser.Next();  // only its zero flag is used
    if (w.zero) continue;
    const auto len = static_cast<std::uint32_t>(std::min(kChunk, volume_bytes_ - off));
    BLKREP_RETURN_IF_ERROR(sink->Write(off, len, [&](std::span<std::byte> b) {
      bench::FillData(o_.seed ^ 0x766f6c756d65ull, index, o_.compressibility_pct, false, b);
    }));
    progress_.Percent(static_cast<double>(off) / static_cast<double>(volume_bytes_));
  }
  BLKREP_RETURN_IF_ERROR(sink->Finish());
  progress_.Done(core::FormatSize(volume_bytes_));
  return Status::Ok();
}

Status Bench::ApplyWorkload(bench::WriteSink& sink, bench::WorkloadGenerator& gen,
                            const std::function<bool(const bench::Write&)>& add_and_done, double cap_s,
                            WriteStats* stats) {
  const double t0 = Now();
  while (true) {
    BLKREP_RETURN_IF_ERROR(CheckInterrupted());
    if (Now() - t0 >= cap_s) {
      stats->capped = true;
      break;
    }
    bench::Write w = gen.Next();
    BLKREP_RETURN_IF_ERROR(sink.Write(w.offset_bytes, w.length_bytes, [&](std::span<std::byte> b) { gen.Fill(w, b); }));
    ++stats->writes;
    stats->bytes += w.length_bytes;
    stats->zero_writes += w.zero ? 1 : 0;
    if (add_and_done(w)) break;
  }
  BLKREP_RETURN_IF_ERROR(sink.Finish());
  stats->seconds = Now() - t0;
  stats->digest = gen.digest();
  return Status::Ok();
}

// One side of the overhead measurement on a fresh file of the volume's size.
Status Bench::Overhead(const std::string& side, Peer* out) {
  const std::string file = work_ + "/overhead-" + side + ".img";
  const std::string socket = work_ + "/overhead-" + side + ".sock";
  BLKREP_RETURN_IF_ERROR(MakeFile(file, overhead_file_bytes_, true));
  pid_t server = 0;
  std::unique_ptr<bench::WriteSink> sink;
  if (side == "direct") {
    BLKREP_ASSIGN_OR_RETURN(sink, bench::OpenFileSink(file, MaxWrite()));
  } else if (side == "blkrep") {
    BLKREP_ASSIGN_OR_RETURN(server, StartTracker("overhead", {"disk0=" + file}, socket, work_ + "/overhead-state", "overhead-track"));
    BLKREP_ASSIGN_OR_RETURN(sink, bench::ConnectNbdSink(socket, "disk0", kQueueDepth, MaxWrite()));
  } else {
    BLKREP_ASSIGN_OR_RETURN(server, procs_.Start({"qemu-nbd", "--format", "raw", "--export-name", "disk0",
                                                  "--persistent", "--shared", "8", "--socket", socket, file},
                                                 "overhead-qemu-nbd"));
    BLKREP_RETURN_IF_ERROR(WaitForSocket(server, socket, "overhead-qemu-nbd"));
    BLKREP_ASSIGN_OR_RETURN(sink, bench::ConnectNbdSink(socket, "disk0", kQueueDepth, MaxWrite()));
  }
  bench::WorkloadGenerator gen(Workload(overhead_file_bytes_), 1);
  std::uint64_t written = 0;
  progress_.Phase("tracker overhead: " + side);
  Status applied = ApplyWorkload(
      *sink, gen,
      [&](const bench::Write& w) {
        written += w.length_bytes;
        progress_.Percent(static_cast<double>(written) / static_cast<double>(overhead_goal_bytes_));
        return written >= overhead_goal_bytes_;
      },
      o_.duration_s, &out->writes);
  sink.reset();
  if (server != 0) procs_.Stop(server);
  std::filesystem::remove(file);
  BLKREP_RETURN_IF_ERROR(applied.WithContext("tracker overhead, " + side));
  char summary[96];
  std::snprintf(summary, sizeof summary, "%.1f MB/s, %.0f IOPS", out->writes.MBps(), out->writes.Iops());
  progress_.Done(summary);
  return Status::Ok();
}

Status Bench::MeasureOverhead() {
  // Fresh files of the volume's size (at most 4 GiB: a large --volume must
  // not triple the scratch space), the same for the three sides.
  overhead_file_bytes_ = std::min<std::uint64_t>(volume_bytes_, std::uint64_t{4} << 30);
  overhead_goal_bytes_ = std::min<std::uint64_t>(overhead_file_bytes_, 256u << 20);
  BLKREP_RETURN_IF_ERROR(Overhead("direct", &direct_));
  BLKREP_RETURN_IF_ERROR(Overhead("blkrep", &blkrep_));
  if (o_.no_peers) {
    qemu_.skipped = "--no-peers";
  } else if (!OnPath("qemu-nbd")) {
    qemu_.skipped = "qemu-nbd not found on PATH (apt-get install qemu-utils)";
  } else {
    BLKREP_RETURN_IF_ERROR(Overhead("qemu-nbd", &qemu_));
  }
  return Status::Ok();
}

Status Bench::SetUpJob(const std::vector<std::string>& volumes) {
  state_ = work_ + "/state";
  rdir_ = work_ + "/replicas";
  socket_ = work_ + "/nbd.sock";
  std::filesystem::create_directories(rdir_);
  BLKREP_ASSIGN_OR_RETURN(tracker_, StartTracker(kGuest, volumes, socket_, state_, "track"));
  BLKREP_ASSIGN_OR_RETURN(
      Ran t, procs_.Run(Blkrep({"target", "add", kTarget, "--exec",
                                ShellQuote(self_) + " receive --stdio --replica-dir " + ShellQuote(rdir_)},
                               state_),
                        "target-add"));
  if (t.exit_status != 0) return Status::IoError("blkrep target add failed: " + FirstLine(t.err));
  BLKREP_ASSIGN_OR_RETURN(Ran j, procs_.Run(Blkrep({"create-local-job", kJob, kTarget}, state_), "create-job"));
  if (j.exit_status != 0) return Status::IoError("blkrep create-local-job failed: " + FirstLine(j.err));
  return Status::Ok();
}

Result<CycleReport> Bench::RunCycle(const std::string& name, bool resync) {
  std::vector<std::string> args = resync ? std::vector<std::string>{"resync", kJob, "--now", "--json"}
                                         : std::vector<std::string>{"run", "--id", kJob, "--json"};
  if (o_.zstd_level) {
    args.push_back("--zstd-level");
    args.push_back(std::to_string(*o_.zstd_level));
  }
  BLKREP_ASSIGN_OR_RETURN(Ran ran, procs_.Run(Blkrep(args, state_), name));
  CycleReport c;
  c.seconds = ran.seconds;
  json doc = json::parse(ran.out, nullptr, false);
  if (doc.is_discarded() || !doc.is_array() || doc.size() != 1 || !doc[0].is_object()) {
    return Status::IoError("blkrep " + args[0] + " (" + name + ") exited " + std::to_string(ran.exit_status) +
                           " without a report: " + FirstLine(ran.err));
  }
  const json& r = doc[0];
  c.ok = ran.exit_status == 0 && r.value("state", "") != "error";
  if (r.contains("error") && r["error"].is_string()) c.error = r["error"].get<std::string>();
  if (ran.exit_status != 0 && c.error.empty()) c.error = FirstLine(ran.err);
  if (r.contains("duration") && r["duration"].is_number()) c.job_duration = r["duration"].get<double>();
  if (r.contains("mode") && r["mode"].is_string()) c.mode = r["mode"].get<std::string>();
  c.blocks_sent = U64(r, "blocks_sent");
  c.data_blocks = U64(r, "data_blocks");
  c.zero_blocks = U64(r, "zero_blocks");
  c.kept_blocks = U64(r, "kept_blocks");
  c.raw_bytes = U64(r, "raw_bytes");
  c.payload_bytes = U64(r, "payload_bytes");
  c.bytes_sent = U64(r, "bytes_sent");
  c.bytes_received = U64(r, "bytes_received");
  c.compared_blocks = U64(r, "compared_blocks");
  c.matched_blocks = U64(r, "matched_blocks");
  if (r.contains("receiver_bytes") && r["receiver_bytes"].is_number_unsigned()) {
    c.receiver_bytes = r["receiver_bytes"].get<std::uint64_t>();
  }
  if (!c.ok) Fail(name + ": the cycle failed: " + c.error);
  else if (!c.receiver_bytes) Fail(name + ": the run report has no receiver_bytes");
  else if (*c.receiver_bytes != c.bytes_sent) {
    Fail(name + ": the shipper sent " + std::to_string(c.bytes_sent) + " bytes, the receiver counted " +
         std::to_string(*c.receiver_bytes));
  }
  return c;
}

Result<json> Bench::Inspect(const std::string& name) {
  BLKREP_ASSIGN_OR_RETURN(Ran ran, procs_.Run(Blkrep({"journal", "inspect", kGuest, "--json"}, state_), name));
  json doc = json::parse(ran.out, nullptr, false);
  if (ran.exit_status != 0 || doc.is_discarded() || !doc.is_object()) {
    return Status::IoError("blkrep journal inspect failed: " + FirstLine(ran.err));
  }
  return doc;
}

// The target's dirty blocks of volume `volume_index` as the journal says, and
// whether they are exactly `blocks`.
Status Bench::CompareJournal(const json& inspect, const bench::BlockSet& blocks,
                             std::optional<std::uint64_t>* dirty, bool* matches) {
  *matches = false;
  const json* target = nullptr;
  if (inspect.contains("volumes") && inspect["volumes"].is_array() && !inspect["volumes"].empty()) {
    const json& v = inspect["volumes"][0];
    if (v.contains("targets") && v["targets"].is_array()) {
      for (const json& t : v["targets"]) {
        if (t.is_object() && t.value("name", "") == kJob) target = &t;
      }
    }
  }
  if (target == nullptr) return Status::Corruption("journal inspect: no target " + std::string(kJob));
  *dirty = U64(*target, "dirty_blocks");
  std::vector<bool> seen(blocks.block_count());
  std::uint64_t count = 0;
  bool in_range = true;
  if (target->contains("dirty_ranges") && (*target)["dirty_ranges"].is_array()) {
    for (const json& r : (*target)["dirty_ranges"]) {
      if (!r.is_array() || r.size() != 2 || !r[0].is_number_unsigned() || !r[1].is_number_unsigned()) continue;
      const auto first = r[0].get<std::uint64_t>(), n = r[1].get<std::uint64_t>();
      for (std::uint64_t b = first; b < first + n; ++b) {
        if (b >= seen.size()) {
          in_range = false;
          break;
        }
        if (!blocks.Has(b)) in_range = false;
        seen[b] = true;
        ++count;
      }
    }
  }
  *matches = in_range && count == blocks.count();
  return Status::Ok();
}

// rsync's delta transfer from the volume onto the copy of its previous state.
Status Bench::RsyncPeer(const std::string& name, Peer* out) {
  if (!rsync_ok_) {
    out->skipped = rsync_skip_.value_or("rsync not run");
    return Status::Ok();
  }
  double t0 = Now();
  BLKREP_ASSIGN_OR_RETURN(Ran ran, procs_.Run({"rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats",
                                               vol_, rsync_copy_},
                                              name));
  if (ran.exit_status != 0) return Status::IoError("rsync (" + name + ") failed: " + FirstLine(ran.err));
  BLKREP_RETURN_IF_ERROR(Fdatasync(rsync_copy_));
  out->seconds = Now() - t0;
  auto number = [&](const std::string& label) -> std::uint64_t {
    std::size_t at = ran.out.find(label);
    if (at == std::string::npos) return 0;
    std::uint64_t v = 0;
    for (std::size_t i = at + label.size(); i < ran.out.size() && ran.out[i] != '\n'; ++i) {
      if (ran.out[i] >= '0' && ran.out[i] <= '9') v = v * 10 + static_cast<std::uint64_t>(ran.out[i] - '0');
      else if (ran.out[i] != ',' && ran.out[i] != ' ' && ran.out[i] != '.') break;
    }
    return v;
  };
  out->bytes_sent = number("Total bytes sent:");
  out->bytes_received = number("Total bytes received:");
  return Status::Ok();
}

Status Bench::FullSync() {
  progress_.Phase("full sync");
  BLKREP_ASSIGN_OR_RETURN(full_, RunCycle("full-sync", false));
  if (full_.mode != "full") Fail("full-sync: mode " + full_.mode + ", expected full");
  if (full_.blocks_sent != volume_bytes_ / o_.block_bytes) {
    Fail("full-sync: sent " + std::to_string(full_.blocks_sent) + " blocks, the volume has " +
         std::to_string(volume_bytes_ / o_.block_bytes));
  }
  char summary[128];
  std::snprintf(summary, sizeof summary, "%.2f s, %s on the wire", full_.seconds,
                core::FormatSize(full_.bytes_sent).c_str());
  progress_.Done(summary);
  // The peer: cp of the volume + fdatasync. The copy is the previous state
  // rsync brings up to date in the incremental rows.
  if (o_.no_peers) {
    cp_.skipped = rsync_skip_ = "--no-peers";
    return Status::Ok();
  }
  if (!OnPath("cp")) {
    cp_.skipped = rsync_skip_ = "cp not found on PATH (the copy rsync brings up to date)";
    return Status::Ok();
  }
  progress_.Phase("full sync: cp");
  rsync_copy_ = work_ + "/rsync-copy.img";
  double t0 = Now();
  BLKREP_ASSIGN_OR_RETURN(Ran ran, procs_.Run({"cp", "--sparse=auto", vol_, rsync_copy_}, "full-cp"));
  if (ran.exit_status != 0) return Status::IoError("cp of the volume failed: " + FirstLine(ran.err));
  BLKREP_RETURN_IF_ERROR(Fdatasync(rsync_copy_));
  cp_.seconds = Now() - t0;
  std::snprintf(summary, sizeof summary, "%.2f s", cp_.seconds);
  progress_.Done(summary);
  if (OnPath("rsync")) rsync_ok_ = true;
  else rsync_skip_ = "rsync not found on PATH (apt-get install rsync)";
  return Status::Ok();
}

Status Bench::Incremental(std::size_t i) {
  IncrementalRow row;
  row.fraction = o_.dirty[i];
  const std::uint64_t blocks = volume_bytes_ / o_.block_bytes;
  row.target_blocks = std::max<std::uint64_t>(1, std::llround(row.fraction * static_cast<double>(blocks)));
  char label[64];
  std::snprintf(label, sizeof label, "incremental %g%%", row.fraction * 100);
  progress_.Phase(std::string(label) + ": writing");
  bench::WorkloadGenerator gen(Workload(volume_bytes_), 100 + i);
  bench::BlockSet set(volume_bytes_, o_.block_bytes);
  {
    BLKREP_ASSIGN_OR_RETURN(auto sink, bench::ConnectNbdSink(socket_, "disk0", kQueueDepth, MaxWrite()));
    BLKREP_RETURN_IF_ERROR(ApplyWorkload(
        *sink, gen,
        [&](const bench::Write& w) {
          set.Add(w.offset_bytes, w.length_bytes);
          progress_.Percent(static_cast<double>(set.count()) / static_cast<double>(row.target_blocks));
          return set.count() >= row.target_blocks;
        },
        o_.duration_s, &row.workload));
  }
  row.dirtied_blocks = set.count();
  row.achieved_fraction = static_cast<double>(row.dirtied_blocks) / static_cast<double>(blocks);
  progress_.Done(std::to_string(row.dirtied_blocks) + " blocks dirtied by " + std::to_string(row.workload.writes) +
                 " writes");
  std::string name = "incremental-" + std::to_string(i + 1);
  BLKREP_ASSIGN_OR_RETURN(json inspect, Inspect(name + "-inspect"));
  BLKREP_RETURN_IF_ERROR(CompareJournal(inspect, set, &row.journal_dirty_blocks, &row.journal_matches));
  if (!row.journal_matches) {
    Fail(name + ": the journal marked " + std::to_string(row.journal_dirty_blocks.value_or(0)) +
         " blocks, not exactly the " + std::to_string(row.dirtied_blocks) + " the workload wrote");
  }
  progress_.Phase(std::string(label) + ": cycle");
  BLKREP_ASSIGN_OR_RETURN(row.cycle, RunCycle(name, false));
  if (row.cycle.ok && row.cycle.blocks_sent != row.dirtied_blocks) {
    Fail(name + ": the cycle sent " + std::to_string(row.cycle.blocks_sent) + " blocks, the workload dirtied " +
         std::to_string(row.dirtied_blocks));
  }
  char summary[128];
  std::snprintf(summary, sizeof summary, "%.2f s, %s on the wire", row.cycle.seconds,
                core::FormatSize(row.cycle.bytes_sent).c_str());
  progress_.Done(summary);
  if (rsync_ok_) progress_.Phase(std::string(label) + ": rsync");
  BLKREP_RETURN_IF_ERROR(RsyncPeer(name + "-rsync", &row.rsync));
  if (rsync_ok_) progress_.Done(Fmt("%.3f s, ", row.rsync.seconds) + core::FormatSize(row.rsync.bytes_sent) + " sent");
  incremental_.push_back(std::move(row));
  return Status::Ok();
}

Status DamageBlocks(const std::string& path, const std::vector<std::uint64_t>& blocks, std::uint32_t block_bytes,
                    std::uint64_t seed) {
  BLKREP_ASSIGN_OR_RETURN(auto sink, bench::OpenFileSink(path, block_bytes));
  for (std::uint64_t b : blocks) {
    BLKREP_RETURN_IF_ERROR(sink->Write(b * block_bytes, block_bytes, [&](std::span<std::byte> buf) {
      bench::FillData(seed ^ 0x64616d616765ull, b, 0, false, buf);
    }));
  }
  return sink->Finish();
}

Status Bench::Resync() {
  ResyncRow row;
  const std::uint64_t nblocks = volume_bytes_ / o_.block_bytes;
  const std::uint64_t n = std::clamp<std::uint64_t>(std::llround(o_.damage * static_cast<double>(nblocks)), 1, nblocks);
  // Which blocks: a uniform workload of one-block writes, first n distinct.
  bench::WorkloadOptions wo = Workload(volume_bytes_);
  wo.sizes = {{o_.block_bytes, 1}};
  wo.skew = bench::Skew{};
  wo.zero_fraction = 0;
  bench::WorkloadGenerator gen(wo, 999);
  bench::BlockSet set(volume_bytes_, o_.block_bytes);
  std::vector<std::uint64_t> damaged;
  while (damaged.size() < n) {
    bench::Write w = gen.Next();
    std::uint64_t b = w.offset_bytes / o_.block_bytes;
    if (set.Add(b * o_.block_bytes, o_.block_bytes) > 0) damaged.push_back(b);
  }
  row.damaged_blocks = n;
  progress_.Phase("resync");
  const std::string replica = rdir_ + "/" + kGuest + "/disk0.img";
  BLKREP_RETURN_IF_ERROR(DamageBlocks(replica, damaged, o_.block_bytes, o_.seed));
  BLKREP_ASSIGN_OR_RETURN(row.cycle, RunCycle("resync", true));
  if (row.cycle.ok && row.cycle.blocks_sent != n) {
    Fail("resync: sent " + std::to_string(row.cycle.blocks_sent) + " blocks, " + std::to_string(n) +
         " were damaged");
  }
  row.hash_bytes_per_s = Ratio(2.0 * static_cast<double>(row.cycle.compared_blocks) * o_.block_bytes,
                               row.cycle.seconds);
  char summary[128];
  std::snprintf(summary, sizeof summary, "%.2f s, %llu blocks compared, %llu sent", row.cycle.seconds,
                static_cast<unsigned long long>(row.cycle.compared_blocks),
                static_cast<unsigned long long>(row.cycle.blocks_sent));
  progress_.Done(summary);
  if (rsync_ok_) {
    BLKREP_RETURN_IF_ERROR(DamageBlocks(rsync_copy_, damaged, o_.block_bytes, o_.seed));
    progress_.Phase("resync: rsync");
  }
  BLKREP_RETURN_IF_ERROR(RsyncPeer("resync-rsync", &row.rsync));
  if (rsync_ok_) progress_.Done(Fmt("%.3f s", row.rsync.seconds));
  resync_ = std::move(row);
  return Status::Ok();
}

Status Bench::Run() {
  std::filesystem::create_directories(work_ + "/logs");
  if (!o_.replay.empty()) return Replay();
  BLKREP_RETURN_IF_ERROR(PrepareVolume());
  BLKREP_RETURN_IF_ERROR(MeasureOverhead());
  BLKREP_RETURN_IF_ERROR(SetUpJob({"disk0=" + vol_}));
  BLKREP_RETURN_IF_ERROR(FullSync());
  for (std::size_t i = 0; i < o_.dirty.size(); ++i) BLKREP_RETURN_IF_ERROR(Incremental(i));
  BLKREP_RETURN_IF_ERROR(Resync());
  procs_.Stop(tracker_);
  elapsed_ = Now() - started_;
  return Status::Ok();
}

// --- replay ----------------------------------------------------------------------

Status Bench::Replay() {
  progress_.Phase("reading the trace " + o_.replay);
  auto trace = tracker::ReadTrace(o_.replay);
  if (!trace.ok()) {
    if (trace.status().code() == core::Code::kNotFound || trace.status().code() == core::Code::kCorruption) {
      return Status::InvalidArgument("--replay " + o_.replay + ": " + trace.status().message());
    }
    return trace.status().WithContext("--replay " + o_.replay);
  }
  replay_records_ = trace->records.size();
  replay_torn_ = trace->torn_tail;
  if (trace->records.empty()) {
    return Status::InvalidArgument("--replay " + o_.replay + ": the trace holds no records (nothing to replay)" +
                                   (trace->torn_tail.empty() ? "" : "; torn tail: " + trace->torn_tail));
  }
  progress_.Done(std::to_string(trace->records.size()) + " records, " + std::to_string(trace->volumes.size()) +
                 " volume(s)");
  std::vector<std::string> track_volumes;
  std::vector<bench::BlockSet> sets;
  for (const auto& v : trace->volumes) {
    if (v.size_bytes == 0 || v.size_bytes % o_.block_bytes != 0) {
      return Status::InvalidArgument("--replay: volume " + v.name + " of " + std::to_string(v.size_bytes) +
                                     " bytes is not a multiple of --block-size " + std::to_string(o_.block_bytes));
    }
    const std::string file = work_ + "/replay-" + std::to_string(replay_volumes_.size()) + ".img";
    BLKREP_RETURN_IF_ERROR(MakeFile(file, v.size_bytes, false));
    track_volumes.push_back(v.name + "=" + file);
    replay_volumes_.push_back({v.name, v.size_bytes});
    sets.emplace_back(v.size_bytes, o_.block_bytes);
  }
  volume_bytes_ = trace->volumes.empty() ? 0 : trace->volumes[0].size_bytes;
  BLKREP_RETURN_IF_ERROR(SetUpJob(track_volumes));
  // The replica starts as the (empty) volumes: a full cycle first, not measured
  // as a replay cycle.
  progress_.Phase("replay: initial full cycle");
  BLKREP_ASSIGN_OR_RETURN(full_, RunCycle("replay-full", false));
  progress_.Done(Fmt("%.3f s", full_.seconds));

  std::vector<std::unique_ptr<bench::WriteSink>> sinks;
  std::uint32_t max_len = 4096;
  for (const auto& r : trace->records) max_len = std::max(max_len, r.length_bytes);
  max_len = std::min(max_len, bench::kMaxWriteBytes);
  for (const auto& v : trace->volumes) {
    BLKREP_ASSIGN_OR_RETURN(auto sink, bench::ConnectNbdSink(socket_, v.name, kQueueDepth, max_len));
    sinks.push_back(std::move(sink));
  }
  const std::uint64_t cycle_ns =
      o_.cycle_every_s > 0 ? static_cast<std::uint64_t>(std::llround(o_.cycle_every_s * 1e9)) : ~std::uint64_t{0};
  std::uint64_t next_cycle_ns = cycle_ns;
  std::size_t since_cycle = 0;
  double play_t0 = Now();
  auto run_cycle = [&](std::uint64_t trace_ns) -> Status {
    for (auto& s : sinks) BLKREP_RETURN_IF_ERROR(s->Finish());
    ReplayCycle c;
    c.trace_time_s = static_cast<double>(trace_ns) / 1e9;
    c.records = since_cycle;
    c.play_seconds = Now() - play_t0;
    for (const auto& s : sets) c.traced_blocks += s.count();
    const std::string name = "replay-cycle-" + std::to_string(replay_.size() + 1);
    BLKREP_ASSIGN_OR_RETURN(json inspect, Inspect(name + "-inspect"));
    // Every volume's dirty blocks against the trace's.
    c.journal_matches = true;
    std::uint64_t journal_total = 0;
    const json& vols = inspect.contains("volumes") ? inspect["volumes"] : json::array();
    for (std::size_t vi = 0; vi < sets.size(); ++vi) {
      const json* vj = nullptr;
      for (const json& v : vols) {
        if (v.is_object() && v.value("name", "") == replay_volumes_[vi].first) vj = &v;
      }
      if (vj == nullptr) {
        c.journal_matches = false;
        continue;
      }
      json one = json::object();
      one["volumes"] = json::array({*vj});
      std::optional<std::uint64_t> dirty;
      bool matches = false;
      BLKREP_RETURN_IF_ERROR(CompareJournal(one, sets[vi], &dirty, &matches));
      journal_total += dirty.value_or(0);
      c.journal_matches = c.journal_matches && matches;
    }
    c.journal_dirty_blocks = journal_total;
    if (!c.journal_matches) {
      Fail(name + ": the journal marked " + std::to_string(journal_total) + " blocks, not exactly the " +
           std::to_string(c.traced_blocks) + " the trace wrote");
    }
    progress_.Phase("replay: " + name);
    BLKREP_ASSIGN_OR_RETURN(c.cycle, RunCycle(name, false));
    if (c.cycle.ok && c.cycle.blocks_sent != c.traced_blocks) {
      Fail(name + ": the cycle sent " + std::to_string(c.cycle.blocks_sent) + " blocks, the trace touched " +
           std::to_string(c.traced_blocks));
    }
    progress_.Done(std::to_string(c.cycle.blocks_sent) + " blocks, " + Fmt("%.3f s", c.cycle.seconds));
    replay_.push_back(std::move(c));
    for (std::size_t vi = 0; vi < sets.size(); ++vi) sets[vi] = bench::BlockSet(replay_volumes_[vi].second, o_.block_bytes);
    since_cycle = 0;
    play_t0 = Now();
    return Status::Ok();
  };
  progress_.Phase("replay: playing " + std::to_string(trace->records.size()) + " records");
  const double wall_t0 = Now();
  for (std::size_t i = 0; i < trace->records.size(); ++i) {
    BLKREP_RETURN_IF_ERROR(CheckInterrupted());
    const tracker::TraceRecord& r = trace->records[i];
    if (r.time_ns >= next_cycle_ns) {
      // A cycle at every interval boundary the trace passed that had
      // records; quiet intervals are counted, not run (nothing to send).
      if (since_cycle > 0) {
        BLKREP_RETURN_IF_ERROR(run_cycle(next_cycle_ns));
        next_cycle_ns = next_cycle_ns > ~std::uint64_t{0} - cycle_ns ? ~std::uint64_t{0} : next_cycle_ns + cycle_ns;
        progress_.Phase("replay: playing");
      }
      if (r.time_ns >= next_cycle_ns) {
        const std::uint64_t quiet = (r.time_ns - next_cycle_ns) / cycle_ns + 1;
        replay_quiet_intervals_ += quiet;
        // Past r.time_ns; at the end of the clock (a trace near 2^64 ns) no
        // further boundary.
        const unsigned __int128 next =
            static_cast<unsigned __int128>(next_cycle_ns) + static_cast<unsigned __int128>(quiet) * cycle_ns;
        next_cycle_ns = next > ~std::uint64_t{0} ? ~std::uint64_t{0} : static_cast<std::uint64_t>(next);
      }
    }
    if (o_.speed > 0) {
      const double due = wall_t0 + static_cast<double>(r.time_ns) / 1e9 / o_.speed;
      double now = Now();
      if (due > now) std::this_thread::sleep_for(std::chrono::duration<double>(due - now));
    }
    if (r.volume >= sinks.size()) return Status::Corruption("trace: record " + std::to_string(i) + ": bad volume");
    bench::WriteSink& sink = *sinks[r.volume];
    switch (r.op) {
      case tracker::TraceOp::kWrite: {
        const bool zero = o_.zero_fraction > 0 &&
                          static_cast<double>(core::Xxh3_64(&i, sizeof i) >> 11) * 0x1.0p-53 < o_.zero_fraction;
        BLKREP_RETURN_IF_ERROR(sink.Write(r.offset_bytes, r.length_bytes, [&](std::span<std::byte> b) {
          bench::FillData(o_.seed, i, o_.compressibility_pct, zero, b);
        }));
        break;
      }
      case tracker::TraceOp::kTrim:
        BLKREP_RETURN_IF_ERROR(sink.Trim(r.offset_bytes, r.length_bytes));
        break;
      case tracker::TraceOp::kWriteZeroes:
        BLKREP_RETURN_IF_ERROR(sink.WriteZeroes(r.offset_bytes, r.length_bytes));
        break;
    }
    sets[r.volume].Add(r.offset_bytes, r.length_bytes);
    ++since_cycle;
    progress_.Percent(static_cast<double>(i + 1) / static_cast<double>(trace->records.size()));
  }
  const std::uint64_t end_ns = trace->records.empty() ? 0 : trace->records.back().time_ns;
  BLKREP_RETURN_IF_ERROR(run_cycle(end_ns));
  sinks.clear();
  procs_.Stop(tracker_);
  elapsed_ = Now() - started_;
  return Status::Ok();
}

// --- reports ---------------------------------------------------------------------

std::string NowIso() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string Bench::Json() const {
  core::JsonWriter w(core::JsonStyle::kPretty);
  w.BeginObject();
  struct utsname u;
  ::uname(&u);
  w.Key("meta").BeginObject();
  w.Key("date").String(NowIso()).Key("kernel").String(std::string(u.sysname) + " " + u.release);
  w.Key("cpus").Uint(std::thread::hardware_concurrency()).Key("version").String(BLKREP_VERSION);
  w.Key("elapsed_seconds").Double(elapsed_).Key("scratch_dir").String(work_).Key("kept").Bool(o_.keep);
  w.EndObject();
  w.Key("options").BeginObject();
  w.Key("volume_bytes").Uint(volume_bytes_).Key("volume").String(o_.replay.empty() ? volume_source_ : "replay");
  w.Key("block_size").Uint(o_.block_bytes);
  w.Key("dirty").BeginArray();
  for (double f : o_.dirty) w.Double(f);
  w.EndArray();
  w.Key("write_size").BeginArray();
  for (const auto& s : o_.write_sizes) w.BeginObject().Key("bytes").Uint(s.size_bytes).Key("weight").Uint(s.weight).EndObject();
  w.EndArray();
  w.Key("skew").String(o_.skew.text).Key("compressibility_pct").Uint(o_.compressibility_pct);
  w.Key("zero_fraction").Double(o_.zero_fraction).Key("duration_seconds").Double(o_.duration_s);
  w.Key("damage").Double(o_.damage).Key("zstd_level");
  if (o_.zstd_level) w.Int(*o_.zstd_level);
  else w.Null();
  w.Key("seed").Uint(o_.seed).Key("queue_depth").Int(kQueueDepth).Key("no_peers").Bool(o_.no_peers);
  w.EndObject();

  if (!o_.replay.empty()) {
    w.Key("replay").BeginObject();
    w.Key("trace").String(o_.replay).Key("records").Uint(replay_records_);
    w.Key("torn_tail").StringOrNull(replay_torn_);
    w.Key("speed");
    if (o_.speed > 0) w.Double(o_.speed);
    else w.Null();
    w.Key("cycle_every_seconds");
    if (o_.cycle_every_s > 0) w.Double(o_.cycle_every_s);
    else w.Null();
    w.Key("quiet_intervals").Uint(replay_quiet_intervals_);
    w.Key("volumes").BeginArray();
    for (const auto& [name, size] : replay_volumes_) w.BeginObject().Key("name").String(name).Key("size_bytes").Uint(size).EndObject();
    w.EndArray();
    w.Key("initial_full_cycle").BeginObject();
    WriteCycle(w, full_);
    w.EndObject();
    w.Key("cycles").BeginArray();
    for (const auto& c : replay_) {
      w.BeginObject();
      w.Key("trace_time_seconds").Double(c.trace_time_s).Key("records").Uint(c.records);
      w.Key("play_seconds").Double(c.play_seconds).Key("traced_blocks").Uint(c.traced_blocks);
      w.Key("dirty_fraction").Double(ReplayFraction(c));
      w.Key("journal_dirty_blocks");
      if (c.journal_dirty_blocks) w.Uint(*c.journal_dirty_blocks);
      else w.Null();
      w.Key("journal_matches_trace").Bool(c.journal_matches);
      w.Key("cycle").BeginObject();
      WriteCycle(w, c.cycle);
      w.EndObject();
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  } else {
    w.Key("overhead").BeginObject();
    w.Key("goal_bytes").Uint(overhead_goal_bytes_).Key("file_bytes").Uint(overhead_file_bytes_);
    for (auto [key, p] : {std::pair<const char*, const Peer*>{"direct", &direct_}, {"blkrep", &blkrep_},
                          {"qemu_nbd", &qemu_}}) {
      w.Key(key).BeginObject();
      WritePeerSkipOrOpen(w, *p);
      if (!p->skipped) WriteWriteStats(w, p->writes);
      w.EndObject();
    }
    JsonRatio(w, "ratio_blkrep_direct_mb_per_s", blkrep_.writes.MBps(), direct_.writes.MBps());
    JsonRatio(w, "ratio_blkrep_direct_iops", blkrep_.writes.Iops(), direct_.writes.Iops());
    JsonRatio(w, "ratio_blkrep_qemu_nbd_mb_per_s", blkrep_.writes.MBps(), qemu_.skipped ? 0 : qemu_.writes.MBps());
    JsonRatio(w, "ratio_blkrep_qemu_nbd_iops", blkrep_.writes.Iops(), qemu_.skipped ? 0 : qemu_.writes.Iops());
    w.EndObject();

    w.Key("full_sync").BeginObject();
    WriteCycle(w, full_);
    w.Key("mb_per_s").Double(Ratio(static_cast<double>(volume_bytes_) / 1e6, full_.seconds));
    w.Key("cp").BeginObject();
    WritePeerSkipOrOpen(w, cp_);
    if (!cp_.skipped) w.Key("seconds").Double(cp_.seconds).Key("mb_per_s").Double(Ratio(static_cast<double>(volume_bytes_) / 1e6, cp_.seconds));
    w.EndObject();
    JsonRatio(w, "ratio_seconds_blkrep_cp", full_.seconds, cp_.skipped ? 0 : cp_.seconds);
    w.EndObject();

    w.Key("incremental").BeginArray();
    for (const auto& r : incremental_) {
      w.BeginObject();
      w.Key("dirty_fraction").Double(r.fraction).Key("achieved_dirty_fraction").Double(r.achieved_fraction);
      w.Key("target_blocks").Uint(r.target_blocks);
      w.Key("dirtied_blocks").Uint(r.dirtied_blocks);
      w.Key("workload").BeginObject();
      WriteWriteStats(w, r.workload);
      w.EndObject();
      w.Key("journal_dirty_blocks");
      if (r.journal_dirty_blocks) w.Uint(*r.journal_dirty_blocks);
      else w.Null();
      w.Key("journal_matches_workload").Bool(r.journal_matches);
      w.Key("blocks_sent_match").Bool(r.cycle.blocks_sent == r.dirtied_blocks);
      w.Key("cycle").BeginObject();
      WriteCycle(w, r.cycle);
      w.EndObject();
      w.Key("rsync");
      WriteRsync(w, r.rsync);
      const bool peer = !r.rsync.skipped;
      JsonRatio(w, "ratio_seconds_blkrep_rsync", r.cycle.seconds, peer ? r.rsync.seconds : 0);
      JsonRatio(w, "ratio_wire_bytes_blkrep_rsync", static_cast<double>(r.cycle.bytes_sent + r.cycle.bytes_received),
                peer ? static_cast<double>(r.rsync.bytes_sent + r.rsync.bytes_received) : 0);
      w.EndObject();
    }
    w.EndArray();

    w.Key("resync");
    if (!resync_) {
      w.Null();
    } else {
      const ResyncRow& r = *resync_;
      w.BeginObject();
      w.Key("damaged_blocks").Uint(r.damaged_blocks).Key("compared_blocks").Uint(r.cycle.compared_blocks);
      w.Key("hash_bytes_per_s").Double(r.hash_bytes_per_s);
      w.Key("blocks_sent_match").Bool(r.cycle.blocks_sent == r.damaged_blocks);
      w.Key("cycle").BeginObject();
      WriteCycle(w, r.cycle);
      w.EndObject();
      w.Key("rsync");
      WriteRsync(w, r.rsync);
      JsonRatio(w, "ratio_seconds_blkrep_rsync", r.cycle.seconds, r.rsync.skipped ? 0 : r.rsync.seconds);
      w.EndObject();
    }
  }
  w.Key("checks").BeginObject().Key("ok").Bool(failures_.empty()).Key("failures").BeginArray();
  for (const auto& f : failures_) w.String(f);
  w.EndArray().EndObject();
  w.EndObject();
  return w.str() + "\n";
}

std::string Bench::Table() const {
  struct Row {
    std::string what, value, unit, peer, peer_value, ratio;
  };
  std::vector<Row> rows;
  auto ratio = [](double a, double b) { return Fmt("%.2fx", Ratio(a, b)); };
  auto bytes = [](std::uint64_t b) { return core::FormatSize(b); };
  if (!o_.replay.empty()) {
    rows.push_back({"initial full cycle", Fmt("%.2f", full_.seconds), "s", "", "", ""});
    for (std::size_t i = 0; i < replay_.size(); ++i) {
      const auto& c = replay_[i];
      std::string n = "replay cycle " + std::to_string(i + 1) + " at " + Fmt("%.1f", c.trace_time_s) + " s";
      rows.push_back({n + ": seconds", Fmt("%.2f", c.cycle.seconds), "s", "", "", ""});
      rows.push_back({n + ": blocks", std::to_string(c.cycle.blocks_sent), "blocks", "traced",
                      std::to_string(c.traced_blocks), ""});
      rows.push_back({n + ": wire", bytes(c.cycle.bytes_sent), "", "", "", ""});
      rows.push_back({n + ": compression", Fmt("%.2f", Ratio(static_cast<double>(c.cycle.raw_bytes), static_cast<double>(c.cycle.payload_bytes))), "raw/payload", "", "", ""});
    }
  } else {
    auto overhead = [&](const char* unit, double b, double d, double q) {
      const char* f = std::string(unit) == "IOPS" ? "%.0f" : "%.1f";
      rows.push_back({std::string("writes through blkrep's NBD: ") + unit, Fmt(f, b), unit, "direct pwrite",
                      Fmt(f, d), ratio(b, d)});
      rows.push_back({std::string("writes through blkrep's NBD: ") + unit, Fmt(f, b), unit, "qemu-nbd",
                      qemu_.skipped ? "skipped" : Fmt(f, q), qemu_.skipped ? "-" : ratio(b, q)});
    };
    overhead("MB/s", blkrep_.writes.MBps(), direct_.writes.MBps(), qemu_.writes.MBps());
    overhead("IOPS", blkrep_.writes.Iops(), direct_.writes.Iops(), qemu_.writes.Iops());
    const double vol_mb = static_cast<double>(volume_bytes_) / 1e6;
    rows.push_back({"full sync: time", Fmt("%.2f", full_.seconds), "s", "cp + fsync",
                    cp_.skipped ? "skipped" : Fmt("%.2f", cp_.seconds), cp_.skipped ? "-" : ratio(full_.seconds, cp_.seconds)});
    rows.push_back({"full sync: throughput", Fmt("%.1f", Ratio(vol_mb, full_.seconds)), "MB/s", "", "", ""});
    rows.push_back({"full sync: wire", bytes(full_.bytes_sent), "", "", "", ""});
    for (const auto& r : incremental_) {
      // A row --duration cut short is named by what it dirtied, not by what
      // it asked for.
      std::string n = "incremental " + Fmt("%g", r.fraction * 100) + "%";
      if (r.workload.capped) n += " (capped: " + Fmt("%.3g", r.achieved_fraction * 100) + "%)";
      const bool peer = !r.rsync.skipped;
      rows.push_back({n + ": cycle time", Fmt("%.3f", r.cycle.seconds), "s", "rsync",
                      peer ? Fmt("%.3f", r.rsync.seconds) : "skipped", peer ? ratio(r.cycle.seconds, r.rsync.seconds) : "-"});
      const std::uint64_t bw = r.cycle.bytes_sent + r.cycle.bytes_received;
      const std::uint64_t rw = r.rsync.bytes_sent + r.rsync.bytes_received;
      rows.push_back({n + ": wire (both ways)", bytes(bw), "", "rsync", peer ? bytes(rw) : "skipped",
                      peer ? ratio(static_cast<double>(bw), static_cast<double>(rw)) : "-"});
      rows.push_back({n + ": blocks sent", std::to_string(r.cycle.blocks_sent), "blocks", "dirtied",
                      std::to_string(r.dirtied_blocks), ""});
      rows.push_back({n + ": compression", Fmt("%.2f", Ratio(static_cast<double>(r.cycle.raw_bytes), static_cast<double>(r.cycle.payload_bytes))),
                      "raw/payload", "", "", ""});
    }
    if (resync_) {
      const auto& r = *resync_;
      rows.push_back({"resync: time", Fmt("%.2f", r.cycle.seconds), "s", "rsync",
                      r.rsync.skipped ? "skipped" : Fmt("%.2f", r.rsync.seconds),
                      r.rsync.skipped ? "-" : ratio(r.cycle.seconds, r.rsync.seconds)});
      rows.push_back({"resync: hash throughput (both sides)", Fmt("%.1f", r.hash_bytes_per_s / 1e6), "MB/s", "", "", ""});
      rows.push_back({"resync: blocks compared", std::to_string(r.cycle.compared_blocks), "blocks", "", "", ""});
      rows.push_back({"resync: blocks sent", std::to_string(r.cycle.blocks_sent), "blocks", "damaged",
                      std::to_string(r.damaged_blocks), ""});
    }
  }
  std::size_t w[6] = {11, 5, 4, 4, 10, 5};
  const char* head[6] = {"measurement", "value", "unit", "peer", "peer value", "ratio"};
  for (const auto& r : rows) {
    const std::string* f[6] = {&r.what, &r.value, &r.unit, &r.peer, &r.peer_value, &r.ratio};
    for (int i = 0; i < 6; ++i) w[i] = std::max(w[i], f[i]->size());
  }
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "blkrep bench: %s volume (%s), %s blocks, writes %s, skew %s, %u%% compressible, "
                "zero fraction %g, seed %llu, %.0f s\n\n",
                core::FormatSize(volume_bytes_).c_str(), o_.replay.empty() ? volume_source_.c_str() : "replay",
                core::FormatSize(o_.block_bytes).c_str(), o_.write_size_text.c_str(), o_.skew.text.c_str(),
                o_.compressibility_pct, o_.zero_fraction, static_cast<unsigned long long>(o_.seed), elapsed_);
  if (!o_.replay.empty()) {
    std::snprintf(line, sizeof line,
                  "blkrep bench --replay %s: %llu records, %zu volume(s), %s blocks, %s, cycle %s, %u%% compressible, "
                  "zero fraction %g, seed %llu, %.1f s\n\n",
                  o_.replay.c_str(), static_cast<unsigned long long>(replay_records_), replay_volumes_.size(),
                  core::FormatSize(o_.block_bytes).c_str(),
                  o_.speed > 0 ? (Fmt("%g", o_.speed) + "x the trace's pace").c_str() : "as fast as possible",
                  o_.cycle_every_s > 0 ? ("every " + Fmt("%g", o_.cycle_every_s) + " s of trace time").c_str()
                                       : "once at the end",
                  o_.compressibility_pct, o_.zero_fraction, static_cast<unsigned long long>(o_.seed), elapsed_);
  }
  out += line;
  auto emit = [&](const std::string* f[6]) {
    std::snprintf(line, sizeof line, "%-*s | %*s | %-*s | %-*s | %*s | %*s\n", (int)w[0], f[0]->c_str(), (int)w[1],
                  f[1]->c_str(), (int)w[2], f[2]->c_str(), (int)w[3], f[3]->c_str(), (int)w[4], f[4]->c_str(),
                  (int)w[5], f[5]->c_str());
    out += line;
  };
  std::string hs[6];
  const std::string* hp[6];
  for (int i = 0; i < 6; ++i) hs[i] = head[i], hp[i] = &hs[i];
  emit(hp);
  std::string dashes[6];
  for (int i = 0; i < 6; ++i) dashes[i] = std::string(w[i], '-'), hp[i] = &dashes[i];
  emit(hp);
  for (const auto& r : rows) {
    const std::string* f[6] = {&r.what, &r.value, &r.unit, &r.peer, &r.peer_value, &r.ratio};
    emit(f);
  }
  if (o_.replay.empty()) {
    out += "\nratio = blkrep / peer (time: below 1 is faster; MB/s and IOPS: above 1 is faster; wire: below 1 is less)\n";
  } else {
    out += "\n";
    if (!replay_torn_.empty()) out += "torn tail (the tracker stopped while writing; not replayed): " + replay_torn_ + "\n";
    if (replay_quiet_intervals_ > 0) {
      out += std::to_string(replay_quiet_intervals_) + " --cycle-every interval(s) without a record: no cycle run\n";
    }
  }
  if (qemu_.skipped && o_.replay.empty()) out += "qemu-nbd skipped: " + *qemu_.skipped + "\n";
  if (o_.replay.empty()) {
    for (auto [name, p] : {std::pair<const char*, const Peer*>{"direct pwrite", &direct_}, {"blkrep's NBD", &blkrep_},
                           {"qemu-nbd", &qemu_}}) {
      if (p->skipped || !p->writes.capped) continue;
      out += std::string("note: the overhead writes to ") + name + " stopped at --duration after " +
             core::FormatSize(p->writes.bytes) + " of " + core::FormatSize(overhead_goal_bytes_) +
             ": its rates are over fewer bytes than a side that reached the goal\n";
    }
    for (const auto& r : incremental_) {
      if (!r.workload.capped) continue;
      out += "note: incremental " + Fmt("%g", r.fraction * 100) + "% stopped at --duration with " +
             std::to_string(r.dirtied_blocks) + " of " + std::to_string(r.target_blocks) +
             " blocks dirty; its row (and chart point) is at the " + Fmt("%.3g", r.achieved_fraction * 100) +
             "% it reached\n";
    }
  }
  if (failures_.empty()) {
    out += "checks: ok (wire bytes match the receiver's count; the journal and every cycle saw exactly the blocks written)\n";
  } else {
    for (const auto& f : failures_) out += "CHECK FAILED: " + f + "\n";
  }
  return out;
}

std::string Bench::Svg() const {
  std::vector<bench::ChartSeries> series(2);
  series[0].name = "blkrep";
  series[1].name = "rsync";
  if (!o_.replay.empty()) {
    // Each replay cycle at its trace time (a day's churn reads as a day);
    // no peer replays a trace.
    series.resize(1);
    series[0].name = "blkrep (replay cycles)";
    for (const auto& c : replay_) {
      series[0].points.push_back({c.trace_time_s, c.cycle.seconds,
                                  static_cast<double>(c.cycle.bytes_sent + c.cycle.bytes_received)});
    }
    char subtitle[512];
    std::snprintf(subtitle, sizeof subtitle, "trace %s: %llu records, %s blocks, %s, %u%% compressible, seed %llu, %s",
                  o_.replay.c_str(), static_cast<unsigned long long>(replay_records_),
                  core::FormatSize(o_.block_bytes).c_str(),
                  o_.cycle_every_s > 0 ? ("a cycle every " + Fmt("%g", o_.cycle_every_s) + " s of trace time").c_str()
                                       : "one cycle at the end",
                  o_.compressibility_pct, static_cast<unsigned long long>(o_.seed), NowIso().c_str());
    return bench::RenderCycleChart("blkrep bench --replay: each cycle over the trace's time", subtitle, series,
                                   bench::ChartX::kTraceSeconds);
  }
  for (const auto& r : incremental_) {
    // A capped row at the fraction it reached; the others at the fraction
    // asked for (what was reached differs by the rounding to whole blocks).
    const double x = r.workload.capped ? r.achieved_fraction : r.fraction;
    series[0].points.push_back({x, r.cycle.seconds,
                                static_cast<double>(r.cycle.bytes_sent + r.cycle.bytes_received)});
    bench::ChartPoint p{x, std::nullopt, std::nullopt};
    if (!r.rsync.skipped) {
      p.seconds = r.rsync.seconds;
      p.wire_bytes = static_cast<double>(r.rsync.bytes_sent + r.rsync.bytes_received);
    }
    series[1].points.push_back(p);
  }
  // A skipped rsync has no points and no place in the legend.
  const bool rsync_measured = std::any_of(series[1].points.begin(), series[1].points.end(),
                                          [](const bench::ChartPoint& p) { return p.seconds.has_value(); });
  if (!rsync_measured) series.resize(1);
  char subtitle[256];
  std::snprintf(subtitle, sizeof subtitle, "%s volume, %s blocks, writes %s, skew %s, %u%% compressible, seed %llu, %s",
                core::FormatSize(volume_bytes_).c_str(), core::FormatSize(o_.block_bytes).c_str(),
                o_.write_size_text.c_str(), o_.skew.text.c_str(), o_.compressibility_pct,
                static_cast<unsigned long long>(o_.seed), NowIso().c_str());
  return bench::RenderCycleChart("blkrep bench: incremental cycles against the dirty fraction", subtitle, series);
}

Result<std::string> SelfPath() {
  std::vector<char> buf(4096);
  ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return core::ErrnoStatus(errno, "readlink /proc/self/exe");
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

}  // namespace

int BenchCommand(const std::vector<std::string>& argv) {
  if (argv.size() == 1 && (argv[0] == "--help" || argv[0] == "-h")) {
    std::printf("%s\n", kUsage);
    return kExitOk;
  }
  auto options = ParseOptions(argv);
  if (!options.ok()) return ReportError(options.status().WithContext("bench (blkrep bench --help)"));
  auto self = SelfPath();
  if (!self.ok()) return ReportError(self.status());
  if (!options->svg.empty()) {
    // Fail before the run, not after it, if the chart cannot be written.
    std::ofstream probe(options->svg, std::ios::app);
    if (!probe) return ReportError(Status::InvalidArgument("--svg " + options->svg + ": cannot be written"));
  }
  if (!options->replay.empty() && ::access(options->replay.c_str(), R_OK) != 0) {
    return ReportError(Status::InvalidArgument("--replay " + options->replay + ": cannot be read"));
  }
  std::string pattern = options->dir + "/blkrep-bench-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    return ReportError(core::ErrnoStatus(errno, "mkdtemp in " + options->dir));
  }
  struct sigaction sa {};
  sa.sa_handler = OnBenchSignal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  const bool keep = options->keep;
  const bool as_json = options->json;
  const std::string svg_path = options->svg;
  Status ran;
  std::string report, svg;
  bool checks_ok = true;
  {
    Bench bench(std::move(*options), *self, pattern);
    ran = bench.Run();
    if (ran.ok()) {
      report = as_json ? bench.Json() : bench.Table();
      if (!svg_path.empty()) svg = bench.Svg();
      checks_ok = bench.checks_ok();
    }
  }  // every process stopped here
  if (keep) std::fprintf(stderr, "bench: scratch directory kept: %s\n", pattern.c_str());
  else {
    std::error_code ec;
    std::filesystem::remove_all(pattern, ec);
  }
  if (!ran.ok()) {
    if (g_interrupted.load() != 0) {
      std::fprintf(stderr, "blkrep: error: bench: %s\n", ran.message().c_str());
      return 130;
    }
    return ReportError(ran.WithContext("bench"));
  }
  std::fputs(report.c_str(), stdout);
  if (!svg_path.empty()) {
    std::ofstream out(svg_path, std::ios::trunc);
    out << svg;
    if (!out) return ReportError(Status::IoError("--svg " + svg_path + ": write failed"));
  }
  return checks_ok ? kExitOk : kExitFailed;
}

}  // namespace blkrep::tools
