// Monitoring verbs (docs/monitoring.md): `blkrep measure`, Hyper-V's
// Measure-VMReplication, and `blkrep metrics`, the Prometheus text
// exposition format for node_exporter's textfile collector.
//
// Design note. Both are views of jobs::MeasureJobs() (jobs/monitoring.h)
// over the job table, the event history and the journals; neither writes
// the database or a journal, so they are safe to run at any moment, from a
// timer, while cycles run. `metrics --output FILE` replaces FILE atomically
// (FILE.tmp in the same directory, fsync, rename, fsync of the directory)
// so the collector never reads half a file, and makes it mode 0644 whatever
// the umask: node_exporter usually runs as another user.
//
// Metric names follow Prometheus' conventions: a `blkrep_` prefix, the base
// unit as suffix (`_bytes`, `_seconds`, `_timestamp_seconds`), `_total`
// only on counters. The window figures (cycles succeeded and missed in the
// last 24 hours, cycle sizes and latencies) go up and down as the window
// slides, so they are gauges without `_total`.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/units.h"
#include "jobs/job_store.h"
#include "jobs/monitoring.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/job_util.h"

namespace blkrep::tools {

using core::Result;
using core::Status;

namespace {

constexpr const char* kJobStates[] = {"ok", "syncing", "error", "resync-required", "suspended"};

// The jobs to report (every job, or the one named) with their states as
// `status` shows them.
Result<std::vector<jobs::Job>> JobsToReport(jobs::JobStore& store, const std::string& state_dir,
                                            const std::optional<std::string>& id) {
  std::vector<jobs::Job> list;
  if (id) {
    BLKREP_RETURN_IF_ERROR(jobs::ValidateJobId(*id, nullptr));
    BLKREP_ASSIGN_OR_RETURN(jobs::Job job, store.GetJob(*id));
    list.push_back(std::move(job));
  } else {
    BLKREP_ASSIGN_OR_RETURN(list, store.ListJobs());
  }
  jobs::ApplyJournalState(state_dir, list);
  return list;
}

std::string FormatSeconds(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fs", seconds);
  return buf;
}

void WriteMeasurementJson(core::JsonWriter& w, const jobs::Measurement& m) {
  w.BeginObject();
  w.Key("id").String(m.job).Key("guest").String(m.guest).Key("target").String(m.target);
  w.Key("state").String(m.state).Key("enabled").Bool(m.enabled).Key("health").String(jobs::HealthName(m.health));
  w.Key("health_reasons").BeginArray();
  for (const auto& r : m.health_reasons) w.String(r);
  w.EndArray();
  w.Key("window_start").Int(m.window_start).Key("window_end").Int(m.window_end);
  w.Key("last_success");
  JsonOptInt(w, m.last_success);
  w.Key("success_count").Uint(m.success_count).Key("missed_count").Uint(m.missed_count);
  w.Key("failed_count").Uint(m.failed_count).Key("deferred_count").Uint(m.deferred_count);
  w.Key("error_count").Uint(m.error_count);
  w.Key("total_bytes").Uint(m.total_bytes);
  w.Key("average_size_bytes").Uint(m.average_size_bytes).Key("maximum_size_bytes").Uint(m.maximum_size_bytes);
  w.Key("average_latency_seconds").Double(m.average_latency_s);
  w.Key("maximum_latency_seconds").Double(m.maximum_latency_s);
  w.Key("pending_bytes");
  if (m.pending_bytes)
    w.Uint(*m.pending_bytes);
  else
    w.Null();
  w.EndObject();
}

// Builds the exposition text: each metric family once, its # HELP and
// # TYPE lines, then one sample per job.
class Exposition {
 public:
  void Family(const std::string& name, const std::string& type, const std::string& help) {
    text_ += "# HELP " + name + " " + jobs::EscapePrometheusText(help, false) + "\n";
    text_ += "# TYPE " + name + " " + type + "\n";
  }
  void Sample(const std::string& name, const jobs::Measurement& m, double value, const std::string& extra_label = "",
              const std::string& extra_value = "") {
    text_ += name + "{job=\"" + jobs::EscapePrometheusText(m.job, true) + "\",guest=\"" +
             jobs::EscapePrometheusText(m.guest, true) + "\",target=\"" + jobs::EscapePrometheusText(m.target, true) +
             "\"";
    if (!extra_label.empty()) text_ += "," + extra_label + "=\"" + jobs::EscapePrometheusText(extra_value, true) + "\"";
    text_ += "} " + Number(value) + "\n";
  }
  void Plain(const std::string& name, double value) { text_ += name + " " + Number(value) + "\n"; }
  const std::string& text() const { return text_; }

