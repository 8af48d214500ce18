// Replication monitoring; see monitoring.h.
#include "jobs/monitoring.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "core/file_system.h"
#include "jobs/cycle_runner.h"
#include "tracker/journal.h"
#include "tracker/layout.h"

namespace blkrep::jobs {

using core::Result;
using core::Status;

const char* HealthName(Health health) {
  switch (health) {
    case Health::kNormal:
      return "normal";
    case Health::kWarning:
      return "warning";
    case Health::kCritical:
      return "critical";
  }
  return "unknown";
}

namespace {

// Skips a JSON string starting at text[i] == '"'; returns the index after
// its closing quote, or npos if it is unterminated. *value gets its raw
// content (escapes left as they are: keys and the values read here have
// none).
std::size_t SkipString(const std::string& text, std::size_t i, std::string* value) {
  std::size_t start = ++i;
  while (i < text.size() && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
  if (i >= text.size()) return std::string::npos;
  if (value) *value = text.substr(start, i - start);
  return i + 1;
}

// The raw text of the top-level member `key` of a JSON object (a string
// value without its quotes, anything else as written); none if absent.
std::optional<std::string> DetailToken(const std::string& text, const std::string& key, bool* is_string) {
  int depth = 0;
  bool expect_key = false;
  for (std::size_t i = 0; i < text.size();) {
    char c = text[i];
    if (c == '"') {
      std::string s;
      std::size_t next = SkipString(text, i, &s);
      if (next == std::string::npos) return std::nullopt;
      if (depth == 1 && expect_key) {
        std::size_t j = next;
        while (j < text.size() && (text[j] == ' ' || text[j] == '\n')) ++j;
        if (j < text.size() && text[j] == ':') {
          ++j;
          while (j < text.size() && (text[j] == ' ' || text[j] == '\n')) ++j;
          if (s == key && j < text.size()) {
            if (text[j] == '"') {
              std::string v;
              if (SkipString(text, j, &v) == std::string::npos) return std::nullopt;
              *is_string = true;
              return v;
            }
            std::size_t end = j;
            while (end < text.size() && text[end] != ',' && text[end] != '}' && text[end] != ']') ++end;
            *is_string = false;
            std::string v = text.substr(j, end - j);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\n')) v.pop_back();
            return v;
          }
          expect_key = false;
          i = j;
          continue;
        }
      }
      i = next;
      continue;
    }
    if (c == '{' || c == '[') {
      ++depth;
      expect_key = c == '{' && depth == 1;
    } else if (c == '}' || c == ']') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect_key = true;
    }
    ++i;
  }
  return std::nullopt;
}

std::optional<std::string> DetailString(const std::string& json_object, const std::string& key) {
  bool is_string = false;
  auto token = DetailToken(json_object, key, &is_string);
  if (!token || !is_string) return std::nullopt;
  return token;
}

std::string FormatDuration(std::int64_t seconds) {
  char buf[64];
  if (seconds >= 86400) {
    std::snprintf(buf, sizeof(buf), "%lldd %lldh", (long long)(seconds / 86400), (long long)(seconds % 86400 / 3600));
  } else if (seconds >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh %lldm", (long long)(seconds / 3600), (long long)(seconds % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lldm %llds", (long long)(seconds / 60), (long long)(seconds % 60));
  }
  return buf;
}

void Raise(Measurement& m, Health level, std::string reason) {
  if (level > m.health) m.health = level;
  m.health_reasons.push_back(std::move(reason));
}

}  // namespace

std::string EscapePrometheusText(const std::string& text, bool label_value) {
  std::string out;
  for (char c : text) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '"' && label_value)
      out += "\\\"";
    else
      out += c;
  }
  return out;
}

std::optional<double> DetailNumber(const std::string& json_object, const std::string& key) {
  bool is_string = false;
  auto token = DetailToken(json_object, key, &is_string);
  if (!token || is_string || token->empty()) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(token->c_str(), &end);
  if (*end != '\0' || !std::isfinite(v)) return std::nullopt;
  return v;
}

