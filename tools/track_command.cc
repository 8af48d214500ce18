// `blkrep track`: the foreground tracker of one guest (CONTRACT.md).
//
// Opens every volume and its journal (recovering it), serves the volumes as
// NBD exports, answers the control socket, and on SIGTERM/SIGINT finishes
// in-flight requests, flushes the volumes, seals the journals and exits 0.
//
// --trace FILE also records every accepted write, trim and write-zeroes
// (tracker/trace.h, docs/trace-format.md) from the first request on; the
// trace is closed after the server has stopped, and a trace that could not
// be written makes the exit status 1 (the guest's I/O never fails for it).
// The trace is written beside FILE until the tracker serves, then moved to
// FILE (an earlier trace there kept as FILE.N): a failed start leaves
// FILE as it was.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/fault_injecting_file_system.h"
#include "core/file_block_device.h"
#include "core/file_system.h"
#include "core/units.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tracker/control_socket.h"
#include "tracker/journal.h"
#include "tracker/journal_format.h"
#include "tracker/layout.h"
#include "tracker/nbd_server.h"
#include "tracker/report_format.h"
#include "tracker/trace.h"

namespace blkrep::tools {
namespace {

using core::Result;
using core::Status;

constexpr const char* kUsage =
    "usage: blkrep track GUEST NAME=VOLUME [NAME=VOLUME ...] --nbd-socket PATH "
    "[--nbd-listen HOST:PORT] [--block-size SIZE] [--journal-cap SIZE] [--cow-cap SIZE] "
    "[--io-engine auto|io_uring|threads] [--trace FILE] [--state-dir DIR]";

struct Volume {
  std::string name;
  std::string path;
  std::unique_ptr<core::FileBlockDevice> device;
  std::unique_ptr<tracker::Journal> journal;
  std::unique_ptr<tracker::WriteGate> gate;
};

// Test hook: "enospc" (journal writes that grow a file fail) or
// "eio-after:N" (every journal write after N more fails), armed once the
// journals are open. It exercises invariant 3 on the real process.
Status ArmJournalFaults(core::FaultInjectingFileSystem& fs, const std::string& spec) {
  if (spec == "enospc") {
    fs.FailExtendingWrites(ENOSPC);
    return Status::Ok();
  }
  if (spec.rfind("eio-after:", 0) == 0) {
    auto n = core::ParseSize(spec.substr(10));
    if (!n.ok()) return Status::InvalidArgument("--journal-faults: bad count in '" + spec + "'");
    fs.FailAfter(core::FileOp::kWrite, *n, EIO);
    fs.FailAfter(core::FileOp::kSync, *n, EIO);
    return Status::Ok();
  }
  return Status::InvalidArgument("--journal-faults: expected enospc or eio-after:N, got '" + spec + "'");
}

// Whether `path` (a regular file) holds a trace without a single record (a
// header only, as a tracker that failed right after starting leaves):
// nothing to keep.
bool IsEmptyTrace(const std::string& path, const struct stat& st) {
  if (st.st_size > 65536) return false;
  auto trace = tracker::ReadTrace(path);
  return trace.ok() && trace->records.empty() && trace->torn_tail.empty();
}

// The highest N of the files PATH.N beside `path` (0: none).
std::uint64_t HighestKeptTrace(const std::string& path) {
  const std::filesystem::path p(path);
  const std::string prefix = p.filename().string() + ".";
  std::uint64_t highest = 0;
  std::error_code ec;
  std::filesystem::directory_iterator it(p.has_parent_path() ? p.parent_path() : ".", ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    highest = std::max<std::uint64_t>(highest, std::stoull(digits));
  }
  return highest;
}

// What is at a --trace path, not following a link: nullopt if nothing; an
// error for what a trace may not replace (a directory, a device).
Result<std::optional<struct stat>> StatTracePath(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return std::optional<struct stat>();
    return core::ErrnoStatus(errno, "--trace " + path);
  }
  if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
    return Status::InvalidArgument("--trace " + path + ": exists and is not a regular file");
  }
  return std::optional<struct stat>(st);
}

