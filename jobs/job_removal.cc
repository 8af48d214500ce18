// Removing a job's replica and its journal targets; see job_removal.h.
#include "jobs/job_removal.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "proto/transport.h"
#include "shipper/shipper.h"
#include "tracker/control_socket.h"
#include "tracker/journal.h"
#include "tracker/layout.h"

namespace blkrep::jobs {

using core::Result;
using core::Status;

namespace {

// The journal files of `guest`, sorted; empty when there are none.
Result<std::vector<std::string>> JournalFiles(const std::string& state_dir, const std::string& guest) {
  std::string dir = tracker::JournalDir(state_dir, guest);
  std::vector<std::string> paths;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::string p = entry.path().string();
    if (p.ends_with(tracker::kJournalSuffix)) paths.push_back(p);
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Status::IoError("list journals in " + dir + ": " + ec.message());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

Status RemoveReplica(const std::string& state_dir, const std::string& guest, const std::string& job,
                     const std::vector<std::string>& target_args) {
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::string> journals, JournalFiles(state_dir, guest));
  if (journals.empty()) {
    return Status::NotFound("guest " + guest + " has no journal under " + tracker::JournalDir(state_dir, guest) +
                            ": cannot name its volumes to the receiver");
  }
  std::vector<proto::VolumeInfo> volumes;
  for (const std::string& path : journals) {
    BLKREP_ASSIGN_OR_RETURN(tracker::JournalReport r, tracker::Journal::Read(core::PosixFileSystemInstance(), path));
    proto::VolumeInfo info;
    info.set_name(r.volume_name);
    info.set_size_bytes(r.volume_size_bytes);
    info.set_block_size_bytes(r.block_size_bytes);
    volumes.push_back(std::move(info));
  }
  BLKREP_ASSIGN_OR_RETURN(proto::TargetSpec spec, proto::ParseTargetArgs(target_args));
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<proto::Connection> connection, proto::ConnectTarget(spec));
  shipper::ShipperSession session(*connection);
  Status s = session.Hello(guest, job, volumes).status();
  if (s.ok()) s = session.RemoveGuest(job);
  session.Close();
  Status finished = connection->Finish();
  if (s.ok()) s = finished;
  else if (!finished.ok() && s.message().find("peer:") == std::string::npos) s = s.WithContext(finished.message());
  return s.WithContext("remove the replica on target " + proto::DescribeTarget(spec));
}

Status RemoveJobFromSource(const std::string& state_dir, const std::string& guest, const std::string& job) {
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::string> journals, JournalFiles(state_dir, guest));
  if (journals.empty()) return Status::Ok();
  std::string control = tracker::ControlSocketPath(state_dir, guest);
  Result<std::string> reply = tracker::AskControl(control, "remove-target " + job);
  if (reply.ok()) {
    if (reply->rfind("ok", 0) == 0) return Status::Ok();
    std::string text = *reply;
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    if (text.rfind("error: ", 0) == 0) text = text.substr(7);
    return Status::Aborted("tracker of guest " + guest + ": " + text);
  }
  if (reply.status().code() != core::Code::kNotFound) return reply.status();
  // No tracker: the journals themselves.
  for (const std::string& path : journals) {
    BLKREP_ASSIGN_OR_RETURN(tracker::JournalReport r, tracker::Journal::Read(core::PosixFileSystemInstance(), path));
    bool has = std::any_of(r.targets.begin(), r.targets.end(), [&](const auto& t) { return t.name == job; });
    if (!has) continue;
    core::FileBlockDeviceOptions o;
    o.read_only = true;
    BLKREP_ASSIGN_OR_RETURN(auto device, core::FileBlockDevice::Open(r.volume_path, o));
    BLKREP_ASSIGN_OR_RETURN(core::VolumeIdentity id, device->Identity());
    device.reset();
    tracker::VolumeDescriptor d{guest, r.volume_name, r.volume_path, id};
    auto journal = tracker::Journal::Open(core::PosixFileSystemInstance(), path, d, {});
    if (!journal.ok()) {
      if (journal.status().code() == core::Code::kAborted) {
        return Status::Aborted("journal " + path + " is locked, but no tracker answers on " + control);
      }
      return journal.status();
    }
    Status removed = (*journal)->RemoveTarget(job);
    if (removed.code() == core::Code::kNotFound) removed = Status::Ok();
    Status closed = (*journal)->Close(id);
    BLKREP_RETURN_IF_ERROR(removed);
    BLKREP_RETURN_IF_ERROR(closed);
  }
  return Status::Ok();
}

}  // namespace blkrep::jobs
