// Helpers for the end-to-end NBD tests of `blkrep track`: spawning and
// reaping processes (the tracker, real NBD clients) with timeouts, reading
// `journal inspect --json`, block arithmetic, a raw NBD client for requests
// no well-behaved client sends, and finding the clients (tests skip, never
// pass silently, when one is missing).
//
// Every process a test starts is owned by an RAII object that kills and
// reaps it on destruction, so a failed ASSERT leaves nothing running; the
// children also get SIGKILL should the test binary itself die.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/core/temp_dir.h"

extern char** environ;

namespace blkrep::tracker::nbd_test {

using core::test_support::FindProgram;
using core::test_support::TempDir;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

inline constexpr std::uint64_t kBlockBytes = 4096;  // every test tracks with --block-size 4K
inline constexpr const char* kGuest = "vm100";

inline std::string BlkrepBinary() {
  const char* bin = std::getenv("BLKREP_BIN");
  EXPECT_NE(bin, nullptr) << "BLKREP_BIN must name the blkrep binary (ctest sets it)";
  return bin != nullptr ? bin : "blkrep";
}

inline std::string ScriptPath(const std::string& name) {
  return std::string(BLKREP_NBD_TEST_SCRIPTS) + "/" + name;
}

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline int ExitStatusOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// A child process with stdout and stderr sent to files. Killed (SIGKILL) and
// reaped on destruction if still running.
class Process {
 public:
  Process() = default;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  Process(Process&& other) noexcept { *this = std::move(other); }
  Process& operator=(Process&& other) noexcept {
    if (this != &other) {
      Reap();
      pid_ = std::exchange(other.pid_, -1);
      exit_status_ = other.exit_status_;
      out_path_ = std::move(other.out_path_);
      err_path_ = std::move(other.err_path_);
      description_ = std::move(other.description_);
    }
    return *this;
  }
  ~Process() { Reap(); }

  // Starts argv[0] (a full path) with stdout/stderr to the given files;
  // stdin is /dev/null. The child gets SIGKILL if this test process dies
  // (even by a crash), so nothing outlives the test. False (with a test
  // failure) if it cannot start.
  bool Start(std::vector<std::string> argv, const std::string& out_path, const std::string& err_path) {
    Reap();
    out_path_ = out_path;
    err_path_ = err_path;
    description_.clear();
    for (const auto& a : argv) description_ += (description_.empty() ? "" : " ") + a;
    // Everything the child needs is prepared before fork: after it, only
    // async-signal-safe calls.
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int exec_error[2];
    if (::pipe2(exec_error, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe: " << std::strerror(errno);
      return false;
    }
    const pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      int in = ::open("/dev/null", O_RDONLY);
      int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (in < 0 || out < 0 || err < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) {
        int e = errno;
        (void)!::write(exec_error[1], &e, sizeof(e));
        ::_exit(127);
      }
      for (int fd : {in, out, err}) {
        if (fd > 2) ::close(fd);
      }
      ::execve(args[0], args.data(), environ);
      int e = errno;
      (void)!::write(exec_error[1], &e, sizeof(e));
      ::_exit(127);
    }
    ::close(exec_error[1]);
    if (pid < 0) {
      ::close(exec_error[0]);
      ADD_FAILURE() << "fork: " << std::strerror(errno);
      return false;
    }
    int child_errno = 0;
    ssize_t n;
    do {
      n = ::read(exec_error[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    ::close(exec_error[0]);
    pid_ = pid;
    exit_status_.reset();
    if (n > 0) {
      Reap();
      ADD_FAILURE() << "cannot start " << description_ << ": " << std::strerror(child_errno);
      return false;
    }
    return true;
  }

  pid_t pid() const { return pid_; }
  bool running() {
    Poll();
    return pid_ > 0;
  }
  std::optional<int> exit_status() {
    Poll();
    return exit_status_;
  }
  void Signal(int signal_number) {
    if (pid_ > 0) ::kill(pid_, signal_number);
  }
  // Waits for the exit; nullopt on timeout (the process is left running).
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      Poll();
      if (pid_ <= 0) return exit_status_;
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  // SIGKILL and reap. Safe to call when not running.
  void Reap() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      exit_status_ = ExitStatusOf(status);
      pid_ = -1;
    }
  }
  std::string out() const { return Slurp(out_path_); }
  std::string err() const { return Slurp(err_path_); }
  const std::string& out_path() const { return out_path_; }
  const std::string& description() const { return description_; }

 private:
  void Poll() {
    if (pid_ <= 0) return;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = ExitStatusOf(status);
      pid_ = -1;
    }
  }

