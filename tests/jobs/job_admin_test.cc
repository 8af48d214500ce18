// pvesr's job verbs driven through the command line the way an operator
// would: list, read, enable, disable, schedule-now, delete [--keep]
// [--force], one job per (guest, target), the run lock, and the back-off of
// a failing job (retry at last try + 5 minutes x fail count while it is at
// most 3, then every 30 minutes) — asserted from status --json, without
// waiting for minutes. Volumes are written through `blkrep journal write`
// (no tracker) unless a test needs the tracker's control socket.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>
#include <thread>

#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

// Writes `length` bytes of `pattern` at `offset` of volume `name` through
// the journal, as the tracker would.
void JournalWrite(Rig& rig, const std::string& name, std::uint64_t offset, std::uint64_t length, int pattern) {
  std::string path;
  for (const auto& v : rig.volumes()) {
    if (v.name == name) path = v.path;
  }
  RunResult r = rig.Blkrep({"journal", "write", kGuest, name + "=" + path, "--offset", std::to_string(offset),
                            "--length", std::to_string(length), "--pattern", std::to_string(pattern),
                            "--block-size", "4K"});
  ASSERT_EQ(r.exit_status, 0) << Describe(r);
}

json JsonOf(const RunResult& r) {
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  json j = json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON: " << r.out;
  return j;
}

json Read(Rig& rig, const std::string& id) { return JsonOf(rig.Blkrep({"read", id, "--json"})); }
json Events(Rig& rig) { return JsonOf(rig.Blkrep({"events", "--json"})); }

std::vector<std::string> EventKinds(Rig& rig, const std::string& job) {
  std::vector<std::string> kinds;
  for (const auto& e : Events(rig)) {
    if (e["job"] == job) kinds.push_back(e["kind"]);
  }
  return kinds;
}

