// `blkrep trace inspect FILE [--json] [--block-size SIZE] [--records|--no-records]`:
// what a write trace (`blkrep track --trace FILE`, docs/trace-format.md)
// holds.
//
// Design note. The file passes ReadTrace, the one gate for its bytes; a
// corrupt trace is the one-line error and exit 1, a torn tail is reported
// and is not an error. Per volume: requests and bytes by kind, and the
// distinct blocks of --block-size (default 64K, the tracker's default) they
// touched — what a replay at that block size would mark. The JSON report
// lists every record unless --no-records; the text report only with
// --records.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"
#include "core/units.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tracker/trace.h"

namespace blkrep::tools {
namespace {

using core::Status;

constexpr const char* kUsage =
    "usage: blkrep trace inspect FILE [--json] [--block-size SIZE] [--records | --no-records]";

const char* OpName(tracker::TraceOp op) {
  switch (op) {
    case tracker::TraceOp::kWrite: return "write";
    case tracker::TraceOp::kTrim: return "trim";
    case tracker::TraceOp::kWriteZeroes: return "write-zeroes";
  }
  return "?";
}

struct VolumeSummary {
  std::uint64_t writes = 0, trims = 0, write_zeroes = 0;
  std::uint64_t bytes_written = 0, bytes_trimmed = 0, bytes_zeroed = 0;
  std::uint64_t blocks_touched = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> block_spans;  // [first, last] per record
};

std::vector<VolumeSummary> Summarize(const tracker::Trace& trace, std::uint64_t block_size_bytes) {
  std::vector<VolumeSummary> out(trace.volumes.size());
  for (const auto& r : trace.records) {
    VolumeSummary& v = out[r.volume];  // DecodeTrace checked the index
    switch (r.op) {
      case tracker::TraceOp::kWrite: ++v.writes; v.bytes_written += r.length_bytes; break;
      case tracker::TraceOp::kTrim: ++v.trims; v.bytes_trimmed += r.length_bytes; break;
      case tracker::TraceOp::kWriteZeroes: ++v.write_zeroes; v.bytes_zeroed += r.length_bytes; break;
    }
    v.block_spans.emplace_back(r.offset_bytes / block_size_bytes,
                               (r.offset_bytes + r.length_bytes - 1) / block_size_bytes);
  }
  for (auto& v : out) {
    std::sort(v.block_spans.begin(), v.block_spans.end());
    std::uint64_t covered_end = 0;  // one past the last block counted
    bool any = false;
    for (auto [first, last] : v.block_spans) {
      const std::uint64_t from = any ? std::max(first, covered_end) : first;
      if (last + 1 > from) v.blocks_touched += last + 1 - from;
      covered_end = any ? std::max(covered_end, last + 1) : last + 1;
      any = true;
    }
    v.block_spans.clear();
  }
  return out;
}

int Inspect(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"block-size"}, {"json", "records", "no-records"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(kUsage));
  std::uint64_t block_size_bytes = 64 << 10;
  if (auto b = args->Value("block-size")) {
    auto size = core::ParseSize(*b);
    if (!size.ok() || *size < 512 || *size > (1ULL << 30) || (*size & (*size - 1)) != 0) {
      return ReportError(Status::InvalidArgument("--block-size must be a power of two from 512 to 1G, got '" + *b + "'"));
    }
    block_size_bytes = *size;
  }
  if (args->Flag("records") && args->Flag("no-records")) {
    return ReportError(Status::InvalidArgument("--records and --no-records exclude each other"));
  }
  const std::string& path = args->positional[0];
  auto trace = tracker::ReadTrace(path);
  if (!trace.ok()) return ReportError(trace.status());
  const std::vector<VolumeSummary> summary = Summarize(*trace, block_size_bytes);
  const std::uint64_t duration_ns = trace->records.empty() ? 0 : trace->records.back().time_ns;
  const bool json = args->Flag("json");
  const bool list_records = json ? !args->Flag("no-records") : args->Flag("records");

