// Review tests, end to end through the blkrep binary. Each one fails on the
// code as reviewed and names the behaviour it proves.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

// Two jobs of one guest to two targets (pvesr's model: one job per
// (guest, target)) whose cycles overlap — `blkrep run` locks per job, not
// per guest, so a scheduler or an operator runs them at once. A guest write
// made after both froze belongs to neither cycle: neither replica may get it.
TEST(ReplicationReviewTest, TwoJobsOfOneGuestRunningAtOnceEachShipTheirOwnPointInTime) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  const std::uint64_t size = 4 * kMiB;
  rig.AddVolume("disk0", size);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 4M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  const std::string other_dir = rig.dir().File("replicas2");
  ::mkdir(other_dir.c_str(), 0700);
  ASSERT_TRUE(rig.AddTarget("other", {"--exec", ShellQuote(BlkrepBinary()) + " receive --stdio --replica-dir " +
                                                    ShellQuote(other_dir)}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  ASSERT_TRUE(rig.CreateJob("vm100-2", "other", {"--rate", "1"}));
  // First (full) cycles one after the other; they compress to nothing.
  ASSERT_FALSE(rig.Run("vm100-1").is_null());
  ASSERT_FALSE(rig.Run("vm100-2").is_null());

  // Every block changes: each job's next incremental takes ~4 s on the wire
  // uncompressed, reading just ahead of it.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x22 0 4M"}));
  const std::vector<std::string> slow = {"--zstd-level", "0", "--batch-size", "64K", "--read-ahead", "1",
                                         "--state-dir", rig.state_dir()};
  auto start = [&](Process& p, const std::string& id) {
    std::vector<std::string> argv = {BlkrepBinary(), "run", "--id", id};
    argv.insert(argv.end(), slow.begin(), slow.end());
    return p.Start(argv, rig.dir().File(id + ".out"), rig.dir().File(id + ".err"));
  };
  Process first, second;
  ASSERT_TRUE(start(first, "vm100-1"));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  ASSERT_TRUE(start(second, "vm100-2"));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // Both are frozen now, and neither has read the last 64 KiB yet.
  const std::uint64_t last = size - 64 * 1024;
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x33 " + std::to_string(last) + " 64K"}));
  auto s1 = first.Wait(std::chrono::seconds(60));
  auto s2 = second.Wait(std::chrono::seconds(60));
  ASSERT_TRUE(s1.has_value() && s2.has_value());

  for (const std::string& path : {rig.ReplicaPath("disk0"), other_dir + "/" + kGuest + "/disk0.img"}) {
    std::vector<std::uint8_t> replica = ReadAll(path);
    ASSERT_EQ(replica.size(), size) << path;
    std::size_t later = 0;
    for (std::uint64_t i = last; i < size; ++i) later += replica[i] == 0x33;
    EXPECT_EQ(later, 0u) << path << " holds a write made after its cycle's freeze (job 1: exit " << *s1 << " "
                         << first.err() << "; job 2: exit " << *s2 << " " << second.err() << ")";
  }
}

// The tracker is restarted (SIGTERM, then started again, as systemd does)
// while `blkrep run` ships a cycle it froze. The old tracker abandoned the
// cycle; the new one has no copy-on-write store for it. A guest write made
// after the restart is not part of the frozen image and must not reach the
// replica as part of that cycle (the cycle must fail instead).
TEST(ReplicationReviewTest, ATrackerRestartMidCycleNeverLetsLaterWritesIntoThatCycle) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  const std::uint64_t size = 4 * kMiB;
  rig.AddVolume("disk0", size);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 4M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));

  // ~4 s on the wire; reads stay a few batches ahead of it.
  Process run;
  ASSERT_TRUE(run.Start({BlkrepBinary(), "run", "--id", "vm100-1", "--zstd-level", "0", "--batch-size", "64K",
                         "--read-ahead", "1", "--state-dir", rig.state_dir()},
                        rig.dir().File("run.out"), rig.dir().File("run.err")));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  ASSERT_EQ(rig.tracker().Stop(SIGTERM), 0);
  ASSERT_TRUE(rig.StartTracker());
  // After the freeze, and long before the shipper reaches the last 64 KiB.
  const std::uint64_t last = size - 64 * 1024;
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x22 " + std::to_string(last) + " 64K"}));
  ASSERT_TRUE(run.Wait(std::chrono::seconds(60)).has_value());

  std::vector<std::uint8_t> replica = ReadAll(rig.ReplicaPath("disk0"));
  ASSERT_EQ(replica.size(), size);
  std::size_t later = 0;
  for (std::uint64_t i = last; i < size; ++i) later += replica[i] == 0x22;
  EXPECT_EQ(later, 0u) << "the replica holds a write made after the cycle's freeze (run: " << run.err() << ")";
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

// The journal degrades (here: ENOSPC on every journal write that grows the
// file) while the guest runs. Invariant 2: the job goes to resync and the
// next cycle is a resync — with the tracker still running, since restarting
// it means stopping the guest. Guest I/O carried on (invariant 3); so must
// replication, degraded to resync cycles.
TEST(ReplicationReviewTest, AfterTheJournalDegradesTheNextRunResyncsWhileTheTrackerRuns) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 8 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 1M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  json first = rig.Run("vm100-1");
  ASSERT_EQ(first["mode"], "full");
  // Restart with the fault armed; a write into a cold extent degrades it.
  ASSERT_EQ(rig.tracker().Stop(SIGTERM), 0);
  ASSERT_TRUE(rig.tracker().Start({"--journal-faults", "enospc"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x22 7M 64K"}));
  ASSERT_EQ(Inspect(rig.dir(), rig.state_dir()).value("resync_required", false), true);

  json second = rig.Run("vm100-1");
  ASSERT_FALSE(second.is_null()) << "no cycle is possible until the tracker (and so the guest) restarts";
  EXPECT_EQ(second["mode"], "resync");
  rig.ExpectReplicasEqualSources();
}

}  // namespace
}  // namespace blkrep::jobs::test
