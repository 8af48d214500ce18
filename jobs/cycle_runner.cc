#include "jobs/cycle_runner.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
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
  if (r.replaced()) return "the replica of " + v.name + " is not the file the last cycle committed to (replaced)";
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

// The guest's volumes, and their journals opened here when no tracker
// runs (sealed again on destruction).
struct Source {
  std::string job;
  std::string control;
  bool tracker_running = false;
  std::vector<SourceVolume> volumes;
  // Targets missing from a journal before this run added them (the journal
  // lost them): volume name -> the journal's resync reason.
  std::map<std::string, std::string> lost_target;

  Source() = default;
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;
  ~Source() {
    for (SourceVolume& v : volumes) {
      if (!v.journal) continue;
      Result<core::VolumeIdentity> id = IdentityOf(v.path);
      if (id.ok()) (void)v.journal->Close(*id);
    }
  }

  // Re-reads every journal's report.
  Status Reload() {
    for (SourceVolume& v : volumes) {
      if (v.journal) {
        v.report = v.journal->Report();
      } else {
        BLKREP_ASSIGN_OR_RETURN(v.report, tracker::Journal::Read(core::PosixFileSystemInstance(), v.journal_path));
      }
    }
    return Status::Ok();
  }

  // Marks the job resync-required in every journal.
  Status RequireResync(const std::string& job, const std::string& reason) {
    if (tracker_running) {
      Status s;
      Ask(control, "require-resync " + job + " " + reason, &s);
      return s;
    }
    for (SourceVolume& v : volumes) BLKREP_RETURN_IF_ERROR(v.journal->RequireResync(job, reason));
    return Status::Ok();
  }
};

// Finds the guest's volumes, asks a running tracker or opens the journals,
// and (when `add_target`) makes the job a target of every journal.
Status OpenSource(const CycleRequest& request, bool add_target, Source& source) {
  const std::string& job = request.job;
  source.job = job;
  source.control = tracker::ControlSocketPath(request.state_dir, request.guest);
  BLKREP_ASSIGN_OR_RETURN(source.volumes, DiscoverVolumes(request.state_dir, request.guest));
  for (const SourceVolume& v : source.volumes) {
    if (!FindTarget(v.report, job) && v.report.resync_required) source.lost_target[v.name] = v.report.resync_reason;
  }
  // A running tracker, or the journals opened here?
  Status asked;
  Ask(source.control, add_target ? "add-target " + job : "ping", &asked);
  source.tracker_running = asked.code() != core::Code::kNotFound;
  if (source.tracker_running && !asked.ok() && add_target) return asked;
  if (!source.tracker_running) {
    for (SourceVolume& v : source.volumes) {
      BLKREP_ASSIGN_OR_RETURN(core::VolumeIdentity id, IdentityOf(v.path));
      tracker::VolumeDescriptor d{request.guest, v.name, v.path, id};
      auto journal = tracker::Journal::Open(core::PosixFileSystemInstance(), v.journal_path, d, {});
      if (!journal.ok()) {
        if (journal.status().code() == core::Code::kAborted) {
          return Status::Aborted("journal " + v.journal_path + " is locked, but no tracker answers on " +
                                 source.control);
        }
        return journal.status();
      }
      v.journal = std::move(journal).value();
      if (add_target && !FindTarget(v.journal->Report(), job)) BLKREP_RETURN_IF_ERROR(v.journal->AddTarget(job));
    }
  }
  BLKREP_RETURN_IF_ERROR(source.Reload());
  for (SourceVolume& v : source.volumes) {
    if (!FindTarget(v.report, job) && add_target && v.report.resync_required) {
      // A degraded journal keeps the new target in the tracker's memory
      // only: what its file says of it is that nothing can be trusted.
      tracker::TargetReport t;
      t.name = job;
      t.resync_required = true;
      t.resync_reason = v.report.resync_reason.empty() ? "the journal requires a resync" : v.report.resync_reason;
      v.report.targets.push_back(std::move(t));
    }
    if (!FindTarget(v.report, job)) {
      if (add_target) return Status::Internal("job " + job + " is not a target of " + v.journal_path);
      return Status::NotFound("job " + job + " has no cycle on volume " + v.name + " (journal " + v.journal_path +
                              ")");
    }
  }
  return Status::Ok();
}