  if (json) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginObject();
    w.Key("file").String(path);
    w.Key("version").Uint(tracker::kTraceVersion);
    w.Key("started_unix_ns").Uint(trace->started_unix_ns);
    w.Key("record_count").Uint(trace->records.size());
    w.Key("duration_ns").Uint(duration_ns);
    w.Key("block_size").Uint(block_size_bytes);
    w.Key("torn_tail").StringOrNull(trace->torn_tail);
    w.Key("volumes").BeginArray();
    for (std::size_t i = 0; i < trace->volumes.size(); ++i) {
      const auto& v = trace->volumes[i];
      const auto& s = summary[i];
      w.BeginObject();
      w.Key("name").String(v.name);
      w.Key("size_bytes").Uint(v.size_bytes);
      w.Key("writes").Uint(s.writes);
      w.Key("trims").Uint(s.trims);
      w.Key("write_zeroes").Uint(s.write_zeroes);
      w.Key("bytes_written").Uint(s.bytes_written);
      w.Key("bytes_trimmed").Uint(s.bytes_trimmed);
      w.Key("bytes_zeroed").Uint(s.bytes_zeroed);
      w.Key("blocks_touched").Uint(s.blocks_touched);
      w.EndObject();
    }
    w.EndArray();
    if (list_records) {
      w.Key("records").BeginArray();
      for (const auto& r : trace->records) {
        w.BeginObject();
        w.Key("time_ns").Uint(r.time_ns);
        w.Key("volume").String(trace->volumes[r.volume].name);
        w.Key("op").String(OpName(r.op));
        w.Key("offset_bytes").Uint(r.offset_bytes);
        w.Key("length_bytes").Uint(r.length_bytes);
        w.EndObject();
      }
      w.EndArray();
    }
    w.EndObject();
    std::printf("%s\n", w.str().c_str());
    return kExitOk;
  }

  std::printf("trace %s: %zu records over %.3f s, %zu volume(s)\n", path.c_str(), trace->records.size(),
              static_cast<double>(duration_ns) / 1e9, trace->volumes.size());
  if (!trace->torn_tail.empty()) std::printf("torn tail: %s\n", trace->torn_tail.c_str());
  std::printf("%-20s %14s %9s %14s %9s %14s %9s %14s %14s\n", "VOLUME", "SIZE", "WRITES", "WRITTEN", "TRIMS",
              "TRIMMED", "ZEROES", "ZEROED", "BLOCKS");
  for (std::size_t i = 0; i < trace->volumes.size(); ++i) {
    const auto& v = trace->volumes[i];
    const auto& s = summary[i];
    std::printf("%-20s %14llu %9llu %14llu %9llu %14llu %9llu %14llu %14llu\n", v.name.c_str(),
                static_cast<unsigned long long>(v.size_bytes), static_cast<unsigned long long>(s.writes),
                static_cast<unsigned long long>(s.bytes_written), static_cast<unsigned long long>(s.trims),
                static_cast<unsigned long long>(s.bytes_trimmed), static_cast<unsigned long long>(s.write_zeroes),
                static_cast<unsigned long long>(s.bytes_zeroed), static_cast<unsigned long long>(s.blocks_touched));
  }
  std::printf("(BLOCKS: distinct blocks of %llu bytes touched)\n", static_cast<unsigned long long>(block_size_bytes));
  if (list_records) {
    std::printf("%16s %-20s %-13s %16s %10s\n", "TIME_NS", "VOLUME", "OP", "OFFSET", "LENGTH");
    for (const auto& r : trace->records) {
      std::printf("%16llu %-20s %-13s %16llu %10u\n", static_cast<unsigned long long>(r.time_ns),
                  trace->volumes[r.volume].name.c_str(), OpName(r.op), static_cast<unsigned long long>(r.offset_bytes),
                  r.length_bytes);
    }
  }
  return kExitOk;
}

}  // namespace

int TraceCommand(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] != "inspect") return ReportError(Status::InvalidArgument(kUsage));
  return Inspect(std::vector<std::string>(argv.begin() + 1, argv.end()));
}

}  // namespace blkrep::tools
