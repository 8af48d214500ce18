// `blkrep journal inspect` and `blkrep journal write`.
//
// inspect reads the journal files of a guest (never writing them) and
// reports what CONTRACT.md promises. write is a tool for demonstrations and
// tests until the NBD tracker exists: it performs writes on a volume through
// the tracking layer, exactly as the tracker will, one journal session per
// invocation.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "core/json.h"
#include "core/units.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tracker/control_socket.h"
#include "tracker/journal.h"
#include "tracker/journal_format.h"
#include "tracker/layout.h"
#include "tracker/report_format.h"
#include "tracker/tracked_device.h"

namespace blkrep::tools {
namespace {

using core::Result;
using core::Status;

constexpr const char* kInspectUsage = "usage: blkrep journal inspect GUEST [--json] [--state-dir DIR]";
constexpr const char* kWriteUsage =
    "usage: blkrep journal write GUEST NAME=VOLUME --offset SIZE --length SIZE "
    "[--pattern BYTE | --zero | --trim] [--count N] [--block-size SIZE] [--state-dir DIR]";

using tracker::GuestReport;

Result<GuestReport> ReadGuest(const std::string& state_dir, const std::string& guest) {
  if (!tracker::journal_format::IsValidName(guest)) {
    return Status::InvalidArgument("invalid guest name '" + guest + "'");
  }
  core::FileSystem& fs = core::PosixFileSystemInstance();
  std::string dir = tracker::JournalDir(state_dir, guest);
  auto names = fs.List(dir);
  if (!names.ok()) {
    if (names.status().code() == core::Code::kNotFound) {
      return Status::NotFound("no journal for guest " + guest + " under " + state_dir);
    }
    return names.status();
  }
  std::vector<std::string> files;
  const std::string suffix = tracker::kJournalSuffix;
  for (const auto& name : *names) {
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      files.push_back(dir + "/" + name);
    }
  }
  if (files.empty()) return Status::NotFound("no journal for guest " + guest + " in " + dir);
  std::sort(files.begin(), files.end());
  GuestReport report{guest, {}};
  for (const auto& file : files) {
    BLKREP_ASSIGN_OR_RETURN(tracker::JournalReport volume, tracker::Journal::Read(fs, file));
    if (volume.volume_name.empty()) {
      // A journal too corrupt to name its volume: name it after its file.
      std::string base = file.substr(dir.size() + 1);
      volume.volume_name = base.substr(0, base.size() - suffix.size());
    }
    report.volumes.push_back(std::move(volume));
  }
  return report;
}

int Inspect(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"state-dir"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kInspectUsage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(kInspectUsage));
  const std::string& guest = args->positional[0];
  if (tracker::journal_format::IsValidName(guest)) {
    // A running tracker answers for its journals.
    auto live = tracker::AskControl(tracker::ControlSocketPath(StateDir(*args), guest),
                                    args->Flag("json") ? "inspect json" : "inspect text");
    if (live.ok() && live->rfind("error:", 0) != 0) {
      std::fwrite(live->data(), 1, live->size(), stdout);
      return kExitOk;
    }
  }
  auto report = ReadGuest(StateDir(*args), guest);
  if (!report.ok()) return ReportError(report.status());
  std::string text = args->Flag("json") ? tracker::GuestReportJson(*report) : tracker::GuestReportText(*report);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return kExitOk;
}

