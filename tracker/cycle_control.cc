#include "tracker/cycle_control.h"

#include <algorithm>
#include <cstdlib>

#include <unistd.h>

#include <cstdio>
#include <sstream>

#include "core/file_system.h"
#include "tracker/journal_format.h"

namespace blkrep::tracker {

using core::Result;
using core::Status;

void WriteGate::Enter(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  // Up to a few stores (one per job with a frozen cycle); none usually.
  std::vector<std::shared_ptr<CowStore>> stores;
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !paused_; });
    ++in_flight_;
    if (stores_.empty()) return;
    for (const auto& [job, store] : stores_) stores.push_back(store);
  }
  for (const auto& store : stores) store->Preserve(volume_fd_, offset_bytes, length_bytes);
}

void WriteGate::Exit() {
  std::lock_guard lock(mu_);
  if (--in_flight_ == 0 && paused_) cv_.notify_all();
}

void WriteGate::Pause() {
  std::unique_lock lock(mu_);
  paused_ = true;
  cv_.wait(lock, [&] { return in_flight_ == 0; });
}

void WriteGate::Resume() {
  std::lock_guard lock(mu_);
  paused_ = false;
  cv_.notify_all();
}

void WriteGate::Attach(const std::string& job, std::shared_ptr<CowStore> store) {
  std::lock_guard lock(mu_);
  stores_[job] = std::move(store);
}

void WriteGate::Detach(const std::string& job) {
  std::lock_guard lock(mu_);
  stores_.erase(job);
}

