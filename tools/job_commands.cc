// pvesr's job verbs (CONTRACT.md): target add/list, create-local-job, run,
// status. Job state lives in jobs::JobStore; a run is jobs::RunCycle.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>

#include "core/file_system.h"
#include "core/json.h"
#include "core/units.h"
#include "jobs/cycle_runner.h"
#include "jobs/job_store.h"
#include "jobs/monitoring.h"
#include "proto/transport.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/job_util.h"
#include "tracker/journal_format.h"

namespace blkrep::tools {

using core::Result;
using core::Status;

namespace {


// The history of a run: cycle-completed or cycle-failed, and
// state-changed when the job's state is not what it was before the run.
// Best effort: a failure to record is a warning, never the run's failure.
void RecordEvents(jobs::JobStore& store, const jobs::Job& job, const std::string& previous_state,
                  const Result<jobs::CycleResult>& ran, bool resync_started, const shipper::ShipStats& stats) {
  std::vector<jobs::Event> events;
  if (resync_started) {
    // Hyper-V's 29244 (resynchronization completed), with the outcome.
    const auto& s = stats;
    std::string result = ran.ok() ? "ok" : g_cancel.load() ? "cancelled" : "failed";
    char text[320];
    std::snprintf(text, sizeof(text),
                  "resync %s: %llu blocks compared, %llu sent (%llu data, %llu zero), %llu kept from a cut resync, "
                  "%s on the wire, %.2f s",
                  result.c_str(), (unsigned long long)s.compared_blocks,
                  (unsigned long long)(s.data_blocks + s.zero_blocks), (unsigned long long)s.data_blocks,
                  (unsigned long long)s.zero_blocks, (unsigned long long)s.kept_blocks,
                  core::FormatSize(s.bytes_sent).c_str(), job.duration_s);
    core::JsonWriter d;
    d.BeginObject().Key("result").String(result).Key("blocks_compared").Uint(s.compared_blocks);
    d.Key("blocks_sent").Uint(s.data_blocks + s.zero_blocks).Key("data_blocks").Uint(s.data_blocks);
    d.Key("zero_blocks").Uint(s.zero_blocks).Key("kept_blocks").Uint(s.kept_blocks);
    d.Key("matched_blocks").Uint(s.matched_blocks).Key("bytes_sent").Uint(s.bytes_sent);
    d.Key("duration").Double(job.duration_s).Key("error");
    if (ran.ok()) d.Null();
    else d.String(ran.status().ToString());
    d.EndObject();
    events.push_back(MakeEvent(job, "resync-completed", text, d.str()));
  }
  jobs::Event e;
  e.job = job.id;
  e.guest = job.guest;
  core::JsonWriter details;
  details.BeginObject();
  if (ran.ok() && ran->resync_deferred) {
    e.kind = "resync-deferred";
    e.message = "a resync is required (" + ran->resync_reason + "); not run now: " +
                (job.resync_at ? "it is scheduled for " + FormatTime(job.resync_at)
                 : job.auto_resync ? "outside the resync window " + job.resync_window
                                   : "automatic resync is off (blkrep resync " + job.id + " --now)");
    details.Key("reason").String(ran->resync_reason);
  } else if (ran.ok()) {
    const auto& s = ran->stats;
    e.kind = "cycle-completed";
    char text[256];
    std::snprintf(text, sizeof(text), "%s cycle: %llu blocks (%llu data, %llu zero, %llu kept), %s on the wire, %.2f s",
                  ran->mode.c_str(), (unsigned long long)ran->blocks_sent, (unsigned long long)s.data_blocks,
                  (unsigned long long)s.zero_blocks, (unsigned long long)s.kept_blocks,
                  core::FormatSize(s.bytes_sent).c_str(), job.duration_s);
    e.message = text;
    details.Key("mode").String(ran->mode).Key("blocks_sent").Uint(ran->blocks_sent);
    details.Key("data_blocks").Uint(s.data_blocks).Key("zero_blocks").Uint(s.zero_blocks);
    details.Key("kept_blocks").Uint(s.kept_blocks).Key("bytes_sent").Uint(s.bytes_sent);
    details.Key("duration").Double(job.duration_s);
  } else {
    e.kind = "cycle-failed";
    e.message = job.error;
    details.Key("error").String(job.error).Key("fail_count").Uint(job.fail_count);
  }
  details.EndObject();
  e.details = details.str();
  events.push_back(e);
  if (previous_state != job.state) {
    jobs::Event changed;
    changed.job = job.id;
    changed.guest = job.guest;
    changed.kind = "state-changed";
    changed.message = previous_state + " -> " + job.state;
    core::JsonWriter d;
    d.BeginObject().Key("from").String(previous_state).Key("to").String(job.state).EndObject();
    changed.details = d.str();
    events.push_back(changed);
  }
  for (const auto& ev : events) AddEventOrWarn(store, ev);
}

// Whether a bare `run` picks the job at `now`: enabled, not suspended, and
// due (schedule-now, else never tried or its next sync reached; a job
// waiting for a resync it may not run now is not due).
bool DueForBareRun(const jobs::Job& j, std::int64_t now) {
  if (!j.enabled || j.state == "suspended") return false;
  if (j.run_now) return true;  // schedule-now: whatever its schedule and back-off say
  if (j.state == "resync-required" && !ResyncAllowed(j, now)) return false;
  std::optional<std::int64_t> next = NextSync(j);
  return !j.last_try || (next && *next <= now);
}

// Runs job `id` now and records the outcome in the store and in `report`.
// The job's row is read again under its run lock, so a run acts on the
// definition and state as they are when it starts, not as they were when
// the jobs were listed: with `only_if_due` (a bare run) a job no longer due
// (disabled, suspended or run by another `run` meanwhile) is skipped, ok and
// nothing added to `report`; a suspended job never runs (kAborted). The run
// writes only the run columns (JobStore::SaveRun).
Status RunJob(jobs::JobStore& store, const std::string& id, const std::string& state_dir, bool verbose,
              const shipper::ShipOptions& ship, core::JsonWriter& report, bool only_if_due,
              bool force_resync = false) {
  // Two runs of one job never overlap.
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::FileLock> running, LockJobRun(state_dir, id));

