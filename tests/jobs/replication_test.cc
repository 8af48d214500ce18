// End-to-end replication through the command line, the way an operator runs
// it: `blkrep track` serving volumes to real NBD clients, `blkrep target
// add --exec 'blkrep receive --stdio ...'`, `create-local-job`, `run --id`,
// `status --json`; replicas compared byte for byte.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

TEST(ReplicationTest, FullThenIncrementalOfATwoVolumeGuestWrittenThroughNbd) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 4 * kMiB);
  rig.AddVolume("disk1", 3 * kMiB + 8 * kBlockBytes);
  ASSERT_TRUE(rig.StartTracker());
  // Random data, explicit zero bytes, write-zeroes and a partial block.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 1M", "write -P 0 1M 64K", "write -z 2M 128K",
                                           "write -P 0x22 3M 5000"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk1", {"write -P 0x33 4096 2M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));

  json first = rig.Run("vm100-1");
  ASSERT_FALSE(first.is_null());
  EXPECT_EQ(first["mode"], "full");
  EXPECT_EQ(first["tracker_running"], true);
  const std::uint64_t all_blocks = rig.TotalBlocks();
  EXPECT_EQ(first["blocks_sent"].get<std::uint64_t>(), all_blocks);
  rig.ExpectReplicasEqualSources();
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "ok");
  EXPECT_EQ(st["last_mode"], "full");
  EXPECT_EQ(st["fail_count"], 0);
  EXPECT_EQ(st["last_blocks_sent"].get<std::uint64_t>(), all_blocks);
  EXPECT_GT(st["last_bytes_sent"].get<std::uint64_t>(), 0u);
  EXPECT_FALSE(st["last_sync"].is_null());

  // An incremental: exactly the blocks written since, counted here. Blocks
  // written with zero bytes travel as zero ranges, not data.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0",
                         {"write -P 0x44 " + std::to_string(10 * kBlockBytes) + " " + std::to_string(kBlockBytes),
                          "write -P 0 " + std::to_string(20 * kBlockBytes) + " " + std::to_string(2 * kBlockBytes),
                          "write -P 0x45 " + std::to_string(30 * kBlockBytes + 100) + " 10"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk1",
                         {"write -P 0x46 " + std::to_string(700 * kBlockBytes) + " " +
                          std::to_string(4 * kBlockBytes)}));
  // 1 + 2 + 1 blocks on disk0, 4 on disk1; 2 of them all zero.
  json second = rig.Run("vm100-1");
  ASSERT_FALSE(second.is_null());
  EXPECT_EQ(second["mode"], "incremental");
  EXPECT_EQ(second["blocks_sent"], 8);
  EXPECT_EQ(second["zero_blocks"], 2);
  EXPECT_EQ(second["data_blocks"], 6);
  EXPECT_LE(second["raw_bytes"].get<std::uint64_t>(), 6 * kBlockBytes);
  rig.ExpectReplicasEqualSources();
  st = rig.Status("vm100-1");
  EXPECT_EQ(st["last_mode"], "incremental");
  EXPECT_EQ(st["last_blocks_sent"], 8);

  // Nothing changed: an empty incremental.
  json third = rig.Run("vm100-1");
  EXPECT_EQ(third["mode"], "incremental");
  EXPECT_EQ(third["blocks_sent"], 0);
  rig.ExpectReplicasEqualSources();
  // Each cycle is in the history with its figures.
  json events = json::parse(rig.Blkrep({"events", "--json"}).out, nullptr, false);
  ASSERT_TRUE(events.is_array());
  ASSERT_EQ(events.size(), 3u) << events.dump();
  EXPECT_EQ(events[0]["details"]["mode"], "full");
  EXPECT_EQ(events[1]["details"]["blocks_sent"], 8);
  EXPECT_EQ(events[1]["details"]["zero_blocks"], 2);
  for (const auto& e : events) EXPECT_EQ(e["kind"], "cycle-completed") << e.dump();
}

TEST(ReplicationTest, WithoutATrackerRunWorksFromTheJournalsAndTheVolumes) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 2 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x51 0 256K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  json first = rig.Run("vm100-1");
  EXPECT_EQ(first["mode"], "full");
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x52 64K 8K"}));
  ASSERT_EQ(rig.tracker().Stop(SIGTERM), 0);
  json second = rig.Run("vm100-1");
  EXPECT_EQ(second["mode"], "incremental");
  EXPECT_EQ(second["tracker_running"], false);
  EXPECT_EQ(second["blocks_sent"], 2);
  rig.ExpectReplicasEqualSources();
  // The journal was sealed again: the tracker restarts without a resync.
  ASSERT_TRUE(rig.StartTracker());
  json report = Inspect(rig.dir(), rig.state_dir());
  EXPECT_EQ(report["resync_required"], false) << report.dump();
}