namespace {

std::vector<std::string> Words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

std::string CycleControl::Handle(const std::string& request) {
  std::vector<std::string> w = Words(request);
  if (w.empty()) return "";
  std::lock_guard lock(mu_);
  const std::string& verb = w[0];
  if (verb != "add-target" && verb != "freeze" && verb != "commit" && verb != "abort" && verb != "require-resync" &&
      verb != "changed" && verb != "mark-dirty" && verb != "remove-target") {
    return "";
  }
  if (w.size() < 2 || !journal_format::IsValidName(w[1])) return "error: " + verb + " needs a job name\n";
  const std::string& job = w[1];
  Status s;
  // The rest of the line after "VERB JOB WORD": a reason.
  auto rest_after = [&](const std::string& prefix) {
    std::string reason = request.rfind(prefix, 0) == 0 ? request.substr(prefix.size()) : "";
    while (!reason.empty() && reason.front() == ' ') reason.erase(0, 1);
    while (!reason.empty() && (reason.back() == '\n' || reason.back() == '\r')) reason.pop_back();
    return reason;
  };
  if (verb == "add-target") {
    s = AddTarget(job);
  } else if (verb == "remove-target") {
    s = RemoveTarget(job);
  } else if (verb == "changed") {
    std::ostringstream reply;
    reply << "ok\n";
    for (const ControlledVolume& v : volumes_) {
      JournalReport report = v.journal->Report();
      const TargetReport* target = nullptr;
      for (const TargetReport& t : report.targets) {
        if (t.name == job) target = &t;
      }
      if (target == nullptr) return "error: job " + job + " is not a target of volume " + v.name + "\n";
      reply << "volume " << v.name << " " << target->dirty.block_count();
      for (const auto& [first, count] : target->dirty.Runs()) reply << " " << first << " " << count;
      reply << "\n";
    }
    return reply.str();
  } else if (verb == "mark-dirty") {
    // "mark-dirty JOB VOLUME FIRST COUNT [FIRST COUNT ...]": blocks the
    // job's replica changed on its side (diverged, after a failover), to be
    // shipped again; marked for every target, as a write would be.
    if (w.size() < 5 || w.size() % 2 != 1) return "error: usage: mark-dirty JOB VOLUME FIRST COUNT [FIRST COUNT ...]\n";
    auto it = std::find_if(volumes_.begin(), volumes_.end(), [&](const ControlledVolume& v) { return v.name == w[2]; });
    if (it == volumes_.end()) return "error: no volume " + w[2] + "\n";
    std::uint64_t bs = it->journal->block_size_bytes();
    std::uint64_t blocks = it->journal->block_count();
    for (std::size_t i = 3; i + 1 < w.size(); i += 2) {
      char* end1 = nullptr;
      char* end2 = nullptr;
      unsigned long long first = std::strtoull(w[i].c_str(), &end1, 10);
      unsigned long long count = std::strtoull(w[i + 1].c_str(), &end2, 10);
      if (*end1 != '\0' || *end2 != '\0' || count == 0 || first >= blocks || count > blocks - first) {
        return "error: mark-dirty: bad range " + w[i] + " " + w[i + 1] + " of volume " + it->name + "\n";
      }
      std::uint64_t offset = first * bs;
      std::uint64_t length = std::min<std::uint64_t>(count * bs, it->size_bytes - offset);
      s = it->journal->MarkDirty(offset, length);
      if (!s.ok()) break;
    }
  } else if (verb == "require-resync") {
    std::string reason = rest_after("require-resync " + job);
    if (reason.empty()) return "error: usage: require-resync JOB REASON\n";
    for (const ControlledVolume& v : volumes_) {
      s = v.journal->RequireResync(job, reason);
      if (!s.ok()) break;
    }
  } else if (verb == "freeze") {
    std::string reason;
    if (w.size() >= 3) {
      // "freeze JOB resync REASON...": the reason is the rest of the line.
      std::string prefix = "freeze " + job + " resync";
      if (w[2] != "resync" || request.rfind(prefix, 0) != 0) return "error: usage: freeze JOB [resync REASON]\n";
      reason = rest_after(prefix);
      if (reason.empty()) reason = "requested";
    }
    Result<std::string> reply = Freeze(job, reason);
    if (reply.ok()) return *reply;
    s = reply.status();
  } else {
    s = Finish(job, verb == "commit");
  }
  if (!s.ok()) return "error: " + s.ToString() + "\n";
  return "ok\n";
}

Status CycleControl::AddTarget(const std::string& job) {
  for (const ControlledVolume& v : volumes_) {
    JournalReport report = v.journal->Report();
    bool present = false;
    for (const TargetReport& t : report.targets) present = present || t.name == job;
    if (!present) BLKREP_RETURN_IF_ERROR(v.journal->AddTarget(job));
  }
  return Status::Ok();
}

Status CycleControl::RemoveTarget(const std::string& job) {
  // A cycle of the job still frozen (its shipper died) goes first.
  if (frozen_.count(job)) BLKREP_RETURN_IF_ERROR(Finish(job, false));
  for (const ControlledVolume& v : volumes_) {
    Status s = v.journal->RemoveTarget(job);
    if (!s.ok() && s.code() != core::Code::kNotFound) return s.WithContext("volume " + v.name);
  }
  return Status::Ok();
}

Result<std::string> CycleControl::Freeze(const std::string& job, const std::string& resync_reason) {
  // A cycle left frozen by a shipper that died is abandoned first.
  if (frozen_.count(job)) BLKREP_RETURN_IF_ERROR(Finish(job, false));
  for (const ControlledVolume& v : volumes_) {
    JournalReport report = v.journal->Report();
    for (const TargetReport& t : report.targets) {
      if (t.name == job && t.frozen_epoch) BLKREP_RETURN_IF_ERROR(v.journal->Abort(job, *t.frozen_epoch));
    }
  }
  std::string dir = state_dir_ + "/cow/" + guest_ + "/" + job;
  BLKREP_RETURN_IF_ERROR(core::PosixFileSystemInstance().CreateDirectories(dir));

  for (ControlledVolume& v : volumes_) v.gate->Pause();
  // From here on no write is in flight and none starts: this is the instant.
  Frozen frozen;
  std::ostringstream reply;
  reply << "ok\n";
  Status failed;
  std::vector<FrozenCycle> cycles;
  for (const ControlledVolume& v : volumes_) {
    if (!resync_reason.empty()) {
      failed = v.journal->RequireResync(job, resync_reason);
      if (!failed.ok()) break;
    }
    Result<FrozenCycle> cycle = v.journal->Freeze(job);
    if (!cycle.ok()) {
      failed = cycle.status().WithContext("volume " + v.name);
      break;
    }
    frozen.epochs.push_back(cycle->epoch);
    cycles.push_back(std::move(cycle).value());
    Result<std::unique_ptr<CowStore>> store =
        CowStore::Create(CowStorePath(state_dir_, guest_, job, v.name), v.journal->block_size_bytes(), v.size_bytes,
                         cycles.back().epoch, cycles.back().blocks, cow_cap_bytes_);
    if (!store.ok()) {
      failed = store.status();
      frozen.stores.push_back(nullptr);
      break;
    }
    frozen.stores.push_back(std::move(store).value());
  }
  if (failed.ok()) {
    for (std::size_t i = 0; i < volumes_.size(); ++i) volumes_[i].gate->Attach(job, frozen.stores[i]);
  }
  for (ControlledVolume& v : volumes_) v.gate->Resume();
  if (!failed.ok()) {
    for (std::size_t i = 0; i < frozen.epochs.size(); ++i) {
      (void)volumes_[i].journal->Abort(job, frozen.epochs[i]);
      if (i < frozen.stores.size() && frozen.stores[i]) ::unlink(frozen.stores[i]->path().c_str());
    }
    return failed;
  }
  for (std::size_t i = 0; i < volumes_.size(); ++i) {
    reply << "volume " << volumes_[i].name << ' ' << cycles[i].epoch << ' ' << CycleModeName(cycles[i].mode) << ' '
          << cycles[i].blocks.Count() << ' ' << frozen.stores[i]->path() << '\n';
  }
  frozen.since = std::chrono::steady_clock::now();
  frozen_[job] = std::move(frozen);
  return reply.str();
}

Status CycleControl::Finish(const std::string& job, bool commit) {
  auto it = frozen_.find(job);
  if (it == frozen_.end()) return Status::NotFound("no cycle of job " + job + " is frozen");
  Frozen frozen = std::move(it->second);
  frozen_.erase(it);
  Status result;
  for (std::size_t i = 0; i < volumes_.size(); ++i) {
    volumes_[i].gate->Detach(job);
    if (frozen.stores[i]) {
      // A shipper still reading an abandoned cycle must not ship it.
      if (!commit) frozen.stores[i]->Abandon();
      ::unlink(frozen.stores[i]->path().c_str());
    }
    Status s = commit ? volumes_[i].journal->Commit(job, frozen.epochs[i])
                      : volumes_[i].journal->Abort(job, frozen.epochs[i]);
    if (!s.ok() && result.ok()) result = s.WithContext("volume " + volumes_[i].name);
  }
  return result;
}

void CycleControl::AbortAll() {
  std::lock_guard lock(mu_);
  while (!frozen_.empty()) (void)Finish(frozen_.begin()->first, false);
}

int CycleControl::AbortOrphans(std::chrono::steady_clock::duration grace) {
  std::lock_guard lock(mu_);
  std::vector<std::string> orphans;
  auto now = std::chrono::steady_clock::now();
  for (const auto& [job, frozen] : frozen_) {
    if (now - frozen.since < grace) continue;
    bool held = false;
    for (const auto& store : frozen.stores) held = held || (store && store->HeldByAShipper());
    if (!held) orphans.push_back(job);
  }
  for (const std::string& job : orphans) {
    std::fprintf(stderr, "blkrep: warning: the shipper of job %s is gone; its cycle is aborted\n", job.c_str());
    (void)Finish(job, false);
  }
  return static_cast<int>(orphans.size());
}

}  // namespace blkrep::tracker