  pid_t pid_ = -1;
  std::optional<int> exit_status_;
  std::string out_path_, err_path_, description_;
};

struct RunResult {
  int exit_status = -1;  // -1: could not start or timed out
  std::string out;
  std::string err;
  std::string description;
};

// Runs a program to completion (killed after `timeout`), capturing output in
// files under `dir`.
inline RunResult RunProgram(const TempDir& dir, std::vector<std::string> argv,
                     std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  static int counter = 0;
  std::string stem = dir.path() + "/run" + std::to_string(++counter);
  Process p;
  RunResult result;
  if (!p.Start(std::move(argv), stem + ".out", stem + ".err")) return result;
  result.description = p.description();
  std::optional<int> status = p.Wait(timeout);
  if (!status) {
    p.Reap();
    ADD_FAILURE() << "timed out after " << timeout.count() << " ms: " << p.description();
  }
  result.exit_status = status.value_or(-1);
  result.out = p.out();
  result.err = p.err();
  return result;
}

inline std::string Describe(const RunResult& r) {
  return r.description + " → exit " + std::to_string(r.exit_status) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// True if a unix stream socket at `path` accepts a connection.
inline bool UnixSocketAccepts(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

struct VolumeSpec {
  std::string name;
  std::string path;
};

// One `blkrep track` process for guest kGuest, restartable on the same state
// directory. Killed (SIGKILL) on destruction if still running.
class Tracker {
 public:
  Tracker(const TempDir& dir, std::vector<VolumeSpec> volumes, std::vector<std::string> extra_args = {})
      : dir_(dir), volumes_(std::move(volumes)), extra_args_(std::move(extra_args)) {}

  std::string socket() const { return dir_.path() + "/nbd.sock"; }
  std::string state_dir() const { return dir_.path() + "/state"; }
  std::string Uri(const std::string& name) const { return "nbd+unix:///" + name + "?socket=" + socket(); }
  Process& process() { return process_; }

  // Starts the tracker and waits until it serves NBD. False (with a test
  // failure naming its stderr) if it exits or does not come up in time.
  bool Start(std::vector<std::string> more_args = {}) {
    std::vector<std::string> argv = {BlkrepBinary(), "track", kGuest};
    for (const auto& v : volumes_) argv.push_back(v.name + "=" + v.path);
    for (std::string a : {std::string("--nbd-socket"), socket(), std::string("--block-size"), std::string("4K"),
                          std::string("--state-dir"), state_dir()}) {
      argv.push_back(std::move(a));
    }
    for (const auto& a : extra_args_) argv.push_back(a);
    for (const auto& a : more_args) argv.push_back(a);
    ++starts_;
    std::string stem = dir_.path() + "/tracker" + std::to_string(starts_);
    if (!process_.Start(argv, stem + ".out", stem + ".err")) return false;
    auto deadline = Clock::now() + std::chrono::seconds(15);
    while (Clock::now() < deadline) {
      if (!process_.running()) {
        ADD_FAILURE() << "blkrep track exited with " << process_.exit_status().value_or(-1)
                      << " before serving: " << process_.err();
        return false;
      }
      if (UnixSocketAccepts(socket())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "blkrep track did not serve " << socket() << " within 15 s: " << process_.err();
    return false;
  }

  // Sends `signal_number` and waits for the exit status (nullopt on timeout).
  std::optional<int> Stop(int signal_number, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    process_.Signal(signal_number);
    return process_.Wait(timeout);
  }

 private:
  const TempDir& dir_;
  std::vector<VolumeSpec> volumes_;
  std::vector<std::string> extra_args_;
  Process process_;
  int starts_ = 0;
};

// `blkrep journal inspect kGuest --json`; a parse failure is a test failure
// and yields an empty object.
inline json Inspect(const TempDir& dir, const std::string& state_dir) {
  RunResult run = RunProgram(dir, {BlkrepBinary(), "journal", "inspect", kGuest, "--json", "--state-dir", state_dir});
  EXPECT_EQ(run.exit_status, 0) << Describe(run);
  json j = json::parse(run.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << "journal inspect --json is not JSON: " << run.out;
  return j.is_discarded() ? json::object() : j;
}

inline const json& VolumeReport(const json& report, const std::string& name) {
  static const json kNone = json::object();
  if (report.contains("volumes")) {
    for (const auto& v : report["volumes"]) {
      if (v.value("name", "") == name) return v;
    }
  }
  ADD_FAILURE() << "journal inspect has no volume " << name << ": " << report.dump();
  return kNone;
}

using BlockSet = std::set<std::uint64_t>;

inline BlockSet BlocksOfRanges(const json& ranges) {
  BlockSet blocks;
  if (!ranges.is_array()) return blocks;
  for (const auto& r : ranges) {
    std::uint64_t first = r.at(0).get<std::uint64_t>(), count = r.at(1).get<std::uint64_t>();
    for (std::uint64_t b = first; b < first + count; ++b) blocks.insert(b);
  }
  return blocks;
}

// The dirty blocks of volume `name` in `report`, and a consistency check of
// dirty_blocks against dirty_ranges.
inline BlockSet DirtyBlocks(const json& report, const std::string& name) {
  const json& v = VolumeReport(report, name);
  BlockSet blocks = BlocksOfRanges(v.value("dirty_ranges", json::array()));
  EXPECT_EQ(v.value("dirty_blocks", std::uint64_t{0}), blocks.size()) << "dirty_blocks disagrees with dirty_ranges";
  return blocks;
}

// Adds every kBlockBytes block that [offset, offset + length) touches.
inline void AddRange(BlockSet& blocks, std::uint64_t offset, std::uint64_t length) {
  if (length == 0) return;
  for (std::uint64_t b = offset / kBlockBytes; b <= (offset + length - 1) / kBlockBytes; ++b) blocks.insert(b);
}

// Human-readable difference of two block sets (for failure messages).
inline std::string Difference(const BlockSet& expected, const BlockSet& actual) {
  std::string missing, extra;
  int shown_missing = 0, shown_extra = 0;
  for (auto b : expected) {
    if (!actual.count(b) && shown_missing++ < 20) missing += " " + std::to_string(b);
  }
  for (auto b : actual) {
    if (!expected.count(b) && shown_extra++ < 20) extra += " " + std::to_string(b);
  }
  return "expected " + std::to_string(expected.size()) + " blocks, got " + std::to_string(actual.size()) +
         "; missing:" + (missing.empty() ? " none" : missing) + "; unexpected:" + (extra.empty() ? " none" : extra);
}

// Creates a sparse file of `size_bytes`.
inline void MakeVolume(const std::string& path, std::uint64_t size_bytes) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size_bytes)), 0);
  ::close(fd);
}

inline std::uint64_t FileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_size);
}