// Reads the tracker's "changed JOB" reply into the job's target reports.
Status ParseChanged(const std::string& reply, const std::string& job, std::vector<SourceVolume>& volumes) {
  std::istringstream in(reply);
  std::string line;
  std::getline(in, line);  // ok
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string tag, name;
    std::uint64_t blocks = 0;
    words >> tag >> name >> blocks;
    auto it = std::find_if(volumes.begin(), volumes.end(), [&](const SourceVolume& v) { return v.name == name; });
    if (tag != "volume" || it == volumes.end() || blocks != it->report.dirty.block_count()) {
      return Status::Internal("tracker: unexpected reply to changed: " + line.substr(0, 200));
    }
    tracker::DirtyBitmap dirty(blocks);
    for (std::uint64_t first = 0, count = 0; words >> first >> count;) {
      if (first > blocks || count > blocks - first) return Status::Internal("tracker: a changed range past the end");
      dirty.SetRange(first, count);
    }
    for (tracker::TargetReport& t : it->report.targets) {
      if (t.name == job) t.dirty = std::move(dirty);
    }
  }
  return Status::Ok();
}

// A connected session with the job's receiver.
struct Link {
  proto::TargetSpec spec;
  std::unique_ptr<proto::Connection> connection;
  std::unique_ptr<proto::RateLimitedStream> limited;
  std::unique_ptr<shipper::ShipperSession> session;
  shipper::ReceiverState receiver;

  // `s` with what the transport knows (the receiver's exit, its address).
  Status WithTarget(const Status& s) {
    Status finished = connection->Finish();
    if (!finished.ok() && s.message().find("peer:") == std::string::npos) return s.WithContext(finished.message());
    return s.WithContext("target " + proto::DescribeTarget(spec));
  }
};

Status Connect(const CycleRequest& request, const std::vector<SourceVolume>& volumes, Link& link) {
  BLKREP_ASSIGN_OR_RETURN(link.spec, proto::ParseTargetArgs(request.target_args));
  BLKREP_ASSIGN_OR_RETURN(link.connection, proto::ConnectTarget(link.spec));
  proto::Stream* stream = link.connection.get();
  if (request.rate_mbps > 0) {
    link.limited = std::make_unique<proto::RateLimitedStream>(*link.connection, request.rate_mbps * 1e6);
    stream = link.limited.get();
  }
  link.session = std::make_unique<shipper::ShipperSession>(*stream);
  std::vector<proto::VolumeInfo> infos;
  for (const SourceVolume& v : volumes) {
    proto::VolumeInfo info;
    info.set_name(v.name);
    info.set_size_bytes(v.size_bytes);
    info.set_block_size_bytes(v.block_size_bytes);
    infos.push_back(info);
  }
  Result<shipper::ReceiverState> receiver = link.session->Hello(request.guest, request.job, infos);
  if (!receiver.ok()) return link.WithTarget(receiver.status());
  link.receiver = std::move(*receiver);
  return Status::Ok();
}

// Tells request.on_started (if any) the cycle's mode and volumes.
void NotifyStarted(const CycleRequest& request, const std::string& mode,
                   const std::vector<shipper::VolumeSource>& sources) {
  if (!request.on_started) return;
  std::vector<std::pair<std::string, std::uint64_t>> started;
  for (const shipper::VolumeSource& s : sources) started.emplace_back(s.name, s.blocks.block_count());
  request.on_started(mode, started);
}

// Marks the receiver's diverged blocks of `v` dirty on the source.
Status MarkDiverged(Source& source, SourceVolume& v, const proto::ReplicaState& r) {
  if (r.diverged_size() == 0) return Status::Ok();
  const std::uint64_t bs = v.block_size_bytes;
  if (!source.tracker_running) {
    for (int k = 0; k + 1 < r.diverged_size(); k += 2) {
      std::uint64_t offset = r.diverged(k) * bs;
      std::uint64_t length = std::min<std::uint64_t>(r.diverged(k + 1) * bs, v.size_bytes - offset);
      BLKREP_RETURN_IF_ERROR(v.journal->MarkDirty(offset, length));
    }
    return Status::Ok();
  }
  // Control requests are lines of at most 1 KiB: a few ranges per request.
  constexpr int kRangesPerRequest = 24;
  for (int k = 0; k + 1 < r.diverged_size(); k += 2 * kRangesPerRequest) {
    std::string request = "mark-dirty " + source.job + " " + v.name;
    for (int j = k; j + 1 < r.diverged_size() && j < k + 2 * kRangesPerRequest; j += 2) {
      request += " " + std::to_string(r.diverged(j)) + " " + std::to_string(r.diverged(j + 1));
    }
    Status marked;
    Ask(source.control, request, &marked);
    BLKREP_RETURN_IF_ERROR(marked);
  }
  return Status::Ok();
}

std::uint64_t NewCycleId() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

}  // namespace