TEST(ReplicationTest, AFailingTargetLeavesStateErrorAndCountsFailures) {
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.AddTarget("broken", {"--exec", "echo receiver is down >&2; exit 3"}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "broken"));
  for (int i = 1; i <= 2; ++i) {
    RunResult r = rig.Blkrep({"run", "--id", "vm100-1"});
    EXPECT_EQ(r.exit_status, 1) << Describe(r);
    EXPECT_NE(r.err.find("blkrep: error: "), std::string::npos) << r.err;
    json st = rig.Status("vm100-1");
    EXPECT_EQ(st["state"], "error");
    EXPECT_EQ(st["fail_count"], i);
    ASSERT_TRUE(st["error"].is_string());
    EXPECT_NE(st["error"].get<std::string>().find("receiver is down"), std::string::npos) << st.dump();
  }
  // The history: two failed cycles, one change of state (ok -> error).
  RunResult events = rig.Blkrep({"events", "--json"});
  ASSERT_EQ(events.exit_status, 0) << Describe(events);
  json list = json::parse(events.out, nullptr, false);
  ASSERT_TRUE(list.is_array()) << events.out;
  std::vector<std::string> kinds;
  for (const auto& e : list) {
    kinds.push_back(e["kind"]);
    EXPECT_EQ(e["job"], "vm100-1");
    if (e["kind"] == "cycle-failed") {
      EXPECT_NE(e["message"].get<std::string>().find("receiver is down"), std::string::npos) << e.dump();
    }
    if (e["kind"] == "state-changed") {
      EXPECT_EQ(e["details"]["to"], "error") << e.dump();
    }
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"cycle-failed", "state-changed", "cycle-failed"}));
  // Nothing happened after the far future.
  RunResult later = rig.Blkrep({"events", "--json", "--since", "2100-01-01"});
  EXPECT_EQ(json::parse(later.out, nullptr, false).size(), 0u) << later.out;
  EXPECT_EQ(rig.Blkrep({"events", "--since", "yesterday"}).exit_status, 2);
  // The cycle was aborted: the blocks are still dirty for the target.
  json report = Inspect(rig.dir(), rig.state_dir());
  EXPECT_EQ(VolumeReport(report, "disk0")["targets"][0]["dirty_blocks"], 256) << report.dump();
}

TEST(ReplicationTest, ACycleIsOnePointInTimeAcrossVolumesWhileTheGuestWrites) {
  BLKREP_REQUIRE_PYTHON_NBD(python);
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  rig.AddVolume("disk1", 512 * 1024);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  // 1 MB/s on the wire and no compression: the full cycle takes ~1.5 s and
  // the incremental several hundred ms, while the writer overwrites blocks.
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  StampWriter writer(rig, python, {"disk0", "disk1"});
  ASSERT_TRUE(writer.WaitReady());
  for (int cycle = 0; cycle < 2; ++cycle) {
    std::uint64_t before = writer.Progress();
    // Small batches read just ahead of the wire: the guest overwrites
    // blocks before they are read, so the copy-on-write store must serve them.
    json r = rig.Run("vm100-1", {"--zstd-level", "0", "--batch-size", "16K", "--read-ahead", "1"});
    ASSERT_FALSE(r.is_null());
    EXPECT_EQ(r["mode"], cycle == 0 ? "full" : "incremental");
    std::uint64_t newest = 0;
    std::string problem = CheckPointInTime(rig.ReplicaImages(), &newest);
    EXPECT_EQ(problem, "") << "cycle " << cycle;
    // The test means something only if writes happened during the cycle.
    EXPECT_GT(newest, before) << "no write landed before the freeze";
    EXPECT_GT(writer.Progress(), newest + 10) << "the writer did not write during the cycle";
  }
  std::uint64_t last = writer.Stop();
  ASSERT_GT(last, 0u);
  // Once the writer stopped, the next incremental catches up exactly.
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "incremental");
  rig.ExpectReplicasEqualSources();
  std::uint64_t newest = 0;
  EXPECT_EQ(CheckPointInTime(rig.ReplicaImages(), &newest), "");
  EXPECT_EQ(newest, last);
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

