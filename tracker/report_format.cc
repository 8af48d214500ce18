#include "tracker/report_format.h"

#include <algorithm>

#include "core/json.h"
#include "core/units.h"

namespace blkrep::tracker {
namespace {

void WriteRanges(core::JsonWriter& json, const DirtyBitmap& bits) {
  json.BeginArray();
  bits.ForEachRun(0, bits.block_count(), [&](std::uint64_t first, std::uint64_t count) {
    json.BeginArray().Uint(first).Uint(count).EndArray();
  });
  json.EndArray();
}

void NullableCycle(core::JsonWriter& json, std::uint64_t cycle) {
  if (cycle == 0) json.Null();
  else json.Uint(cycle);
}

}  // namespace

std::string GuestReportJson(const GuestReport& report) {
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
  json.Key("resync_reason").StringOrNull(reason);
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
    json.Key("resync_reason").StringOrNull(v.resync_reason);
    json.Key("journal_file").String(v.path);
    json.Key("journal_bytes").Uint(v.journal_bytes);
    json.Key("journal_cap_bytes").Uint(v.cap_bytes);
    json.Key("generation").Uint(v.generation);
    json.Key("epoch").Uint(v.epoch);
    json.Key("extent_size").Uint(v.extent_size_bytes);
    json.Key("activity_log_extents").BeginArray();
    for (auto extent : v.hot_extents) json.Uint(extent);
    json.EndArray();
    json.Key("torn_tail").StringOrNull(v.torn_tail);
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
      json.Key("resync_reason").StringOrNull(t.resync_reason);
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

std::string GuestReportText(const GuestReport& report) {
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

}  // namespace blkrep::tracker