 private:
  static std::string Number(double value) {
    char buf[40];
    // Integers as integers (timestamps, byte counts); others shortest-ish.
    if (value == static_cast<double>(static_cast<std::int64_t>(value)) && value > -9e15 && value < 9e15) {
      std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(value));
    } else {
      std::snprintf(buf, sizeof(buf), "%.17g", value);
    }
    return buf;
  }
  std::string text_;
};

std::string MetricsText(const std::vector<jobs::Job>& jobs, const std::vector<jobs::Measurement>& ms,
                        std::int64_t now) {
  Exposition x;
  struct PerJob {
    const char* name;
    const char* help;
    std::function<std::optional<double>(const jobs::Job&, const jobs::Measurement&)> value;
  };
  auto opt = [](std::optional<std::int64_t> v) -> std::optional<double> {
    if (!v) return std::nullopt;
    return static_cast<double>(*v);
  };
  const std::vector<PerJob> gauges = {
      {"blkrep_job_enabled", "Whether the replication job is enabled (1) or disabled (0).",
       [](const jobs::Job& j, const jobs::Measurement&) { return j.enabled ? 1.0 : 0.0; }},
      {"blkrep_job_health", "Replication health: 0 normal, 1 warning, 2 critical (blkrep measure gives the reasons).",
       [](const jobs::Job&, const jobs::Measurement& m) { return static_cast<double>(m.health); }},
      {"blkrep_job_last_sync_timestamp_seconds", "When the last successful replication cycle started (absent if none).",
       [&](const jobs::Job& j, const jobs::Measurement&) { return opt(j.last_sync); }},
      {"blkrep_job_next_sync_timestamp_seconds",
       "When the job runs next (absent for a disabled or suspended job, or a schedule without a next time).",
       [&](const jobs::Job& j, const jobs::Measurement&) { return opt(NextSync(j)); }},
      {"blkrep_job_fail_count", "Consecutive failed runs of the job (0 after a success).",
       [](const jobs::Job& j, const jobs::Measurement&) { return static_cast<double>(j.fail_count); }},
      {"blkrep_job_pending_bytes",
       "Bytes changed at the source and not yet replicated (dirty blocks times block size; absent without journal).",
       [](const jobs::Job&, const jobs::Measurement& m) -> std::optional<double> {
         if (!m.pending_bytes) return std::nullopt;
         return static_cast<double>(*m.pending_bytes);
       }},
      {"blkrep_job_last_sent_bytes", "Bytes on the wire of the last successful cycle.",
       [](const jobs::Job& j, const jobs::Measurement&) { return static_cast<double>(j.last_bytes_sent); }},
      {"blkrep_job_last_duration_seconds", "Duration of the last run.",
       [](const jobs::Job& j, const jobs::Measurement&) { return j.duration_s; }},
      {"blkrep_job_cycle_average_bytes", "Average bytes on the wire per successful cycle in the last 24 hours.",
       [](const jobs::Job&, const jobs::Measurement& m) { return static_cast<double>(m.average_size_bytes); }},
      {"blkrep_job_cycle_maximum_bytes", "Largest bytes on the wire of a successful cycle in the last 24 hours.",
       [](const jobs::Job&, const jobs::Measurement& m) { return static_cast<double>(m.maximum_size_bytes); }},
      {"blkrep_job_cycle_average_seconds", "Average duration of a successful cycle in the last 24 hours.",
       [](const jobs::Job&, const jobs::Measurement& m) { return m.average_latency_s; }},
      {"blkrep_job_cycle_maximum_seconds", "Longest duration of a successful cycle in the last 24 hours.",
       [](const jobs::Job&, const jobs::Measurement& m) { return m.maximum_latency_s; }},
      {"blkrep_job_cycles_succeeded", "Successful cycles in the last 24 hours.",
       [](const jobs::Job&, const jobs::Measurement& m) { return static_cast<double>(m.success_count); }},
      {"blkrep_job_cycles_missed",
       "Cycles missed in the last 24 hours: runs that failed, and resyncs that were due but deferred.",
       [](const jobs::Job&, const jobs::Measurement& m) { return static_cast<double>(m.missed_count); }},
      {"blkrep_job_cycle_errors", "Failed cycles in the last 24 hours.",
       [](const jobs::Job&, const jobs::Measurement& m) { return static_cast<double>(m.error_count); }},
  };
  for (const PerJob& g : gauges) {
    x.Family(g.name, "gauge", g.help);
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      if (auto v = g.value(jobs[i], ms[i])) x.Sample(g.name, ms[i], *v);
    }
  }
  x.Family("blkrep_job_state", "gauge", "The job's state, one-hot: 1 for the state it is in, 0 for the others.");
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    for (const char* s : kJobStates) x.Sample("blkrep_job_state", ms[i], ms[i].state == s ? 1 : 0, "state", s);
  }
  x.Family("blkrep_metrics_generated_timestamp_seconds", "gauge", "When blkrep metrics wrote these figures.");
  x.Plain("blkrep_metrics_generated_timestamp_seconds", static_cast<double>(now));
  return x.text();
}

Status ErrnoStatus(const std::string& what, int error) { return Status::IoError(what + ": " + std::strerror(error)); }

