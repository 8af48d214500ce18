// `blkrep recovery-points GUEST --replica-dir DIR [--json]`: the recovery
// points the receiver keeps for a guest (receiver/recovery_points.h), oldest
// first, the replica itself (latest) last. Reads without the guest lock.
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/names.h"
#include "receiver/recovery_points.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace blkrep::tools {

namespace {

constexpr const char* kUsage = "usage: blkrep recovery-points GUEST --replica-dir DIR [--json]";

std::string TimeText(std::uint64_t seconds) {
  if (seconds == 0) return "unknown";
  std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  char buf[32];
  if (::localtime_r(&t, &tm) == nullptr || std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
    return std::to_string(seconds);
  }
  return buf;
}

std::string Json(const std::string& guest, const std::vector<receiver::RecoveryPoint>& points) {
  core::JsonWriter w(core::JsonStyle::kPretty);
  w.BeginObject().Key("guest").String(guest).Key("points").BeginArray();
  for (const receiver::RecoveryPoint& p : points) {
    w.BeginObject().Key("id").Uint(p.id).Key("time");
    if (p.commit_time != 0) {
      w.Uint(p.commit_time);
    } else {
      w.Null();
    }
    w.Key("latest").Bool(p.latest).Key("undo_bytes").Uint(p.undo_bytes).Key("volumes").BeginArray();
    for (const receiver::PointVolume& v : p.volumes) {
      w.BeginObject()
          .Key("name").String(v.name)
          .Key("epoch").Uint(v.epoch)
          .Key("size_bytes").Uint(v.size_bytes)
          .Key("block_size").Uint(v.block_size_bytes)
          .EndObject();
    }
    w.EndArray().EndObject();
  }
  w.EndArray().EndObject();
  return w.str() + "\n";
}

std::string Text(const std::vector<receiver::RecoveryPoint>& points) {
  std::string out = "ID\tTime\tUndoBytes\tVolumes (name@epoch size)\n";
  for (const receiver::RecoveryPoint& p : points) {
    out += std::to_string(p.id) + (p.latest ? " (latest)" : "") + "\t" + TimeText(p.commit_time) + "\t" +
           std::to_string(p.undo_bytes) + "\t";
    for (std::size_t i = 0; i < p.volumes.size(); ++i) {
      const receiver::PointVolume& v = p.volumes[i];
      out += (i ? ", " : "") + v.name + "@" + std::to_string(v.epoch) + " " + std::to_string(v.size_bytes);
    }
    out += "\n";
  }
  return out;
}

}  // namespace

int RecoveryPointsCommand(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"replica-dir", "state-dir"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  std::optional<std::string> dir = args->Value("replica-dir");
  if (args->positional.size() != 1 || !dir || dir->empty()) {
    return ReportError(core::Status::InvalidArgument(kUsage));
  }
  const std::string& guest = args->positional[0];
  if (!core::IsValidName(guest)) return ReportError(core::Status::InvalidArgument("invalid guest name '" + guest + "'"));
  auto points = receiver::ListRecoveryPoints(*dir, guest);
  if (!points.ok()) return ReportError(points.status());
  std::string text = args->Flag("json") ? Json(guest, *points) : Text(*points);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return kExitOk;
}

}  // namespace blkrep::tools