int Write(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"state-dir", "offset", "length", "pattern", "count", "block-size"},
                        {"zero", "trim"});
  if (!args.ok()) return ReportError(args.status().WithContext(kWriteUsage));
  if (args->positional.size() != 2 || !args->Value("offset") || !args->Value("length")) {
    return ReportError(Status::InvalidArgument(kWriteUsage));
  }
  const std::string& guest = args->positional[0];
  auto named = ParseNameEqualsVolume(args->positional[1]);
  if (!named.ok()) return ReportError(named.status());
  auto offset = core::ParseSize(*args->Value("offset"));
  auto length = core::ParseSize(*args->Value("length"));
  if (!offset.ok()) return ReportError(offset.status().WithContext("--offset"));
  if (!length.ok()) return ReportError(length.status().WithContext("--length"));
  std::uint64_t count = 1;
  if (auto c = args->Value("count")) {
    auto parsed = core::ParseSize(*c);
    if (!parsed.ok() || *parsed == 0) return ReportError(Status::InvalidArgument("--count must be a positive number"));
    count = *parsed;
  }
  int pattern = 0xA5;
  if (auto p = args->Value("pattern")) {
    auto parsed = core::ParseSize(*p);
    if (!parsed.ok() || *parsed > 255) return ReportError(Status::InvalidArgument("--pattern must be 0-255"));
    pattern = static_cast<int>(*parsed);
  }
  if (args->Flag("zero") && args->Flag("trim")) {
    return ReportError(Status::InvalidArgument("--zero and --trim exclude each other"));
  }
  tracker::JournalOptions options;
  if (auto b = args->Value("block-size")) {
    auto parsed = core::ParseSize(*b);
    if (!parsed.ok() || *parsed > 0xFFFFFFFFULL) return ReportError(Status::InvalidArgument("bad --block-size"));
    options.block_size_bytes = static_cast<std::uint32_t>(*parsed);
  }
  if (*length > (std::uint64_t{32} << 20)) {
    return ReportError(Status::InvalidArgument("--length is capped at 32M per write"));
  }

  auto device = core::FileBlockDevice::Open(named->second, core::FileBlockDeviceOptions{});
  if (!device.ok()) return ReportError(device.status());
  auto identity = (*device)->Identity();
  if (!identity.ok()) return ReportError(identity.status());
  if (*offset > identity->size_bytes || *length > identity->size_bytes - *offset ||
      count - 1 > (identity->size_bytes - *offset - *length) / std::max<std::uint64_t>(*length, 1)) {
    return ReportError(Status::InvalidArgument("the writes reach past the end of " + named->second +
                                               " (" + std::to_string(identity->size_bytes) + " bytes)"));
  }
  tracker::VolumeDescriptor volume{guest, named->first, named->second, *identity};
  std::string state_dir = StateDir(*args);
  auto journal = tracker::Journal::Open(core::PosixFileSystemInstance(),
                                        tracker::JournalPath(state_dir, guest, named->first), volume, options);
  if (!journal.ok()) return ReportError(journal.status());
  tracker::TrackedDevice tracked(**device, **journal);
  std::vector<std::byte> data(*length, static_cast<std::byte>(pattern));
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t at = *offset + i * *length;
    Status done = args->Flag("trim")   ? tracked.Trim(at, *length)
                  : args->Flag("zero") ? tracked.WriteZeroes(at, *length, false)
                                       : tracked.Write(at, data);
    if (!done.ok()) return ReportError(done.WithContext("write to " + named->second));
    // One line per acknowledged write, for tests that kill this process.
    std::printf("wrote %llu %llu\n", static_cast<unsigned long long>(at),
                static_cast<unsigned long long>(*length));
    std::fflush(stdout);
  }
  Status flushed = tracked.Flush();
  if (!flushed.ok()) return ReportError(flushed.WithContext("flush " + named->second));
  auto final_identity = (*device)->Identity();
  if (!final_identity.ok()) return ReportError(final_identity.status());
  Status closed = (*journal)->Close(*final_identity);
  if (!closed.ok()) return ReportError(closed);
  return kExitOk;
}

}  // namespace

int JournalCommand(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    return ReportError(Status::InvalidArgument("usage: blkrep journal (inspect|write) ..."));
  }
  std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "inspect") return Inspect(rest);
  if (argv[0] == "write") return Write(rest);
  return ReportError(Status::InvalidArgument("unknown journal subcommand '" + argv[0] + "'"));
}

}  // namespace blkrep::tools