// Moves the trace being written at `temp` to `path`. What is already at
// `path` is kept as PATH.N, N one more than the highest kept so far (so
// numbers follow the runs' order), never replacing one: a regular file (an
// earlier run's trace, or anything else) unless it is an empty trace, which
// is replaced, or a symbolic link (the link itself; its target is never
// touched). A trace another tracker is writing (it holds an flock on it) is
// left alone: an error, and this tracker's trace stays at `temp`. So is
// anything else at `path` (a directory, a device).
Status InstallTrace(const std::string& temp, const std::string& path) {
  BLKREP_ASSIGN_OR_RETURN(std::optional<struct stat> existing, StatTracePath(path));
  if (existing) {
    struct stat st = *existing;
    // Held until the old file is moved: a running tracker's trace is not
    // taken from under it.
    int held = -1;
    if (S_ISREG(st.st_mode)) {
      held = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (held >= 0 && ::flock(held, LOCK_EX | LOCK_NB) != 0) {
        const int e = errno;
        ::close(held);
        if (e == EWOULDBLOCK) return Status::Aborted("--trace " + path + ": in use by a running tracker");
        return core::ErrnoStatus(e, "--trace " + path + ": lock");
      }
    }
    const bool keep = S_ISLNK(st.st_mode) || !IsEmptyTrace(path, st);
    std::string kept;
    Status moved = Status::Ok();
    for (std::uint64_t n = HighestKeptTrace(path) + 1, tries = 0; keep && kept.empty() && tries < 100; ++n, ++tries) {
      const std::string candidate = path + "." + std::to_string(n);
      int rc = ::renameat2(AT_FDCWD, path.c_str(), AT_FDCWD, candidate.c_str(), RENAME_NOREPLACE);
      if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {
        // A file system without RENAME_NOREPLACE: link, which never
        // replaces, then unlink.
        rc = ::link(path.c_str(), candidate.c_str());
        if (rc == 0) ::unlink(path.c_str());
      }
      if (rc == 0) {
        kept = candidate;
      } else if (errno == ENOENT) {
        break;  // gone meanwhile: nothing to keep
      } else if (errno != EEXIST) {
        moved = core::ErrnoStatus(errno, "--trace " + path + ": keeping the earlier trace as " + candidate);
        break;
      }
    }
    if (held >= 0) ::close(held);
    if (!moved.ok()) return moved;
    if (keep && kept.empty() && ::lstat(path.c_str(), &st) == 0) {
      return core::ErrnoStatus(EEXIST, "--trace " + path + ": keeping the earlier trace");
    }
    if (!kept.empty()) {
      std::fprintf(stderr, "blkrep: warning: --trace %s existed; kept it as %s\n", path.c_str(), kept.c_str());
    }
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) return core::ErrnoStatus(errno, "--trace " + path);
  const std::filesystem::path p(path);
  (void)core::PosixFileSystemInstance().SyncDir(p.has_parent_path() ? p.parent_path().string() : ".");
  return Status::Ok();
}

}  // namespace

