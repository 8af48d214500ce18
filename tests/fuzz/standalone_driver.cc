// Standalone driver for the fuzz targets where libFuzzer is not available
// (GCC, or BLKREP_LIBFUZZER=OFF).
//
// Design note. It calls the target's LLVMFuzzerTestOneInput with the seed
// inputs (SeedInputs()), then with random inputs and stacked mutations of the
// seeds and of earlier inputs, for a bounded time or number of iterations.
// There is no coverage feedback: the structured targets carry the depth. All
// randomness comes from one 64-bit seed, printed at start, so a run is
// reproduced with --seed S --iterations N. Each input is passed in its own
// exactly-sized heap buffer so that sanitizers catch reads past its end.
//
// A crash (signal, sanitizer report, failed BLKREP_FUZZ_CHECK, uncaught
// exception), an input running longer than --timeout-seconds, or the process
// growing past --rss-limit-mb writes the input to
// CRASH_DIR/crash-TARGET-SEED-ITERATION and says how to rerun it
// (TARGET FILE runs given files once each).
//
// Usage: TARGET [--seconds N] [--iterations N] [--seed S] [--max-len N]
//               [--timeout-seconds N] [--rss-limit-mb N] [--crash-dir DIR]
//               [--write-seeds DIR] [FILE...]
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

// Present only when linked with a sanitizer runtime.
extern "C" void __sanitizer_set_death_callback(void (*callback)()) __attribute__((weak));

#if defined(__SANITIZE_ADDRESS__)
#define BLKREP_FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BLKREP_FUZZ_ASAN 1
#endif
#endif

// Sanitizer defaults for this driver: stop at the first UB report (so it is
// recorded as a crash) and refuse single allocations past 2 GiB instead of
// trying them.
extern "C" const char* __asan_default_options() {
  return "max_allocation_size_mb=2048:allocator_may_return_null=0:abort_on_error=1";
}
extern "C" const char* __ubsan_default_options() {
  return "halt_on_error=1:print_stacktrace=1:abort_on_error=1";
}