Result<CycleResult> RunCycle(const CycleRequest& request) {
  const std::string& job = request.job;
  Source source;
  BLKREP_RETURN_IF_ERROR(OpenSource(request, /*add_target=*/true, source));
  std::vector<SourceVolume>& volumes = source.volumes;
  CycleResult result;
  result.tracker_running = source.tracker_running;
  for (const auto& v : volumes) result.volumes.push_back(v.name);

  Link link;
  BLKREP_RETURN_IF_ERROR(Connect(request, volumes, link));
  const shipper::ReceiverState& receiver = link.receiver;

  // The mode: what the journal says, unless the replica rules out an
  // incremental; and one mode for all volumes.
  std::string resync_reason;
  std::set<tracker::CycleMode> modes;
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    const tracker::TargetReport& t = *FindTarget(volumes[i].report, job);
    const proto::ReplicaState& r = receiver.volumes[i];
    tracker::CycleMode m = t.resync_required ? tracker::CycleMode::kResync
                           : t.needs_full   ? tracker::CycleMode::kFull
                                            : tracker::CycleMode::kIncremental;
    if (m == tracker::CycleMode::kResync && resync_reason.empty()) resync_reason = volumes[i].name + ": " + t.resync_reason;
    if (m == tracker::CycleMode::kIncremental) {
      std::string why = IncrementalBlocker(volumes[i], t, r);
      if (!why.empty() && resync_reason.empty()) resync_reason = why;
    }
    if (m == tracker::CycleMode::kFull && r.exists() && !r.incomplete() && r.size_bytes() == volumes[i].size_bytes &&
        resync_reason.empty()) {
      // A replica the journal shares no cycle with: compare, do not copy.
      auto lost = source.lost_target.find(volumes[i].name);
      resync_reason = "no common committed cycle: the journal of " + volumes[i].name +
                      (lost != source.lost_target.end() ? " lost the job (" + lost->second + ")"
                                                        : " has no cycle of the job") +
                      ", the replica is at cycle " + std::to_string(r.committed_epoch());
    }
    modes.insert(m);
  }
  if (resync_reason.empty() && modes.size() > 1) {
    resync_reason = "the volumes of " + request.guest + " need different cycle modes";
  }
  result.resync_reason = resync_reason;
  if (!resync_reason.empty() && !request.allow_resync) {
    // Not now: say why on the source, so status shows it, and stop.
    link.session->Close();
    (void)link.connection->Finish();
    BLKREP_RETURN_IF_ERROR(source.RequireResync(job, resync_reason));
    result.mode = "resync";
    result.resync_deferred = true;
    return result;
  }

  // A replica that changed on its side after its committed cycle (the old
  // source of a reversed job): those blocks go into this cycle too, marked
  // dirty before the freeze like writes, so a cut cycle keeps them.
  if (resync_reason.empty()) {
    for (std::size_t i = 0; i < volumes.size(); ++i) {
      BLKREP_RETURN_IF_ERROR(MarkDiverged(source, volumes[i], receiver.volumes[i]));
    }
  }

  // Freeze: one instant for every volume.
  if (source.tracker_running) {
    Status frozen;
    std::string reply =
        Ask(source.control, "freeze " + job + (resync_reason.empty() ? "" : " resync " + resync_reason), &frozen);
    if (!frozen.ok()) return link.WithTarget(frozen);
    Status parsed = AttachFrozen(reply, volumes);
    if (!parsed.ok()) {
      Status ignored;
      Ask(source.control, "abort " + job, &ignored);  // the tracker must not keep the cycle frozen
      return parsed;
    }
  } else {
    for (SourceVolume& v : volumes) {
      if (!resync_reason.empty()) BLKREP_RETURN_IF_ERROR(v.journal->RequireResync(job, resync_reason));
      BLKREP_ASSIGN_OR_RETURN(v.frozen, v.journal->Freeze(job));
    }
  }
  auto finish = [&](bool commit) -> Status {
    if (source.tracker_running) {
      Status s;
      Ask(source.control, std::string(commit ? "commit " : "abort ") + job, &s);
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
    // A staged cycle applies on top of the replica's committed cycle.
    s.base_epoch = mode != proto::CYCLE_MODE_FULL ? receiver.volumes[i].committed_epoch() : 0;
    s.blocks = std::move(v.frozen.blocks);
    s.cow = v.cow.get();
    sources.push_back(std::move(s));
  }
  if (mode == proto::CYCLE_MODE_RESYNC && (link.session->features() & proto::kFeatureChecksumResync) == 0) {
    // A receiver that cannot compare hashes (an older blkrep): the resync
    // is a full cycle, every frozen block sent and written in place.
    mode = proto::CYCLE_MODE_FULL;
    for (shipper::VolumeSource& s : sources) s.base_epoch = 0;
    result.resync_reason += " (the receiver cannot compare block hashes: every block is sent)";
  }
  result.mode = mode == proto::CYCLE_MODE_FULL ? "full" : mode == proto::CYCLE_MODE_RESYNC ? "resync" : "incremental";
  NotifyStarted(request, result.mode, sources);
  Status shipped = link.session->ShipCycle(NewCycleId(), mode, sources, receiver, request.ship, &result.stats);
  result.blocks_sent = result.stats.data_blocks + result.stats.zero_blocks + result.stats.kept_blocks;
  if (request.stats_out != nullptr) *request.stats_out = result.stats;
  if (!shipped.ok()) {
    (void)finish(false);
    return link.WithTarget(shipped);
  }
  link.session->Close();
  Status finished = link.connection->Finish();
  // The replica holds the cycle: make it clean on the source. Should this
  // fail, the next cycle ships a superset (the replica's epoch is accepted).
  BLKREP_RETURN_IF_ERROR(finish(true).WithContext("the replica committed the cycle, but the source could not"));
  if (!finished.ok()) return finished;
  return result;
}