TEST(ReplicationTest, PassingTheCopyOnWriteCapFailsTheCycleKeepsTheDirtyBitsAndNotTheGuest) {
  BLKREP_REQUIRE_PYTHON_NBD(python);
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  // Room for 4 preserved blocks per volume.
  ASSERT_TRUE(rig.StartTracker({"--cow-cap", "16K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  StampWriter writer(rig, python, {"disk0"});
  ASSERT_TRUE(writer.WaitReady());
  RunResult r = rig.Blkrep({"run", "--id", "vm100-1", "--zstd-level", "0", "--batch-size", "16K", "--read-ahead", "1"});
  EXPECT_EQ(r.exit_status, 1) << Describe(r);
  EXPECT_NE(r.err.find("passed its cap of 16384 bytes"), std::string::npos) << r.err;
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "error");
  EXPECT_EQ(st["fail_count"], 1);
  // The guest never noticed: the writer kept going and stops cleanly.
  std::uint64_t last = writer.Stop();
  EXPECT_GT(last, 256u);
  // The aborted cycle's blocks are still dirty: the next run is the full
  // cycle again and brings the volume as it is now.
  json report = Inspect(rig.dir(), rig.state_dir());
  EXPECT_EQ(VolumeReport(report, "disk0")["targets"][0]["dirty_blocks"], 256) << report.dump();
  json again = rig.Run("vm100-1");
  EXPECT_EQ(again["mode"], "full");
  rig.ExpectReplicasEqualSources();
}

TEST(ReplicationTest, AShipperKilledMidCycleLeavesNothingStuckAndTheNextRunCompletes) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 4 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x71 0 4M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  Process run;
  ASSERT_TRUE(run.Start({BlkrepBinary(), "run", "--id", "vm100-1", "--zstd-level", "0", "--state-dir", rig.state_dir()},
                        rig.dir().File("run.out"), rig.dir().File("run.err")));
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const std::string store = rig.state_dir() + "/cow/vm100/vm100-1/disk0.cow";
  ASSERT_TRUE(std::filesystem::exists(store)) << "the cycle should be frozen";
  run.Signal(SIGKILL);
  run.Wait(std::chrono::seconds(10));
  // The tracker notices the shipper is gone (its lock on the store went
  // with it) and aborts the cycle: the store stops growing and goes away.
  for (int i = 0; i < 150 && std::filesystem::exists(store); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(std::filesystem::exists(store)) << "the orphaned cycle was not aborted";
  EXPECT_NE(rig.tracker().process().err().find("the shipper of job vm100-1 is gone"), std::string::npos)
      << rig.tracker().process().err();
  // The tracker still holds the frozen cycle and its store; the next run
  // abandons it (its blocks are dirty again) and ships the volume.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x72 1M 64K"}));
  json r = rig.Run("vm100-1", {"--read-ahead", "64"});
  EXPECT_EQ(r["mode"], "full");
  rig.ExpectReplicasEqualSources();
  json report = Inspect(rig.dir(), rig.state_dir());
  EXPECT_EQ(VolumeReport(report, "disk0")["targets"][0]["dirty_blocks"], 0) << report.dump();
  EXPECT_FALSE(std::filesystem::exists(rig.state_dir() + "/cow/vm100/vm100-1/disk0.cow")) << "the store outlived its cycle";
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

TEST(ReplicationTest, CompressionIsOnWhileTheWireIsTheBottleneckAndOffWhenTurnedOff) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 2 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x41 0 2M"}));  // very compressible
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  // 1 MB/s: sending raw 64 KiB batches takes far longer than compressing
  // them, so adaptive compression stays (mostly) on.
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  json adaptive = rig.Run("vm100-1", {"--batch-size", "64K"});
  ASSERT_FALSE(adaptive.is_null());
  EXPECT_LT(adaptive["payload_bytes"].get<double>(), 0.9 * adaptive["raw_bytes"].get<double>()) << adaptive.dump();
  rig.ExpectReplicasEqualSources();
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x42 0 1M"}));
  json off = rig.Run("vm100-1", {"--zstd-level", "0"});
  EXPECT_EQ(off["payload_bytes"], off["raw_bytes"]) << off.dump();
  EXPECT_EQ(off["raw_bytes"], kMiB);
  rig.ExpectReplicasEqualSources();
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

TEST(ReplicationTest, ACorruptedJournalShowsTheJobResyncRequiredAndTheResyncSendsExactlyTheBlocksThatDiffer) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 256K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_FALSE(rig.Run("vm100-1").is_null());
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");
  EXPECT_TRUE(rig.Status("vm100-1")["resync_reason"].is_null());
  ASSERT_EQ(rig.tracker().Stop(SIGTERM), 0);
  // A byte of the journal's records mutated while nothing tracks.
  std::string journal = rig.state_dir() + "/journal/vm100/disk0.journal";
  std::vector<std::uint8_t> bytes = ReadAll(journal);
  ASSERT_GT(bytes.size(), 4200u);
  std::vector<std::uint8_t> flipped = {static_cast<std::uint8_t>(bytes[4200] ^ 0xff)};
  WriteAt(journal, 4200, flipped);
  ASSERT_TRUE(rig.StartTracker());  // it serves all the same
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x12 512K 64K"}));
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "resync-required") << st.dump();
  ASSERT_TRUE(st["resync_reason"].is_string()) << st.dump();
  RunResult text = rig.Blkrep({"status"});
  EXPECT_NE(text.out.find("resync-required: disk0:"), std::string::npos) << text.out;
  json inspect = json::parse(rig.Blkrep({"journal", "inspect", "vm100", "--json"}).out, nullptr, false);
  ASSERT_TRUE(inspect.is_object());
  EXPECT_EQ(inspect["resync_required"], true) << inspect.dump();
  EXPECT_TRUE(inspect["resync_reason"].is_string()) << inspect.dump();
  // The journal lost what it knew: the next cycle compares every block and
  // brings exactly the 16 blocks of 4 KiB written since the last cycle.
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "resync") << r.dump();
  EXPECT_EQ(r["compared_blocks"], 256) << r.dump();
  EXPECT_EQ(r["data_blocks"], 16) << r.dump();
  EXPECT_EQ(r["blocks_sent"], 16) << r.dump();
  EXPECT_EQ(r["matched_blocks"], 240) << r.dump();
  EXPECT_LT(r["raw_bytes"].get<std::uint64_t>(), 17u * 4096) << r.dump();
  rig.ExpectReplicasEqualSources();
  st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "ok") << st.dump();
  EXPECT_TRUE(st["resync_reason"].is_null()) << st.dump();
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

