// jobs::JobStore: each writer writes only the columns it owns, so commands
// running at the same time (a run, `update`, enable/disable, schedule-now,
// suspend/resume) never undo each other's changes. Two JobStores on one
// database stand for two processes.
#include "jobs/job_store.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/core/temp_dir.h"

namespace blkrep::jobs {
namespace {

// Every column of `j`, for comparing whole rows.
std::string Row(const Job& j) {
  auto opt = [](const std::optional<std::int64_t>& v) { return v ? std::to_string(*v) : std::string("null"); };
  return j.id + "|" + j.guest + "|" + j.target + "|" + j.schedule + "|" + std::to_string(j.rate_mbps) + "|" +
         j.comment + "|" + std::to_string(j.enabled) + "|" + j.state + "|" + j.error + "|" +
         std::to_string(j.fail_count) + "|" + opt(j.last_sync) + "|" + opt(j.last_try) + "|" +
         std::to_string(j.duration_s) + "|" + j.last_mode + "|" + std::to_string(j.last_bytes_sent) + "|" +
         std::to_string(j.last_blocks_sent) + "|" + std::to_string(j.auto_resync) + "|" + j.resync_window + "|" +
         opt(j.resync_at) + "|" + std::to_string(j.run_now) + "|" + std::to_string(j.recovery_points);
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    auto a = JobStore::Open(dir_.path());
    auto b = JobStore::Open(dir_.path());
    ASSERT_TRUE(a.ok() && b.ok());
    a_ = std::move(*a);
    b_ = std::move(*b);
    ASSERT_TRUE(a_->AddTarget(Target{"dr", {"--exec", "true"}}).ok());
    Job job;
    job.id = "vm100-0";
    job.guest = "vm100";
    job.target = "dr";
    ASSERT_TRUE(a_->CreateJob(job).ok());
  }
  Job Get() {
    auto j = a_->GetJob("vm100-0");
    EXPECT_TRUE(j.ok()) << j.status().ToString();
    return j.ok() ? *j : Job{};
  }

  core::test_support::TempDir dir_;
  std::unique_ptr<JobStore> a_, b_;
};

TEST_F(JobStoreTest, SaveRunLeavesADefinitionChangedSinceTheRowWasRead) {
  auto stale = b_->GetJob("vm100-0");  // a run reads the row...
  ASSERT_TRUE(stale.ok());
  Job edited = Get();  // ...an `update` and a `disable` change the definition...
  edited.schedule = "daily";
  edited.rate_mbps = 7;
  edited.comment = "edited";
  edited.enabled = false;
  edited.auto_resync = false;
  edited.resync_window = "01:00-02:00";
  edited.recovery_points = 3;
  ASSERT_TRUE(a_->SaveDefinition(edited).ok());
  stale->state = "error";  // ...and the run saves its outcome.
  stale->error = "target down";
  stale->fail_count = 2;
  stale->last_sync = 100;
  stale->last_try = 200;
  stale->duration_s = 1.5;
  stale->last_mode = "full";
  stale->last_bytes_sent = 4096;
  stale->last_blocks_sent = 1;
  stale->resync_at = 300;
  stale->run_now = true;
  ASSERT_TRUE(b_->SaveRun(*stale).ok());
  // The definition as edited, the run's columns as the run wrote them.
  Job expected = edited;
  expected.state = stale->state;
  expected.error = stale->error;
  expected.fail_count = stale->fail_count;
  expected.last_sync = stale->last_sync;
  expected.last_try = stale->last_try;
  expected.duration_s = stale->duration_s;
  expected.last_mode = stale->last_mode;
  expected.last_bytes_sent = stale->last_bytes_sent;
  expected.last_blocks_sent = stale->last_blocks_sent;
  expected.resync_at = stale->resync_at;
  expected.run_now = stale->run_now;
  EXPECT_EQ(Row(Get()), Row(expected));
  Job missing = *stale;
  missing.id = "vm100-9";
  EXPECT_EQ(b_->SaveRun(missing).code(), core::Code::kNotFound);
}

TEST_F(JobStoreTest, EnabledRunNowAndStateAreWrittenAloneAndUnknownJobsAreNotFound) {
  Job before = Get();
  before.state = "error";
  before.error = "x";
  before.comment = "c";
  ASSERT_TRUE(a_->SaveJob(before).ok());
  ASSERT_TRUE(b_->SetEnabled("vm100-0", false).ok());
  before.enabled = false;
  EXPECT_EQ(Row(Get()), Row(before));
  ASSERT_TRUE(b_->SetRunNow("vm100-0", true).ok());
  before.run_now = true;
  EXPECT_EQ(Row(Get()), Row(before));
  ASSERT_TRUE(b_->SetState("vm100-0", "suspended").ok());
  before.state = "suspended";
  EXPECT_EQ(Row(Get()), Row(before));
  EXPECT_EQ(b_->SetEnabled("vm100-9", true).code(), core::Code::kNotFound);
  EXPECT_EQ(b_->SetRunNow("vm100-9", true).code(), core::Code::kNotFound);
  EXPECT_EQ(b_->SetState("vm100-9", "ok").code(), core::Code::kNotFound);
}

TEST_F(JobStoreTest, InTransactionCommitsOnOkAndRollsBackOnError) {
  core::Status failed = a_->InTransaction([&]() -> core::Status {
    EXPECT_TRUE(a_->SetState("vm100-0", "suspended").ok());
    return core::Status::Aborted("changed my mind");
  });
  EXPECT_EQ(failed.code(), core::Code::kAborted);
  EXPECT_EQ(Get().state, "ok");
  ASSERT_TRUE(a_->InTransaction([&] { return a_->SetState("vm100-0", "suspended"); }).ok());
  auto seen = b_->GetJob("vm100-0");
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(seen->state, "suspended");
}

}  // namespace
}  // namespace blkrep::jobs
