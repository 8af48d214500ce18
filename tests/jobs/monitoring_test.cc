// jobs/monitoring: Measure-VMReplication figures and health from synthetic
// events, exact to the byte and the second; MeasureJobs over a real job
// store.
#include "jobs/monitoring.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/core/temp_dir.h"

namespace blkrep::jobs {
namespace {

constexpr std::int64_t kNow = 1'800'000'000;
constexpr std::int64_t kSince = kNow - 24 * 3600;

Job MakeJob(std::string state = "ok") {
  Job j;
  j.id = "vm7-1";
  j.guest = "vm7";
  j.target = "dr";
  j.state = std::move(state);
  return j;
}

Event Completed(std::int64_t time, std::uint64_t bytes, double duration_s, const std::string& job = "vm7-1") {
  Event e;
  e.time = time;
  e.kind = "cycle-completed";
  e.job = job;
  e.guest = "vm7";
  e.details =
      "{\"mode\":\"incremental\",\"blocks_sent\":3,\"data_blocks\":3,\"zero_blocks\":0,\"kept_blocks\":0,"
      "\"bytes_sent\":" +
      std::to_string(bytes) + ",\"duration\":" + std::to_string(duration_s) + "}";
  return e;
}

Event Other(std::int64_t time, const std::string& kind, const std::string& details = "{}") {
  Event e;
  e.time = time;
  e.kind = kind;
  e.job = "vm7-1";
  e.guest = "vm7";
  e.details = details;
  return e;
}

MeasureInput Input(Job job, std::vector<Event> events) {
  MeasureInput in;
  in.job = std::move(job);
  in.events = std::move(events);
  in.since = kSince;
  in.now = kNow;
  return in;
}

TEST(MonitoringTest, FiguresCountOnlyTheJobsEventsInsideTheWindow) {
  Job job = MakeJob();
  job.last_sync = kNow - 600;
  MeasureInput in =
      Input(job, {
                     Completed(kSince - 1, 999'999, 99),  // before the window
                     Completed(kNow - 5000, 100, 1.5),
                     Other(kNow - 4000, "cycle-failed", "{\"error\":\"x\",\"fail_count\":1}"),
                     Completed(kNow - 3000, 300, 0.5), Other(kNow - 2500, "resync-deferred", "{\"reason\":\"r\"}"),
                     Other(kNow - 2400, "verify-completed", "{\"bytes_sent\":77777}"), Completed(kNow - 600, 200, 4.0),
                     Completed(kNow - 500, 5000, 9, "vm7-2"),  // another job
                     Completed(kNow + 1, 5000, 9),             // after now
                 });
  in.pending_bytes = 12288;
  Measurement m = Measure(in);
  EXPECT_EQ(m.job, "vm7-1");
  EXPECT_EQ(m.window_start, kSince);
  EXPECT_EQ(m.window_end, kNow);
  EXPECT_EQ(m.success_count, 3u);
  EXPECT_EQ(m.failed_count, 1u);
  EXPECT_EQ(m.deferred_count, 1u);
  EXPECT_EQ(m.missed_count, 2u);
  EXPECT_EQ(m.error_count, 1u);
  EXPECT_EQ(m.total_bytes, 600u);
  EXPECT_EQ(m.average_size_bytes, 200u);
  EXPECT_EQ(m.maximum_size_bytes, 300u);
  EXPECT_DOUBLE_EQ(m.average_latency_s, 2.0);
  EXPECT_DOUBLE_EQ(m.maximum_latency_s, 4.0);
  EXPECT_EQ(m.last_success, kNow - 600);
  EXPECT_EQ(m.pending_bytes, 12288u);
  // 2 of 5 due cycles missed.
  EXPECT_EQ(m.health, Health::kWarning);
  ASSERT_EQ(m.health_reasons.size(), 1u);
  EXPECT_EQ(m.health_reasons[0], "2 of 5 cycles missed in the window (40%, warning at 20%)");
}

TEST(MonitoringTest, AnEmptyWindowHasZeroFiguresAndNoPendingWhenUnknown) {
  Job job = MakeJob();
  Measurement m = Measure(Input(job, {}));
  EXPECT_EQ(m.success_count, 0u);
  EXPECT_EQ(m.missed_count, 0u);
  EXPECT_EQ(m.average_size_bytes, 0u);
  EXPECT_EQ(m.average_latency_s, 0.0);
  EXPECT_FALSE(m.pending_bytes.has_value());
  EXPECT_FALSE(m.last_success.has_value());
  // No history at all: nothing to judge.
  EXPECT_EQ(m.health, Health::kNormal);
  EXPECT_TRUE(m.health_reasons.empty());
}

TEST(MonitoringTest, OneMissedCycleInFourIsAWarningAndOneInSixIsNot) {
  Job job = MakeJob();
  job.last_sync = kNow - 60;
  std::vector<Event> events = {Completed(kNow - 400, 10, 1), Other(kNow - 300, "cycle-failed"),
                               Completed(kNow - 200, 10, 1), Completed(kNow - 100, 10, 1)};
  Measurement m = Measure(Input(job, events));
  EXPECT_EQ(m.health, Health::kWarning);
  ASSERT_EQ(m.health_reasons.size(), 1u);
  EXPECT_EQ(m.health_reasons[0], "1 of 4 cycles missed in the window (25%, warning at 20%)");
  // Exactly 20% is a warning still ("at least 20%").
  events.push_back(Completed(kNow - 90, 10, 1));
  EXPECT_EQ(Measure(Input(job, events)).health, Health::kWarning);
  events.push_back(Completed(kNow - 80, 10, 1));
  m = Measure(Input(job, events));
  EXPECT_EQ(m.health, Health::kNormal);
  EXPECT_TRUE(m.health_reasons.empty());
}

TEST(MonitoringTest, ErrorAndResyncRequiredAreCriticalSuspendedIsAWarning) {
  Job job = MakeJob("error");
  job.error = "receiver is down";
  job.last_sync = kNow - 60;
  Measurement m = Measure(Input(job, {Completed(kNow - 100, 1, 1)}));
  EXPECT_EQ(m.health, Health::kCritical);
  ASSERT_EQ(m.health_reasons.size(), 1u);
  EXPECT_EQ(m.health_reasons[0], "replication failed: receiver is down");

  job.state = "resync-required";
  m = Measure(Input(job, {Completed(kNow - 100, 1, 1)}));
  EXPECT_EQ(m.health, Health::kCritical);
  EXPECT_EQ(m.health_reasons, std::vector<std::string>{"resynchronization required"});

  // Suspended for three hours: a warning for the suspension only, not
  // also for the cycles it keeps from running.
  job.state = "suspended";
  job.last_sync = kNow - 3 * 3600;
  m = Measure(Input(job, {}));
  EXPECT_EQ(m.health, Health::kWarning);
  EXPECT_EQ(m.health_reasons, std::vector<std::string>{"replication is suspended (blkrep resume vm7-1)"});
}

TEST(MonitoringTest, NoSuccessForMoreThanAnHourIsAWarningWhileEnabled) {
  Job job = MakeJob();
  job.last_sync = kNow - 3600;
  EXPECT_EQ(Measure(Input(job, {})).health, Health::kNormal);
  job.last_sync = kNow - 3601;
  Measurement m = Measure(Input(job, {}));
  EXPECT_EQ(m.health, Health::kWarning);
  EXPECT_EQ(m.health_reasons, std::vector<std::string>{"no cycle succeeded for 1h 0m (warning after 1h 0m)"});
  // A disabled job is not expected to run.
  job.enabled = false;
  EXPECT_EQ(Measure(Input(job, {})).health, Health::kNormal);
  // Resumed ten minutes ago: the hour counts from then.
  job.enabled = true;
  job.last_sync = kNow - 5 * 3600;
  EXPECT_EQ(Measure(Input(job, {Other(kNow - 600, "state-changed", "{\"from\":\"suspended\",\"to\":\"ok\"}")})).health,
            Health::kNormal);
  // ... but a state change from elsewhere does not reset it.
  EXPECT_EQ(Measure(Input(job, {Other(kNow - 600, "state-changed", "{\"from\":\"ok\",\"to\":\"syncing\"}")})).health,
            Health::kWarning);
}

TEST(MonitoringTest, AJobThatNeverSucceededIsJudgedFromItsOldestKnownActivity) {
  Job job = MakeJob();
  job.last_try = kNow - 2 * 3600;  // tried, never succeeded, no event kept
  Measurement m = Measure(Input(job, {}));
  EXPECT_EQ(m.health, Health::kWarning);
  EXPECT_EQ(m.health_reasons, std::vector<std::string>{"no cycle ever succeeded, for 2h 0m (warning after 1h 0m)"});
  // Younger than an hour: not judged yet.
  job.last_try = kNow - 1800;
  EXPECT_EQ(Measure(Input(job, {})).health, Health::kNormal);
  // Its first event in the window is older.
  m = Measure(Input(job, {Other(kNow - 7200, "state-changed", "{\"from\":\"ok\",\"to\":\"resync-required\"}")}));
  EXPECT_EQ(m.health, Health::kWarning);
}

TEST(MonitoringTest, SeveralRulesGiveSeveralReasonsAndTheWorstLevel) {
  Job job = MakeJob("error");
  job.error = "boom";
  job.last_sync = kNow - 7200;
  Measurement m = Measure(Input(job, {Other(kNow - 100, "cycle-failed")}));
  EXPECT_EQ(m.health, Health::kCritical);
  EXPECT_EQ(m.health_reasons, (std::vector<std::string>{"replication failed: boom",
                                                        "1 of 1 cycles missed in the window (100%, warning at 20%)",
                                                        "no cycle succeeded for 2h 0m (warning after 1h 0m)"}));
  EXPECT_STREQ(HealthName(Health::kNormal), "normal");
  EXPECT_STREQ(HealthName(Health::kWarning), "warning");
  EXPECT_STREQ(HealthName(Health::kCritical), "critical");
}

TEST(MonitoringTest, DetailNumberReadsTopLevelNumbersOnly) {
  const std::string d =
      "{\"note\":\"\\\"bytes_sent\\\":5,\",\"nested\":{\"bytes_sent\":6},\"bytes_sent\":7,"
      "\"duration\":0.125,\"mode\":\"full\",\"neg\":-2e3}";
  EXPECT_EQ(DetailNumber(d, "bytes_sent"), 7.0);
  EXPECT_EQ(DetailNumber(d, "duration"), 0.125);
  EXPECT_EQ(DetailNumber(d, "neg"), -2000.0);
  EXPECT_FALSE(DetailNumber(d, "mode").has_value());
  EXPECT_FALSE(DetailNumber(d, "missing").has_value());
  EXPECT_FALSE(DetailNumber("{\"bytes_sent\":", "bytes_sent").has_value());
  EXPECT_FALSE(DetailNumber("{\"bytes_sent\":\"unterminated", "bytes_sent").has_value());
  EXPECT_FALSE(DetailNumber("", "bytes_sent").has_value());
}

TEST(MonitoringTest, PrometheusEscapingCoversBackslashNewlineAndQuotesInLabels) {
  EXPECT_EQ(EscapePrometheusText("a\\b\nc\"d", true), "a\\\\b\\nc\\\"d");
  EXPECT_EQ(EscapePrometheusText("a\\b\nc\"d", false), "a\\\\b\\nc\"d");
  EXPECT_EQ(EscapePrometheusText("vm100-1", true), "vm100-1");
}

TEST(MonitoringTest, MeasureJobsReadsTheStoresEventsAndClipsTheDefaultWindowToTheFirstEvent) {
  core::test_support::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto store = JobStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_TRUE((*store)->AddTarget(Target{"dr", {"--exec", "true"}}).ok());
  Job job = MakeJob();
  ASSERT_TRUE((*store)->CreateJob(job).ok());
  for (const Event& e :
       {Completed(kNow - 4000, 1000, 2), Other(kNow - 3000, "cycle-failed"), Completed(kNow - 2000, 3000, 4),
        Completed(kNow - 1000, 2000, 3), Completed(kSince - 10, 1, 1)}) {
    ASSERT_TRUE((*store)->AddEvent(e).ok());
  }
  auto jobs = (*store)->ListJobs();
  ASSERT_TRUE(jobs.ok());
  // The guest has no journal: pending is unknown, not an error.
  auto ms = MeasureJobs(**store, dir.path(), *jobs, kSince, kNow, /*clip_to_first_event=*/true, /*read_pending=*/true);
  ASSERT_TRUE(ms.ok()) << ms.status().ToString();
  ASSERT_EQ(ms->size(), 1u);
  const Measurement& m = ms->front();
  EXPECT_EQ(m.window_start, kNow - 4000);
  EXPECT_EQ(m.success_count, 3u);
  EXPECT_EQ(m.missed_count, 1u);
  EXPECT_EQ(m.average_size_bytes, 2000u);
  EXPECT_EQ(m.maximum_size_bytes, 3000u);
  EXPECT_DOUBLE_EQ(m.average_latency_s, 3.0);
  EXPECT_EQ(m.last_success, kNow - 1000);  // the job row has none: the newest success event
  EXPECT_EQ(m.health, Health::kWarning);   // 1 in 4
  EXPECT_FALSE(m.pending_bytes.has_value());
  ms = MeasureJobs(**store, dir.path(), *jobs, kSince, kNow, /*clip_to_first_event=*/false, false);
  ASSERT_TRUE(ms.ok());
  EXPECT_EQ(ms->front().window_start, kSince);
  EXPECT_EQ(ReadPendingBytes(dir.path(), "vm7", "vm7-1").status().code(), core::Code::kNotFound);
}

}  // namespace
}  // namespace blkrep::jobs
