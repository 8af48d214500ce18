#include "jobs/cycle_runner.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <sstream>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "proto/transport.h"
#include "tracker/control_socket.h"
#include "tracker/cow_store.h"
#include "tracker/journal.h"
#include "tracker/layout.h"

namespace blkrep::jobs {

using core::Result;
using core::Status;

namespace {

struct SourceVolume {
  std::string name;
  std::string path;
  std::string journal_path;
  std::uint64_t size_bytes = 0;
  std::uint32_t block_size_bytes = 0;
  tracker::JournalReport report;
  std::unique_ptr<tracker::Journal> journal;       // offline only
  std::unique_ptr<tracker::CowStore> cow;          // tracker only
  tracker::FrozenCycle frozen;
};

Result<std::vector<SourceVolume>> DiscoverVolumes(const std::string& state_dir, const std::string& guest) {
  std::string dir = tracker::JournalDir(state_dir, guest);
  std::vector<std::string> paths;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::string p = entry.path().string();
    if (p.size() > 8 && p.ends_with(tracker::kJournalSuffix)) paths.push_back(p);
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Status::IoError("list journals in " + dir + ": " + ec.message());
  }
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) {
    return Status::NotFound("guest " + guest + " has no tracked volumes (no journal in " + dir +
                            "); start `blkrep track` for it first");
  }
  std::vector<SourceVolume> out;
  for (const std::string& p : paths) {
    BLKREP_ASSIGN_OR_RETURN(tracker::JournalReport r, tracker::Journal::Read(core::PosixFileSystemInstance(), p));
    SourceVolume v;
    v.name = r.volume_name;
    v.path = r.volume_path;
    v.journal_path = p;
    v.size_bytes = r.volume_size_bytes;
    v.block_size_bytes = r.block_size_bytes;
    v.report = std::move(r);
    out.push_back(std::move(v));
  }
  return out;
}

const tracker::TargetReport* FindTarget(const tracker::JournalReport& r, const std::string& job) {
  for (const auto& t : r.targets) {
    if (t.name == job) return &t;
  }
  return nullptr;
}

Result<core::VolumeIdentity> IdentityOf(const std::string& path) {
  core::FileBlockDeviceOptions o;
  o.read_only = true;
  BLKREP_ASSIGN_OR_RETURN(auto device, core::FileBlockDevice::Open(path, o));
  return device->Identity();
}

std::string Ask(const std::string& socket, const std::string& request, Status* status) {
  Result<std::string> reply = tracker::AskControl(socket, request);
  if (!reply.ok()) {
    *status = reply.status();
    return "";
  }
  if (reply->rfind("ok", 0) != 0) {
    std::string text = *reply;
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    if (text.rfind("error: ", 0) == 0) text = text.substr(7);
    *status = Status::Aborted("tracker: " + text);
    return "";
  }
  *status = Status::Ok();
  return *reply;
}

proto::CycleMode WireMode(tracker::CycleMode m) {
  switch (m) {
    case tracker::CycleMode::kFull: return proto::CYCLE_MODE_FULL;
    case tracker::CycleMode::kResync: return proto::CYCLE_MODE_RESYNC;
    default: return proto::CYCLE_MODE_INCREMENTAL;
  }
}

// Why the replica cannot take an incremental cycle, or "" if it can.
std::string IncrementalBlocker(const SourceVolume& v, const tracker::TargetReport& t, const proto::ReplicaState& r) {
  if (!r.exists()) return "the replica of " + v.name + " is missing";
  if (r.incomplete()) return "the replica of " + v.name + " is incomplete";
  if (r.size_bytes() != v.size_bytes) {
    return "the replica of " + v.name + " has " + std::to_string(r.size_bytes()) + " bytes, the volume " +
           std::to_string(v.size_bytes);
  }
  if (r.committed_epoch() < t.last_cycle || r.committed_epoch() > v.report.epoch || r.committed_epoch() == 0) {
    return "the replica of " + v.name + " is at cycle " + std::to_string(r.committed_epoch()) +
           ", the journal's last cycle for the job is " + std::to_string(t.last_cycle);
  }
  return "";
}

