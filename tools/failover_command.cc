// `blkrep test-failover`: Hyper-V's Test-Failover on the receiving node.
// Serves every replica of a guest as a writable NBD export (named after the
// volume) whose writes go to a throw-away overlay, while the replicas stay
// untouched (receiver/failover_view.h).
//
// Design note. The command holds the guest's lock DIR/GUEST/.lock (the one
// a receiver session takes) from before it reads the guest state until it
// exits: no session can apply a cycle under the views. Replication of the
// guest therefore waits while a test failover runs — its sessions are
// refused with "guest G is being received by another session" and the job
// retries on its schedule — and a test failover cannot start while a
// session runs. It refuses a guest with no committed cycle, a volume whose
// full cycle is incomplete, and a validated cycle waiting to be applied
// (the next session applies it; a test failover must not see a replica that
// is about to change). The overlays live in a private directory (mkdtemp,
// mode 0700) under --overlay-dir, else under the replica directory's parent
// (the storage that holds the replicas, not a small tmpfs), else under
// $TMPDIR; SIGTERM or SIGINT stops serving and removes it, exit 0. After a
// SIGKILL or a crash the directory (blkrep-failover-GUEST-XXXXXX) is left
// behind, and the lock is released by the kernel.
//
// --point ID selects a recovery point; only "latest" (the replica as it is)
// exists so far.
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "core/file_system.h"
#include "receiver/failover_view.h"
#include "receiver/guest_state.h"
#include "receiver/receiver.h"
#include "receiver/recovery_points.h"
#include "receiver/replica_layout.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tracker/nbd_server.h"