// The whole file, read without the code under test; empty on error.
inline std::vector<std::uint8_t> ReadAll(const std::string& path) {
  std::vector<std::uint8_t> out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  struct stat st {};
  if (::fstat(fd, &st) == 0) out.resize(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  out.resize(done);
  ::close(fd);
  return out;
}

inline std::vector<std::uint8_t> ReadAt(const std::string& path, std::uint64_t offset, std::size_t n) {
  std::vector<std::uint8_t> buf(n);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ssize_t got = fd < 0 ? -1 : ::pread(fd, buf.data(), n, static_cast<off_t>(offset));
  EXPECT_EQ(got, static_cast<ssize_t>(n)) << path << " at " << offset;
  if (fd >= 0) ::close(fd);
  return buf;
}

inline void WriteAt(const std::string& path, std::uint64_t offset, std::span<const std::uint8_t> data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset)), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
}

// Deterministic pseudo-random bytes; different seeds give different data.
inline std::vector<std::uint8_t> RandomBytes(std::size_t n, std::uint32_t seed) {
  std::vector<std::uint8_t> out(n);
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (auto& b : out) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    b = static_cast<std::uint8_t>(s >> 24);
  }
  return out;
}

// The blocks (kBlockBytes) where two equally long images differ.
inline BlockSet ChangedBlocks(const std::vector<std::uint8_t>& before, const std::vector<std::uint8_t>& after) {
  BlockSet changed;
  EXPECT_EQ(before.size(), after.size());
  std::size_t n = std::min(before.size(), after.size());
  for (std::size_t at = 0; at < n; at += kBlockBytes) {
    std::size_t len = std::min<std::size_t>(kBlockBytes, n - at);
    if (std::memcmp(before.data() + at, after.data() + at, len) != 0) changed.insert(at / kBlockBytes);
  }
  return changed;
}