  jobs::Job job;
  jobs::Target target;
  std::string previous_state;
  bool skipped = false;
  BLKREP_RETURN_IF_ERROR(store.InTransaction([&]() -> Status {
    BLKREP_ASSIGN_OR_RETURN(job, store.GetJob(id));
    if (only_if_due && !DueForBareRun(job, Now())) {
      skipped = true;
      return Status::Ok();
    }
    if (job.state == "suspended") return Status::Aborted("job " + id + " is suspended (blkrep resume " + id + ")");
    BLKREP_ASSIGN_OR_RETURN(target, store.GetTarget(job.target));
    previous_state = job.state;
    job.state = "syncing";
    job.last_try = Now();
    return store.SaveRun(job);
  }));
  if (skipped) {
    if (verbose) {
      std::fprintf(stderr, "blkrep: %s: not due any more (disabled, suspended or run meanwhile); skipped\n",
                   id.c_str());
    }
    return Status::Ok();
  }

  jobs::CycleRequest request;
  request.state_dir = state_dir;
  request.job = job.id;
  request.guest = job.guest;
  request.target_args = target.args;
  request.rate_mbps = job.rate_mbps;
  request.ship = ship;
  request.ship.cancel = &g_cancel;
  request.ship.recovery_points = job.recovery_points;
  request.allow_resync = force_resync || ResyncAllowed(job, *job.last_try);
  Progress progress("blkrep: " + job.id);
  request.ship.progress = [&](std::uint64_t done, std::uint64_t total) { progress.Update(done, total); };
  bool resync_started = false;
  request.on_started = [&](const std::string& mode, const std::vector<std::pair<std::string, std::uint64_t>>& vols) {
    if (mode != "resync") return;
    // Hyper-V's 29242 (resynchronization started), one per volume.
    resync_started = true;
    for (const auto& [name, blocks] : vols) {
      core::JsonWriter d;
      d.BeginObject().Key("volume").String(name).Key("first_block").Uint(0).Key("block_count").Uint(blocks);
      d.EndObject();
      AddEventOrWarn(store, MakeEvent(job, "resync-started",
                                      "resync of " + job.guest + " volume " + name + " started: blocks [0, " +
                                          std::to_string(blocks) + ")",
                                      d.str()));
    }
  };
  auto started = std::chrono::steady_clock::now();
  shipper::ShipStats stats;  // what the cycle did, also when it failed
  request.stats_out = &stats;
  Result<jobs::CycleResult> ran = jobs::RunCycle(request);
  job.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  job.run_now = false;
  if (ran.ok() && ran->resync_deferred) {
    job.state = "resync-required";
  } else if (ran.ok()) {
    job.state = "ok";
    job.error.clear();
    job.fail_count = 0;
    job.last_sync = *job.last_try;
    job.last_mode = ran->mode;
    job.last_bytes_sent = ran->stats.bytes_sent;
    job.last_blocks_sent = ran->blocks_sent;
    if (ran->mode == "resync") job.resync_at.reset();
  } else {
    job.state = "error";
    job.error = ran.status().ToString();
    ++job.fail_count;
  }
  // Only the run's columns: the definition may have been edited meanwhile,
  // and the job suspended or scheduled by hand.
  Status saved = store.InTransaction([&]() -> Status {
    Result<jobs::Job> fresh = store.GetJob(job.id);
    if (fresh.ok()) {
      jobs::Job current = *fresh;
      // Suspended while it ran: it stays suspended.
      if (current.state != "suspended") current.state = job.state;
      current.error = job.error;
      current.fail_count = job.fail_count;
      current.last_sync = job.last_sync;
      current.last_try = job.last_try;
      current.duration_s = job.duration_s;
      current.last_mode = job.last_mode;
      current.last_bytes_sent = job.last_bytes_sent;
      current.last_blocks_sent = job.last_blocks_sent;
      // pvesr's schedule-now is used up by any run, successful or not.
      current.run_now = false;
      // A resync done clears a `resync --at` that was due when it began, not
      // one given while it ran.
      if (ran.ok() && ran->mode == "resync" && !ran->resync_deferred && current.resync_at &&
          *current.resync_at <= *job.last_try) {
        current.resync_at.reset();
      }
      job = current;
    }
    return store.SaveRun(job);
  });
  BLKREP_RETURN_IF_ERROR(saved);
  RecordEvents(store, job, previous_state, ran, resync_started, stats);
  report.BeginObject().Key("id").String(job.id).Key("state").String(job.state).Key("error");
  if (job.error.empty()) report.Null();
  else report.String(job.error);
  report.Key("duration").Double(job.duration_s);
  if (ran.ok()) {
    const auto& s = ran->stats;
    report.Key("mode").String(ran->mode).Key("tracker_running").Bool(ran->tracker_running);
    report.Key("blocks_sent").Uint(ran->blocks_sent).Key("data_blocks").Uint(s.data_blocks);
    report.Key("zero_blocks").Uint(s.zero_blocks).Key("kept_blocks").Uint(s.kept_blocks);
    report.Key("raw_bytes").Uint(s.raw_bytes).Key("payload_bytes").Uint(s.payload_bytes);
    report.Key("bytes_sent").Uint(s.bytes_sent).Key("bytes_received").Uint(s.bytes_received);
    report.Key("receiver_bytes").Uint(s.receiver_bytes);
    report.Key("io_engine").String(s.io_engine);
    report.Key("matched_blocks").Uint(s.matched_blocks).Key("compared_blocks").Uint(s.compared_blocks);
    report.Key("resync_reason");
    if (ran->resync_reason.empty()) report.Null();
    else report.String(ran->resync_reason);
  }
  report.EndObject();
  if (ran.ok() && ran->resync_deferred) {
    std::fprintf(stderr, "blkrep: %s: resync required (%s); not run now (blkrep resync %s --now)\n", job.id.c_str(),
                 ran->resync_reason.c_str(), job.id.c_str());
  }
  if (ran.ok() && verbose) {
    const auto& s = ran->stats;
    std::fprintf(stderr,
                 "blkrep: %s: %s cycle of %zu volume(s) via %s: %llu blocks (%llu data, %llu zero, %llu kept), "
                 "%s on the wire, %.2f s, I/O on %s\n",
                 job.id.c_str(), ran->mode.c_str(), ran->volumes.size(),
                 ran->tracker_running ? "the running tracker" : "the journals", (unsigned long long)ran->blocks_sent,
                 (unsigned long long)s.data_blocks, (unsigned long long)s.zero_blocks,
                 (unsigned long long)s.kept_blocks, core::FormatSize(s.bytes_sent).c_str(), job.duration_s,
                 s.io_engine.c_str());
  }
  return ran.status().WithContext("job " + job.id);
}

}  // namespace

int TargetCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage =
      "usage: blkrep target add NAME (--exec 'COMMAND' | --ssh [USER@]HOST | --connect HOST:PORT) [auth options] | "
      "blkrep target list [--json]";
  if (argv.empty()) return ReportError(Status::InvalidArgument(kUsage));
  if (argv[0] == "add") {
    if (argv.size() < 3) return ReportError(Status::InvalidArgument(kUsage));
    std::string name = argv[1];
    if (!tracker::journal_format::IsValidName(name)) {
      return ReportError(Status::InvalidArgument("invalid target name '" + name + "'"));
    }
    std::vector<std::string> rest;
    std::vector<std::string> target_args;
    for (std::size_t i = 2; i < argv.size(); ++i) {
      if ((argv[i] == "--state-dir") && i + 1 < argv.size()) {
        rest = {argv[i], argv[i + 1]};
        ++i;
      } else if (argv[i].rfind("--state-dir=", 0) == 0) {
        rest = {argv[i]};
      } else {
        target_args.push_back(argv[i]);
      }
    }
    auto spec = proto::ParseTargetArgs(target_args);
    if (!spec.ok()) return ReportError(spec.status());
    auto args = ParseArgs(rest, {"state-dir"}, {});
    if (!args.ok()) return ReportError(args.status());
    auto store = OpenStore(*args);
    if (!store.ok()) return ReportError(store.status());
    Status added = (*store)->AddTarget(jobs::Target{name, target_args});
    if (!added.ok()) return ReportError(added);
    return kExitOk;
  }
  if (argv[0] == "list") {
    auto args = ParseArgs({argv.begin() + 1, argv.end()}, {"state-dir"}, {"json"});
    if (!args.ok()) return ReportError(args.status());
    auto store = OpenStore(*args);
    if (!store.ok()) return ReportError(store.status());
    auto targets = (*store)->ListTargets();
    if (!targets.ok()) return ReportError(targets.status());
    if (args->Flag("json")) {
      core::JsonWriter w(core::JsonStyle::kPretty);
      w.BeginArray();
      for (const auto& t : *targets) {
        auto spec = proto::ParseTargetArgs(t.args);
        w.BeginObject().Key("name").String(t.name);
        w.Key("address").String(spec.ok() ? proto::DescribeTarget(*spec) : "(invalid)");
        w.Key("args").BeginArray();
        for (const auto& a : t.args) w.String(a);
        w.EndArray().EndObject();
      }
      w.EndArray();
      std::printf("%s\n", w.str().c_str());
    } else {
      std::printf("%-16s %s\n", "Name", "Address");
      for (const auto& t : *targets) {
        auto spec = proto::ParseTargetArgs(t.args);
        std::printf("%-16s %s\n", t.name.c_str(), spec.ok() ? proto::DescribeTarget(*spec).c_str() : "(invalid)");
      }
    }
    return kExitOk;
  }
  return ReportError(Status::InvalidArgument(kUsage));
}

int CreateLocalJobCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage =
      "usage: blkrep create-local-job JOBID TARGET [--schedule SPEC] [--rate MBPS] [--comment TEXT] [--disable] "
      "[--auto-resync on|off] [--resync-window HH:MM-HH:MM|any] [--recovery-points N]";
  auto args = ParseArgs(argv, {"state-dir", "schedule", "rate", "comment", "auto-resync", "resync-window", "recovery-points"},
                        {"disable"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() != 2) return ReportError(Status::InvalidArgument(kUsage));
  jobs::Job job;
  job.id = args->positional[0];
  job.target = args->positional[1];
  Status valid = jobs::ValidateJobId(job.id, &job.guest);
  if (!valid.ok()) return ReportError(valid);
  Status defined = ParseDefinitionOptions(*args, job);
  if (!defined.ok()) return ReportError(defined);
  job.enabled = !args->Flag("disable");
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  Status created = (*store)->CreateJob(job);
  if (!created.ok()) {
    return ReportError(created.code() == core::Code::kNotFound ? Status::InvalidArgument(created.message())
                                                              : created);
  }
  return kExitOk;
}

// pvesr's update: changes a job's definition (what is given), never its state.
int UpdateCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage =
      "usage: blkrep update JOBID [--schedule SPEC] [--rate MBPS] [--comment TEXT] [--auto-resync on|off] "
      "[--resync-window HH:MM-HH:MM|any] [--recovery-points N]";
  auto args = ParseArgs(argv, {"state-dir", "schedule", "rate", "comment", "auto-resync", "resync-window", "recovery-points"},
                        {});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(kUsage));
  const std::string& id = args->positional[0];
  Status valid = jobs::ValidateJobId(id, nullptr);
  if (!valid.ok()) return ReportError(valid);
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto job = (*store)->GetJob(id);
  if (!job.ok()) return ReportError(job.status());
  Status defined = ParseDefinitionOptions(*args, *job);
  if (!defined.ok()) return ReportError(defined);
  // The definition only: a run going on meanwhile owns the state columns.
  Status saved = (*store)->SaveDefinition(*job);
  return saved.ok() ? kExitOk : ReportError(saved);
}