namespace {

struct Options {
  double seconds = 10;
  bool seconds_given = false;
  std::uint64_t iterations = 0;  // 0: bounded by time only
  std::uint64_t seed = 0;
  bool seed_given = false;
  std::size_t max_len = 4096;
  unsigned timeout_seconds = 20;
  std::uint64_t rss_limit_mb = 2048;
  std::string crash_dir = ".";
  std::string write_seeds;
  std::vector<std::string> files;
};

// What the signal and death handlers write out. Set before each input;
// read only from the handlers.
const std::uint8_t* g_input = nullptr;
std::size_t g_input_size = 0;
char g_crash_path[4096];
volatile sig_atomic_t g_dumped = 0;

void WriteAll(int fd, const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n <= 0) return;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void WriteString(int fd, const char* s) { WriteAll(fd, s, std::strlen(s)); }

// Async-signal-safe: open/write/close only.
void DumpInput() {
  if (g_dumped || g_input == nullptr || g_crash_path[0] == '\0') return;
  g_dumped = 1;
  int fd = open(g_crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    WriteAll(fd, g_input, g_input_size);
    close(fd);
  }
  WriteString(2, "\n==standalone fuzz driver== crashing input written to ");
  WriteString(2, g_crash_path);
  WriteString(2, "\n==standalone fuzz driver== rerun it with: TARGET ");
  WriteString(2, g_crash_path);
  WriteString(2, "\n");
}

void OnFatalSignal(int signal_number) {
  DumpInput();
  // Re-raise with the default action so the exit status shows the signal.
  struct sigaction action = {};
  action.sa_handler = SIG_DFL;
  sigaction(signal_number, &action, nullptr);
  raise(signal_number);
}

void OnTimeout(int) {
  WriteString(2, "\n==standalone fuzz driver== input ran longer than --timeout-seconds\n");
  DumpInput();
  _exit(70);
}

void InstallHandlers() {
  static std::vector<char> alt_stack(1 << 16);
  stack_t ss = {};
  ss.ss_sp = alt_stack.data();
  ss.ss_size = alt_stack.size();
  sigaltstack(&ss, nullptr);
  struct sigaction action = {};
  action.sa_handler = OnFatalSignal;
  action.sa_flags = SA_ONSTACK;
  for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(s, &action, nullptr);
  struct sigaction timeout = {};
  timeout.sa_handler = OnTimeout;
  sigaction(SIGALRM, &timeout, nullptr);
  if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(DumpInput);
}

void LimitMemory(std::uint64_t rss_limit_mb) {
#ifndef BLKREP_FUZZ_ASAN
  // Without ASan (which reserves terabytes of shadow address space), cap the
  // address space so an unbounded allocation fails (std::bad_alloc, a crash)
  // instead of swapping the machine to death.
  rlimit limit{};
  limit.rlim_cur = limit.rlim_max = (rss_limit_mb + 1024) << 20;
  setrlimit(RLIMIT_AS, &limit);
#else
  (void)rss_limit_mb;
#endif
}

std::uint64_t MaxRssMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_maxrss) / 1024;
}

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--seconds") {
      o->seconds = std::strtod(value("--seconds"), nullptr);
      o->seconds_given = true;
    } else if (arg == "--iterations") {
      o->iterations = std::strtoull(value("--iterations"), nullptr, 0);
    } else if (arg == "--seed") {
      o->seed = std::strtoull(value("--seed"), nullptr, 0);
      o->seed_given = true;
    } else if (arg == "--max-len") {
      o->max_len = std::strtoull(value("--max-len"), nullptr, 0);
    } else if (arg == "--timeout-seconds") {
      o->timeout_seconds = static_cast<unsigned>(std::strtoul(value("--timeout-seconds"), nullptr, 0));
    } else if (arg == "--rss-limit-mb") {
      o->rss_limit_mb = std::strtoull(value("--rss-limit-mb"), nullptr, 0);
    } else if (arg == "--crash-dir") {
      o->crash_dir = value("--crash-dir");
    } else if (arg == "--write-seeds") {
      o->write_seeds = value("--write-seeds");
    } else if (arg == "--help" || arg == "-h") {
      return false;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "unknown option %s\n", arg.c_str());
      return false;
    } else {
      o->files.push_back(arg);
    }
  }
  return true;
}