namespace blkrep::tools {
namespace {

using core::Result;
using core::Status;

constexpr const char* kUsage =
    "usage: blkrep test-failover GUEST --replica-dir DIR --nbd-socket PATH [--nbd-listen HOST:PORT] "
    "[--point ID] [--overlay-dir DIR]";

// A directory made by mkdtemp, removed with its contents on destruction.
class OverlayDir {
 public:
  static Result<std::unique_ptr<OverlayDir>> Create(const std::string& parent, const std::string& guest) {
    std::string pattern = parent + "/blkrep-failover-" + guest + "-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      return core::ErrnoStatus(errno, "create an overlay directory in " + parent);
    }
    return std::make_unique<OverlayDir>(pattern);
  }
  explicit OverlayDir(std::string path) : path_(std::move(path)) {}
  ~OverlayDir() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
    if (error) {
      std::fprintf(stderr, "blkrep: warning: could not remove overlay directory %s: %s\n", path_.c_str(),
                   error.message().c_str());
    }
  }
  OverlayDir(const OverlayDir&) = delete;
  OverlayDir& operator=(const OverlayDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The parent directory of `dir` ("." for a bare name).
std::string ParentOf(const std::string& dir) {
  std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  if (!p.has_filename() && p.has_parent_path()) p = p.parent_path();  // "a/b/" -> "a/b"
  std::filesystem::path parent = p.parent_path();
  return parent.empty() ? "." : parent.string();
}

Result<std::unique_ptr<OverlayDir>> MakeOverlayDir(const std::optional<std::string>& overlay_dir,
                                                   const std::string& replica_dir, const std::string& guest) {
  if (overlay_dir) return OverlayDir::Create(*overlay_dir, guest);
  Result<std::unique_ptr<OverlayDir>> made = OverlayDir::Create(ParentOf(replica_dir), guest);
  if (made.ok()) return made;
  const char* tmp = std::getenv("TMPDIR");
  return OverlayDir::Create(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", guest);
}

// Why the replicas of `state` cannot be served as one point in time; OK
// when they can.
Status CheckServable(const receiver::GuestReplicaState& state, const std::string& replica_dir) {
  const std::string& guest = state.guest;
  Result<bool> promoted =
      core::PosixFileSystemInstance().Exists(replica_dir + "/" + guest + "/" + receiver::kPromotedFileName);
  if (!promoted.ok()) return promoted.status();
  if (*promoted) {
    return Status::Aborted("guest " + guest + " is promoted on this node: its replicas are a running source, "
                           "not a point in time to test");
  }
  if (state.apply_pending) {
    return Status::Aborted("guest " + guest +
                           ": a received cycle is waiting to be applied to the replicas; let a replication "
                           "session finish it first");
  }
  if (state.volumes.empty()) return Status::NotFound("guest " + guest + " has no replicated volume");
  for (const receiver::VolumeReplicaState& v : state.volumes) {
    if (v.incomplete) {
      return Status::Aborted("guest " + guest + ": replica " + v.path +
                             " holds an incomplete full or resync cycle");
    }
    if (v.committed_epoch == 0) {
      return Status::NotFound("guest " + guest + ": replica of volume " + v.name + " has no committed cycle");
    }
  }
  return Status::Ok();
}

struct ServedVolume {
  std::string name;
  std::string replica_path;
  std::unique_ptr<receiver::CopyOnWriteView> view;
};

// A recovery point of one volume as the view's read-only base.
class PointVolume : public receiver::ReadOnlyVolume {
 public:
  static Result<std::unique_ptr<PointVolume>> Open(const std::string& replica_dir, const std::string& guest,
                                                   const std::string& volume, std::uint64_t point) {
    auto at = receiver::PointInTimeVolume::Open(replica_dir, guest, volume, point);
    if (!at.ok()) return at.status();
    auto p = std::unique_ptr<PointVolume>(new PointVolume());
    p->at_ = std::move(*at);
    return p;
  }
  std::uint64_t size_bytes() const override { return at_->size_bytes(); }
  std::uint32_t block_size_bytes() const override { return at_->block_size_bytes(); }
  Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override {
    std::lock_guard lock(mu_);  // one reader of the undo files at a time
    return at_->Read(offset_bytes, out);
  }

 private:
  PointVolume() = default;
  std::mutex mu_;
  std::unique_ptr<receiver::PointInTimeVolume> at_;
};

}  // namespace

int TestFailoverCommand(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"replica-dir", "nbd-socket", "nbd-listen", "point", "overlay-dir", "state-dir"}, {});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() != 1 || !args->Value("replica-dir") || !args->Value("nbd-socket")) {
    return ReportError(Status::InvalidArgument(kUsage));
  }
  const std::string guest = args->positional[0];
  const std::string replica_dir = *args->Value("replica-dir");
  std::uint64_t point_id = 0;
  bool at_point = false;  // false: the latest
  if (auto p = args->Value("point"); p && *p != "latest") {
    char* end = nullptr;
    unsigned long long v = std::strtoull(p->c_str(), &end, 10);
    if (p->empty() || *end != '\0' || !std::isdigit(static_cast<unsigned char>(p->front()))) {
      return ReportError(Status::InvalidArgument("--point " + *p + ": a recovery point id (blkrep recovery-points) "
                                                 "or 'latest'"));
    }
    point_id = v;
    at_point = true;
  }

  // Signals are taken by sigwait below; every thread inherits the mask.
  sigset_t signals = BlockStopSignals();
  ::signal(SIGPIPE, SIG_IGN);

  // Unlocked first: a guest the receiver does not hold gets its own error,
  // and no lock file is made for it.
  Result<receiver::GuestReplicaState> state = receiver::ReadGuestState(replica_dir, guest);
  if (!state.ok()) return ReportError(state.status());
  core::FileSystem& fs = core::PosixFileSystemInstance();
  Result<std::unique_ptr<core::FileLock>> lock =
      fs.Lock(replica_dir + "/" + guest + "/" + receiver::kLockFileName);
  if (!lock.ok()) {
    if (lock.status().code() == core::Code::kAborted) {
      return ReportError(Status::Aborted("guest " + guest +
                                         " is being received by a replication session (or tested by another "
                                         "test failover); try again when it finished"));
    }
    return ReportError(lock.status());
  }
  // Under the lock: what the sessions committed last, and it stays so.
  state = receiver::ReadGuestState(replica_dir, guest);
  if (!state.ok()) return ReportError(state.status());
  if (Status servable = CheckServable(*state, replica_dir); !servable.ok()) return ReportError(servable);

  Result<std::unique_ptr<OverlayDir>> overlay_dir = MakeOverlayDir(args->Value("overlay-dir"), replica_dir, guest);
  if (!overlay_dir.ok()) return ReportError(overlay_dir.status().WithContext("--overlay-dir"));

  // Declared after the overlay directory: the views (which unlink their
  // overlays) go first.
  std::vector<ServedVolume> volumes;
  std::vector<tracker::NbdExport> exports;
  if (at_point) {
    // A recovery point that is the latest is the replica itself.
    auto points = receiver::ListRecoveryPoints(replica_dir, guest);
    if (!points.ok()) return ReportError(points.status());
    auto it = std::find_if(points->begin(), points->end(), [&](const receiver::RecoveryPoint& p) { return p.id == point_id; });
    if (it == points->end()) {
      return ReportError(Status::NotFound("guest " + guest + " has no recovery point " + std::to_string(point_id) +
                                          " (blkrep recovery-points " + guest + " --replica-dir DIR)"));
    }
    if (it->latest) at_point = false;
  }
  for (const receiver::VolumeReplicaState& v : state->volumes) {
    Result<std::unique_ptr<receiver::ReadOnlyVolume>> base = Status::Internal("unset");
    if (at_point) {
      auto at = PointVolume::Open(replica_dir, guest, v.name, point_id);
      if (at.ok()) base = std::unique_ptr<receiver::ReadOnlyVolume>(std::move(*at));
      else base = at.status();
    } else {
      auto file = receiver::ReplicaFileVolume::Open(v.path, v.size_bytes, v.block_size_bytes);
      if (file.ok()) base = std::unique_ptr<receiver::ReadOnlyVolume>(std::move(*file));
      else base = file.status();
    }
    if (!base.ok()) return ReportError(base.status().WithContext("volume " + v.name));
    Result<std::unique_ptr<receiver::CopyOnWriteView>> view =
        receiver::CopyOnWriteView::Create(std::move(*base), (*overlay_dir)->path() + "/" + v.name + ".overlay");
    if (!view.ok()) return ReportError(view.status().WithContext("volume " + v.name));
    volumes.push_back(ServedVolume{v.name, v.path, std::move(*view)});
    tracker::NbdExport e;
    e.name = v.name;
    e.view = volumes.back().view.get();
    exports.push_back(std::move(e));
  }

  tracker::NbdServerOptions server_options;
  server_options.unix_socket = *args->Value("nbd-socket");
  server_options.tcp_listen = args->Value("nbd-listen").value_or("");
  tracker::NbdServer server(std::move(exports), server_options);
  if (Status started = server.Start(); !started.ok()) return ReportError(started);
  for (const ServedVolume& v : volumes) {
    std::string tcp = server.tcp_address().empty() ? "" : " and nbd://" + server.tcp_address() + "/" + v.name;
    std::string at = at_point ? "recovery point " + std::to_string(point_id) : std::string("latest point");
    std::fprintf(stderr, "blkrep: test failover of %s: replica %s (%s) served writable as "
                 "nbd+unix:///%s?socket=%s%s\n", guest.c_str(), v.replica_path.c_str(), at.c_str(), v.name.c_str(),
                 server_options.unix_socket.c_str(), tcp.c_str());
  }
  std::fprintf(stderr, "blkrep: test failover of %s: writes go to %s; replication of %s waits until this stops\n",
               guest.c_str(), (*overlay_dir)->path().c_str(), guest.c_str());

  int signal_number = 0;
  sigwait(&signals, &signal_number);

  server.Shutdown();
  std::uint64_t written_blocks = 0;
  for (const ServedVolume& v : volumes) written_blocks += v.view->OverlayBlocks();
  volumes.clear();  // unlinks the overlays
  std::string removed = (*overlay_dir)->path();
  overlay_dir->reset();
  std::fprintf(stderr, "blkrep: stopped test failover of %s (signal %d); %llu written blocks discarded with %s\n",
               guest.c_str(), signal_number, static_cast<unsigned long long>(written_blocks), removed.c_str());
  return kExitOk;
}

}  // namespace blkrep::tools
