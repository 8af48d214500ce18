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
#include "tracker/journal.h"
#include "tracker/journal_format.h"
#include "tracker/layout.h"
#include "tracker/tracked_device.h"

namespace blkrep::tools {
namespace {

using core::Result;
using core::Status;

constexpr const char* kInspectUsage = "usage: blkrep journal inspect GUEST [--json] [--state-dir DIR]";
constexpr const char* kWriteUsage =
    "usage: blkrep journal write GUEST NAME=VOLUME --offset SIZE --length SIZE "
    "[--pattern BYTE | --zero | --trim] [--count N] [--block-size SIZE] [--state-dir DIR]";

struct GuestReport {
  std::string guest;
  std::vector<tracker::JournalReport> volumes;
};

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

void WriteRanges(core::JsonWriter& json, const tracker::DirtyBitmap& bits) {
  json.BeginArray();
  bits.ForEachRun(0, bits.block_count(), [&](std::uint64_t first, std::uint64_t count) {
    json.BeginArray().Uint(first).Uint(count).EndArray();
  });
  json.EndArray();
}

void NullableString(core::JsonWriter& json, const std::string& text) {
  if (text.empty()) json.Null();
  else json.String(text);
}

void NullableCycle(core::JsonWriter& json, std::uint64_t cycle) {
  if (cycle == 0) json.Null();
  else json.Uint(cycle);
}

std::string InspectJson(const GuestReport& report) {
  bool clean = true, resync = false;
  std::string reason;
  for (const auto& v : report.volumes) {
    clean = clean && v.clean_close;
    if (v.resync_required && !resync) {
      resync = true;
      reason = v.volume_name + ": " + v.resync_reason;
    }
  }
  core::JsonWriter json(core::JsonStyle::kPretty);
  json.BeginObject();
  json.Key("guest").String(report.guest);
  json.Key("clean_close").Bool(clean);
  json.Key("resync_required").Bool(resync);
  json.Key("resync_reason");
  NullableString(json, reason);
  json.Key("files").BeginArray();
  for (const auto& v : report.volumes) json.String(v.path);
  json.EndArray();
  json.Key("volumes").BeginArray();
  for (const auto& v : report.volumes) {
    json.BeginObject();
    json.Key("name").String(v.volume_name);
    json.Key("path").String(v.volume_path);
    json.Key("size_bytes").Uint(v.volume_size_bytes);
    json.Key("block_size").Uint(v.block_size_bytes);
    json.Key("dirty_blocks").Uint(v.dirty.Count());
    json.Key("dirty_ranges");
    WriteRanges(json, v.dirty);
    json.Key("clean_close").Bool(v.clean_close);
    json.Key("resync_required").Bool(v.resync_required);
    json.Key("resync_reason");
    NullableString(json, v.resync_reason);
    json.Key("journal_file").String(v.path);
    json.Key("journal_bytes").Uint(v.journal_bytes);
    json.Key("journal_cap_bytes").Uint(v.cap_bytes);
    json.Key("generation").Uint(v.generation);
    json.Key("epoch").Uint(v.epoch);
    json.Key("extent_size").Uint(v.extent_size_bytes);
    json.Key("activity_log_extents").BeginArray();
    for (auto extent : v.hot_extents) json.Uint(extent);
    json.EndArray();
    json.Key("torn_tail");
    NullableString(json, v.torn_tail);
    json.Key("targets").BeginArray();
    for (const auto& t : v.targets) {
      json.BeginObject();
      json.Key("name").String(t.name);
      json.Key("dirty_blocks").Uint(t.dirty_blocks);
      json.Key("dirty_ranges");
      WriteRanges(json, t.dirty);
      json.Key("last_cycle");
      NullableCycle(json, t.last_cycle);
      json.Key("needs_full").Bool(t.needs_full);
      json.Key("resync_required").Bool(t.resync_required);
      json.Key("resync_reason");
      NullableString(json, t.resync_reason);
      json.EndObject();
    }
    json.EndArray();
    json.EndObject();
  }
  json.EndArray();
  // Targets across the guest's volumes: blocks summed, the oldest cycle.
  std::vector<std::string> names;
  for (const auto& v : report.volumes) {
    for (const auto& t : v.targets) {
      if (std::find(names.begin(), names.end(), t.name) == names.end()) names.push_back(t.name);
    }
  }
  std::sort(names.begin(), names.end());
  json.Key("targets").BeginArray();
  for (const auto& name : names) {
    std::uint64_t blocks = 0, last_cycle = ~std::uint64_t{0};
    bool resync_target = false;
    for (const auto& v : report.volumes) {
      for (const auto& t : v.targets) {
        if (t.name != name) continue;
        blocks += t.dirty_blocks;
        last_cycle = std::min(last_cycle, t.last_cycle);
        resync_target = resync_target || t.resync_required;
      }
    }
    json.BeginObject();
    json.Key("name").String(name);
    json.Key("dirty_blocks").Uint(blocks);
    json.Key("last_cycle");
    NullableCycle(json, last_cycle);
    json.Key("resync_required").Bool(resync_target);
    json.EndObject();
  }
  json.EndArray();
  json.EndObject();
  return json.str() + "\n";
}

std::string InspectText(const GuestReport& report) {
  std::string out = "guest " + report.guest + "\n";
  for (const auto& v : report.volumes) {
    out += "\nvolume " + v.volume_name + "  " + v.volume_path + "\n";
    out += "  size            " + core::FormatSize(v.volume_size_bytes) + " in blocks of " +
           core::FormatSize(v.block_size_bytes) + "\n";
    out += "  journal         " + v.path + " (" + core::FormatSize(v.journal_bytes) + " of " +
           core::FormatSize(v.cap_bytes) + ", generation " + std::to_string(v.generation) + ")\n";
    out += std::string("  clean close     ") + (v.clean_close ? "yes" : "no") + "\n";
    out += std::string("  resync required ") +
           (v.resync_required ? "yes: " + v.resync_reason : std::string("no")) + "\n";
    if (!v.torn_tail.empty()) out += "  torn tail       dropped: " + v.torn_tail + "\n";
    std::uint64_t dirty = v.dirty.Count();
    out += "  dirty           " + std::to_string(dirty) + " blocks (" +
           core::FormatSize(dirty * v.block_size_bytes) + ")";
    std::string ranges;
    int shown = 0;
    v.dirty.ForEachRun(0, v.dirty.block_count(), [&](std::uint64_t first, std::uint64_t count) {
      if (shown++ < 8) ranges += " [" + std::to_string(first) + "+" + std::to_string(count) + "]";
    });
    if (shown > 8) ranges += " ...";
    out += ranges + "\n";
    for (const auto& t : v.targets) {
      out += "  target " + t.name + ": " + std::to_string(t.dirty_blocks) + " dirty blocks, last cycle " +
             (t.last_cycle ? std::to_string(t.last_cycle) : std::string("none")) +
             (t.resync_required ? ", resync required: " + t.resync_reason : std::string()) + "\n";
    }
  }
  return out;
}

int Inspect(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"state-dir"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kInspectUsage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(kInspectUsage));
  auto report = ReadGuest(StateDir(*args), args->positional[0]);
  if (!report.ok()) return ReportError(report.status());
  std::string text = args->Flag("json") ? InspectJson(*report) : InspectText(*report);
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