// A Python interpreter that has libnbd's `nbd` module (Debian's
// /usr/bin/python3 first: a pyenv python on PATH may lack it); empty if none.
inline std::string PythonWithNbd() {
  static const std::string found = [] {
    std::vector<std::string> candidates = {"/usr/bin/python3"};
    if (std::string p = FindProgram("python3"); !p.empty()) candidates.push_back(p);
    for (const auto& python : candidates) {
      if (::access(python.c_str(), X_OK) != 0) continue;
      std::string cmd = python + " -c 'import nbd' >/dev/null 2>&1";
      if (std::system(cmd.c_str()) == 0) return python;
    }
    return std::string();
  }();
  return found;
}

#define BLKREP_REQUIRE_PROGRAM(var, name)                                                     \
  const std::string var = ::blkrep::tracker::nbd_test::FindProgram(name);                    \
  if (var.empty()) GTEST_SKIP() << name << " is not installed (Debian: see tools/install-deps.sh)"

#define BLKREP_REQUIRE_PYTHON_NBD(var)                                                        \
  const std::string var = ::blkrep::tracker::nbd_test::PythonWithNbd();                      \
  if (var.empty()) GTEST_SKIP() << "no python3 with libnbd's nbd module (Debian: python3-libnbd)"

// ---------------------------------------------------------------------------
// A raw NBD client over a unix socket, for requests real clients refuse to
// send. Every read and write has a timeout so a misbehaving server fails the
// test instead of hanging it.
class RawNbdClient {
 public:
  static constexpr std::uint64_t kNbdMagic = 0x4e42444d41474943ULL;
  static constexpr std::uint64_t kOptMagic = 0x49484156454f5054ULL;
  static constexpr std::uint64_t kOptReplyMagic = 0x3e889045565a9ULL;
  static constexpr std::uint32_t kRequestMagic = 0x25609513U;
  static constexpr std::uint32_t kSimpleReplyMagic = 0x67446698U;
  static constexpr std::uint32_t kOptGo = 7;
  static constexpr std::uint32_t kRepAck = 1;
  static constexpr std::uint32_t kRepInfo = 3;

  RawNbdClient() = default;
  RawNbdClient(const RawNbdClient&) = delete;
  RawNbdClient& operator=(const RawNbdClient&) = delete;
  ~RawNbdClient() { Close(); }

  bool Connect(const std::string& path) {
    Close();
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return false;
    struct sockaddr_un addr {};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      Close();
      return false;
    }
    struct timeval tv {10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return true;
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }

  // Reads the server greeting (NBDMAGIC, IHAVEOPT, handshake flags).
  bool ReadGreeting() {
    std::uint8_t b[18];
    if (!ReadExact(b, sizeof(b))) return false;
    return Be64(b) == kNbdMagic && Be64(b + 8) == kOptMagic;
  }

