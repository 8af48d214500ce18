// `blkrep promote` and `blkrep demote`: failover and the way back.
//
// Design note. Hyper-V's failover and pvesr's job reversal after a
// migration, at the block layer.
//
// - promote (on the target, the source gone or stopped): the guest's
//   replicas become a tracked source. For each volume a new journal is made
//   under STATE/journal/GUEST/ for the replica file, seeded so that the job
//   (the one the replicas belong to) is a target whose last committed cycle
//   is the replica's epoch and nothing is dirty; the journal is sealed, so
//   `blkrep track GUEST NAME=REPLICA ...` serves the volumes and tracks
//   every write from then on. A `promoted` file in the guest's replica
//   directory makes the receiver refuse every later session of the guest:
//   the old source must never overwrite what the guest writes now.
// - demote (on the old source, its tracker stopped): its volumes become the
//   replica of the reversed job. Its journals say, for the job, the last
//   cycle the other side committed and which blocks changed since (writes
//   that never reached the target). demote writes a receiver guest state at
//   that cycle, a symlink DIR/GUEST/NAME.img to each volume, and those
//   blocks as "diverged" (receiver/diverged.h); then it moves the journals
//   aside. The reversed job's first cycle (from the promoted side, the same
//   job id) is an incremental of the union of both sides' changes since
//   the common cycle: the promoted side's dirty set, plus the diverged
//   blocks the receiver reports and the shipper marks dirty before it
//   freezes. Where a side cannot vouch for its changes (no common cycle, a
//   journal that requires a resync) the cycle is a resync instead.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "core/json.h"
#include "jobs/job_store.h"
#include "receiver/diverged.h"
#include "receiver/guest_state.h"
#include "receiver/receiver.h"
#include "receiver/recovery_points.h"
#include "receiver/replica_layout.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/job_util.h"
#include "tracker/control_socket.h"
#include "tracker/journal.h"
#include "tracker/journal_format.h"
#include "tracker/layout.h"

namespace blkrep::tools {
namespace {

using core::Result;
using core::Status;

Result<std::unique_ptr<core::FileLock>> LockGuestDir(const std::string& guest_dir, const std::string& guest) {
  auto lock = core::PosixFileSystemInstance().Lock(guest_dir + "/" + receiver::kLockFileName);
  if (!lock.ok() && lock.status().code() == core::Code::kAborted) {
    return Status::Aborted("guest " + guest + " is being received by another session; stop replicating to it first");
  }
  return lock;
}

Status WriteSmallFileDurably(const std::string& dir, const std::string& name, const std::string& text) {
  core::FileSystem& fs = core::PosixFileSystemInstance();
  std::string path = dir + "/" + name;
  {
    BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> f, fs.Open(path + ".tmp", core::OpenMode::kCreateTruncate));
    BLKREP_RETURN_IF_ERROR(f->WriteAt(0, std::as_bytes(std::span(text.data(), text.size()))));
    BLKREP_RETURN_IF_ERROR(f->Sync());
  }
  BLKREP_RETURN_IF_ERROR(fs.Rename(path + ".tmp", path));
  return fs.SyncDir(dir);
}

// The receiver's record of which file a replica is (guest_state.h).
Result<receiver::ReplicaIdentity> ReplicaIdentityOf(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return core::ErrnoStatus(errno, "stat " + path);
  receiver::ReplicaIdentity id;
  if (S_ISBLK(st.st_mode)) {
    id.kind = receiver::ReplicaKind::kBlockDevice;
    id.dev = st.st_rdev;
  } else if (S_ISREG(st.st_mode)) {
    id.kind = receiver::ReplicaKind::kRegularFile;
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    id.mtime_ns = static_cast<std::uint64_t>(st.st_mtim.tv_sec) * 1000000000ULL +
                  static_cast<std::uint64_t>(st.st_mtim.tv_nsec);
  } else {
    return Status::InvalidArgument(path + " is neither a regular file nor a block device");
  }
  return id;
}

bool TrackerAnswers(const std::string& state_dir, const std::string& guest) {
  Result<std::string> reply = tracker::AskControl(tracker::ControlSocketPath(state_dir, guest), "ping");
  return reply.ok() || reply.status().code() != core::Code::kNotFound;
}

// What promote and demote both parse: GUEST and --replica-dir, the state
// directory. Sets *exit_status and returns nothing on a usage error.
struct GuestCommand {
  Args args;
  std::string guest, replica_dir, guest_dir, state_dir;
};

std::optional<GuestCommand> ParseGuestCommand(const std::vector<std::string>& argv, const char* usage,
                                              std::set<std::string> valued, int* exit_status) {
  valued.insert({"state-dir", "replica-dir"});
  auto args = ParseArgs(argv, valued, {"json"});
  if (!args.ok()) {
    *exit_status = ReportError(args.status().WithContext(usage));
    return std::nullopt;
  }
  if (args->positional.size() != 1 || !args->Value("replica-dir")) {
    *exit_status = ReportError(Status::InvalidArgument(usage));
    return std::nullopt;
  }
  GuestCommand c;
  c.guest = args->positional[0];
  if (!tracker::journal_format::IsValidName(c.guest)) {
    *exit_status = ReportError(Status::InvalidArgument("invalid guest name '" + c.guest + "'"));
    return std::nullopt;
  }
  c.replica_dir = *args->Value("replica-dir");
  c.guest_dir = c.replica_dir + "/" + c.guest;
  c.state_dir = StateDir(*args);
  c.args = std::move(*args);
  return c;
}

}  // namespace