std::string BaseName(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

// ---- Mutations --------------------------------------------------------------

using Input = std::vector<std::uint8_t>;

class Mutator {
 public:
  Mutator(std::uint64_t seed, std::size_t max_len) : rng_(seed), max_len_(max_len) {}

  std::uint64_t Below(std::uint64_t n) { return n == 0 ? 0 : rng_() % n; }

  Input RandomInput() {
    // Mostly short: structured targets read a few bytes per decision.
    std::size_t len = Below(4) == 0 ? Below(max_len_ + 1) : Below(std::min<std::size_t>(64, max_len_) + 1);
    Input in(len);
    for (auto& b : in) b = static_cast<std::uint8_t>(rng_());
    return in;
  }

  void Mutate(Input& in, const std::vector<Input>& pool) {
    int rounds = 1 + static_cast<int>(Below(8));
    for (int r = 0; r < rounds; ++r) MutateOnce(in, pool);
    if (in.size() > max_len_) in.resize(max_len_);
  }

 private:
  static constexpr std::uint64_t kInteresting[] = {
      0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 4096, 65536, 1 << 20,
      1 << 23, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1ULL << 32, 1ULL << 60,
      0x7FFFFFFFFFFFFFFF, ~0ULL};

  void MutateOnce(Input& in, const std::vector<Input>& pool) {
    switch (Below(11)) {
      case 0:  // flip a bit
        if (!in.empty()) in[Below(in.size())] ^= static_cast<std::uint8_t>(1U << Below(8));
        break;
      case 1:  // random byte
        if (!in.empty()) in[Below(in.size())] = static_cast<std::uint8_t>(rng_());
        break;
      case 2: {  // interesting byte
        static constexpr std::uint8_t kBytes[] = {0, 1, 0x7F, 0x80, 0xFF};
        if (!in.empty()) in[Below(in.size())] = kBytes[Below(std::size(kBytes))];
        break;
      }
      case 3: {  // interesting little-endian integer
        std::size_t width = std::size_t{1} << Below(4);  // 1, 2, 4, 8
        if (in.size() < width) break;
        std::uint64_t v = kInteresting[Below(std::size(kInteresting))];
        if (Below(4) == 0) v += Below(3) - 1;
        std::size_t at = Below(in.size() - width + 1);
        for (std::size_t i = 0; i < width; ++i) in[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
        break;
      }
      case 4: {  // small add/subtract on a byte
        if (!in.empty()) in[Below(in.size())] += static_cast<std::uint8_t>(Below(33) - 16);
        break;
      }
      case 5: {  // insert random bytes
        std::size_t n = 1 + Below(16);
        std::size_t at = Below(in.size() + 1);
        Input bytes(n);
        for (auto& b : bytes) b = static_cast<std::uint8_t>(rng_());
        in.insert(in.begin() + static_cast<std::ptrdiff_t>(at), bytes.begin(), bytes.end());
        break;
      }
      case 6: {  // erase a range
        if (in.empty()) break;
        std::size_t at = Below(in.size());
        std::size_t n = 1 + Below(std::min<std::size_t>(in.size() - at, 32));
        in.erase(in.begin() + static_cast<std::ptrdiff_t>(at),
                 in.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      case 7: {  // copy a range inside the input
        if (in.size() < 2) break;
        std::size_t from = Below(in.size());
        std::size_t n = 1 + Below(std::min<std::size_t>(in.size() - from, 64));
        std::size_t to = Below(in.size() + 1);
        Input chunk(in.begin() + static_cast<std::ptrdiff_t>(from),
                    in.begin() + static_cast<std::ptrdiff_t>(from + n));
        in.insert(in.begin() + static_cast<std::ptrdiff_t>(to), chunk.begin(), chunk.end());
        break;
      }
      case 8:  // truncate
        if (!in.empty()) in.resize(Below(in.size()));
        break;
      case 9: {  // splice with another input
        if (pool.empty()) break;
        const Input& other = pool[Below(pool.size())];
        if (other.empty()) break;
        std::size_t keep = Below(in.size() + 1);
        std::size_t from = Below(other.size());
        in.resize(keep);
        in.insert(in.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
        break;
      }
      case 10: {  // append random bytes
        std::size_t n = 1 + Below(32);
        for (std::size_t i = 0; i < n; ++i) in.push_back(static_cast<std::uint8_t>(rng_()));
        break;
      }
    }
  }

  std::mt19937_64 rng_;
  std::size_t max_len_;
};

class Runner {
 public:
  // `record_crashes`: write crashing inputs to the crash directory (not when
  // rerunning files, which are already on disk).
  Runner(const Options& o, std::string target, bool record_crashes)
      : o_(o), target_(std::move(target)), record_crashes_(record_crashes) {}

  // Runs one input; aborts the process on a crash (after writing it out).
  void Run(const Input& input, std::uint64_t iteration) {
    g_crash_path[0] = '\0';
    if (record_crashes_) {
      std::snprintf(g_crash_path, sizeof(g_crash_path), "%s/crash-%s-%llu-%llu",
                    o_.crash_dir.c_str(), target_.c_str(), static_cast<unsigned long long>(o_.seed),
                    static_cast<unsigned long long>(iteration));
    }
    // An exactly-sized copy, so that reading past the end is caught.
    std::unique_ptr<std::uint8_t[]> copy(new std::uint8_t[input.size() == 0 ? 1 : input.size()]);
    std::copy(input.begin(), input.end(), copy.get());
    g_input = copy.get();
    g_input_size = input.size();
    alarm(o_.timeout_seconds);
    LLVMFuzzerTestOneInput(copy.get(), input.size());
    alarm(0);
    if (MaxRssMb() > o_.rss_limit_mb) {
      std::fprintf(stderr, "==standalone fuzz driver== RSS %llu MiB exceeds --rss-limit-mb %llu\n",
                   static_cast<unsigned long long>(MaxRssMb()),
                   static_cast<unsigned long long>(o_.rss_limit_mb));
      DumpInput();
      std::_Exit(71);
    }
    g_input = nullptr;
  }

 private:
  const Options& o_;
  std::string target_;
  bool record_crashes_;
};

int WriteSeeds(const std::string& dir, const std::string& target) {
  auto seeds = blkrep::fuzz::SeedInputs();
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    std::string path = dir + "/seed-" + target + "-" + std::to_string(i);
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(seeds[i].data()), static_cast<std::streamsize>(seeds[i].size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return 1;
    }
  }
  std::printf("wrote %zu seeds to %s\n", seeds.size(), dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, &o)) {
    std::fprintf(stderr,
                 "usage: %s [--seconds N] [--iterations N] [--seed S] [--max-len N]\n"
                 "          [--timeout-seconds N] [--rss-limit-mb N] [--crash-dir DIR]\n"
                 "          [--write-seeds DIR] [FILE...]\n",
                 argv[0]);
    return 2;
  }
  std::string target = BaseName(argv[0]);
  if (!o.write_seeds.empty()) return WriteSeeds(o.write_seeds, target);
  if (!o.seed_given) o.seed = std::random_device{}() ^ (std::uint64_t{std::random_device{}()} << 32);
  InstallHandlers();
  LimitMemory(o.rss_limit_mb);
  Runner runner(o, target, o.files.empty());
  if (o.files.empty()) {
    std::error_code error;
    std::filesystem::create_directories(o.crash_dir, error);
  }

  if (!o.files.empty()) {  // reproduce: each file once
    std::uint64_t i = 0;
    for (const auto& path : o.files) {
      std::ifstream f(path, std::ios::binary);
      if (!f) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        return 2;
      }
      Input input((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      std::fprintf(stderr, "running %s (%zu bytes)\n", path.c_str(), input.size());
      runner.Run(input, i++);
    }
    std::fprintf(stderr, "%zu input(s) ran without a crash\n", o.files.size());
    return 0;
  }

  bool by_time = o.iterations == 0 || o.seconds_given;
  std::fprintf(stderr, "%s: seed %llu (rerun: %s --seed %llu%s)\n", target.c_str(),
               static_cast<unsigned long long>(o.seed), argv[0],
               static_cast<unsigned long long>(o.seed),
               o.iterations ? (" --iterations " + std::to_string(o.iterations)).c_str() : "");
  Mutator mutator(o.seed, o.max_len);
  std::vector<Input> seeds = blkrep::fuzz::SeedInputs();
  std::vector<Input> recent;  // a ring of earlier inputs, for stacked mutations
  constexpr std::size_t kRecent = 256;
  auto start = std::chrono::steady_clock::now();
  std::uint64_t iteration = 0;
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (;;) {
    if (o.iterations != 0 && iteration >= o.iterations) break;
    if (by_time && (iteration & 15) == 0 && elapsed() >= o.seconds) break;
    Input input;
    if (iteration < seeds.size()) {
      input = seeds[iteration];
    } else {
      std::uint64_t pick = mutator.Below(16);
      if (pick == 0 || (seeds.empty() && recent.empty())) {
        input = mutator.RandomInput();
      } else if (pick < 9 || recent.empty()) {
        input = seeds.empty() ? recent[mutator.Below(recent.size())] : seeds[mutator.Below(seeds.size())];
        mutator.Mutate(input, seeds);
      } else {
        input = recent[mutator.Below(recent.size())];
        mutator.Mutate(input, recent);
      }
    }
    runner.Run(input, iteration);
    if (recent.size() < kRecent) {
      recent.push_back(std::move(input));
    } else if (mutator.Below(4) == 0) {
      recent[mutator.Below(kRecent)] = std::move(input);
    }
    ++iteration;
  }
  double seconds = elapsed();
  std::fprintf(stderr, "%s: %llu inputs in %.1f s (%.0f/s), seed %llu, max RSS %llu MiB, no crash\n",
               target.c_str(), static_cast<unsigned long long>(iteration), seconds,
               seconds > 0 ? static_cast<double>(iteration) / seconds : 0.0,
               static_cast<unsigned long long>(o.seed), static_cast<unsigned long long>(MaxRssMb()));
  return 0;
}