  // Fixed newstyle, no zeroes, NBD_OPT_GO for `name` (simple replies).
  // On success the size of the export is in size_bytes().
  bool Handshake(const std::string& name) {
    if (!ReadGreeting()) return false;
    std::vector<std::uint8_t> out;
    Put32(out, 3);  // FIXED_NEWSTYLE | NO_ZEROES
    Put64(out, kOptMagic);
    Put32(out, kOptGo);
    Put32(out, static_cast<std::uint32_t>(4 + name.size() + 2));
    Put32(out, static_cast<std::uint32_t>(name.size()));
    out.insert(out.end(), name.begin(), name.end());
    Put16(out, 0);
    if (!SendAll(out.data(), out.size())) return false;
    for (;;) {
      std::uint8_t h[20];
      if (!ReadExact(h, sizeof(h))) return false;
      if (Be64(h) != kOptReplyMagic) return false;
      std::uint32_t type = Be32(h + 12), length = Be32(h + 16);
      std::vector<std::uint8_t> data(length);
      if (length > 0 && !ReadExact(data.data(), length)) return false;
      if (type == kRepInfo && length >= 12 && Be16(data.data()) == 0) size_bytes_ = Be64(data.data() + 2);
      if (type == kRepAck) return true;
      if (type & 0x80000000U) return false;
    }
  }
  std::uint64_t size_bytes() const { return size_bytes_; }

  bool SendRequest(std::uint16_t flags, std::uint16_t type, std::uint64_t cookie, std::uint64_t offset,
                   std::uint32_t length, std::uint32_t magic = kRequestMagic) {
    std::vector<std::uint8_t> out;
    Put32(out, magic);
    Put16(out, flags);
    Put16(out, type);
    Put64(out, cookie);
    Put64(out, offset);
    Put32(out, length);
    return SendAll(out.data(), out.size());
  }

  // A simple reply: {error, cookie}; nullopt if the connection ended or
  // the reply is malformed.
  struct SimpleReply {
    std::uint32_t error = 0;
    std::uint64_t cookie = 0;
  };
  std::optional<SimpleReply> ReadSimpleReply() {
    std::uint8_t b[16];
    if (!ReadExact(b, sizeof(b)) || Be32(b) != kSimpleReplyMagic) return std::nullopt;
    return SimpleReply{Be32(b + 4), Be64(b + 8)};
  }

  // Reads a successful READ reply's payload after its header.
  bool ReadPayload(std::vector<std::uint8_t>& data, std::size_t n) {
    data.resize(n);
    return n == 0 || ReadExact(data.data(), n);
  }

  bool SendAll(const void* data, std::size_t n) {
    auto* p = static_cast<const std::uint8_t*>(data);
    while (n > 0) {
      ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }
  bool ReadExact(void* data, std::size_t n) {
    auto* p = static_cast<std::uint8_t*>(data);
    while (n > 0) {
      ssize_t r = ::recv(fd_, p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      p += r;
      n -= static_cast<std::size_t>(r);
    }
    return true;
  }

  // True if the server closes the connection within `timeout` (after
  // discarding anything it still sends).
  bool ClosedByServer(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      struct pollfd pfd {fd_, POLLIN, 0};
      int ready = ::poll(&pfd, 1, 50);
      if (ready <= 0) continue;
      char buf[4096];
      ssize_t r = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (r == 0) return true;
      if (r < 0 && errno != EAGAIN && errno != EINTR) return true;  // reset
    }
    return false;
  }

  static void Put16(std::vector<std::uint8_t>& out, std::uint16_t v) {
    out.push_back(static_cast<std::uint8_t>(v >> 8));
    out.push_back(static_cast<std::uint8_t>(v));
  }
  static void Put32(std::vector<std::uint8_t>& out, std::uint32_t v) {
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  static void Put64(std::vector<std::uint8_t>& out, std::uint64_t v) {
    for (int i = 7; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  static std::uint16_t Be16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }
  static std::uint32_t Be32(const std::uint8_t* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  }
  static std::uint64_t Be64(const std::uint8_t* p) { return (std::uint64_t{Be32(p)} << 32) | Be32(p + 4); }

 private:
  int fd_ = -1;
  std::uint64_t size_bytes_ = 0;
};

// NBD command types and flags for RawNbdClient.
inline constexpr std::uint16_t kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3;
inline constexpr std::uint16_t kCmdFlagFua = 1;
inline constexpr std::uint32_t kNbdEinval = 22, kNbdEnospc = 28;

}  // namespace blkrep::tracker::nbd_test