// Reads the tracker's freeze reply ("volume NAME EPOCH MODE BLOCKS COW")
// into `volumes`, opening each copy-on-write store.
Status AttachFrozen(const std::string& reply, std::vector<SourceVolume>& volumes) {
  std::istringstream in(reply);
  std::string line;
  std::getline(in, line);  // ok
  std::size_t seen = 0;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string tag, name, mode, cow_path;
    std::uint64_t epoch = 0, blocks = 0;
    words >> tag >> name >> epoch >> mode >> blocks;
    std::getline(words >> std::ws, cow_path);
    auto it = std::find_if(volumes.begin(), volumes.end(), [&](const SourceVolume& v) { return v.name == name; });
    if (tag != "volume" || it == volumes.end() || it->cow) {
      return Status::Internal("tracker: unexpected freeze reply: " + line);
    }
    BLKREP_ASSIGN_OR_RETURN(it->cow, tracker::CowStore::Open(cow_path));
    // While this process lives, the tracker knows the cycle has a shipper.
    BLKREP_RETURN_IF_ERROR(it->cow->HoldForShipping());
    if (it->cow->epoch() != epoch) return Status::Internal("copy-on-write store " + cow_path + " of another cycle");
    it->frozen.epoch = epoch;
    it->frozen.mode = mode == "full"     ? tracker::CycleMode::kFull
                      : mode == "resync" ? tracker::CycleMode::kResync
                                         : tracker::CycleMode::kIncremental;
    it->frozen.blocks = it->cow->FrozenBitmap();
    ++seen;
  }
  if (seen != volumes.size()) {
    return Status::Internal("tracker froze " + std::to_string(seen) + " of " + std::to_string(volumes.size()) +
                            " volumes: are the journals and the running tracker of the same guest?");
  }
  return Status::Ok();
}

}  // namespace