Result<VerifyResult> RunVerify(const CycleRequest& request) {
  const std::string& job = request.job;
  Source source;
  BLKREP_RETURN_IF_ERROR(OpenSource(request, /*add_target=*/false, source));
  VerifyResult result;
  result.tracker_running = source.tracker_running;
  for (const SourceVolume& v : source.volumes) {
    const tracker::TargetReport& t = *FindTarget(v.report, job);
    if (t.last_cycle == 0) {
      return Status::NotFound("job " + job + " has not committed a cycle of volume " + v.name + " yet: nothing to verify");
    }
    result.resync_required_before = result.resync_required_before || t.resync_required;
  }
  Link link;
  BLKREP_RETURN_IF_ERROR(Connect(request, source.volumes, link));
  std::vector<shipper::VolumeSource> sources;
  for (const SourceVolume& v : source.volumes) {
    shipper::VolumeSource s;
    s.name = v.name;
    s.path = v.path;
    s.size_bytes = v.size_bytes;
    s.block_size_bytes = v.block_size_bytes;
    s.blocks = tracker::DirtyBitmap(v.report.dirty.block_count(), /*all_set=*/true);
    sources.push_back(std::move(s));
  }
  NotifyStarted(request, "verify", sources);
  Status compared =
      link.session->ShipCycle(NewCycleId(), proto::CYCLE_MODE_VERIFY, sources, link.receiver, request.ship, &result.stats);
  if (!compared.ok()) return link.WithTarget(compared);
  link.session->Close();
  BLKREP_RETURN_IF_ERROR(link.connection->Finish());
  // What changed for the job up to now (read after the comparison, so it
  // covers every write the comparison could have seen) may differ. A
  // running tracker knows it exactly; its files only up to whole hot
  // activity-log extents.
  BLKREP_RETURN_IF_ERROR(source.Reload());
  if (source.tracker_running) {
    Status asked;
    std::string reply = Ask(source.control, "changed " + job, &asked);
    if (asked.ok()) BLKREP_RETURN_IF_ERROR(ParseChanged(reply, job, source.volumes));
  }
  for (std::size_t i = 0; i < source.volumes.size(); ++i) {
    const SourceVolume& v = source.volumes[i];
    const tracker::TargetReport* t = FindTarget(v.report, job);
    VerifyVolume out;
    out.name = v.name;
    out.blocks = sources[i].blocks.block_count();
    out.block_size_bytes = v.block_size_bytes;
    tracker::DirtyBitmap differing = result.stats.mismatched[i];
    // A journal that lost the job knows nothing of what changed: every
    // difference is reported (resync_required_before says why).
    if (t == nullptr) result.resync_required_before = true;
    tracker::DirtyBitmap changed = t != nullptr ? t->dirty : tracker::DirtyBitmap();
    if (changed.block_count() == differing.block_count()) {
      out.changed_blocks = changed.Count();
      for (const auto& [first, count] : changed.Runs()) differing.ClearRange(first, count);
    }
    out.differing = differing.Runs();
    out.differing_blocks = differing.Count();
    result.differing_blocks += out.differing_blocks;
    result.volumes.push_back(std::move(out));
  }
  result.compared_blocks = result.stats.compared_blocks;
  if (result.differing_blocks > 0) {
    BLKREP_RETURN_IF_ERROR(source.RequireResync(
        job, "verify found " + std::to_string(result.differing_blocks) + " blocks that differ from the replica"));
  }
  return result;
}

Status RequireResync(const std::string& state_dir, const std::string& guest, const std::string& job,
                     const std::string& reason) {
  CycleRequest request;
  request.state_dir = state_dir;
  request.guest = guest;
  request.job = job;
  Source source;
  BLKREP_RETURN_IF_ERROR(OpenSource(request, /*add_target=*/true, source));
  return source.RequireResync(job, reason);
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