// The journal's targets (top-level `targets` of journal inspect): name ->
// dirty blocks.
std::map<std::string, std::uint64_t> JournalTargets(Rig& rig) {
  std::map<std::string, std::uint64_t> out;
  json j = Inspect(rig.dir(), rig.state_dir());
  for (const auto& t : j["targets"]) out[t["name"]] = t["dirty_blocks"];
  return out;
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// A rig with one 1 MiB volume "d0", written once, and target T1 (the rig's
// local replica directory).
void PrepareRig(Rig& rig) {
  rig.AddVolume("d0", kMiB);
  JournalWrite(rig, "d0", 0, 64 << 10, 1);
  ASSERT_TRUE(rig.AddLocalTarget("T1"));
}

TEST(JobAdminTest, ListAndReadShowTheDefinitionAndTheState) {
  Rig rig;
  PrepareRig(rig);
  ASSERT_TRUE(rig.AddTarget("T2", {"--exec", "exit 3"}));
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1", {"--rate", "5", "--comment", "first one", "--schedule", "*/5"}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "T2", {"--disable", "--auto-resync", "off"}));

  json list = JsonOf(rig.Blkrep({"list", "--json"}));
  ASSERT_EQ(list.size(), 2u) << list;
  EXPECT_EQ(list[0], (json{{"id", "vm100-0"}, {"guest", "vm100"}, {"target", "T1"}, {"schedule", "*/5"},
                           {"rate", 5.0}, {"enabled", true}, {"comment", "first one"}}));
  EXPECT_EQ(list[1]["id"], "vm100-1");
  EXPECT_EQ(list[1]["enabled"], false);
  EXPECT_EQ(list[1]["rate"], 0.0);
  RunResult text = rig.Blkrep({"list"});
  ASSERT_EQ(text.exit_status, 0) << Describe(text);
  for (const char* column : {"JobID", "Target", "Schedule", "Rate", "Enabled", "Comment"}) {
    EXPECT_NE(text.out.find(column), std::string::npos) << column << " missing from:\n" << text.out;
  }
  EXPECT_NE(text.out.find("first one"), std::string::npos) << text.out;

  // Before any run.
  json fresh = Read(rig, "vm100-0");
  EXPECT_EQ(fresh["state"], "ok");
  EXPECT_TRUE(fresh["last_sync"].is_null());
  EXPECT_EQ(fresh["run_now"], false);
  EXPECT_EQ(fresh["recovery_points"], 0);
  EXPECT_EQ(fresh["auto_resync"], true);
  EXPECT_TRUE(fresh["resync_window"].is_null());

  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  json read = Read(rig, "vm100-0");
  json status = rig.Status("vm100-0");
  // Everything status shows, with the same values...
  for (auto it = status.begin(); it != status.end(); ++it) {
    ASSERT_TRUE(read.contains(it.key())) << "read --json lacks " << it.key() << ": " << read;
    EXPECT_EQ(read[it.key()], it.value()) << it.key();
  }
  // ...and the definition.
  EXPECT_EQ(read["schedule"], "*/5");
  EXPECT_EQ(read["rate"], 5.0);
  EXPECT_EQ(read["comment"], "first one");
  EXPECT_EQ(read["last_mode"], "full");
  EXPECT_TRUE(read["last_sync"].is_number());
  for (const char* key : {"auto_resync", "resync_window", "resync_at", "run_now", "recovery_points", "last_try"}) {
    EXPECT_TRUE(read.contains(key)) << key;
  }
  EXPECT_EQ(Read(rig, "vm100-1")["auto_resync"], false);

  RunResult missing = rig.Blkrep({"read", "vm100-7", "--json"});
  EXPECT_EQ(missing.exit_status, 1) << Describe(missing);
  EXPECT_NE(missing.err.find("vm100-7"), std::string::npos) << missing.err;
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(rig.Blkrep({"read"}).exit_status, 2);
}

TEST(JobAdminTest, ABareRunNeverPicksADisabledJob) {
  Rig rig;
  PrepareRig(rig);
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  RunResult disabled = rig.Blkrep({"disable", "vm100-0"});
  ASSERT_EQ(disabled.exit_status, 0) << Describe(disabled);
  json status = rig.Status("vm100-0");
  EXPECT_EQ(status["enabled"], false);
  EXPECT_TRUE(status["next_sync"].is_null());
  RunResult text = rig.Blkrep({"status"});
  EXPECT_NE(text.out.find("vm100-0      No "), std::string::npos) << text.out;

  // Never run, so it would be due at once if it were enabled.
  RunResult run = rig.Blkrep({"run"});
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  EXPECT_TRUE(rig.Status("vm100-0")["last_try"].is_null());
  EXPECT_FALSE(Exists(rig.ReplicaPath("d0")));
  // schedule-now does not override disable.
  ASSERT_EQ(rig.Blkrep({"schedule-now", "vm100-0"}).exit_status, 0);
  ASSERT_EQ(rig.Blkrep({"run"}).exit_status, 0);
  EXPECT_TRUE(rig.Status("vm100-0")["last_try"].is_null());

  ASSERT_EQ(rig.Blkrep({"enable", "vm100-0"}).exit_status, 0);
  EXPECT_EQ(rig.Status("vm100-0")["enabled"], true);
  run = rig.Blkrep({"run"});
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  EXPECT_EQ(rig.Status("vm100-0")["state"], "ok");
  EXPECT_TRUE(rig.Status("vm100-0")["last_sync"].is_number());
  rig.ExpectReplicasEqualSources();
  std::vector<std::string> kinds = EventKinds(rig, "vm100-0");
  EXPECT_EQ(kinds, (std::vector<std::string>{"job-disabled", "job-scheduled-now", "job-enabled",
                                             "cycle-completed"}));
  EXPECT_EQ(rig.Blkrep({"enable", "vm100-9"}).exit_status, 1);
}

TEST(JobAdminTest, OneJobPerGuestAndTargetAndEachTargetItsOwnDirtySet) {
  Rig rig;
  PrepareRig(rig);
  std::string replicas2 = rig.dir().File("replicas2");
  ASSERT_EQ(::mkdir(replicas2.c_str(), 0700), 0);
  ASSERT_TRUE(rig.AddTarget("T2", {"--exec", ShellQuote(BlkrepBinary()) + " receive --stdio --replica-dir " +
                                                 ShellQuote(replicas2)}));
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  RunResult second = rig.Blkrep({"create-local-job", "vm100-5", "T1"});
  EXPECT_EQ(second.exit_status, 2) << Describe(second);
  EXPECT_NE(second.err.find("already has a job to target T1"), std::string::npos) << second.err;
  ASSERT_TRUE(rig.CreateJob("vm100-1", "T2"));

  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  ASSERT_FALSE(rig.Run("vm100-1").is_null());
  rig.ExpectReplicasEqualSources();
  std::string replica2 = replicas2 + "/" + kGuest + "/d0.img";
  EXPECT_EQ(ReadAll(replica2), ReadAll(rig.volumes()[0].path));

  // A change, shipped to T1 only: T2's job still has it dirty.
  JournalWrite(rig, "d0", 256 << 10, 8 << 10, 9);
  std::map<std::string, std::uint64_t> targets = JournalTargets(rig);
  EXPECT_EQ(targets["vm100-0"], 2u);
  EXPECT_EQ(targets["vm100-1"], 2u);
  json ran = rig.Run("vm100-0");
  EXPECT_EQ(ran["mode"], "incremental");
  EXPECT_EQ(ran["blocks_sent"], 2);
  targets = JournalTargets(rig);
  EXPECT_EQ(targets["vm100-0"], 0u);
  EXPECT_EQ(targets["vm100-1"], 2u);
  rig.ExpectReplicasEqualSources();
  EXPECT_NE(ReadAll(replica2), ReadAll(rig.volumes()[0].path));
  ran = rig.Run("vm100-1");
  EXPECT_EQ(ran["blocks_sent"], 2);
  EXPECT_EQ(ReadAll(replica2), ReadAll(rig.volumes()[0].path));
}

// Holds a job's run lock as a running `blkrep run` does.
class HeldRunLock {
 public:
  HeldRunLock(const Rig& rig, const std::string& id) {
    fd_ = ::open((rig.state_dir() + "/" + id + ".run.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(::flock(fd_, LOCK_EX | LOCK_NB), 0);
  }
  ~HeldRunLock() { ::close(fd_); }

 private:
  int fd_ = -1;
};

TEST(JobAdminTest, TwoRunsOfAJobNeverOverlapAndDeleteWaitsForTheRun) {
  Rig rig;
  PrepareRig(rig);
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  {
    HeldRunLock running(rig, "vm100-0");
    RunResult run = rig.Blkrep({"run", "--id", "vm100-0"});
    EXPECT_EQ(run.exit_status, 1) << Describe(run);
    EXPECT_NE(run.err.find("job vm100-0 is already running"), std::string::npos) << run.err;
    RunResult bare = rig.Blkrep({"run"});
    EXPECT_EQ(bare.exit_status, 1) << Describe(bare);
    RunResult del = rig.Blkrep({"delete", "vm100-0"});
    EXPECT_EQ(del.exit_status, 1) << Describe(del);
    EXPECT_NE(del.err.find("job vm100-0 is running"), std::string::npos) << del.err;
    EXPECT_EQ(JsonOf(rig.Blkrep({"list", "--json"})).size(), 1u);
    EXPECT_TRUE(rig.Status("vm100-0")["last_try"].is_null()) << "a refused run must not count as a try";
  }
  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  rig.ExpectReplicasEqualSources();
}

// The back-off of pvesr: a failing target, then the same target working.
TEST(JobAdminTest, AFailingJobBacksOffAndScheduleNowOverridesIt) {
  Rig rig;
  PrepareRig(rig);
  std::string flag = rig.dir().File("target-works");
  ASSERT_TRUE(rig.AddTarget("T2", {"--exec", "test -e " + ShellQuote(flag) + " || { echo target down >&2; exit 7; }; exec " +
                                                 rig.ReceiveCommand()}));
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T2"));

  const std::int64_t expected_delay[] = {300, 600, 900, 1800, 1800};
  for (int attempt = 1; attempt <= 4; ++attempt) {
    RunResult run = rig.Blkrep({"run", "--id", "vm100-0"});
    ASSERT_EQ(run.exit_status, 1) << Describe(run);
    json s = rig.Status("vm100-0");
    EXPECT_EQ(s["state"], "error");
    ASSERT_TRUE(s["error"].is_string()) << s;
    EXPECT_NE(s["error"].get<std::string>().find("target down"), std::string::npos) << s["error"];
    EXPECT_EQ(s["fail_count"], attempt);
    ASSERT_TRUE(s["last_try"].is_number() && s["next_sync"].is_number()) << s;
    EXPECT_EQ(s["next_sync"].get<std::int64_t>() - s["last_try"].get<std::int64_t>(), expected_delay[attempt - 1])
        << "after " << attempt << " failures";
    if (attempt == 1) {
      // Not due: a bare run right after leaves it alone.
      std::size_t events = Events(rig).size();
      RunResult bare = rig.Blkrep({"run"});
      EXPECT_EQ(bare.exit_status, 0) << Describe(bare);
      EXPECT_EQ(Events(rig).size(), events);
      EXPECT_EQ(rig.Status("vm100-0")["fail_count"], 1);
      EXPECT_EQ(rig.Status("vm100-0")["last_try"], s["last_try"]);
    }
  }

  // schedule-now: due now, despite the back-off; any run clears it.
  std::int64_t before = static_cast<std::int64_t>(::time(nullptr));
  ASSERT_EQ(rig.Blkrep({"schedule-now", "vm100-0"}).exit_status, 0);
  json s = rig.Status("vm100-0");
  std::int64_t after = static_cast<std::int64_t>(::time(nullptr));
  EXPECT_GE(s["next_sync"].get<std::int64_t>(), before);
  EXPECT_LE(s["next_sync"].get<std::int64_t>(), after);
  EXPECT_EQ(Read(rig, "vm100-0")["run_now"], true);
  RunResult bare = rig.Blkrep({"run"});
  EXPECT_EQ(bare.exit_status, 1) << Describe(bare);  // picked, and failed again
  s = rig.Status("vm100-0");
  EXPECT_EQ(s["fail_count"], 5);
  EXPECT_EQ(s["next_sync"].get<std::int64_t>() - s["last_try"].get<std::int64_t>(), expected_delay[4]);
  EXPECT_EQ(Read(rig, "vm100-0")["run_now"], false);
  bare = rig.Blkrep({"run"});  // cleared: not due again
  EXPECT_EQ(bare.exit_status, 0) << Describe(bare);
  EXPECT_EQ(rig.Status("vm100-0")["fail_count"], 5);

  // The target is back: the next picked run succeeds and resets the count.
  std::ofstream(flag) << "up\n";
  ASSERT_EQ(rig.Blkrep({"schedule-now", "vm100-0"}).exit_status, 0);
  bare = rig.Blkrep({"run"});
  ASSERT_EQ(bare.exit_status, 0) << Describe(bare);
  s = rig.Status("vm100-0");
  EXPECT_EQ(s["state"], "ok");
  EXPECT_EQ(s["fail_count"], 0);
  EXPECT_TRUE(s["error"].is_null());
  EXPECT_EQ(s["last_sync"], s["last_try"]);
  rig.ExpectReplicasEqualSources();
  std::vector<std::string> kinds = EventKinds(rig, "vm100-0");
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "cycle-failed"), 5);
  EXPECT_EQ(kinds.back(), "state-changed");
}

// With the tracker running: its journals lose the target through the
// control socket.
TEST(JobAdminTest, DeleteRemovesTheReplicaOnTheTargetAndTheJournalTarget) {
  Rig rig;
  PrepareRig(rig);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  std::string guest_dir = rig.replica_dir() + "/" + kGuest;
  ASSERT_TRUE(Exists(rig.ReplicaPath("d0")));
  ASSERT_TRUE(Exists(guest_dir + "/state"));
  ASSERT_EQ(JournalTargets(rig).count("vm100-0"), 1u);
  ASSERT_TRUE(Exists(rig.state_dir() + "/cow/" + kGuest + "/vm100-0")) << "the cycle went through the tracker";

  RunResult del = rig.Blkrep({"delete", "vm100-0"});
  ASSERT_EQ(del.exit_status, 0) << Describe(del);
  EXPECT_FALSE(Exists(guest_dir)) << "the guest's replica directory is left";
  EXPECT_FALSE(Exists(rig.state_dir() + "/vm100-0.run.lock"));
  EXPECT_FALSE(Exists(rig.state_dir() + "/cow/" + kGuest + "/vm100-0"));
  EXPECT_EQ(JournalTargets(rig).count("vm100-0"), 0u);
  EXPECT_TRUE(JsonOf(rig.Blkrep({"list", "--json"})).empty());
  EXPECT_EQ(rig.Blkrep({"read", "vm100-0"}).exit_status, 1);
  std::vector<std::string> kinds = EventKinds(rig, "vm100-0");
  ASSERT_FALSE(kinds.empty());
  EXPECT_EQ(kinds.back(), "job-deleted");
  EXPECT_TRUE(UnixSocketAccepts(rig.state_dir() + "/control/" + kGuest + ".sock")) << "the tracker went away";
  RunResult again = rig.Blkrep({"delete", "vm100-0"});
  EXPECT_EQ(again.exit_status, 1) << Describe(again);

  // The same id again starts over: a full cycle to a new replica.
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  json ran = rig.Run("vm100-0");
  EXPECT_EQ(ran["mode"], "full");
  rig.ExpectReplicasEqualSources();
}

TEST(JobAdminTest, DeleteKeepLeavesTheReplicaAndAnotherJobCannotRemoveIt) {
  Rig rig;
  PrepareRig(rig);
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  std::vector<std::uint8_t> replica = ReadAll(rig.ReplicaPath("d0"));

  RunResult del = rig.Blkrep({"delete", "vm100-0", "--keep"});
  ASSERT_EQ(del.exit_status, 0) << Describe(del);
  EXPECT_EQ(ReadAll(rig.ReplicaPath("d0")), replica);
  EXPECT_EQ(JournalTargets(rig).count("vm100-0"), 0u) << "journals opened directly (no tracker)";
  EXPECT_TRUE(JsonOf(rig.Blkrep({"list", "--json"})).empty());

  // The receiver's state is vm100-0's: another job of the guest may not
  // remove it.
  ASSERT_TRUE(rig.CreateJob("vm100-1", "T1"));
  del = rig.Blkrep({"delete", "vm100-1"});
  EXPECT_EQ(del.exit_status, 1) << Describe(del);
  EXPECT_NE(del.err.find("belongs to job vm100-0"), std::string::npos) << del.err;
  EXPECT_EQ(ReadAll(rig.ReplicaPath("d0")), replica);
  EXPECT_EQ(JsonOf(rig.Blkrep({"list", "--json"})).size(), 1u) << "the job is kept";
}

TEST(JobAdminTest, DeleteAgainstADeadTargetNeedsForce) {
  Rig rig;
  PrepareRig(rig);
  std::string flag = rig.dir().File("target-works");
  std::ofstream(flag) << "up\n";
  ASSERT_TRUE(rig.AddTarget("T2", {"--exec", "test -e " + ShellQuote(flag) + " || { echo target down >&2; exit 7; }; exec " +
                                                 rig.ReceiveCommand()}));
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T2"));
  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  ASSERT_EQ(::unlink(flag.c_str()), 0);

  RunResult del = rig.Blkrep({"delete", "vm100-0"});
  EXPECT_EQ(del.exit_status, 1) << Describe(del);
  EXPECT_NE(del.err.find("target down"), std::string::npos) << del.err;
  EXPECT_NE(del.err.find("the job is kept"), std::string::npos) << del.err;
  EXPECT_EQ(JsonOf(rig.Blkrep({"list", "--json"})).size(), 1u);
  EXPECT_EQ(JournalTargets(rig).count("vm100-0"), 1u);

  del = rig.Blkrep({"delete", "vm100-0", "--force"});
  EXPECT_EQ(del.exit_status, 0) << Describe(del);
  EXPECT_NE(del.err.find("blkrep: warning:"), std::string::npos) << del.err;
  EXPECT_NE(del.err.find("deleted anyway (--force)"), std::string::npos) << del.err;
  EXPECT_TRUE(JsonOf(rig.Blkrep({"list", "--json"})).empty());
  EXPECT_EQ(JournalTargets(rig).count("vm100-0"), 0u);
  EXPECT_TRUE(Exists(rig.ReplicaPath("d0"))) << "the dead target's replica cannot have been removed";
}

// A replica mapped elsewhere by a symlink is forgotten, not removed.
TEST(JobAdminTest, DeleteOnlyForgetsASymlinkedReplica) {
  Rig rig;
  PrepareRig(rig);
  std::string elsewhere = rig.dir().File("elsewhere.img");
  MakeVolume(elsewhere, kMiB);
  std::string guest_dir = rig.replica_dir() + "/" + kGuest;
  ASSERT_EQ(::mkdir(guest_dir.c_str(), 0700), 0);
  ASSERT_EQ(::symlink(elsewhere.c_str(), rig.ReplicaPath("d0").c_str()), 0);
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1"));
  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  EXPECT_EQ(ReadAll(elsewhere), ReadAll(rig.volumes()[0].path));

  RunResult del = rig.Blkrep({"delete", "vm100-0"});
  ASSERT_EQ(del.exit_status, 0) << Describe(del);
  EXPECT_TRUE(Exists(rig.ReplicaPath("d0"))) << "the symlink is the operator's";
  EXPECT_EQ(ReadAll(elsewhere), ReadAll(rig.volumes()[0].path));
  EXPECT_FALSE(Exists(guest_dir + "/state"));
  EXPECT_FALSE(Exists(guest_dir + "/.staging"));
}


// Schedules through the command line: a bad calendar event is refused with
// exit 2 naming what is wrong; a good one gives the next sync in local time
// after the last success (computed here independently: Asia/Kolkata is
// UTC+5:30 all year). Daylight-saving changes are covered instant by
// instant in calendar_event_test.cc.
TEST(JobAdminTest, SchedulesAreValidatedAndTheNextSyncIsTheirNextLocalEvent) {
  if (::access("/usr/share/zoneinfo/Asia/Kolkata", R_OK) != 0) GTEST_SKIP() << "tzdata is not installed";
  Rig rig;
  PrepareRig(rig);
  RunResult bad = rig.Blkrep({"create-local-job", "vm100-0", "T1", "--schedule", "mon..xyz 8:00"});
  EXPECT_EQ(bad.exit_status, 2) << Describe(bad);
  EXPECT_NE(bad.err.find("unknown weekday 'xyz'"), std::string::npos) << bad.err;
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1", {"--schedule", "daily"}));
  RunResult bad_update = rig.Blkrep({"update", "vm100-0", "--schedule", "sat 25:00"});
  EXPECT_EQ(bad_update.exit_status, 2) << Describe(bad_update);
  EXPECT_NE(bad_update.err.find("hour 25"), std::string::npos) << bad_update.err;
  EXPECT_EQ(Read(rig, "vm100-0")["schedule"], "daily");  // unchanged

  const char* old_tz = std::getenv("TZ");
  std::string saved = old_tz ? old_tz : "";
  ::setenv("TZ", "Asia/Kolkata", 1);
  ASSERT_FALSE(rig.Run("vm100-0").is_null());
  json st = rig.Status("vm100-0");
  const std::int64_t last = st["last_sync"].get<std::int64_t>();
  const std::int64_t offset = 5 * 3600 + 30 * 60;
  EXPECT_EQ(st["next_sync"].get<std::int64_t>(), ((last + offset) / 86400 + 1) * 86400 - offset) << st.dump();
  ASSERT_EQ(rig.Blkrep({"update", "vm100-0", "--schedule", "*/20"}).exit_status, 0);
  st = rig.Status("vm100-0");
  // Minutes 0, 20 and 40 of local hours (in Kolkata not those of UTC hours).
  EXPECT_EQ(st["next_sync"].get<std::int64_t>(), ((last + offset) / 1200 + 1) * 1200 - offset) << st.dump();
  if (old_tz) ::setenv("TZ", saved.c_str(), 1);
  else ::unsetenv("TZ");
}

// `bytes` of incompressible, nonzero content at the start of `path`, behind
// blkrep's back: a full cycle of it sends every byte.
void FillIncompressible(const std::string& path, std::uint64_t bytes, std::uint64_t seed) {
  std::mt19937_64 random(seed);
  std::vector<std::uint8_t> data(bytes);
  for (auto& b : data) b = static_cast<std::uint8_t>(random() | 1);
  WriteAt(path, 0, data);
}

// Polls `status` until job `id` is in `state`; false after 30 s.
bool WaitForState(Rig& rig, const std::string& id, const std::string& state) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (rig.Status(id)["state"] == state) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// A bare `run` lists the due jobs once, then runs them one after the other:
// what an operator does to a job while an earlier one runs (disable,
// update, suspend) is kept, and a job no longer due is not run.
TEST(JobAdminTest, DisableUpdateAndSuspendMadeDuringABareRunAreKeptAndObeyed) {
  Rig rig;
  rig.AddVolume("d0", 3 * kMiB);
  FillIncompressible(rig.volumes()[0].path, 3 * kMiB, 5);
  JournalWrite(rig, "d0", 0, 4 << 10, 1);
  ASSERT_TRUE(rig.AddLocalTarget("T1"));
  std::vector<std::string> replica_dirs;
  for (const char* name : {"T2", "T3"}) {
    replica_dirs.push_back(rig.dir().File(std::string("replicas-") + name));
    ASSERT_EQ(::mkdir(replica_dirs.back().c_str(), 0700), 0);
    ASSERT_TRUE(rig.AddTarget(name, {"--exec", ShellQuote(BlkrepBinary()) + " receive --stdio --replica-dir " +
                                                   ShellQuote(replica_dirs.back())}));
  }
  // vm100-0 runs first (3 MB at 0.5 MB/s, about 6 s: room for the edits
  // on a loaded machine); the others, never run, are due at once.
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1", {"--rate", "0.5"}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "T2"));
  ASSERT_TRUE(rig.CreateJob("vm100-2", "T3"));

  Process run;
  ASSERT_TRUE(run.Start({BlkrepBinary(), "run", "--json", "--zstd-level", "0", "--state-dir", rig.state_dir()},
                        rig.dir().File("run.out"), rig.dir().File("run.err")));
  ASSERT_TRUE(WaitForState(rig, "vm100-0", "syncing")) << run.err();
  RunResult r = rig.Blkrep({"disable", "vm100-1"});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  r = rig.Blkrep({"update", "vm100-1", "--rate", "7", "--comment", "edited during the run"});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  r = rig.Blkrep({"suspend", "vm100-2"});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  r = rig.Blkrep({"update", "vm100-0", "--comment", "edited while it ran"});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  ASSERT_EQ(rig.Status("vm100-0")["state"], "syncing") << "the first cycle ended before the edits; make it slower";

  std::optional<int> exit_status = run.Wait(std::chrono::seconds(120));
  ASSERT_TRUE(exit_status.has_value());
  EXPECT_EQ(*exit_status, 0) << run.err();
  json report = json::parse(run.out(), nullptr, false);
  ASSERT_TRUE(report.is_array()) << run.out();
  ASSERT_EQ(report.size(), 1u) << "only vm100-0 may have run: " << report;
  EXPECT_EQ(report[0]["id"], "vm100-0");

  json j0 = Read(rig, "vm100-0");
  EXPECT_EQ(j0["state"], "ok");
  EXPECT_TRUE(j0["last_sync"].is_number()) << j0;
  EXPECT_EQ(j0["comment"], "edited while it ran");
  EXPECT_EQ(j0["rate"], 0.5);
  json j1 = Read(rig, "vm100-1");
  EXPECT_EQ(j1["enabled"], false) << j1;
  EXPECT_EQ(j1["rate"], 7.0);
  EXPECT_EQ(j1["comment"], "edited during the run");
  EXPECT_TRUE(j1["last_try"].is_null()) << "the disabled job ran: " << j1;
  json j2 = Read(rig, "vm100-2");
  EXPECT_EQ(j2["state"], "suspended") << j2;
  EXPECT_TRUE(j2["last_try"].is_null()) << "the suspended job ran: " << j2;
  EXPECT_EQ(EventKinds(rig, "vm100-1"), (std::vector<std::string>{"job-disabled"}));
  EXPECT_EQ(EventKinds(rig, "vm100-2"), (std::vector<std::string>{"state-changed"}));
  for (const auto& dir : replica_dirs) EXPECT_FALSE(Exists(dir + "/" + kGuest)) << dir;
  rig.ExpectReplicasEqualSources();

  // Once enabled and resumed they run, with the definition as edited.
  ASSERT_EQ(rig.Blkrep({"enable", "vm100-1"}).exit_status, 0);
  ASSERT_EQ(rig.Blkrep({"resume", "vm100-2"}).exit_status, 0);
  r = rig.Blkrep({"run", "--json"});
  ASSERT_EQ(r.exit_status, 0) << Describe(r);
  EXPECT_EQ(json::parse(r.out, nullptr, false).size(), 2u) << r.out;
  EXPECT_EQ(Read(rig, "vm100-1")["state"], "ok");
  EXPECT_EQ(Read(rig, "vm100-1")["rate"], 7.0);
  EXPECT_EQ(Read(rig, "vm100-2")["state"], "ok");
}

// A schedule that parses but has no event left (a date in the past, a day
// its months lack) is refused: stored, it would never replicate.
TEST(JobAdminTest, AScheduleThatNeverRunsAgainIsRefused) {
  Rig rig;
  PrepareRig(rig);
  for (const std::string spec : {"*-02-30", "2020-01-01"}) {
    RunResult bad = rig.Blkrep({"create-local-job", "vm100-0", "T1", "--schedule", spec});
    EXPECT_EQ(bad.exit_status, 2) << Describe(bad);
    EXPECT_NE(bad.err.find("--schedule: schedule '" + spec + "' never runs again"), std::string::npos) << bad.err;
  }
  EXPECT_EQ(JsonOf(rig.Blkrep({"list", "--json"})).size(), 0u);
  ASSERT_TRUE(rig.CreateJob("vm100-0", "T1", {"--schedule", "daily"}));
  for (const std::string spec : {"*-02-30", "2020-01-01"}) {
    RunResult bad = rig.Blkrep({"update", "vm100-0", "--schedule", spec});
    EXPECT_EQ(bad.exit_status, 2) << Describe(bad);
    EXPECT_NE(bad.err.find("--schedule: schedule '" + spec + "' never runs again"), std::string::npos) << bad.err;
    EXPECT_EQ(Read(rig, "vm100-0")["schedule"], "daily");
  }
  // A date still to come is a schedule.
  RunResult once = rig.Blkrep({"update", "vm100-0", "--schedule", "2150-06-01 03:00"});
  ASSERT_EQ(once.exit_status, 0) << Describe(once);
  EXPECT_TRUE(rig.Status("vm100-0")["next_sync"].is_number());
}

// `blkrep` alone: its usage names every command it knows.
TEST(JobAdminTest, TheUsageListsEveryCommand) {
  Rig rig;
  RunResult usage = RunProgram(rig.dir(), {BlkrepBinary()});
  EXPECT_EQ(usage.exit_status, 2) << Describe(usage);
  for (const char* command :
       {"track", "journal inspect", "journal write", "receive", "recovery-points", "target add", "target list",
        "create-local-job", "update", "run", "status", "list", "read", "enable", "disable", "schedule-now", "delete",
        "events", "suspend", "resume", "resync", "verify", "measure", "metrics", "test-failover", "promote", "demote",
        "bench", "trace inspect", "version"}) {
    bool listed = usage.err.find(std::string("\n  ") + command + " ") != std::string::npos ||
                  usage.err.find(std::string("| ") + command + " ") != std::string::npos;
    EXPECT_TRUE(listed) << command << " is not in the usage:\n" << usage.err;
  }
}
}  // namespace
}  // namespace blkrep::jobs::test