int RunCommand(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"state-dir", "id", "zstd-level", "batch-size", "read-ahead"}, {"verbose", "json"});
  if (!args.ok()) return ReportError(args.status().WithContext("usage: blkrep run [--id JOBID] [--verbose]"));
  if (!args->positional.empty()) return ReportError(Status::InvalidArgument("usage: blkrep run [--id JOBID] [--verbose]"));
  const std::string state_dir = StateDir(*args);
  KeepLargeBuffersOnTheHeap();  // batches and frames of megabytes
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  std::vector<std::string> to_run;  // job ids
  const bool bare = !args->Value("id");
  if (auto id = args->Value("id")) {
    Status valid = jobs::ValidateJobId(*id, nullptr);
    if (!valid.ok()) return ReportError(valid);
    auto job = (*store)->GetJob(*id);
    if (!job.ok()) return ReportError(job.status());
    if (job->state == "suspended") {
      return ReportError(Status::Aborted("job " + *id + " is suspended (blkrep resume " + *id + ")"));
    }
    to_run.push_back(job->id);
  } else {
    auto all = (*store)->ListJobs();
    if (!all.ok()) return ReportError(all.status());
    std::int64_t now = Now();
    for (const auto& j : *all) {
      if (DueForBareRun(j, now)) to_run.push_back(j.id);
    }
  }
  shipper::ShipOptions ship;
  Status tuned = ParseShipOptions(*args, ship);
  if (!tuned.ok()) return ReportError(tuned);
  int status = kExitOk;
  core::JsonWriter report(core::JsonStyle::kPretty);
  report.BeginArray();
  InstallCancelHandlers();
  for (const auto& id : to_run) {
    if (g_cancel.load()) break;
    // Checked again under the job's run lock: the list is as old as the
    // runs before this one took.
    Status ran = RunJob(**store, id, state_dir, args->Flag("verbose"), ship, report, /*only_if_due=*/bare);
    if (!ran.ok()) {
      ReportError(ran);
      status = kExitFailed;  // CONTRACT.md: 1 if a job it ran failed
    }
  }
  report.EndArray();
  if (args->Flag("json")) std::printf("%s\n", report.str().c_str());
  return status;
}

int StatusCommand(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"state-dir"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext("usage: blkrep status [--json]"));
  if (!args->positional.empty()) return ReportError(Status::InvalidArgument("usage: blkrep status [--json]"));
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto all = (*store)->ListJobs();
  if (!all.ok()) return ReportError(all.status());
  // A job whose journal says its next cycle must be a resync shows it
  // (unless it is syncing, suspended or disabled), with the reason.
  std::map<std::string, std::vector<std::string>> jobs_of_guest;
  for (const auto& j : *all) {
    if (j.state != "syncing" && j.state != "suspended" && j.enabled) jobs_of_guest[j.guest].push_back(j.id);
  }
  std::map<std::string, std::string> resync_reasons;  // job -> reason
  for (const auto& [guest, ids] : jobs_of_guest) {
    resync_reasons.merge(jobs::ResyncRequiredReasons(StateDir(*args), guest, ids));
  }
  for (auto& j : *all) {
    if (resync_reasons.count(j.id)) j.state = "resync-required";
  }
  if (args->Flag("json")) {
    // Health as `blkrep measure` judges it over the last 24 hours.
    const std::int64_t now = Now();
    auto measured = jobs::MeasureJobs(**store, StateDir(*args), *all, now - jobs::kDefaultMonitoringWindowSeconds, now,
                                      /*clip_to_first_event=*/true, /*read_pending=*/false);
    if (!measured.ok()) return ReportError(measured.status());
    std::map<std::string, jobs::Measurement> health;
    for (auto& m : *measured) health[m.job] = std::move(m);
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginArray();
    for (const auto& j : *all) {
      w.BeginObject();
      w.Key("id").String(j.id).Key("guest").String(j.guest).Key("target").String(j.target);
      w.Key("enabled").Bool(j.enabled).Key("schedule").String(j.schedule);
      w.Key("rate").Double(j.rate_mbps).Key("comment").String(j.comment);
      w.Key("last_sync");
      JsonOptInt(w, j.last_sync);
      w.Key("last_try");
      JsonOptInt(w, j.last_try);
      w.Key("next_sync");
      JsonOptInt(w, NextSync(j));
      w.Key("duration").Double(j.duration_s).Key("fail_count").Uint(j.fail_count).Key("state").String(j.state);
      w.Key("error").StringOrNull(j.error);
      w.Key("last_mode").StringOrNull(j.last_mode);
      w.Key("last_bytes_sent").Uint(j.last_bytes_sent).Key("last_blocks_sent").Uint(j.last_blocks_sent);
      w.Key("resync_reason");
      if (auto it = resync_reasons.find(j.id); it != resync_reasons.end()) w.String(it->second);
      else w.Null();
      w.Key("health").String(jobs::HealthName(health[j.id].health)).Key("health_reasons").BeginArray();
      for (const auto& reason : health[j.id].health_reasons) w.String(reason);
      w.EndArray();
      w.EndObject();
    }
    w.EndArray();
    std::printf("%s\n", w.str().c_str());
    return kExitOk;
  }
  std::printf("%-12s %-8s %-12s %-20s %-20s %10s %9s %s\n", "JobID", "Enabled", "Target", "LastSync", "NextSync",
              "Duration", "FailCount", "State");
  for (const auto& j : *all) {
    std::string state = j.state == "error" ? "error: " + j.error : j.state;
    if (auto it = resync_reasons.find(j.id); it != resync_reasons.end()) state += ": " + it->second;
    std::printf("%-12s %-8s %-12s %-20s %-20s %10.2f %9llu %s\n", j.id.c_str(), j.enabled ? "Yes" : "No",
                j.target.c_str(), FormatTime(j.last_sync).c_str(), FormatTime(NextSync(j)).c_str(), j.duration_s,
                (unsigned long long)j.fail_count, state.c_str());
  }
  return kExitOk;
}


int EventsCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage = "usage: blkrep events [--json] [--since TIME]";
  auto args = ParseArgs(argv, {"state-dir", "since"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (!args->positional.empty()) return ReportError(Status::InvalidArgument(kUsage));
  std::int64_t since = 0;
  if (auto t = args->Value("since")) {
    auto parsed = ParseTime(*t);
    if (!parsed.ok()) return ReportError(parsed.status());
    since = *parsed;
  }
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto events = (*store)->ListEvents(since);
  if (!events.ok()) return ReportError(events.status());
  if (args->Flag("json")) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginArray();
    for (const auto& e : *events) {
      w.BeginObject().Key("id").Int(e.id).Key("time").Int(e.time).Key("kind").String(e.kind);
      w.Key("job").String(e.job).Key("guest").String(e.guest).Key("message").String(e.message);
      w.Key("details").Raw(e.details).EndObject();
    }
    w.EndArray();
    std::printf("%s\n", w.str().c_str());
    return kExitOk;
  }
  for (const auto& e : *events) {
    std::printf("%s  %-16s %-12s %s\n", FormatTime(e.time).c_str(), e.kind.c_str(), e.job.c_str(), e.message.c_str());
  }
  return kExitOk;
}

namespace {

// `resync --now`, `resume --resync`: marks the job resync-required and runs
// its resync at once, whatever its automatic-resync settings say.
int RunResyncNow(jobs::JobStore& store, jobs::Job job, const std::string& state_dir, const Args& args) {
  KeepLargeBuffersOnTheHeap();
  InstallCancelHandlers();
  Status marked = jobs::RequireResync(state_dir, job.guest, job.id, "requested by hand");
  if (!marked.ok()) return ReportError(marked.WithContext("job " + job.id));
  // The same report as `run --json`: an array of the jobs run.
  core::JsonWriter report(core::JsonStyle::kPretty);
  report.BeginArray();
  shipper::ShipOptions ship;
  Status tuned = ParseShipOptions(args, ship);
  if (!tuned.ok()) return ReportError(tuned);
  Status ran = RunJob(store, job.id, state_dir, args.Flag("verbose"), ship, report, /*only_if_due=*/false,
                      /*force_resync=*/true);
  report.EndArray();
  if (args.Flag("json")) std::printf("%s\n", report.str().c_str());
  return ran.ok() ? kExitOk : ReportError(ran);
}

// Sets a job's state by hand (suspend, resume) and records the change.
int SetJobState(const std::vector<std::string>& argv, const char* usage, bool suspend) {
  auto args = ParseArgs(argv, {"state-dir", "zstd-level", "batch-size", "read-ahead"}, {"resync", "json", "verbose"});
  if (!args.ok()) return ReportError(args.status().WithContext(usage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(usage));
  const std::string& id = args->positional[0];
  Status valid = jobs::ValidateJobId(id, nullptr);
  if (!valid.ok()) return ReportError(valid);
  if (suspend && (args->Flag("resync") || args->Flag("json") || args->Value("batch-size") ||
                  args->Value("read-ahead") || args->Value("zstd-level"))) {
    return ReportError(Status::InvalidArgument(usage));
  }
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  // The state column only, decided on the row as it is now: a run or an
  // `update` going on meanwhile keeps what it writes.
  jobs::Job job;
  std::string before;
  Status set = (*store)->InTransaction([&]() -> Status {
    BLKREP_ASSIGN_OR_RETURN(job, (*store)->GetJob(id));
    before = job.state;
    if (suspend) {
      job.state = "suspended";
    } else if (before == "suspended") {
      job.state = job.error.empty() ? "ok" : "error";
    }
    if (job.state == before) return Status::Ok();
    return (*store)->SetState(id, job.state);
  });
  if (!set.ok()) return ReportError(set);
  if (job.state != before) {
    core::JsonWriter d;
    d.BeginObject().Key("from").String(before).Key("to").String(job.state).EndObject();
    AddEventOrWarn(**store, MakeEvent(job, "state-changed",
                                      before + " -> " + job.state +
                                          (suspend ? " (suspended by hand)" : " (resumed by hand)"),
                                      d.str()));
  }
  if (!args->Flag("resync")) return kExitOk;
  // Hyper-V's Resume-VMReplication -Resynchronize: the resync now. One that
  // was cut off continues: the receiver offers what it staged, and only
  // blocks not staged with the same content are sent.
  return RunResyncNow(**store, job, StateDir(*args), *args);
}

}  // namespace

// Hyper-V's Suspend-VMReplication: no cycle runs (tracking goes on, so the
// changes accumulate) until resume.
int SuspendCommand(const std::vector<std::string>& argv) {
  return SetJobState(argv, "usage: blkrep suspend JOBID", true);
}

int ResumeCommand(const std::vector<std::string>& argv) {
  return SetJobState(argv, "usage: blkrep resume JOBID [--resync]", false);
}

}  // namespace blkrep::tools