int PromoteCommand(const std::vector<std::string>& argv) {
  int exit_status = kExitOk;
  std::optional<GuestCommand> c = ParseGuestCommand(
      argv, "usage: blkrep promote GUEST --replica-dir DIR [--point ID] [--state-dir DIR] [--json]", {"point"},
      &exit_status);
  if (!c) return exit_status;
  const Args* args = &c->args;
  const std::string &guest = c->guest, &replica_dir = c->replica_dir, &guest_dir = c->guest_dir,
                    &state_dir = c->state_dir;
  core::FileSystem& fs = core::PosixFileSystemInstance();

  auto exists = fs.Exists(guest_dir + "/" + receiver::kStateFileName);
  if (!exists.ok()) return ReportError(exists.status());
  if (!*exists) return ReportError(Status::NotFound("no replica of guest " + guest + " under " + replica_dir));
  auto lock = LockGuestDir(guest_dir, guest);
  if (!lock.ok()) return ReportError(lock.status());
  auto promoted = fs.Exists(guest_dir + "/" + receiver::kPromotedFileName);
  if (!promoted.ok()) return ReportError(promoted.status());
  if (*promoted) return ReportError(Status::Aborted("guest " + guest + " is already promoted on this node"));
  auto state = receiver::ReadGuestStateFile(fs, guest_dir);
  if (!state.ok()) return ReportError(state.status());
  if (state->job.empty() || state->volumes.empty()) {
    return ReportError(Status::NotFound("guest " + guest + " has no committed replica under " + replica_dir));
  }
  if (state->apply_pending) {
    // The source committed a cycle and died before the receiver applied
    // it: apply it now, as its next session would have.
    Status applied = receiver::FinishPendingApplyLocked(replica_dir, guest);
    if (!applied.ok()) return ReportError(applied.WithContext("apply the cycle received last"));
    state = receiver::ReadGuestStateFile(fs, guest_dir);
    if (!state.ok()) return ReportError(state.status());
  }
  // A recovery point: the replicas are rolled back to it first. The blocks
  // the rollback rewrites are what the promoted side changed with respect
  // to the latest cycle (which the old source holds): dirty for the job.
  std::map<std::string, std::vector<receiver::BlockRange>> rolled_back;
  std::map<std::string, std::uint64_t> latest_epoch;
  for (const receiver::VolumeState& vs : state->volumes) latest_epoch[vs.name] = vs.committed_epoch;
  std::string point_text = "latest";
  if (auto p = args->Value("point"); p && *p != "latest") {
    char* end = nullptr;
    unsigned long long id = std::strtoull(p->c_str(), &end, 10);
    if (p->empty() || *end != '\0' || !std::isdigit(static_cast<unsigned char>(p->front()))) {
      return ReportError(Status::InvalidArgument("--point " + *p + ": a recovery point id (blkrep recovery-points) "
                                                 "or 'latest'"));
    }
    auto points = receiver::ListRecoveryPoints(replica_dir, guest);
    if (!points.ok()) return ReportError(points.status());
    auto it = std::find_if(points->begin(), points->end(), [&](const receiver::RecoveryPoint& x) { return x.id == id; });
    if (it == points->end()) {
      return ReportError(Status::NotFound("guest " + guest + " has no recovery point " + *p +
                                          " (blkrep recovery-points " + guest + " --replica-dir " + replica_dir + ")"));
    }
    if (!it->latest) {
      for (const receiver::VolumeState& vs : state->volumes) {
        auto at = receiver::PointInTimeVolume::Open(replica_dir, guest, vs.name, id);
        if (!at.ok()) return ReportError(at.status());
        rolled_back[vs.name] = (*at)->ChangedBlocks();
      }
      Status rolled = receiver::RollbackToPointLocked(replica_dir, guest, id);
      if (!rolled.ok()) return ReportError(rolled.WithContext("roll back to recovery point " + *p));
      state = receiver::ReadGuestStateFile(fs, guest_dir);
      if (!state.ok()) return ReportError(state.status());
    }
    point_text = std::to_string(id);
  }
  for (const receiver::VolumeState& vs : state->volumes) {
    if (vs.incomplete || vs.committed_epoch == 0) {
      return ReportError(Status::Aborted("volume " + vs.name + " of guest " + guest +
                                         " holds no complete cycle (a full or resync cycle did not finish)"));
    }
    auto journal = fs.Exists(tracker::JournalPath(state_dir, guest, vs.name));
    if (!journal.ok()) return ReportError(journal.status());
    if (*journal) {
      return ReportError(Status::Aborted("guest " + guest + " is already tracked on this node (" +
                                         tracker::JournalPath(state_dir, guest, vs.name) + ")"));
    }
  }
  // Every replica checked before anything is made.
  for (const receiver::VolumeState& vs : state->volumes) {
    auto replica = receiver::ReplicaPath(replica_dir, guest, vs.name);
    if (!replica.ok()) return ReportError(replica.status());
    core::FileBlockDeviceOptions o;
    o.read_only = true;
    auto device = core::FileBlockDevice::Open(*replica, o);
    if (!device.ok()) return ReportError(device.status().WithContext("volume " + vs.name));
    if ((*device)->SizeBytes() != vs.size_bytes) {
      return ReportError(Status::Aborted("replica " + *replica + " has " + std::to_string((*device)->SizeBytes()) +
                                         " bytes, its state says " + std::to_string(vs.size_bytes)));
    }
  }
  Status made = fs.CreateDirectories(tracker::JournalDir(state_dir, guest));
  if (!made.ok()) return ReportError(made);
  // Fenced first: from here on no session of the old source can write the
  // replicas, whatever happens next.
  char text[256];
  std::snprintf(text, sizeof(text), "promoted at %lld to state directory %s, job %s\n", (long long)Now(),
                state_dir.c_str(), state->job.c_str());
  Status marked = WriteSmallFileDurably(guest_dir, receiver::kPromotedFileName, text);
  if (!marked.ok()) return ReportError(marked);
  // The guest will write the replicas directly, with no undo data: the
  // recovery points would read its writes as history. They go.
  Status dropped = receiver::DropAllPoints(fs, guest_dir);
  if (!dropped.ok()) return ReportError(dropped.WithContext("drop the recovery points"));
  // A journal made before a failure is removed again (with the fence), so
  // the promote can be run again.
  std::vector<std::string> made_journals;
  auto undo = [&](const Status& failed) {
    for (const std::string& j : made_journals) {
      (void)fs.Remove(j);
      (void)fs.Remove(j + ".lock");
    }
    (void)fs.Remove(guest_dir + "/" + receiver::kPromotedFileName);
    (void)fs.SyncDir(guest_dir);
    return ReportError(failed);
  };

  core::JsonWriter w(core::JsonStyle::kPretty);
  w.BeginObject().Key("guest").String(guest).Key("job").String(state->job).Key("point").String(point_text);
  w.Key("volumes").BeginArray();
  std::string track_args;
  for (const receiver::VolumeState& vs : state->volumes) {
    auto replica = receiver::ReplicaPath(replica_dir, guest, vs.name);
    if (!replica.ok()) return undo(replica.status());
    core::FileBlockDeviceOptions o;
    o.read_only = true;
    auto device = core::FileBlockDevice::Open(*replica, o);
    if (!device.ok()) return undo(device.status().WithContext("volume " + vs.name));
    if ((*device)->SizeBytes() != vs.size_bytes) {
      return undo(Status::Aborted("replica " + *replica + " has " + std::to_string((*device)->SizeBytes()) +
                                         " bytes, its state says " + std::to_string(vs.size_bytes)));
    }
    auto identity = (*device)->Identity();
    if (!identity.ok()) return undo(identity.status());
    tracker::VolumeDescriptor d{guest, vs.name, *replica, *identity};
    tracker::JournalOptions options;
    options.block_size_bytes = vs.block_size_bytes;
    std::string journal_path = tracker::JournalPath(state_dir, guest, vs.name);
    auto journal = tracker::Journal::Open(fs, journal_path, d, options);
    if (!journal.ok()) return undo(journal.status().WithContext("volume " + vs.name));
    made_journals.push_back(journal_path);
    // The job's numbering goes on from the latest cycle (what the old
    // source holds); blocks a rollback rewrote differ from it.
    tracker::DirtyBitmap dirty((*journal)->block_count());
    for (const receiver::BlockRange& r : rolled_back[vs.name]) {
      if (r.first < dirty.block_count()) dirty.SetRange(r.first, std::min(r.count, dirty.block_count() - r.first));
    }
    // A replica demoted earlier that no cycle reached since: the blocks it
    // wrote after the common cycle differ from the other side too.
    auto diverged = receiver::ReadDiverged(fs, guest_dir, vs.name);
    if (diverged.ok() && diverged->block_count == dirty.block_count() &&
        diverged->block_size_bytes == (*journal)->block_size_bytes()) {
      for (const auto& [first, count] : diverged->ranges) dirty.SetRange(first, count);
    } else if (diverged.ok() || diverged.status().code() != core::Code::kNotFound) {
      dirty.SetAll();  // unreadable, or of another geometry: every block may differ
    }
    Status seeded = (*journal)->SeedTarget(state->job, latest_epoch[vs.name], dirty);
    if (seeded.ok()) seeded = (*journal)->Close(*identity);
    // The journal carries them now.
    if (seeded.ok()) seeded = receiver::RemoveDiverged(fs, guest_dir, vs.name);
    if (!seeded.ok()) return undo(seeded.WithContext("volume " + vs.name));
    w.BeginObject().Key("name").String(vs.name).Key("path").String(*replica).Key("epoch").Uint(vs.committed_epoch);
    w.Key("job_epoch").Uint(latest_epoch[vs.name]).Key("rolled_back_blocks").Uint(dirty.Count());
    w.Key("journal").String(journal_path).EndObject();
    track_args += " " + vs.name + "=" + *replica;
  }
  w.EndArray();
  w.Key("track").String("blkrep track " + guest + track_args + " --state-dir " + state_dir + " --nbd-socket SOCKET");
  w.EndObject();
  if (args->Flag("json")) {
    std::printf("%s\n", w.str().c_str());
  } else {
    std::printf("guest %s promoted: its replicas are a tracked source of job %s now.\n", guest.c_str(),
                state->job.c_str());
    std::printf("serve it:   blkrep track %s%s --state-dir %s --nbd-socket SOCKET\n", guest.c_str(),
                track_args.c_str(), state_dir.c_str());
    std::printf("reverse it: blkrep target add OLD-SOURCE ...; blkrep create-local-job %s OLD-SOURCE "
                "(after `blkrep demote %s` there)\n",
                state->job.c_str(), guest.c_str());
  }
  return kExitOk;
}

