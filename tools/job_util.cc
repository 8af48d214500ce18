// What the job commands share; see job_util.h.
#include "tools/job_util.h"

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <ctime>

#include "jobs/calendar_event.h"
#include "proto/frame.h"

namespace blkrep::tools {

using core::Result;
using core::Status;

std::int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status ParseRate(const std::string& text, double* rate) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v) || v < 0) {
    return Status::InvalidArgument("--rate: expected a number of MB/s (10^6 bytes per second), got '" + text + "'");
  }
  *rate = v;
  return Status::Ok();
}

std::optional<std::int64_t> NextSync(const jobs::Job& j) {
  if (!j.enabled || j.state == "suspended") return std::nullopt;
  if (j.run_now) return Now();  // schedule-now: the next bare `run`, whatever else says
  if (j.resync_at) return *j.resync_at;  // `resync --at`: nothing runs before
  if (j.fail_count > 0 && j.last_try) {
    return *j.last_try + (j.fail_count <= 3 ? 300 * static_cast<std::int64_t>(j.fail_count) : 1800);
  }
  // The schedule's next event after the last success (pvesr), in local
  // time; a job that never succeeded is due at the next event from now (a
  // bare run picks a job that never ran at once).
  auto schedule = jobs::CalendarEvent::Parse(j.schedule);
  if (!schedule.ok()) return std::nullopt;  // validated when stored; an old row may not be
  return schedule->Next(j.last_sync.value_or(Now() - 1));
}

std::string FormatTime(std::optional<std::int64_t> t) {
  if (!t) return "-";
  std::time_t tt = static_cast<std::time_t>(*t);
  std::tm tm{};
  localtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d_%H:%M:%S", &tm);
  return buf;
}

void JsonOptInt(core::JsonWriter& w, std::optional<std::int64_t> v) {
  if (v) w.Int(*v);
  else w.Null();
}

Result<std::unique_ptr<jobs::JobStore>> OpenStore(const Args& args) { return jobs::JobStore::Open(StateDir(args)); }

// The lock that keeps a job's runs (and a verify) from overlapping, held
// until the result is destroyed; kAborted "job ID is already running".
Result<std::unique_ptr<core::FileLock>> LockJobRun(const std::string& state_dir, const std::string& id) {
  auto lock = core::PosixFileSystemInstance().Lock(state_dir + "/" + id + ".run.lock");
  if (!lock.ok() && lock.status().code() == core::Code::kAborted) {
    return Status::Aborted("job " + id + " is already running");
  }
  return lock;
}

// SIGINT and SIGTERM cancel a running cycle cleanly (the receiver keeps
// what it staged, the source keeps its dirty blocks); a second signal
// kills the process as usual.
std::atomic<bool> g_cancel{false};

static void CancelOnSignal(int signal_number) {
  g_cancel.store(true);
  ::signal(signal_number, SIG_DFL);
}

void InstallCancelHandlers() {
  ::signal(SIGINT, CancelOnSignal);
  ::signal(SIGTERM, CancelOnSignal);
}

// Minutes after midnight of "HH:MM".
static std::optional<int> ParseClock(const std::string& text) {
  int h = 0, m = 0;
  char extra = 0;
  if (std::sscanf(text.c_str(), "%2d:%2d%c", &h, &m, &extra) != 2 || text.size() != 5) return std::nullopt;
  if (h < 0 || h > 23 || m < 0 || m > 59) return std::nullopt;
  return h * 60 + m;
}

// "HH:MM-HH:MM" (may wrap midnight); "" or "any" means at any time.
Status ValidateResyncWindow(const std::string& window) {
  if (window.empty()) return Status::Ok();
  std::size_t dash = window.find('-');
  if (dash == std::string::npos || !ParseClock(window.substr(0, dash)) || !ParseClock(window.substr(dash + 1))) {
    return Status::InvalidArgument("--resync-window: expected HH:MM-HH:MM (local time) or 'any', got '" + window +
                                   "'");
  }
  return Status::Ok();
}

bool InResyncWindow(const std::string& window, std::int64_t now) {
  if (window.empty()) return true;
  std::size_t dash = window.find('-');
  std::optional<int> from = ParseClock(window.substr(0, dash)), to = ParseClock(window.substr(dash + 1));
  if (!from || !to) return false;
  std::time_t t = static_cast<std::time_t>(now);
  std::tm tm{};
  localtime_r(&t, &tm);
  int minute = tm.tm_hour * 60 + tm.tm_min;
  if (*from == *to) return true;
  return *from < *to ? minute >= *from && minute < *to : minute >= *from || minute < *to;
}

// Whether a run may resynchronize the job now (Hyper-V: the automatic
// resync setting and its interval; a resync scheduled by hand runs at its
// time whatever they say).
bool ResyncAllowed(const jobs::Job& j, std::int64_t now) {
  if (j.resync_at) return now >= *j.resync_at;
  return j.auto_resync && InResyncWindow(j.resync_window, now);
}