// Replaces `path` with `text`: PATH.tmp written, fsynced and renamed over
// it, the directory fsynced; mode 0644 whatever the umask.
Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create " + tmp, errno);
  Status status = Status::Ok();
  if (::fchmod(fd, 0644) != 0) status = ErrnoStatus("chmod " + tmp, errno);
  std::size_t done = 0;
  while (status.ok() && done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      status = ErrnoStatus("write " + tmp, errno);
    else
      done += static_cast<std::size_t>(n);
  }
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoStatus("fsync " + tmp, errno);
  if (::close(fd) != 0 && status.ok()) status = ErrnoStatus("close " + tmp, errno);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    status = ErrnoStatus("rename " + tmp + " to " + path, errno);
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  std::size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoStatus("open directory " + dir, errno);
  int synced = ::fsync(dfd);
  int error = errno;
  ::close(dfd);
  if (synced != 0) return ErrnoStatus("fsync directory " + dir, error);
  return Status::Ok();
}

}  // namespace

// Hyper-V's Measure-VMReplication.
int MeasureCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage = "usage: blkrep measure [JOBID] [--json] [--since TIME]";
  auto args = ParseArgs(argv, {"state-dir", "since"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() > 1) return ReportError(Status::InvalidArgument(kUsage));
  std::optional<std::string> id;
  if (!args->positional.empty()) id = args->positional[0];
  const std::int64_t now = Now();
  std::int64_t since = now - jobs::kDefaultMonitoringWindowSeconds;
  const bool explicit_window = args->Value("since").has_value();
  if (explicit_window) {
    auto parsed = ParseTime(*args->Value("since"));
    if (!parsed.ok()) return ReportError(parsed.status());
    if (*parsed > now)
      return ReportError(Status::InvalidArgument("--since: " + *args->Value("since") + " is in the future"));
    since = *parsed;
  }
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto list = JobsToReport(**store, StateDir(*args), id);
  if (!list.ok()) return ReportError(list.status());
  auto ms = jobs::MeasureJobs(**store, StateDir(*args), *list, since, now, !explicit_window, /*read_pending=*/true);
  if (!ms.ok()) return ReportError(ms.status());
  if (args->Flag("json")) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    if (id) {
      WriteMeasurementJson(w, ms->front());
    } else {
      w.BeginArray();
      for (const auto& m : *ms) WriteMeasurementJson(w, m);
      w.EndArray();
    }
    std::printf("%s\n", w.str().c_str());
    return kExitOk;
  }
  std::printf("%-12s %-15s %-8s %-20s %10s %10s %10s %10s %10s %7s %6s %6s\n", "JobID", "State", "Health", "LastSync",
              "Pending", "AvgSize", "MaxSize", "AvgLatency", "MaxLatency", "Success", "Missed", "Errors");
  for (const auto& m : *ms) {
    std::printf("%-12s %-15s %-8s %-20s %10s %10s %10s %10s %10s %7llu %6llu %6llu\n", m.job.c_str(), m.state.c_str(),
                jobs::HealthName(m.health), FormatTime(m.last_success).c_str(),
                m.pending_bytes ? core::FormatSize(*m.pending_bytes).c_str() : "-",
                core::FormatSize(m.average_size_bytes).c_str(), core::FormatSize(m.maximum_size_bytes).c_str(),
                FormatSeconds(m.average_latency_s).c_str(), FormatSeconds(m.maximum_latency_s).c_str(),
                (unsigned long long)m.success_count, (unsigned long long)m.missed_count,
                (unsigned long long)m.error_count);
  }
  for (const auto& m : *ms) {
    for (const auto& r : m.health_reasons) std::printf("%s: %s\n", m.job.c_str(), r.c_str());
  }
  for (const auto& m : *ms) {
    std::printf("%s: window %s to %s\n", m.job.c_str(), FormatTime(m.window_start).c_str(),
                FormatTime(m.window_end).c_str());
  }
  return kExitOk;
}

// The Prometheus text exposition format, for node_exporter's textfile
// collector (--collector.textfile.directory).
int MetricsCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage = "usage: blkrep metrics [--output FILE]";
  auto args = ParseArgs(argv, {"state-dir", "output"}, {});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (!args->positional.empty()) return ReportError(Status::InvalidArgument(kUsage));
  auto output = args->Value("output");
  if (output && output->empty()) return ReportError(Status::InvalidArgument("--output: empty file name"));
  const std::int64_t now = Now();
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto list = JobsToReport(**store, StateDir(*args), std::nullopt);
  if (!list.ok()) return ReportError(list.status());
  auto ms = jobs::MeasureJobs(**store, StateDir(*args), *list, now - jobs::kDefaultMonitoringWindowSeconds, now,
                              /*clip_to_first_event=*/true, /*read_pending=*/true);
  if (!ms.ok()) return ReportError(ms.status());
  std::string text = MetricsText(*list, *ms, now);
  if (!output) {
    std::fputs(text.c_str(), stdout);
    return kExitOk;
  }
  Status written = WriteFileAtomically(*output, text);
  if (!written.ok()) return ReportError(written.WithContext("metrics"));
  return kExitOk;
}

}  // namespace blkrep::tools
