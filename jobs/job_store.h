// JobStore: replication targets, job definitions and job state in SQLite
// (STATE/blkrep.db, WAL), pvesr's model (DESIGN.md, "Jobs").
//
// Design note. One row per target (how to reach a receiver) and one per job
// (GUEST-N replicating every volume of GUEST to one target). A job's state
// columns are what `blkrep status` shows; a run updates them in one
// transaction at its start (state syncing) and one at its end. Each writer
// writes only the columns it owns (a run the run columns, `update` the
// definition, enable/disable/schedule-now/suspend/resume their one column),
// so commands running at the same time never undo each other's changes.
// SQLite's WAL lets `status` read while a run writes. Every statement is prepared; no
// text from the command line is ever spliced into SQL.
//
// Thread safety: one JobStore per thread; several processes may open the
// same database (SQLite locks; a busy timeout of 10 s).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

struct sqlite3;

namespace blkrep::jobs {

struct Target {
  std::string name;
  std::vector<std::string> args;  // e.g. {"--exec", "blkrep receive --stdio ..."}
};

struct Job {
  std::string id;       // GUEST-N
  std::string guest;
  std::string target;
  std::string schedule = "*/15";
  double rate_mbps = 0;  // 0: no limit (10^6 bytes per second otherwise)
  std::string comment;
  bool enabled = true;
  // State.
  std::string state = "ok";  // ok, syncing, error, resync-required, suspended
  std::string error;
  std::uint64_t fail_count = 0;
  std::optional<std::int64_t> last_sync;   // epoch seconds of the last success
  std::optional<std::int64_t> last_try;    // epoch seconds of the last start
  double duration_s = 0;                   // of the last run
  std::string last_mode;                   // full, incremental, resync
  std::uint64_t last_bytes_sent = 0;
  std::uint64_t last_blocks_sent = 0;
  // Resynchronization (Hyper-V's AutoResynchronizeEnabled and its
  // interval): whether a run may resync the job by itself, and when.
  bool auto_resync = true;
  std::string resync_window;              // "HH:MM-HH:MM" local time, "" any time
  std::optional<std::int64_t> resync_at;  // `resync --at`: the resync runs at or after this
  // pvesr's schedule-now: the next bare `run` runs the job whatever its
  // schedule and back-off say; a run clears it.
  bool run_now = false;
  // Recovery points the receiver keeps (the undo data of the last N
  // cycles; 0 to 24).
  std::uint32_t recovery_points = 0;
};

// One entry of the event history (`blkrep events`): what happened to a
// job, when. Kinds: cycle-completed, cycle-failed, state-changed,
// resync-started, resync-completed, verify-completed, job-enabled,
// job-disabled, job-scheduled-now, job-deleted.
struct Event {
  std::int64_t id = 0;
  std::int64_t time = 0;  // epoch seconds
  std::string kind;
  std::string job;
  std::string guest;
  std::string message;    // one line for people
  std::string details;    // a JSON object for programs ("{}" if none)
};

// GUEST-N with a valid guest name and N a decimal number.
core::Status ValidateJobId(const std::string& id, std::string* guest);

class JobStore {
 public:
  // Opens (creating) STATE/blkrep.db.
  static core::Result<std::unique_ptr<JobStore>> Open(const std::string& state_dir);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  core::Status AddTarget(const Target& target);  // kInvalidArgument if it exists
  core::Result<Target> GetTarget(const std::string& name);
  core::Result<std::vector<Target>> ListTargets();

  // kInvalidArgument if the id exists, or the guest already has a job to
  // that target, or the target is unknown.
  core::Status CreateJob(const Job& job);
  core::Result<Job> GetJob(const std::string& id);  // kNotFound
  core::Result<std::vector<Job>> ListJobs();
  // Writes every column of `job` (found by id). Only for a row read in the
  // same transaction: any column another command changed since it was read
  // goes back to the value read.
  core::Status SaveJob(const Job& job);
  // Writes the definition columns only (schedule, rate, comment, enabled,
  // automatic resync, recovery points): what `update` changes, leaving the
  // state columns to a run that may be going on.
  core::Status SaveDefinition(const Job& job);
  // Writes the run columns only (state, error, fail_count, last_sync,
  // last_try, duration_s, last_mode, last_bytes_sent, last_blocks_sent,
  // run_now, resync_at): what a run changes, leaving the definition to an
  // `update`, `enable` or `disable` made meanwhile. kNotFound.
  core::Status SaveRun(const Job& job);
  // One column each, for the verbs that change only that: enable/disable,
  // schedule-now, suspend/resume. kNotFound.
  core::Status SetEnabled(const std::string& id, bool enabled);
  core::Status SetRunNow(const std::string& id, bool run_now);
  core::Status SetState(const std::string& id, const std::string& state);
  // Runs `body` in one write transaction (BEGIN IMMEDIATE): a read and the
  // write that depends on it see no other command's write in between.
  // Commits if `body` returns ok, else rolls back and returns its status.
  // Not reentrant.
  core::Status InTransaction(const std::function<core::Status()>& body);
  // Removes the job's row (its events stay in the history); kNotFound.
  core::Status DeleteJob(const std::string& id);

  // Appends an event (its id and, if 0, its time are filled in).
  core::Status AddEvent(Event event);
  // Events at or after `since` (epoch seconds), oldest first.
  core::Result<std::vector<Event>> ListEvents(std::int64_t since);

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  core::Status Exec(const std::string& sql);
  sqlite3* db_;
};

}  // namespace blkrep::jobs