void AddEventOrWarn(jobs::JobStore& store, const jobs::Event& e) {
  Status added = store.AddEvent(e);
  if (!added.ok()) std::fprintf(stderr, "blkrep: warning: %s\n", added.ToString().c_str());
}

// Tuning of the shipper (bench/ measures them): --zstd-level, --batch-size
// (raw bytes per read batch) and --read-ahead (batches in flight).
Status ParseShipOptions(const Args& args, shipper::ShipOptions& ship) {
  if (auto level = args.Value("zstd-level")) {
    char* end = nullptr;
    long v = std::strtol(level->c_str(), &end, 10);
    // 0 is no compression; negative levels are zstd's fast modes.
    if (level->empty() || *end != '\0' || v < -7 || v > 19) {
      return Status::InvalidArgument("--zstd-level: -7 to 19 (0: no compression), got '" + *level + "'");
    }
    ship.zstd_level = static_cast<int>(v);
    ship.adaptive_compression = false;  // a level given is a level used
  }
  if (auto size = args.Value("batch-size")) {
    auto n = core::ParseSize(*size);
    if (!n.ok() || *n < 4096 || *n > proto::kMaxBatchBytes) return Status::InvalidArgument("--batch-size: 4K to 8M");
    ship.batch_bytes = static_cast<std::uint32_t>(*n);
  }
  if (auto depth = args.Value("read-ahead")) {
    auto n = core::ParseSize(*depth);
    if (!n.ok() || *n < 1 || *n > 256) return Status::InvalidArgument("--read-ahead: 1 to 256 batches");
    ship.batches_in_flight = static_cast<unsigned>(*n);
  }
  return Status::Ok();
}

Status ParseDefinitionOptions(const Args& args, jobs::Job& job) {
  if (auto s = args.Value("schedule")) {
    auto parsed = jobs::CalendarEvent::Parse(*s);
    if (!parsed.ok()) return parsed.status().WithContext("--schedule");
    // A spec with no event left (a date in the past, a day its months lack)
    // would be stored and the job never replicate.
    if (!parsed->Next(Now())) {
      return Status::InvalidArgument("--schedule: schedule '" + jobs::QuoteSchedule(*s) + "' never runs again");
    }
    job.schedule = *s;
  }
  if (auto r = args.Value("rate")) BLKREP_RETURN_IF_ERROR(ParseRate(*r, &job.rate_mbps));
  if (auto c = args.Value("comment")) job.comment = *c;
  if (auto n = args.Value("recovery-points")) {
    char* end = nullptr;
    unsigned long v = std::strtoul(n->c_str(), &end, 10);
    if (n->empty() || *end != '\0' || v > 24) {
      return Status::InvalidArgument("--recovery-points: 0 to 24 (cycles whose undo data the target keeps), got '" +
                                     *n + "'");
    }
    job.recovery_points = static_cast<std::uint32_t>(v);
  }
  return ParseResyncOptions(args, job);
}

// --auto-resync on|off and --resync-window HH:MM-HH:MM|any into `job`.
Status ParseResyncOptions(const Args& args, jobs::Job& job) {
  if (auto a = args.Value("auto-resync")) {
    if (*a != "on" && *a != "off") return Status::InvalidArgument("--auto-resync: on or off, got '" + *a + "'");
    job.auto_resync = *a == "on";
  }
  if (auto w = args.Value("resync-window")) {
    job.resync_window = *w == "any" ? "" : *w;
    BLKREP_RETURN_IF_ERROR(ValidateResyncWindow(job.resync_window));
  }
  return Status::Ok();
}

jobs::Event MakeEvent(const jobs::Job& job, std::string kind, std::string message, std::string details) {
  jobs::Event e;
  e.job = job.id;
  e.guest = job.guest;
  e.kind = std::move(kind);
  e.message = std::move(message);
  e.details = std::move(details);
  return e;
}

// TIME: epoch seconds, or local "YYYY-MM-DD", "YYYY-MM-DD HH:MM[:SS]" or
// "YYYY-MM-DDTHH:MM[:SS]".
Result<std::int64_t> ParseTime(const std::string& text) {
  if (!text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      text.size() <= 12) {
    return static_cast<std::int64_t>(std::stoll(text));
  }
  for (const char* format : {"%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M",
                             "%Y-%m-%d"}) {
    std::tm tm{};
    tm.tm_isdst = -1;
    const char* end = ::strptime(text.c_str(), format, &tm);
    if (end != nullptr && *end == '\0') return static_cast<std::int64_t>(std::mktime(&tm));
  }
  return Status::InvalidArgument("--since: expected epoch seconds or YYYY-MM-DD[ HH:MM[:SS]], got '" + text + "'");
}
}  // namespace blkrep::tools