Measurement Measure(const MeasureInput& in) {
  const Job& job = in.job;
  Measurement m;
  m.job = job.id;
  m.guest = job.guest;
  m.target = job.target;
  m.state = job.state;
  m.enabled = job.enabled;
  m.window_start = in.since;
  m.window_end = in.now;
  m.last_success = job.last_sync;
  m.pending_bytes = in.pending_bytes;

  std::optional<std::int64_t> oldest_known = job.last_try;  // of the job, for a job that never succeeded
  std::optional<std::int64_t> resumed;                      // the last resume in the window
  double latency_sum_s = 0;
  for (const Event& e : in.events) {
    if (e.job != job.id || e.time < in.since || e.time > in.now) continue;
    if (!oldest_known || e.time < *oldest_known) oldest_known = e.time;
    if (e.kind == "cycle-completed") {
      ++m.success_count;
      std::uint64_t bytes =
          static_cast<std::uint64_t>(std::max(0.0, DetailNumber(e.details, "bytes_sent").value_or(0)));
      double latency_s = std::max(0.0, DetailNumber(e.details, "duration").value_or(0));
      m.total_bytes += bytes;
      m.maximum_size_bytes = std::max(m.maximum_size_bytes, bytes);
      latency_sum_s += latency_s;
      m.maximum_latency_s = std::max(m.maximum_latency_s, latency_s);
      if (!job.last_sync && (!m.last_success || e.time > *m.last_success)) m.last_success = e.time;
    } else if (e.kind == "cycle-failed") {
      ++m.failed_count;
    } else if (e.kind == "resync-deferred") {
      ++m.deferred_count;
    } else if (e.kind == "state-changed") {
      auto from = DetailString(e.details, "from");
      if (from && (*from == "suspended" || *from == "disabled")) {
        if (!resumed || e.time > *resumed) resumed = e.time;
      }
    }
  }
  m.missed_count = m.failed_count + m.deferred_count;
  m.error_count = m.failed_count;
  if (m.success_count > 0) {
    m.average_size_bytes = m.total_bytes / m.success_count;
    m.average_latency_s = latency_sum_s / static_cast<double>(m.success_count);
  }

  // Health (see the design note in monitoring.h).
  if (job.state == "error") {
    Raise(m, Health::kCritical, "replication failed" + (job.error.empty() ? std::string() : ": " + job.error));
  } else if (job.state == "resync-required") {
    Raise(m, Health::kCritical, "resynchronization required");
  } else if (job.state == "suspended") {
    Raise(m, Health::kWarning, "replication is suspended (blkrep resume " + job.id + ")");
  }
  const std::uint64_t due = m.success_count + m.missed_count;
  if (job.enabled && due > 0 &&
      static_cast<double>(m.missed_count) >= in.missed_warning_ratio * static_cast<double>(due)) {
    char text[160];
    std::snprintf(text, sizeof(text), "%llu of %llu cycles missed in the window (%.0f%%, warning at %.0f%%)",
                  (unsigned long long)m.missed_count, (unsigned long long)due,
                  100.0 * static_cast<double>(m.missed_count) / static_cast<double>(due),
                  100.0 * in.missed_warning_ratio);
    Raise(m, Health::kWarning, text);
  }
  if (job.enabled && job.state != "suspended") {
    // Since when a success has been expected.
    std::optional<std::int64_t> from = m.last_success ? m.last_success : oldest_known;
    if (resumed && (!from || *resumed > *from)) from = resumed;
    if (from && in.now - *from > in.stale_after_s) {
      Raise(m, Health::kWarning,
            std::string(m.last_success ? "no cycle succeeded for " : "no cycle ever succeeded, for ") +
                FormatDuration(in.now - *from) + " (warning after " + FormatDuration(in.stale_after_s) + ")");
    }
  }
  return m;
}

std::map<std::string, std::string> ApplyJournalState(const std::string& state_dir, std::vector<Job>& jobs) {
  std::map<std::string, std::vector<std::string>> jobs_of_guest;
  for (const Job& j : jobs) {
    if (j.state != "syncing" && j.state != "suspended" && j.enabled) jobs_of_guest[j.guest].push_back(j.id);
  }
  std::map<std::string, std::string> reasons;
  for (const auto& [guest, ids] : jobs_of_guest) reasons.merge(ResyncRequiredReasons(state_dir, guest, ids));
  for (Job& j : jobs) {
    if (reasons.count(j.id)) j.state = "resync-required";
  }
  return reasons;
}

Result<std::vector<Measurement>> MeasureJobs(JobStore& store, const std::string& state_dir,
                                             const std::vector<Job>& jobs, std::int64_t since, std::int64_t now,
                                             bool clip_to_first_event, bool read_pending) {
  BLKREP_ASSIGN_OR_RETURN(std::vector<Event> events, store.ListEvents(since));
  std::map<std::string, std::vector<Event>> by_job;
  for (Event& e : events) {
    if (e.time <= now) by_job[e.job].push_back(std::move(e));
  }
  std::vector<Measurement> out;
  for (const Job& j : jobs) {
    MeasureInput in;
    in.job = j;
    in.events = std::move(by_job[j.id]);
    in.since = since;
    in.now = now;
    if (clip_to_first_event && !in.events.empty()) {
      auto first = std::min_element(in.events.begin(), in.events.end(),
                                    [](const Event& a, const Event& b) { return a.time < b.time; });
      in.since = std::max(since, first->time);
    }
    if (read_pending) {
      Result<std::uint64_t> pending = ReadPendingBytes(state_dir, j.guest, j.id);
      if (pending.ok()) in.pending_bytes = *pending;
    }
    out.push_back(Measure(in));
  }
  return out;
}

Result<std::uint64_t> ReadPendingBytes(const std::string& state_dir, const std::string& guest, const std::string& job) {
  std::string dir = tracker::JournalDir(state_dir, guest);
  std::vector<std::string> paths;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::string p = entry.path().string();
    if (p.size() > std::string(tracker::kJournalSuffix).size() && p.ends_with(tracker::kJournalSuffix)) {
      paths.push_back(p);
    }
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Status::IoError("list journals in " + dir + ": " + ec.message());
  }
  if (paths.empty()) return Status::NotFound("guest " + guest + " has no journal in " + dir);
  std::uint64_t pending_bytes = 0;
  for (const std::string& p : paths) {
    Result<tracker::JournalReport> r = tracker::Journal::Read(core::PosixFileSystemInstance(), p);
    if (!r.ok()) return r.status().WithContext("pending bytes of job " + job);
    const tracker::TargetReport* target = nullptr;
    for (const auto& t : r->targets) {
      if (t.name == job) target = &t;
    }
    std::uint64_t blocks =
        target ? target->dirty_blocks
               : (r->block_size_bytes ? (r->volume_size_bytes + r->block_size_bytes - 1) / r->block_size_bytes : 0);
    pending_bytes += blocks * r->block_size_bytes;
  }
  return pending_bytes;
}

}  // namespace blkrep::jobs