namespace blkrep::tools {

// Hyper-V's resynchronization, asked for by hand: at once (--now), at a
// time (--at), or by the next run that may resync.
int ResyncCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage = "usage: blkrep resync JOBID [--now] [--at TIME] [--json] [--verbose]";
  auto args = ParseArgs(argv, {"state-dir", "at", "zstd-level", "batch-size", "read-ahead"}, {"now", "json", "verbose"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(kUsage));
  const std::string& id = args->positional[0];
  Status valid = jobs::ValidateJobId(id, nullptr);
  if (!valid.ok()) return ReportError(valid);
  if (args->Flag("now") && args->Value("at")) {
    return ReportError(Status::InvalidArgument("resync: --now and --at exclude each other"));
  }
  std::optional<std::int64_t> at;
  if (auto t = args->Value("at")) {
    auto parsed = ParseTime(*t);
    if (!parsed.ok()) return ReportError(Status::InvalidArgument("--at" + parsed.status().message().substr(7)));
    at = *parsed;
  }
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto job = (*store)->GetJob(id);
  if (!job.ok()) return ReportError(job.status());
  if (job->state == "suspended") {
    return ReportError(Status::Aborted("job " + id + " is suspended (blkrep resume " + id + " --resync)"));
  }
  if (args->Flag("now")) return RunResyncNow(**store, *job, StateDir(*args), *args);
  Status marked = jobs::RequireResync(StateDir(*args), job->guest, id, "requested by hand");
  if (!marked.ok()) return ReportError(marked.WithContext("job " + id));
  // The run columns only, of the row as it is now: an `update` or `disable`
  // made meanwhile stays.
  std::string before;
  Status saved = (*store)->InTransaction([&]() -> Status {
    BLKREP_ASSIGN_OR_RETURN(*job, (*store)->GetJob(id));
    before = job->state;
    job->state = "resync-required";
    job->resync_at = at;
    return (*store)->SaveRun(*job);
  });
  if (!saved.ok()) return ReportError(saved);
  core::JsonWriter d;
  d.BeginObject().Key("from").String(before).Key("to").String(job->state).Key("at");
  JsonOptInt(d, at);
  d.EndObject();
  AddEventOrWarn(**store, MakeEvent(*job, "state-changed",
                                    before + " -> resync-required (resync requested by hand" +
                                        (at ? ", at " + FormatTime(at) : std::string()) + ")",
                                    d.str()));
  if (args->Flag("json")) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginObject().Key("id").String(id).Key("state").String(job->state).Key("resync_at");
    JsonOptInt(w, at);
    w.EndObject();
    std::printf("%s\n", w.str().c_str());
  }
  return kExitOk;
}