int DemoteCommand(const std::vector<std::string>& argv) {
  int exit_status = kExitOk;
  std::optional<GuestCommand> c = ParseGuestCommand(
      argv, "usage: blkrep demote GUEST --replica-dir DIR [--job JOBID] [--state-dir DIR] [--json]", {"job"},
      &exit_status);
  if (!c) return exit_status;
  const Args* args = &c->args;
  const std::string &guest = c->guest, &replica_dir = c->replica_dir, &guest_dir = c->guest_dir,
                    &state_dir = c->state_dir;
  core::FileSystem& fs = core::PosixFileSystemInstance();
  if (TrackerAnswers(state_dir, guest)) {
    return ReportError(Status::Aborted("a tracker serves guest " + guest +
                                       " on this node: stop the guest and its tracker before demoting it"));
  }
  // The journals, read (their locks keep a tracker from starting meanwhile
  // only while open; the check above and the move below bound the window).
  const std::string journal_dir = tracker::JournalDir(state_dir, guest);
  auto names = fs.List(journal_dir);
  if (!names.ok()) return ReportError(names.status().WithContext("guest " + guest + " has no journals"));
  std::vector<tracker::JournalReport> reports;
  // Each journal's lock, held to the end: no tracker can start on a volume
  // while it becomes a replica.
  std::vector<std::unique_ptr<core::FileLock>> journal_locks;
  for (const std::string& n : *names) {
    if (!n.ends_with(tracker::kJournalSuffix)) continue;
    const std::string path = journal_dir + "/" + n;
    auto locked = fs.Lock(path + ".lock");
    if (!locked.ok()) {
      return ReportError(locked.status().code() == core::Code::kAborted
                             ? Status::Aborted("journal " + path + " is in use (a tracker or a run of the guest)")
                             : locked.status());
    }
    journal_locks.push_back(std::move(*locked));
    auto r = tracker::Journal::Read(fs, path);
    if (!r.ok()) return ReportError(r.status());
    if (!std::filesystem::path(r->volume_path).is_absolute()) {
      return ReportError(Status::Aborted("journal " + path + " records the relative volume path '" + r->volume_path +
                                         "' (an older blkrep): run demote from the directory the tracker ran in"));
    }
    reports.push_back(std::move(*r));
  }
  if (reports.empty()) return ReportError(Status::NotFound("guest " + guest + " has no journal in " + journal_dir));
  std::string job;
  if (auto j = args->Value("job")) {
    job = *j;
    Status valid = jobs::ValidateJobId(job, nullptr);
    if (!valid.ok()) return ReportError(valid);
    bool known = false;
    for (const auto& t : reports.front().targets) known = known || t.name == job;
    if (!known) return ReportError(Status::NotFound("guest " + guest + " has no replication job " + job));
  } else {
    for (const auto& t : reports.front().targets) {
      if (!job.empty()) {
        return ReportError(Status::InvalidArgument("guest " + guest + " replicates to several targets: --job JOBID"));
      }
      job = t.name;
    }
    if (job.empty()) return ReportError(Status::NotFound("guest " + guest + " has no replication target"));
  }

  Status made = fs.CreateDirectories(guest_dir);
  if (!made.ok()) return ReportError(made);
  auto lock = LockGuestDir(guest_dir, guest);
  if (!lock.ok()) return ReportError(lock.status());
  // Recovery points of an earlier life as a replica are no history of what
  // these volumes hold now.
  Status dropped = receiver::DropAllPoints(fs, guest_dir);
  if (!dropped.ok()) return ReportError(dropped.WithContext("drop old recovery points"));

  receiver::GuestState state;
  state.job = job;
  core::JsonWriter w(core::JsonStyle::kPretty);
  w.BeginObject().Key("guest").String(guest).Key("job").String(job).Key("volumes").BeginArray();
  for (const tracker::JournalReport& r : reports) {
    const tracker::TargetReport* t = nullptr;
    for (const auto& x : r.targets) {
      if (x.name == job) t = &x;
    }
    // The common cycle, if the journal can vouch for what changed since.
    std::uint64_t common = 0;
    std::string why;
    if (t == nullptr) why = "the journal has no target " + job;
    else if (r.resync_required || t->resync_required) why = "the journal requires a resync";
    else if (t->needs_full || t->last_cycle == 0) why = "no cycle of the job was committed";
    else common = t->last_cycle;
    auto replica = receiver::ReplicaPath(replica_dir, guest, r.volume_name);
    if (!replica.ok()) return ReportError(replica.status());
    std::error_code ec;
    std::string target = std::filesystem::absolute(r.volume_path, ec).string();
    if (std::filesystem::exists(*replica, ec) && std::filesystem::equivalent(*replica, target, ec)) {
      // The volume is the replica file itself (a promoted replica, failing
      // back): nothing to link.
    } else {
      if (std::filesystem::is_symlink(*replica, ec)) std::filesystem::remove(*replica, ec);
      if (std::filesystem::exists(*replica, ec)) {
        return ReportError(Status::Aborted(*replica + " exists and is not volume " + target +
                                           ": the replica directory holds another copy of this guest"));
      }
      std::filesystem::create_symlink(target, *replica, ec);
      if (ec) return ReportError(Status::IoError("symlink " + *replica + " -> " + target + ": " + ec.message()));
    }
    auto identity = ReplicaIdentityOf(*replica);
    if (!identity.ok()) return ReportError(identity.status());
    {
      // The volume the journal tracked: its size at least.
      core::FileBlockDeviceOptions o;
      o.read_only = true;
      auto device = core::FileBlockDevice::Open(*replica, o);
      if (!device.ok()) return ReportError(device.status().WithContext("volume " + r.volume_name));
      if ((*device)->SizeBytes() != r.volume_size_bytes) {
        return ReportError(Status::Aborted("volume " + target + " has " + std::to_string((*device)->SizeBytes()) +
                                           " bytes, its journal says " + std::to_string(r.volume_size_bytes)));
      }
    }
    receiver::VolumeState vs;
    vs.name = r.volume_name;
    vs.size_bytes = r.volume_size_bytes;
    vs.block_size_bytes = r.block_size_bytes;
    vs.committed_epoch = common;
    vs.replica = *identity;
    state.volumes.push_back(vs);
    std::uint64_t diverged_blocks = 0;
    if (common != 0) {
      receiver::DivergedBlocks d;
      d.block_size_bytes = r.block_size_bytes;
      d.block_count = t->dirty.block_count();
      d.ranges = t->dirty.Runs();
      diverged_blocks = t->dirty.Count();
      Status written = d.ranges.empty() ? receiver::RemoveDiverged(fs, guest_dir, vs.name)
                                        : receiver::WriteDiverged(fs, guest_dir, vs.name, d);
      if (!written.ok()) return ReportError(written);
    }
    w.BeginObject().Key("name").String(vs.name).Key("path").String(target).Key("common_epoch").Uint(common);
    w.Key("diverged_blocks").Uint(diverged_blocks).Key("resync_reason").StringOrNull(why);
    w.EndObject();
  }
  w.EndArray();
  Status written = receiver::WriteGuestStateFile(fs, guest_dir, state);
  if (!written.ok()) return ReportError(written);
  // It may have been promoted here before (a failback): a replica again.
  std::error_code ec;
  std::filesystem::remove(guest_dir + "/" + receiver::kPromotedFileName, ec);
  // The journals go aside: the volumes are a replica now, not a source.
  std::string aside = tracker::JournalDir(state_dir, ".demoted") + "/" + guest + "-" + std::to_string(Now());
  std::filesystem::create_directories(tracker::JournalDir(state_dir, ".demoted"), ec);
  std::filesystem::rename(journal_dir, aside, ec);
  if (ec) return ReportError(Status::IoError("move " + journal_dir + " to " + aside + ": " + ec.message()));
  w.Key("journals_moved_to").String(aside);
  // This node's jobs of the guest have no source any more: disabled (the
  // reversed job runs on the promoted side; `enable` after a failback).
  w.Key("disabled_jobs").BeginArray();
  auto store = OpenStore(*args);
  auto all = store.ok() ? (*store)->ListJobs() : Result<std::vector<jobs::Job>>(store.status());
  if (!all.ok()) {
    std::fprintf(stderr, "blkrep: warning: the guest's jobs could not be disabled: %s\n",
                 all.status().ToString().c_str());
  } else {
    for (jobs::Job j : *all) {
      if (j.guest != guest || !j.enabled) continue;
      j.enabled = false;
      Status saved = (*store)->SetEnabled(j.id, false);
      if (!saved.ok()) {
        std::fprintf(stderr, "blkrep: warning: %s\n", saved.ToString().c_str());
        continue;
      }
      AddEventOrWarn(**store, MakeEvent(j, "state-changed", "disabled: guest " + guest + " demoted on this node",
                                        "{\"enabled\":false,\"reason\":\"demoted\"}"));
      w.String(j.id);
    }
  }
  w.EndArray().EndObject();
  if (args->Flag("json")) {
    std::printf("%s\n", w.str().c_str());
  } else {
    std::printf("guest %s demoted: its volumes are the replica of job %s under %s (journals moved to %s)\n",
                guest.c_str(), job.c_str(), guest_dir.c_str(), aside.c_str());
  }
  return kExitOk;
}

}  // namespace blkrep::tools