Result<CycleResult> RunCycle(const CycleRequest& request) {
  const std::string& job = request.job;
  const std::string control = tracker::ControlSocketPath(request.state_dir, request.guest);
  BLKREP_ASSIGN_OR_RETURN(std::vector<SourceVolume> volumes, DiscoverVolumes(request.state_dir, request.guest));
  CycleResult result;
  for (const auto& v : volumes) result.volumes.push_back(v.name);

  // A running tracker, or the journals opened here?
  Status asked;
  Ask(control, "add-target " + job, &asked);
  result.tracker_running = asked.code() != core::Code::kNotFound;
  if (result.tracker_running && !asked.ok()) return asked;
  if (!result.tracker_running) {
    for (SourceVolume& v : volumes) {
      BLKREP_ASSIGN_OR_RETURN(core::VolumeIdentity id, IdentityOf(v.path));
      tracker::VolumeDescriptor d{request.guest, v.name, v.path, id};
      auto journal = tracker::Journal::Open(core::PosixFileSystemInstance(), v.journal_path, d, {});
      if (!journal.ok()) {
        if (journal.status().code() == core::Code::kAborted) {
          return Status::Aborted("journal " + v.journal_path + " is locked, but no tracker answers on " + control);
        }
        return journal.status();
      }
      v.journal = std::move(journal).value();
      if (!FindTarget(v.journal->Report(), job)) BLKREP_RETURN_IF_ERROR(v.journal->AddTarget(job));
    }
  }
  // Seals the journals opened here on every path out.
  struct Sealer {
    std::vector<SourceVolume>& volumes;
    ~Sealer() {
      for (SourceVolume& v : volumes) {
        if (!v.journal) continue;
        Result<core::VolumeIdentity> id = IdentityOf(v.path);
        if (id.ok()) (void)v.journal->Close(*id);
      }
    }
  } sealer{volumes};
  for (SourceVolume& v : volumes) {
    if (v.journal) {
      v.report = v.journal->Report();
    } else {
      BLKREP_ASSIGN_OR_RETURN(v.report, tracker::Journal::Read(core::PosixFileSystemInstance(), v.journal_path));
    }
    if (!FindTarget(v.report, job)) return Status::Internal("job " + job + " is not a target of " + v.journal_path);
  }

  // The receiver.
  BLKREP_ASSIGN_OR_RETURN(proto::TargetSpec spec, proto::ParseTargetArgs(request.target_args));
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<proto::Connection> connection, proto::ConnectTarget(spec));
  std::unique_ptr<proto::RateLimitedStream> limited;
  proto::Stream* stream = connection.get();
  if (request.rate_mbps > 0) {
    limited = std::make_unique<proto::RateLimitedStream>(*connection, request.rate_mbps * 1e6);
    stream = limited.get();
  }
  shipper::ShipperSession session(*stream);
  auto with_target = [&](const Status& s) {
    Status finished = connection->Finish();
    if (!finished.ok() && s.message().find("peer:") == std::string::npos) {
      return s.WithContext(finished.message());
    }
    return s.WithContext("target " + proto::DescribeTarget(spec));
  };
  std::vector<proto::VolumeInfo> infos;
  for (const SourceVolume& v : volumes) {
    proto::VolumeInfo info;
    info.set_name(v.name);
    info.set_size_bytes(v.size_bytes);
    info.set_block_size_bytes(v.block_size_bytes);
    infos.push_back(info);
  }
  Result<shipper::ReceiverState> receiver = session.Hello(request.guest, job, infos);
  if (!receiver.ok()) return with_target(receiver.status());

  // The mode: what the journal says, unless the replica rules out an
  // incremental; and one mode for all volumes.
  std::string resync_reason;
  std::set<tracker::CycleMode> modes;
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    const tracker::TargetReport& t = *FindTarget(volumes[i].report, job);
    tracker::CycleMode m = t.resync_required ? tracker::CycleMode::kResync
                           : t.needs_full   ? tracker::CycleMode::kFull
                                            : tracker::CycleMode::kIncremental;
    if (m == tracker::CycleMode::kIncremental) {
      std::string why = IncrementalBlocker(volumes[i], t, receiver->volumes[i]);
      if (!why.empty() && resync_reason.empty()) resync_reason = why;
    }
    modes.insert(m);
  }
  if (resync_reason.empty() && modes.size() > 1) {
    resync_reason = "the volumes of " + request.guest + " need different cycle modes";
  }

  // Freeze: one instant for every volume.
  if (result.tracker_running) {
    Status frozen;
    std::string reply = Ask(control, "freeze " + job + (resync_reason.empty() ? "" : " resync " + resync_reason),
                            &frozen);
    if (!frozen.ok()) return with_target(frozen);
    Status parsed = AttachFrozen(reply, volumes);
    if (!parsed.ok()) {
      Status ignored;
      Ask(control, "abort " + job, &ignored);  // the tracker must not keep the cycle frozen
      return parsed;
    }
  } else {
    for (SourceVolume& v : volumes) {
      if (!resync_reason.empty()) BLKREP_RETURN_IF_ERROR(v.journal->RequireResync(job, resync_reason));
      BLKREP_ASSIGN_OR_RETURN(v.frozen, v.journal->Freeze(job));
    }
  }
  auto finish = [&](bool commit) -> Status {
    if (result.tracker_running) {
      Status s;
      Ask(control, std::string(commit ? "commit " : "abort ") + job, &s);
      return s;
    }
    Status first;
    for (SourceVolume& v : volumes) {
      Status s = commit ? v.journal->Commit(job, v.frozen.epoch) : v.journal->Abort(job, v.frozen.epoch);
      if (!s.ok() && first.ok()) first = s;
    }
    return first;
  };

  std::vector<shipper::VolumeSource> sources;
  proto::CycleMode mode = WireMode(volumes.front().frozen.mode);
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    SourceVolume& v = volumes[i];
    if (WireMode(v.frozen.mode) != mode) {
      (void)finish(false);
      return Status::Aborted("the volumes of " + request.guest + " froze in different cycle modes; retry");
    }
    shipper::VolumeSource s;
    s.name = v.name;
    s.path = v.path;
    s.size_bytes = v.size_bytes;
    s.block_size_bytes = v.block_size_bytes;
    s.epoch = v.frozen.epoch;
    s.base_epoch = mode == proto::CYCLE_MODE_INCREMENTAL ? receiver->volumes[i].committed_epoch() : 0;
    s.blocks = std::move(v.frozen.blocks);
    s.cow = v.cow.get();
    sources.push_back(std::move(s));
  }
  result.mode = mode == proto::CYCLE_MODE_FULL ? "full" : mode == proto::CYCLE_MODE_RESYNC ? "resync" : "incremental";
  std::uint64_t cycle_id = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  Status shipped = session.ShipCycle(cycle_id, mode, sources, *receiver, request.ship, &result.stats);
  result.blocks_sent = result.stats.data_blocks + result.stats.zero_blocks + result.stats.kept_blocks;
  if (!shipped.ok()) {
    (void)finish(false);
    return with_target(shipped);
  }
  session.Close();
  Status finished = connection->Finish();
  // The replica holds the cycle: make it clean on the source. Should this
  // fail, the next cycle ships a superset (the replica's epoch is accepted).
  BLKREP_RETURN_IF_ERROR(finish(true).WithContext("the replica committed the cycle, but the source could not"));
  if (!finished.ok()) return finished;
  return result;
}

std::map<std::string, std::string> ResyncRequiredReasons(const std::string& state_dir, const std::string& guest,
                                                         const std::vector<std::string>& jobs) {
  std::map<std::string, std::string> reasons;
  Result<std::vector<SourceVolume>> volumes = DiscoverVolumes(state_dir, guest);
  if (!volumes.ok()) return reasons;
  for (const SourceVolume& v : *volumes) {
    for (const std::string& job : jobs) {
      if (reasons.count(job)) continue;  // the first volume that says so
      const tracker::TargetReport* t = FindTarget(v.report, job);
      if (t && t->resync_required) {
        reasons[job] = v.name + ": " + t->resync_reason;
      } else if (!t && v.report.resync_required) {
        // A journal that lost the target knows nothing of it.
        reasons[job] = v.name + ": " +
                       (v.report.resync_reason.empty() ? "the journal requires a resync" : v.report.resync_reason);
      }
    }
  }
  return reasons;
}

}  // namespace blkrep::jobs
