// Replication monitoring: Hyper-V's Measure-VMReplication figures and
// replication health for one job, from its state, its event history and
// what is still pending in the guest's journals (`blkrep measure`,
// `blkrep metrics`, `status --json`'s health; docs/monitoring.md).
//
// Design note. Measure() is a pure function of a job, its events in the
// monitoring window [since, now] and the pending bytes: no clock, no I/O,
// so every figure is tested exactly with synthetic events. The figures come
// from the events a run records (tools/job_commands.cc):
//
//  - a *successful* cycle is a cycle-completed event (full, incremental or
//    resync); its size is the bytes it put on the wire (`bytes_sent`), its
//    latency the cycle's duration (`duration`, seconds);
//  - a *missed* cycle is Hyper-V's "replication cycle that did not happen
//    when it was due": a run that was due and did not bring the replica up
//    to date — a cycle-failed event (the cycle ran and failed) or a
//    resync-deferred event (a resync was needed, so nothing ran). Runs that
//    `blkrep run` never attempted (no timer, a suspended or disabled job)
//    leave no event; they are caught by the "no success for an hour" rule
//    instead of being guessed from the schedule;
//  - an *error* is a cycle-failed event (Hyper-V's ReplicationErrors).
//
// Health, in the order checked (every rule that holds adds a reason; the
// worst level wins):
//  - critical: state error (Hyper-V: replication failed) or
//    resync-required (Hyper-V: resynchronization required);
//  - warning: state suspended (Hyper-V reports paused replication as a
//    warning: changes pile up and nothing ships);
//  - warning: at least `missed_warning_ratio` (20%) of the window's due
//    cycles (successes + missed) were missed;
//  - warning: the job is enabled and no cycle succeeded for more than
//    `stale_after_s` (an hour) — counted from the last success, or from
//    when the job was last resumed if later; a job that never succeeded
//    counts from the oldest thing known of it (its first event in the
//    window, or its last try), so a job younger than an hour is not
//    judged; a job with no history at all is not judged;
//  - else normal.
// A disabled job (pvesr's disabled) is only judged by its state: nobody
// expects its cycles.
//
// Thread safety: Measure() is pure; ReadPendingBytes() reads journal
// files (never writes; safe while a tracker runs).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "jobs/job_store.h"

namespace blkrep::jobs {

inline constexpr std::int64_t kDefaultMonitoringWindowSeconds = 24 * 3600;

enum class Health : std::uint8_t { kNormal = 0, kWarning = 1, kCritical = 2 };
const char* HealthName(Health health);  // "normal", "warning", "critical"

struct MeasureInput {
  Job job;  // its state as shown (resync-required from the journals applied)
  // Events in the window; other jobs' events and events outside [since,
  // now] are ignored.
  std::vector<Event> events;
  std::int64_t since = 0;  // epoch seconds
  std::int64_t now = 0;
  // Bytes changed at the source not yet replicated; none when unknown (no
  // journal to read).
  std::optional<std::uint64_t> pending_bytes;
  std::int64_t stale_after_s = 3600;
  double missed_warning_ratio = 0.2;
};

struct Measurement {
  std::string job;
  std::string guest;
  std::string target;
  std::string state;
  bool enabled = true;
  Health health = Health::kNormal;
  std::vector<std::string> health_reasons;  // empty when normal
  std::int64_t window_start = 0;            // epoch seconds
  std::int64_t window_end = 0;
  // Epoch seconds of the last successful cycle: the job's last_sync (when
  // that run started, as `status` shows it), else the newest
  // cycle-completed event in the window.
  std::optional<std::int64_t> last_success;
  std::uint64_t success_count = 0;       // cycle-completed in the window
  std::uint64_t missed_count = 0;        // failed + deferred
  std::uint64_t failed_count = 0;        // cycle-failed
  std::uint64_t deferred_count = 0;      // resync-deferred
  std::uint64_t error_count = 0;         // = failed_count (Hyper-V's ReplicationErrors)
  std::uint64_t total_bytes = 0;         // on the wire, successful cycles
  std::uint64_t average_size_bytes = 0;  // total_bytes / success_count, rounded down; 0 if none
  std::uint64_t maximum_size_bytes = 0;
  double average_latency_s = 0;  // cycle durations; 0 if none
  double maximum_latency_s = 0;
  std::optional<std::uint64_t> pending_bytes;
};

Measurement Measure(const MeasureInput& input);

// The state `status` shows: a job that is not syncing, suspended or
// disabled and whose journal says its next cycle must be a resync is
// resync-required. Sets the states in `jobs`; returns the reasons by job id.
std::map<std::string, std::string> ApplyJournalState(const std::string& state_dir, std::vector<Job>& jobs);

// Measures each of `jobs` (states as shown) over [since, now] from the
// store's events (read once). A job's window starts at its first event in
// [since, now] instead when `clip_to_first_event` (the default window).
// With `read_pending`, each job's pending bytes are read from the journals
// (none when the guest has no journal or a journal cannot be read: a
// monitor reports what it can).
core::Result<std::vector<Measurement>> MeasureJobs(JobStore& store, const std::string& state_dir,
                                                   const std::vector<Job>& jobs, std::int64_t since, std::int64_t now,
                                                   bool clip_to_first_event, bool read_pending);

// Pending bytes of a job: for every journal of the guest
// (STATE/journal/GUEST/*.journal), the blocks dirty for the job's target
// (live and frozen) times the journal's block size; a journal that does not
// know the job yet (it never ran) counts every block, since its first
// cycle sends them all. kNotFound when the guest has no journal; an
// unreadable journal is an error naming it.
core::Result<std::uint64_t> ReadPendingBytes(const std::string& state_dir, const std::string& guest,
                                             const std::string& job);

// `text` as a label value (`label_value`) or HELP text of the Prometheus
// text exposition format: backslash and newline escaped as \\ and \n, and in
// a label value the double quote as \".
std::string EscapePrometheusText(const std::string& text, bool label_value);

// The number `key` holds at the top level of a JSON object this program
// wrote (an event's details); none if absent or not a number.
std::optional<double> DetailNumber(const std::string& json_object, const std::string& key);

}  // namespace blkrep::jobs
