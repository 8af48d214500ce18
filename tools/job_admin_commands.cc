// pvesr's administrative job verbs (CONTRACT.md): list, read, enable,
// disable, schedule-now and delete.
//
// Design note. These only change the job's row in jobs::JobStore (and
// record an event), except delete, which also undoes what the job left
// elsewhere: under the job's run lock (so no cycle of it runs meanwhile),
// unless --keep, the job's receiver removes the guest's replica
// (jobs::RemoveReplica; a replica of another job is refused there); then
// the job's target leaves the guest's journals (jobs::RemoveJobFromSource,
// through the running tracker or the journals themselves), and only then
// is the row deleted. A failure on the target keeps the job, unless
// --force (pvesr: "remove the job config entry even if cleanup fails"),
// which warns and goes on.
//
// A disabled job is never picked by a bare `run` (NextSync is none);
// schedule-now sets the job's run_now, which makes the next bare `run`
// pick it whatever its schedule and back-off say, and which any run
// clears.
#include <unistd.h>

#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/json.h"
#include "jobs/cycle_runner.h"
#include "jobs/job_removal.h"
#include "jobs/job_store.h"
#include "jobs/monitoring.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/job_util.h"

namespace blkrep::tools {

using core::Result;
using core::Status;

namespace {

// The parsed arguments of a verb taking exactly one JOBID; its job loaded.
struct OneJob {
  Args args;
  std::unique_ptr<jobs::JobStore> store;
  jobs::Job job;
};

// Parses `argv` for a verb on one JOBID; on failure returns the exit status
// (after reporting the error) in `exit_status`.
std::optional<OneJob> LoadOneJob(const std::vector<std::string>& argv, const char* usage,
                                 const std::set<std::string>& flags, int* exit_status) {
  auto args = ParseArgs(argv, {"state-dir"}, flags);
  if (!args.ok()) {
    *exit_status = ReportError(args.status().WithContext(usage));
    return std::nullopt;
  }
  if (args->positional.size() != 1) {
    *exit_status = ReportError(Status::InvalidArgument(usage));
    return std::nullopt;
  }
  const std::string& id = args->positional[0];
  Status valid = jobs::ValidateJobId(id, nullptr);
  if (!valid.ok()) {
    *exit_status = ReportError(valid);
    return std::nullopt;
  }
  auto store = OpenStore(*args);
  if (!store.ok()) {
    *exit_status = ReportError(store.status());
    return std::nullopt;
  }
  auto job = (*store)->GetJob(id);
  if (!job.ok()) {
    *exit_status = ReportError(job.status());
    return std::nullopt;
  }
  return OneJob{std::move(*args), std::move(*store), std::move(*job)};
}

// enable / disable.
int SetEnabled(const std::vector<std::string>& argv, bool enable) {
  const char* usage = enable ? "usage: blkrep enable JOBID" : "usage: blkrep disable JOBID";
  int exit_status = kExitOk;
  std::optional<OneJob> one = LoadOneJob(argv, usage, {}, &exit_status);
  if (!one) return exit_status;
  jobs::Job& job = one->job;
  // The enabled column only, decided on the row as it is now: a run going on
  // keeps the state it writes, an `update` the definition.
  bool changed = false;
  Status saved = one->store->InTransaction([&]() -> Status {
    BLKREP_ASSIGN_OR_RETURN(job, one->store->GetJob(job.id));
    if (job.enabled == enable) return Status::Ok();
    changed = true;
    job.enabled = enable;
    return one->store->SetEnabled(job.id, enable);
  });
  if (!saved.ok()) return ReportError(saved);
  if (!changed) return kExitOk;
  core::JsonWriter d;
  d.BeginObject().Key("enabled").Bool(enable).EndObject();
  AddEventOrWarn(*one->store, MakeEvent(job, enable ? "job-enabled" : "job-disabled",
                                        std::string("job ") + (enable ? "enabled" : "disabled") + " by hand",
                                        d.str()));
  return kExitOk;
}

}  // namespace

// pvesr list: the job definitions.
int ListCommand(const std::vector<std::string>& argv) {
  constexpr const char* kUsage = "usage: blkrep list [--json]";
  auto args = ParseArgs(argv, {"state-dir"}, {"json"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (!args->positional.empty()) return ReportError(Status::InvalidArgument(kUsage));
  auto store = OpenStore(*args);
  if (!store.ok()) return ReportError(store.status());
  auto all = (*store)->ListJobs();
  if (!all.ok()) return ReportError(all.status());
  if (args->Flag("json")) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginArray();
    for (const auto& j : *all) {
      w.BeginObject().Key("id").String(j.id).Key("guest").String(j.guest).Key("target").String(j.target);
      w.Key("schedule").String(j.schedule).Key("rate").Double(j.rate_mbps).Key("enabled").Bool(j.enabled);
      w.Key("comment").String(j.comment).EndObject();
    }
    w.EndArray();
    std::printf("%s\n", w.str().c_str());
    return kExitOk;
  }
  std::printf("%-12s %-12s %-16s %8s %-8s %s\n", "JobID", "Target", "Schedule", "Rate", "Enabled", "Comment");
  for (const auto& j : *all) {
    std::string rate = "-";
    if (j.rate_mbps > 0) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%g", j.rate_mbps);
      rate = buf;
    }
    std::printf("%-12s %-12s %-16s %8s %-8s %s\n", j.id.c_str(), j.target.c_str(), j.schedule.c_str(), rate.c_str(),
                j.enabled ? "Yes" : "No", j.comment.c_str());
  }
  return kExitOk;
}

// pvesr read: one job's whole definition and state.
int ReadCommand(const std::vector<std::string>& argv) {
  int exit_status = kExitOk;
  std::optional<OneJob> one = LoadOneJob(argv, "usage: blkrep read JOBID [--json]", {"json"}, &exit_status);
  if (!one) return exit_status;
  jobs::Job& j = one->job;
  // As status shows it: a journal that requires a resync says so.
  std::string resync_reason;
  if (j.state != "syncing" && j.state != "suspended" && j.enabled) {
    auto reasons = jobs::ResyncRequiredReasons(StateDir(one->args), j.guest, {j.id});
    if (auto it = reasons.find(j.id); it != reasons.end()) {
      j.state = "resync-required";
      resync_reason = it->second;
    }
  }
  std::optional<std::int64_t> next = NextSync(j);
  // Health as status and measure judge it (the last 24 hours).
  const std::int64_t now = Now();
  auto measured = jobs::MeasureJobs(*one->store, StateDir(one->args), {j}, now - jobs::kDefaultMonitoringWindowSeconds,
                                    now, /*clip_to_first_event=*/true, /*read_pending=*/false);
  if (!measured.ok()) return ReportError(measured.status());
  const jobs::Measurement& health = measured->front();
  if (one->args.Flag("json")) {
    core::JsonWriter w(core::JsonStyle::kPretty);
    w.BeginObject();
    w.Key("id").String(j.id).Key("guest").String(j.guest).Key("target").String(j.target);
    w.Key("enabled").Bool(j.enabled).Key("schedule").String(j.schedule);
    w.Key("rate").Double(j.rate_mbps).Key("comment").String(j.comment);
    w.Key("state").String(j.state).Key("error").StringOrNull(j.error);
    w.Key("fail_count").Uint(j.fail_count).Key("last_sync");
    JsonOptInt(w, j.last_sync);
    w.Key("last_try");
    JsonOptInt(w, j.last_try);
    w.Key("next_sync");
    JsonOptInt(w, next);
    w.Key("duration").Double(j.duration_s).Key("last_mode").StringOrNull(j.last_mode);
    w.Key("last_bytes_sent").Uint(j.last_bytes_sent).Key("last_blocks_sent").Uint(j.last_blocks_sent);
    w.Key("resync_reason").StringOrNull(resync_reason);
    w.Key("auto_resync").Bool(j.auto_resync).Key("resync_window").StringOrNull(j.resync_window);
    w.Key("resync_at");
    JsonOptInt(w, j.resync_at);
    w.Key("run_now").Bool(j.run_now).Key("recovery_points").Uint(j.recovery_points);
    w.Key("health").String(jobs::HealthName(health.health)).Key("health_reasons").BeginArray();
    for (const auto& reason : health.health_reasons) w.String(reason);
    w.EndArray();
    w.EndObject();
    std::printf("%s\n", w.str().c_str());
    return kExitOk;
  }
  auto line = [](const char* key, const std::string& value) { std::printf("%-16s %s\n", key, value.c_str()); };
  line("id:", j.id);
  line("guest:", j.guest);
  line("target:", j.target);
  line("enabled:", j.enabled ? "yes" : "no");
  line("schedule:", j.schedule);
  char rate[32];
  std::snprintf(rate, sizeof(rate), "%g", j.rate_mbps);
  line("rate:", j.rate_mbps > 0 ? std::string(rate) + " MB/s" : "unlimited");
  line("comment:", j.comment);
  line("state:", j.state);
  line("error:", j.error.empty() ? "-" : j.error);
  line("fail_count:", std::to_string(j.fail_count));
  line("health:", std::string(jobs::HealthName(health.health)));
  for (const auto& reason : health.health_reasons) line("", reason);
  line("last_sync:", FormatTime(j.last_sync));
  line("last_try:", FormatTime(j.last_try));
  line("next_sync:", FormatTime(next));
  char duration[32];
  std::snprintf(duration, sizeof(duration), "%.2f s", j.duration_s);
  line("duration:", duration);
  line("last_mode:", j.last_mode.empty() ? "-" : j.last_mode);
  line("last_bytes_sent:", std::to_string(j.last_bytes_sent));
  line("last_blocks_sent:", std::to_string(j.last_blocks_sent));
  line("resync_reason:", resync_reason.empty() ? "-" : resync_reason);
  line("auto_resync:", j.auto_resync ? "on" : "off");
  line("resync_window:", j.resync_window.empty() ? "any" : j.resync_window);
  line("resync_at:", FormatTime(j.resync_at));
  line("run_now:", j.run_now ? "yes" : "no");
  line("recovery_points:", std::to_string(j.recovery_points));
  return kExitOk;
}

int EnableCommand(const std::vector<std::string>& argv) { return SetEnabled(argv, true); }
int DisableCommand(const std::vector<std::string>& argv) { return SetEnabled(argv, false); }

// pvesr schedule-now: the next bare `run` runs the job.
int ScheduleNowCommand(const std::vector<std::string>& argv) {
  int exit_status = kExitOk;
  std::optional<OneJob> one = LoadOneJob(argv, "usage: blkrep schedule-now JOBID", {}, &exit_status);
  if (!one) return exit_status;
  jobs::Job& job = one->job;
  // The run_now column only, decided on the row as it is now (see SetEnabled).
  bool changed = false;
  Status saved = one->store->InTransaction([&]() -> Status {
    BLKREP_ASSIGN_OR_RETURN(job, one->store->GetJob(job.id));
    if (job.run_now) return Status::Ok();
    changed = true;
    job.run_now = true;
    return one->store->SetRunNow(job.id, true);
  });
  if (!saved.ok()) return ReportError(saved);
  if (!changed) return kExitOk;
  AddEventOrWarn(*one->store, MakeEvent(job, "job-scheduled-now", "the next run runs the job now", "{}"));
  if (!job.enabled || job.state == "suspended") {
    std::fprintf(stderr, "blkrep: warning: job %s is %s: no run picks it until %s\n", job.id.c_str(),
                 job.enabled ? "suspended" : "disabled", job.enabled ? "it is resumed" : "it is enabled");
  }
  return kExitOk;
}

// pvesr delete: the replica on the target (unless --keep), the job's target
// in the journals, the job.
int DeleteCommand(const std::vector<std::string>& argv) {
  int exit_status = kExitOk;
  std::optional<OneJob> one =
      LoadOneJob(argv, "usage: blkrep delete JOBID [--keep] [--force]", {"keep", "force"}, &exit_status);
  if (!one) return exit_status;
  const jobs::Job& job = one->job;
  const std::string state_dir = StateDir(one->args);
  const bool force = one->args.Flag("force");
  auto running = LockJobRun(state_dir, job.id);
  if (!running.ok()) {
    if (running.status().code() == core::Code::kAborted) {
      return ReportError(Status::Aborted("job " + job.id + " is running (a run holds its lock); delete it when "
                                         "the run is over"));
    }
    return ReportError(running.status());
  }
  std::string cleanup_failed;
  if (!one->args.Flag("keep")) {
    Status removed;
    Result<jobs::Target> target = one->store->GetTarget(job.target);
    if (!target.ok()) removed = target.status();
    else removed = jobs::RemoveReplica(state_dir, job.guest, job.id, target->args);
    if (!removed.ok()) {
      if (!force) {
        return ReportError(Status::Aborted("delete job " + job.id + ": " + removed.ToString() +
                                           " (the job is kept; --keep leaves the replica, --force deletes the job "
                                           "anyway)"));
      }
      cleanup_failed = removed.ToString();
      std::fprintf(stderr, "blkrep: warning: delete job %s: %s; the job is deleted anyway (--force)\n",
                   job.id.c_str(), cleanup_failed.c_str());
    }
  }
  Status unhooked = jobs::RemoveJobFromSource(state_dir, job.guest, job.id);
  if (!unhooked.ok()) {
    if (!force) {
      return ReportError(Status::Aborted("delete job " + job.id + ": remove it from the journals of guest " +
                                         job.guest + ": " + unhooked.ToString() + " (the job is kept)"));
    }
    std::fprintf(stderr, "blkrep: warning: delete job %s: %s; the job is deleted anyway (--force)\n", job.id.c_str(),
                 unhooked.ToString().c_str());
    if (cleanup_failed.empty()) cleanup_failed = unhooked.ToString();
  }
  Status deleted = one->store->DeleteJob(job.id);
  if (!deleted.ok()) return ReportError(deleted);
  // What the job's runs left on this node: its (empty) copy-on-write
  // directory and, still held here, its run lock.
  (void)::rmdir((state_dir + "/cow/" + job.guest + "/" + job.id).c_str());
  (void)::unlink((state_dir + "/" + job.id + ".run.lock").c_str());
  core::JsonWriter d;
  d.BeginObject().Key("target").String(job.target).Key("replica_kept").Bool(one->args.Flag("keep"));
  d.Key("forced").Bool(force).Key("cleanup_error").StringOrNull(cleanup_failed);
  d.EndObject();
  std::string message = "job deleted (target " + job.target + ", replica " +
                        (one->args.Flag("keep") ? "kept" : cleanup_failed.empty() ? "removed" : "not removed") + ")";
  AddEventOrWarn(*one->store, MakeEvent(job, "job-deleted", message, d.str()));
  return kExitOk;
}

}  // namespace blkrep::tools