TEST(ReplicationTest, ASuspendedJobRunsNoCycleAndAfterResumeBringsWhatAccumulated) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_FALSE(rig.Run("vm100-1").is_null());
  ASSERT_EQ(rig.Blkrep({"suspend", "vm100-1"}).exit_status, 0);
  EXPECT_EQ(rig.Status("vm100-1")["state"], "suspended");
  EXPECT_TRUE(rig.Status("vm100-1")["next_sync"].is_null());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x21 0 8K", "write -P 0x22 64K 4K"}));
  RunResult refused = rig.Blkrep({"run", "--id", "vm100-1"});
  EXPECT_EQ(refused.exit_status, 1) << Describe(refused);
  EXPECT_NE(refused.err.find("is suspended"), std::string::npos) << refused.err;
  RunResult due = rig.Blkrep({"run", "--json"});  // every due job: none
  EXPECT_EQ(due.exit_status, 0) << Describe(due);
  EXPECT_EQ(json::parse(due.out, nullptr, false).size(), 0u) << due.out;
  ASSERT_EQ(rig.Blkrep({"resume", "vm100-1"}).exit_status, 0);
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "incremental");
  EXPECT_EQ(r["blocks_sent"], 3);  // 2 + 1 blocks of 4 KiB, written while suspended
  rig.ExpectReplicasEqualSources();
  json events = json::parse(rig.Blkrep({"events", "--json"}).out, nullptr, false);
  std::vector<std::string> changes;
  for (const auto& e : events) {
    if (e["kind"] == "state-changed") changes.push_back(e["message"]);
  }
  ASSERT_EQ(changes.size(), 2u) << events.dump();
  EXPECT_EQ(changes[0].rfind("ok -> suspended", 0), 0u);
  EXPECT_EQ(changes[1].rfind("suspended -> ok", 0), 0u);
  EXPECT_EQ(rig.Blkrep({"suspend", "vm100-9"}).exit_status, 1);
  EXPECT_EQ(rig.Blkrep({"suspend"}).exit_status, 2);
}

}  // namespace
}  // namespace blkrep::jobs::test