// DRBD's online verify: every block's hash on both sides, no data sent.
int VerifyCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage = "usage: blkrep verify JOBID [--json]";
  auto args = ParseArgs(argv, {"state-dir", "batch-size", "read-ahead"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (args->positional.size() != 1) return ReportError(Status::InvalidArgument(kUsage));
  const std::string& id = args->positional[0];
  Status valid = jobs::ValidateJobId(id, nullptr);
  if (!valid.ok()) return ReportError(valid);
  const std::string state_dir = StateDir(*args);
  shipper::ShipOptions ship;
  Status tuned = ParseShipOptions(*args, ship);
  if (!tuned.ok()) return ReportError(tuned);
  KeepLargeBuffersOnTheHeap();
  InstallCancelHandlers();
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto job = (*store)->GetJob(id);
  if (!job.ok()) return ReportError(job.status());
  auto target = (*store)->GetTarget(job->target);
  if (!target.ok()) return ReportError(target.status());
  // No cycle of the job may commit while it is compared.
  auto running = LockJobRun(state_dir, id);
  if (!running.ok()) return ReportError(running.status());

  jobs::CycleRequest request;
  request.state_dir = state_dir;
  request.job = id;
  request.guest = job->guest;
  request.target_args = target->args;
  request.rate_mbps = job->rate_mbps;
  request.ship = ship;
  request.ship.cancel = &g_cancel;
  Progress progress("blkrep: verify " + id);
  request.ship.progress = [&](std::uint64_t done, std::uint64_t total) { progress.Update(done, total); };
  auto started = std::chrono::steady_clock::now();
  Result<jobs::VerifyResult> verified = jobs::RunVerify(request);
  double duration = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (!verified.ok()) return ReportError(verified.status().WithContext("verify " + id));
  const jobs::VerifyResult& r = *verified;

  core::JsonWriter d;
  d.BeginObject().Key("blocks_compared").Uint(r.compared_blocks).Key("differing_blocks").Uint(r.differing_blocks);
  d.Key("duration").Double(duration).EndObject();
  char text[200];
  std::snprintf(text, sizeof(text), "verify: %llu blocks compared, %llu differ, %.2f s",
                (unsigned long long)r.compared_blocks, (unsigned long long)r.differing_blocks, duration);
  AddEventOrWarn(**store, MakeEvent(*job, "verify-completed", text, d.str()));

  if (args->Flag("json")) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginObject().Key("id").String(id).Key("guest").String(job->guest).Key("target").String(job->target);
    w.Key("identical").Bool(r.differing_blocks == 0).Key("compared_blocks").Uint(r.compared_blocks);
    w.Key("differing_blocks").Uint(r.differing_blocks);
    w.Key("resync_required_before").Bool(r.resync_required_before);
    w.Key("resync_required").Bool(r.differing_blocks > 0 || r.resync_required_before);
    w.Key("duration").Double(duration).Key("bytes_sent").Uint(r.stats.bytes_sent);
    w.Key("bytes_received").Uint(r.stats.bytes_received).Key("tracker_running").Bool(r.tracker_running);
    w.Key("volumes").BeginArray();
    for (const jobs::VerifyVolume& v : r.volumes) {
      w.BeginObject().Key("name").String(v.name).Key("blocks").Uint(v.blocks);
      w.Key("block_size").Uint(v.block_size_bytes).Key("changed_blocks").Uint(v.changed_blocks);
      w.Key("differing_blocks").Uint(v.differing_blocks).Key("differing_ranges").BeginArray();
      for (const auto& [first, count] : v.differing) w.BeginArray().Uint(first).Uint(count).EndArray();
      w.EndArray().EndObject();
    }
    w.EndArray().EndObject();
    std::printf("%s\n", w.str().c_str());
  } else {
    for (const jobs::VerifyVolume& v : r.volumes) {
      std::printf("%s: %llu of %llu blocks differ", v.name.c_str(), (unsigned long long)v.differing_blocks,
                  (unsigned long long)v.blocks);
      if (v.changed_blocks > 0) std::printf(" (%llu changed since the last cycle, not judged)", (unsigned long long)v.changed_blocks);
      std::printf("\n");
      for (const auto& [first, count] : v.differing) {
        std::printf("  [%llu, %llu]\n", (unsigned long long)first, (unsigned long long)count);
      }
    }
  }
  if (r.differing_blocks > 0) {
    return ReportError(Status::Aborted("job " + id + ": the replica differs in " + std::to_string(r.differing_blocks) +
                                       " blocks; the job is resync-required"));
  }
  return kExitOk;
}

}  // namespace blkrep::tools