int TrackCommand(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv,
                        {"state-dir", "nbd-socket", "nbd-listen", "block-size", "journal-cap", "io-engine",
                         "queue-depth", "journal-faults", "cow-cap", "trace"},
                        {});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() < 2 || !args->Value("nbd-socket")) {
    return ReportError(Status::InvalidArgument(kUsage));
  }
  const std::string guest = args->positional[0];
  if (!tracker::journal_format::IsValidName(guest)) {
    return ReportError(Status::InvalidArgument("invalid guest name '" + guest + "'"));
  }
  tracker::JournalOptions journal_options;
  if (auto b = args->Value("block-size")) {
    auto size = core::ParseSize(*b);
    if (!size.ok() || *size < 4096 || *size > (1U << 20) || (*size & (*size - 1)) != 0) {
      return ReportError(Status::InvalidArgument("--block-size must be a power of two from 4K to 1M"));
    }
    journal_options.block_size_bytes = static_cast<std::uint32_t>(*size);
  }
  if (auto c = args->Value("journal-cap")) {
    auto size = core::ParseSize(*c);
    if (!size.ok() || *size < (64 << 10)) {
      return ReportError(Status::InvalidArgument("--journal-cap must be at least 64K"));
    }
    journal_options.cap_bytes = *size;
  }
  // The copy-on-write store of a cycle, per volume: blocks of the frozen
  // image preserved before the guest overwrites them.
  std::uint64_t cow_cap_bytes = 1ULL << 30;
  if (auto c = args->Value("cow-cap")) {
    auto size = core::ParseSize(*c);
    if (!size.ok()) return ReportError(Status::InvalidArgument("--cow-cap: " + size.status().message()));
    cow_cap_bytes = *size;
  }
  tracker::NbdServerOptions server_options;
  server_options.unix_socket = *args->Value("nbd-socket");
  server_options.tcp_listen = args->Value("nbd-listen").value_or("");
  if (auto engine = args->Value("io-engine")) {
    if (*engine == "io_uring") server_options.backend = core::IoBackendKind::kIoUring;
    else if (*engine == "threads") server_options.backend = core::IoBackendKind::kSync;
    else if (*engine != "auto") return ReportError(Status::InvalidArgument("--io-engine: auto, io_uring or threads"));
  }
  if (auto depth = args->Value("queue-depth")) {
    auto n = core::ParseSize(*depth);
    if (!n.ok() || *n == 0 || *n > 4096) return ReportError(Status::InvalidArgument("--queue-depth: 1 to 4096"));
    server_options.queue_depth = static_cast<unsigned>(*n);
  }

  // Declared before the journals that write through it.
  core::FaultInjectingFileSystem fs(core::PosixFileSystemInstance());
  std::vector<Volume> volumes;
  std::set<std::string> names;
  for (std::size_t i = 1; i < args->positional.size(); ++i) {
    auto named = ParseNameEqualsVolume(args->positional[i]);
    if (!named.ok()) return ReportError(named.status());
    if (!tracker::journal_format::IsValidName(named->first)) {
      return ReportError(Status::InvalidArgument("invalid volume name '" + named->first + "'"));
    }
    if (!names.insert(named->first).second) {
      return ReportError(Status::InvalidArgument("volume name " + named->first + " is given twice"));
    }
    volumes.push_back(Volume{named->first, named->second, nullptr, nullptr, nullptr});
  }

  // Request buffers (up to 32 MiB each) come and go at I/O rate.
  KeepLargeBuffersOnTheHeap();

  // Signals are taken by sigwait below; every thread inherits the mask.
  sigset_t signals = BlockStopSignals();
  ::signal(SIGPIPE, SIG_IGN);

  const std::string state_dir = StateDir(*args);
  std::vector<tracker::NbdExport> exports;
  std::vector<tracker::ControlledVolume> controlled;
  for (auto& v : volumes) {
    core::FileBlockDeviceOptions device_options;
    device_options.direct_io = false;  // the page cache, like qemu-nbd's default
    auto device = core::FileBlockDevice::Open(v.path, device_options);
    if (!device.ok()) return ReportError(device.status());
    v.device = std::move(device).value();
    auto identity = v.device->Identity();
    if (!identity.ok()) return ReportError(identity.status());
    tracker::VolumeDescriptor descriptor{guest, v.name, v.path, *identity};
    auto journal = tracker::Journal::Open(fs, tracker::JournalPath(state_dir, guest, v.name), descriptor,
                                          journal_options);
    if (!journal.ok()) return ReportError(journal.status().WithContext("volume " + v.name));
    v.journal = std::move(journal).value();
    tracker::JournalReport report = v.journal->Report();
    if (report.resync_required) {
      std::fprintf(stderr, "blkrep: warning: %s/%s requires a resync: %s\n", guest.c_str(), v.name.c_str(),
                   report.resync_reason.c_str());
    }
    v.gate = std::make_unique<tracker::WriteGate>(v.device->fd());
    exports.push_back(tracker::NbdExport{v.name, v.device.get(), v.journal.get(), v.gate.get()});
    controlled.push_back(
        tracker::ControlledVolume{v.name, v.path, v.device->SizeBytes(), v.journal.get(), v.gate.get()});
  }
  std::unique_ptr<tracker::TraceWriter> trace;
  const std::string trace_path = args->Value("trace").value_or("");
  std::string trace_temp;  // until the tracker serves
  int trace_lock_fd = -1;   // an flock on the trace file, for the tracker's life
  struct CloseLock {
    int* fd;
    ~CloseLock() {
      if (*fd >= 0) ::close(*fd);
    }
  } trace_lock_guard{&trace_lock_fd};
  std::string trace_shown = trace_path;  // where the trace is
  struct RemoveUnlessInstalled {
    std::string* path;
    ~RemoveUnlessInstalled() {
      if (!path->empty()) ::unlink(path->c_str());
    }
  } trace_temp_guard{&trace_temp};
  if (args->Value("trace")) {
    if (trace_path.empty()) return ReportError(Status::InvalidArgument("--trace needs a file name"));
    // Written beside FILE until the tracker serves, then moved to FILE (an
    // older trace there kept as FILE.N first): a start that fails changes
    // nothing.
    if (auto existing = StatTracePath(trace_path); !existing.ok()) return ReportError(existing.status());
    // A name no one can guess or have made, and an flock held on the file
    // for the tracker's life (through the move to FILE): another tracker
    // with the same --trace sees it in use.
    std::string name = trace_path + ".starting-XXXXXX";
    trace_lock_fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (trace_lock_fd < 0) return ReportError(core::ErrnoStatus(errno, "--trace " + trace_path + ": create " + name));
    trace_temp = name;
    if (::flock(trace_lock_fd, LOCK_EX | LOCK_NB) != 0) {
      return ReportError(core::ErrnoStatus(errno, "--trace " + trace_path + ": lock " + name));
    }
    std::vector<tracker::TraceVolume> trace_volumes;
    for (const auto& v : volumes) trace_volumes.push_back(tracker::TraceVolume{v.name, v.device->SizeBytes()});
    auto writer = tracker::TraceWriter::Create(trace_temp, std::move(trace_volumes));
    if (!writer.ok()) return ReportError(writer.status().WithContext("--trace " + trace_path));
    trace = std::move(writer).value();
    for (std::size_t i = 0; i < exports.size(); ++i) {
      exports[i].trace = trace.get();
      exports[i].trace_volume = static_cast<std::uint16_t>(i);
    }
  }
  tracker::CycleControl cycles(state_dir, guest, std::move(controlled), cow_cap_bytes);
  if (auto faults = args->Value("journal-faults")) {
    Status armed = ArmJournalFaults(fs, *faults);
    if (!armed.ok()) return ReportError(armed);
  }

  tracker::ControlServer control([&](const std::string& request) -> std::string {
    std::string reply = cycles.Handle(request);
    if (!reply.empty()) return reply;
    if (request != "inspect json" && request != "inspect text") return "error: unknown request\n";
    tracker::GuestReport report{guest, {}};
    for (auto& v : volumes) report.volumes.push_back(v.journal->Report());
    return request == "inspect json" ? tracker::GuestReportJson(report) : tracker::GuestReportText(report);
  });
  Status listening = control.Start(tracker::ControlSocketPath(state_dir, guest));
  if (!listening.ok()) return ReportError(listening);
  // Cycles whose shipper died are aborted, so their copy-on-write stores
  // stop growing (5 s after the freeze at the earliest).
  std::mutex reaper_mu;
  std::condition_variable reaper_cv;
  bool reaper_stop = false;
  std::thread reaper([&] {
    std::unique_lock lock(reaper_mu);
    while (!reaper_cv.wait_for(lock, std::chrono::seconds(1), [&] { return reaper_stop; })) {
      lock.unlock();
      cycles.AbortOrphans(std::chrono::seconds(5));
      lock.lock();
    }
  });

  auto stop_reaper = [&] {
    {
      std::lock_guard lock(reaper_mu);
      reaper_stop = true;
    }
    reaper_cv.notify_all();
    if (reaper.joinable()) reaper.join();
  };

  tracker::NbdServer server(std::move(exports), server_options);
  Status started = server.Start();
  if (!started.ok()) {
    stop_reaper();
    control.Stop();
    return ReportError(started);
  }
  if (trace) {
    Status installed = InstallTrace(trace_temp, trace_path);
    if (installed.ok()) {
      trace_temp.clear();
    } else {
      std::fprintf(stderr, "blkrep: warning: %s; tracing to %s instead\n", installed.message().c_str(),
                   trace_temp.c_str());
      trace_shown = trace_temp;
      trace_temp.clear();
    }
  }
  std::string names_text;
  for (const auto& v : volumes) names_text += (names_text.empty() ? "" : ", ") + v.name;
  std::fprintf(stderr, "blkrep: tracking %s (%s) on %s%s%s, I/O on %s\n", guest.c_str(), names_text.c_str(),
               server_options.unix_socket.c_str(), server.tcp_address().empty() ? "" : " and tcp ",
               server.tcp_address().c_str(), std::string(server.io_engine()).c_str());

  int signal_number = 0;
  sigwait(&signals, &signal_number);

  server.Shutdown();
  control.Stop();
  stop_reaper();
  cycles.AbortAll();
  int status = kExitOk;
  if (trace) {
    Status closed = trace->Close();
    if (closed.ok()) {
      const std::uint64_t dropped = trace->records_dropped();
      std::fprintf(stderr, "blkrep: trace %s: %llu records written%s\n", trace_shown.c_str(),
                   static_cast<unsigned long long>(trace->records_written()),
                   dropped == 0 ? "" : (", " + std::to_string(dropped) + " dropped").c_str());
    } else {
      status = ReportError(closed.WithContext("trace " + trace_shown + " (" + std::to_string(trace->records_written()) +
                                              " records written, " + std::to_string(trace->records_dropped()) +
                                              " dropped)"));
    }
  }
  for (auto& v : volumes) {
    Status flushed = v.device->Flush();
    if (!flushed.ok()) status = ReportError(flushed.WithContext("flush " + v.path));
    auto identity = v.device->Identity();
    Status sealed = identity.ok() ? v.journal->Close(*identity) : identity.status();
    if (!sealed.ok()) status = ReportError(sealed.WithContext("volume " + v.name));
  }
  if (status == kExitOk) {
    std::fprintf(stderr, "blkrep: stopped tracking %s (signal %d); journals sealed\n", guest.c_str(),
                 signal_number);
  }
  return status;
}

}  // namespace blkrep::tools
