// Checksum resync and verify through the command line (issue 5): verify
// names exactly the damaged ranges, a resync sends exactly the blocks that
// differ and is a point in time under a writer, a cancelled or cut resync
// leaves the replica as it was and `resume --resync` finishes it without
// sending again what was staged, a journal overflow under load makes the
// job resync-required while the guest's I/O goes on, and the automatic
// resync setting and window decide whether a run may resync by itself.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/hash.h"
#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

// Overwrites `count` blocks of 4 KiB of `path` from `first_block` with
// bytes no volume here holds, behind blkrep's back.
void DamageBlocks(const std::string& path, std::uint64_t first_block, std::uint64_t count, std::uint64_t seed) {
  std::mt19937_64 random(seed);
  std::vector<std::uint8_t> bytes(count * kBlockBytes);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(random() | 1);
  WriteAt(path, first_block * kBlockBytes, bytes);
}

std::string ImageHash(const std::string& path) {
  std::vector<std::uint8_t> bytes = ReadAll(path);
  return std::to_string(core::Xxh3_64(bytes.data(), bytes.size()));
}

std::vector<json> EventsOfKind(Rig& rig, const std::string& kind) {
  json events = json::parse(rig.Blkrep({"events", "--json"}).out, nullptr, false);
  std::vector<json> out;
  for (const auto& e : events) {
    if (e["kind"] == kind) out.push_back(e);
  }
  return out;
}

json VolumeOf(const json& verify, const std::string& name) {
  for (const auto& v : verify["volumes"]) {
    if (v["name"] == name) return v;
  }
  return json();
}

TEST(ResyncTest, VerifyNamesExactlyTheDamagedRangesAndAForcedResyncSendsExactlyThoseBlocks) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  rig.AddVolume("disk1", 2 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x31 0 1M"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk1", {"write -P 0x32 0 1536K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_EQ(rig.Run("vm100-1")["mode"], "full");

  RunResult clean = rig.Blkrep({"verify", "vm100-1", "--json"});
  ASSERT_EQ(clean.exit_status, 0) << Describe(clean);
  json v = json::parse(clean.out, nullptr, false);
  EXPECT_EQ(v["identical"], true) << clean.out;
  EXPECT_EQ(v["compared_blocks"], 256 + 512) << clean.out;

  // A write the replica has not seen yet is not a difference.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x41 200K 4K"}));
  // k = 5 blocks damaged behind blkrep's back: [3, 2] and [100, 1] of
  // disk0 (block 100 zeroed), [7, 1] and [511, 1] of disk1 (the last block).
  DamageBlocks(rig.ReplicaPath("disk0"), 3, 2, 1);
  WriteAt(rig.ReplicaPath("disk0"), 100 * kBlockBytes, std::vector<std::uint8_t>(kBlockBytes, 0));
  DamageBlocks(rig.ReplicaPath("disk1"), 7, 1, 2);
  DamageBlocks(rig.ReplicaPath("disk1"), 511, 1, 3);

  RunResult found = rig.Blkrep({"verify", "vm100-1", "--json"});
  EXPECT_EQ(found.exit_status, 1) << Describe(found);
  v = json::parse(found.out, nullptr, false);
  ASSERT_TRUE(v.is_object()) << found.out;
  EXPECT_EQ(v["identical"], false);
  EXPECT_EQ(v["differing_blocks"], 5) << found.out;
  EXPECT_EQ(VolumeOf(v, "disk0")["differing_ranges"], json::parse("[[3,2],[100,1]]")) << found.out;
  EXPECT_EQ(VolumeOf(v, "disk0")["changed_blocks"], 1) << found.out;
  EXPECT_EQ(VolumeOf(v, "disk1")["differing_ranges"], json::parse("[[7,1],[511,1]]")) << found.out;
  EXPECT_NE(found.err.find("resync-required"), std::string::npos) << found.err;
  // Verify changed nothing, and marked the job.
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "resync-required") << st.dump();
  EXPECT_NE(st["resync_reason"].get<std::string>().find("verify found 5 blocks"), std::string::npos) << st.dump();
  RunResult text = rig.Blkrep({"verify", "vm100-1"});
  EXPECT_EQ(text.exit_status, 1);
  EXPECT_NE(text.out.find("disk0: 3 of 256 blocks differ"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("  [100, 1]"), std::string::npos) << text.out;

  // The forced resync sends exactly the 5 damaged blocks and the 1 written.
  RunResult forced = rig.Blkrep({"resync", "vm100-1", "--now", "--json"});
  ASSERT_EQ(forced.exit_status, 0) << Describe(forced);
  json r = json::parse(forced.out, nullptr, false)[0];
  EXPECT_EQ(r["mode"], "resync") << forced.out;
  EXPECT_EQ(r["compared_blocks"], 768) << forced.out;
  EXPECT_EQ(r["blocks_sent"], 6) << forced.out;
  EXPECT_EQ(r["zero_blocks"], 1) << forced.out;  // block 511 of disk1 is zero at the source
  EXPECT_EQ(r["matched_blocks"], 762) << forced.out;
  rig.ExpectReplicasEqualSources();
  RunResult after = rig.Blkrep({"verify", "vm100-1", "--json"});
  EXPECT_EQ(after.exit_status, 0) << Describe(after);
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");
  EXPECT_EQ(rig.Status("vm100-1")["last_mode"], "resync");

  // Hyper-V's 29242/29244: one start per volume with its range, one end.
  std::vector<json> begun = EventsOfKind(rig, "resync-started");
  ASSERT_EQ(begun.size(), 2u);
  EXPECT_EQ(begun[0]["details"]["volume"], "disk0");
  EXPECT_EQ(begun[0]["details"]["block_count"], 256);
  EXPECT_EQ(begun[1]["details"]["block_count"], 512);
  std::vector<json> ended = EventsOfKind(rig, "resync-completed");
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0]["details"]["result"], "ok");
  EXPECT_EQ(ended[0]["details"]["blocks_compared"], 768);
  EXPECT_EQ(ended[0]["details"]["blocks_sent"], 6);
  EXPECT_GT(ended[0]["details"]["bytes_sent"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(EventsOfKind(rig, "verify-completed").size(), 4u);
}

TEST(ResyncTest, AResyncWhileTheGuestWritesIsAPointInTimeAndTheNextIncrementalCatchesUp) {
  BLKREP_REQUIRE_PYTHON_NBD(python);
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  rig.AddVolume("disk1", 512 * 1024);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  StampWriter writer(rig, python, {"disk0", "disk1"});
  ASSERT_TRUE(writer.WaitReady());
  ASSERT_FALSE(rig.Run("vm100-1", {"--zstd-level", "0"}).is_null());
  // Damage half the replica so the resync sends ~0.75 MiB at 1 MB/s while
  // the writer overwrites blocks.
  DamageBlocks(rig.ReplicaPath("disk0"), 0, 128, 7);
  DamageBlocks(rig.ReplicaPath("disk1"), 64, 64, 8);
  ASSERT_EQ(rig.Blkrep({"resync", "vm100-1"}).exit_status, 0);
  EXPECT_EQ(rig.Status("vm100-1")["state"], "resync-required");
  std::uint64_t before = writer.Progress();
  json r = rig.Run("vm100-1", {"--zstd-level", "0", "--batch-size", "16K", "--read-ahead", "1"});
  ASSERT_FALSE(r.is_null());
  EXPECT_EQ(r["mode"], "resync");
  EXPECT_GE(r["data_blocks"].get<std::uint64_t>(), 192u);
  std::uint64_t newest = 0;
  EXPECT_EQ(CheckPointInTime(rig.ReplicaImages(), &newest), "");
  EXPECT_GT(newest, before) << "no write landed before the freeze";
  EXPECT_GT(writer.Progress(), newest + 10) << "the writer did not write during the resync";
  std::uint64_t last = writer.Stop();
  json next = rig.Run("vm100-1");
  EXPECT_EQ(next["mode"], "incremental");
  rig.ExpectReplicasEqualSources();
  EXPECT_EQ(CheckPointInTime(rig.ReplicaImages(), &newest), "");
  EXPECT_EQ(newest, last);
}

TEST(ResyncTest, ACancelledOrCutResyncLeavesTheReplicaAndResumeResyncFinishesWithoutResending) {
  BLKREP_REQUIRE_PROGRAM(python, "python3");
  Rig rig;
  rig.AddVolume("disk0", 4 * kMiB);
  // Incompressible content, so the resync's stream is as long as its data.
  DamageBlocks(rig.volumes()[0].path, 0, 1024, 99);
  ASSERT_TRUE(rig.StartTracker());
  std::string cut_file = rig.dir().File("cut");
  std::ofstream(cut_file) << "all";
  ASSERT_TRUE(AddCuttableTarget(rig, "local", python, cut_file));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--rate", "1"}));
  ASSERT_FALSE(rig.Run("vm100-1", {"--zstd-level", "0"}).is_null());
  // 512 blocks (2 MiB) differ: about 2 s at 1 MB/s.
  const std::uint64_t damaged = 512;
  for (std::uint64_t b = 0; b < 1024; b += 2) DamageBlocks(rig.ReplicaPath("disk0"), b, 1, b);
  const std::string replica_before = ImageHash(rig.ReplicaPath("disk0"));

  // Cancelled by the operator (SIGTERM) halfway.
  Process run;
  ASSERT_TRUE(run.Start({BlkrepBinary(), "resync", "vm100-1", "--now", "--state-dir", rig.state_dir()},
                        rig.dir().File("run.out"), rig.dir().File("run.err")));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  run.Signal(SIGTERM);
  std::optional<int> exit_status = run.Wait(std::chrono::seconds(20));
  ASSERT_TRUE(exit_status.has_value());
  EXPECT_EQ(*exit_status, 1) << run.err();
  EXPECT_NE(run.err().find("cancelled"), std::string::npos) << run.err();
  EXPECT_EQ(ImageHash(rig.ReplicaPath("disk0")), replica_before) << "the cancelled resync changed the replica";
  std::vector<json> ended = EventsOfKind(rig, "resync-completed");
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0]["details"]["result"], "cancelled");
  // What it did before the cancel is counted, not reported as nothing.
  EXPECT_GT(ended[0]["details"]["blocks_compared"].get<std::uint64_t>(), 0u) << ended[0].dump();
  EXPECT_GT(ended[0]["details"]["bytes_sent"].get<std::uint64_t>(), 0u) << ended[0].dump();
  EXPECT_EQ(rig.Status("vm100-1")["state"], "resync-required");

  // Cut by the network a little later in its stream.
  std::ofstream(cut_file, std::ios::trunc) << 200000;
  RunResult cut = rig.Blkrep({"resume", "vm100-1", "--resync"});
  EXPECT_EQ(cut.exit_status, 1) << Describe(cut);
  EXPECT_EQ(ImageHash(rig.ReplicaPath("disk0")), replica_before) << "the cut resync changed the replica";

  // Continued: what the two attempts staged is kept, not sent again.
  std::ofstream(cut_file, std::ios::trunc) << "all";
  RunResult resumed = rig.Blkrep({"resume", "vm100-1", "--resync", "--json"});
  ASSERT_EQ(resumed.exit_status, 0) << Describe(resumed);
  json r = json::parse(resumed.out, nullptr, false)[0];
  EXPECT_EQ(r["mode"], "resync") << resumed.out;
  std::uint64_t kept = r["kept_blocks"].get<std::uint64_t>();
  std::uint64_t data = r["data_blocks"].get<std::uint64_t>();
  EXPECT_GT(kept, 100u) << resumed.out;
  EXPECT_EQ(kept + data, damaged) << resumed.out;
  EXPECT_LT(r["raw_bytes"].get<std::uint64_t>(), damaged * kBlockBytes) << resumed.out;
  rig.ExpectReplicasEqualSources();
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");
}

TEST(ResyncTest, ATinyJournalCapOverflowsUnderLoadTheJobIsResyncRequiredAndTheGuestNeverNotices) {
  BLKREP_REQUIRE_PYTHON_NBD(python);
  Rig rig;
  // Sparse, 2^21 blocks of 4 KiB: scattered writes evict activity-log
  // extents, and the checkpoint of their bitmap cannot fit in 32 KiB.
  rig.AddVolume("disk0", 8ULL << 30);
  ASSERT_TRUE(rig.StartTracker({"--journal-cap", "64K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  // 20000 scattered writes, 32 in flight, then every tenth read back.
  std::string script = rig.dir().File("load.py");
  std::ofstream(script) << R"(
import nbd, random, sys
h = nbd.NBD()
h.set_export_name("disk0")
h.connect_unix(sys.argv[1])
r = random.Random(5)
blocks = sorted({r.randrange(0, 1 << 21) for _ in range(20000)})
for i, b in enumerate(blocks):
    h.aio_pwrite((b % 251 + 1).to_bytes(1, "little") * 4096, b * 4096)
    while h.aio_in_flight() >= 32:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
for b in blocks[::10]:
    if h.pread(4096, b * 4096) != (b % 251 + 1).to_bytes(1, "little") * 4096:
        sys.exit("block %d reads back wrong" % b)
print(len(blocks))
)";
  RunResult load = RunProgram(rig.dir(), {python, script, rig.tracker().socket()}, std::chrono::seconds(120));
  ASSERT_EQ(load.exit_status, 0) << Describe(load);
  EXPECT_NE(rig.tracker().process().err().find("overflowed its cap of 65536 bytes"), std::string::npos)
      << rig.tracker().process().err();
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "resync-required") << st.dump();
  EXPECT_TRUE(st["resync_reason"].is_string()) << st.dump();
  json inspect = json::parse(rig.Blkrep({"journal", "inspect", "vm100", "--json"}).out, nullptr, false);
  EXPECT_EQ(inspect["resync_required"], true) << inspect.dump();
  // The tracker serves on: the same load again, every write read back.
  RunResult again = RunProgram(rig.dir(), {python, script, rig.tracker().socket()}, std::chrono::seconds(120));
  EXPECT_EQ(again.exit_status, 0) << Describe(again);
  EXPECT_TRUE(rig.tracker().process().running());
}

TEST(ResyncTest, WithAutomaticResyncOffARunWaitsForTheOperatorAndResyncAtRunsAtItsTime) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x61 0 512K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  EXPECT_EQ(rig.Blkrep({"create-local-job", "vm100-2", "local", "--auto-resync", "maybe"}).exit_status, 2);
  EXPECT_EQ(rig.Blkrep({"create-local-job", "vm100-2", "local", "--resync-window", "25:00-01:00"}).exit_status, 2);
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_EQ(rig.Blkrep({"update", "vm100-1", "--auto-resync", "off"}).exit_status, 0);
  EXPECT_EQ(rig.Blkrep({"update", "vm100-1", "--resync-window", "9-17"}).exit_status, 2);
  EXPECT_EQ(rig.Blkrep({"update", "vm100-7", "--auto-resync", "on"}).exit_status, 1);
  ASSERT_EQ(rig.Run("vm100-1")["mode"], "full");
  DamageBlocks(rig.ReplicaPath("disk0"), 10, 3, 9);
  EXPECT_EQ(rig.Blkrep({"verify", "vm100-1"}).exit_status, 1);
  const std::string damaged = ImageHash(rig.ReplicaPath("disk0"));

  // The run must not resync by itself: nothing is sent, no failure.
  RunResult waited = rig.Blkrep({"run", "--id", "vm100-1", "--json"});
  EXPECT_EQ(waited.exit_status, 0) << Describe(waited);
  EXPECT_NE(waited.err.find("resync required"), std::string::npos) << waited.err;
  EXPECT_EQ(ImageHash(rig.ReplicaPath("disk0")), damaged);
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "resync-required") << st.dump();
  EXPECT_EQ(st["fail_count"], 0) << st.dump();
  EXPECT_EQ(EventsOfKind(rig, "resync-deferred").size(), 1u);

  // Scheduled for a time in the past: due now, and the next run does it.
  ASSERT_EQ(rig.Blkrep({"resync", "vm100-1", "--at", "2020-01-01 00:00"}).exit_status, 0);
  std::tm at{};
  at.tm_year = 120;
  at.tm_mday = 1;
  at.tm_isdst = -1;
  EXPECT_EQ(rig.Status("vm100-1")["next_sync"], std::mktime(&at));
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "resync") << r.dump();
  EXPECT_EQ(r["blocks_sent"], 3) << r.dump();
  rig.ExpectReplicasEqualSources();
  st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "ok") << st.dump();
  EXPECT_EQ(st["next_sync"].is_null(), false);
  EXPECT_EQ(rig.Blkrep({"resync", "vm100-1", "--at", "tomorrow"}).exit_status, 2);
  EXPECT_EQ(rig.Blkrep({"resync", "vm100-1", "--now", "--at", "2030-01-01"}).exit_status, 2);
  EXPECT_EQ(rig.Blkrep({"resync", "vm100-9"}).exit_status, 1);
  EXPECT_EQ(rig.Blkrep({"verify"}).exit_status, 2);
}

TEST(ResyncTest, OutsideItsWindowAJobDefersTheResyncAndInsideItResyncs) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  // A one-minute window 12 hours away from now, and one around now.
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  auto clock = [](int minutes) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "%02d:%02d", (minutes / 60) % 24, minutes % 60);
    return std::string(buf);
  };
  int minute = tm.tm_hour * 60 + tm.tm_min;
  for (bool inside : {false, true}) {
    SCOPED_TRACE(inside ? "inside the window" : "outside the window");
    std::string window = inside ? clock(minute + 1440 - 5) + "-" + clock(minute + 5)
                                : clock(minute + 720) + "-" + clock(minute + 721);
    Rig rig;
    rig.AddVolume("disk0", 1 * kMiB);
    ASSERT_TRUE(rig.StartTracker());
    ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x62 0 512K"}));
    ASSERT_TRUE(rig.AddLocalTarget("local"));
    ASSERT_TRUE(rig.CreateJob("vm100-1", "local", {"--resync-window", window}));
    ASSERT_EQ(rig.Run("vm100-1")["mode"], "full");
    DamageBlocks(rig.ReplicaPath("disk0"), 0, 2, 10);
    ASSERT_EQ(rig.Blkrep({"resync", "vm100-1"}).exit_status, 0);
    EXPECT_EQ(rig.Status("vm100-1")["state"], "resync-required");
    RunResult ran = rig.Blkrep({"run", "--id", "vm100-1", "--json"});
    EXPECT_EQ(ran.exit_status, 0) << Describe(ran);
    json r = json::parse(ran.out, nullptr, false)[0];
    if (inside) {
      EXPECT_EQ(r["mode"], "resync") << ran.out;
      EXPECT_EQ(r["blocks_sent"], 2) << ran.out;
      rig.ExpectReplicasEqualSources();
      EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");
    } else {
      EXPECT_EQ(r["state"], "resync-required") << ran.out;
      EXPECT_EQ(rig.Status("vm100-1")["state"], "resync-required");
      EXPECT_EQ(EventsOfKind(rig, "resync-deferred").size(), 1u);
      // A bare run (the scheduler) does not even try.
      RunResult due = rig.Blkrep({"run", "--json"});
      EXPECT_EQ(json::parse(due.out, nullptr, false).size(), 0u) << due.out;
    }
  }
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

TEST(ResyncTest, AVolumeWrittenWhileUntrackedIsResyncedExactlyAndAResizedOneToo) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x71 0 1M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_EQ(rig.Run("vm100-1")["mode"], "full");
  ASSERT_EQ(rig.tracker().Stop(SIGTERM), 0);
  // Written behind the tracker's back: 2 blocks.
  DamageBlocks(rig.volumes()[0].path, 40, 2, 11);
  ASSERT_TRUE(rig.StartTracker());  // serves all the same
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "resync-required") << st.dump();
  ASSERT_TRUE(st["resync_reason"].is_string()) << st.dump();
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "resync") << r.dump();
  EXPECT_EQ(r["blocks_sent"], 2) << r.dump();
  rig.ExpectReplicasEqualSources();
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");

  // Grown while untracked by 64 KiB of data: the replica is resized and
  // only the new blocks travel.
  ASSERT_EQ(rig.tracker().Stop(SIGTERM), 0);
  DamageBlocks(rig.volumes()[0].path, 256, 16, 12);
  ASSERT_TRUE(rig.StartTracker());
  st = rig.Status("vm100-1");
  EXPECT_EQ(st["state"], "resync-required") << st.dump();
  r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "resync") << r.dump();
  EXPECT_EQ(r["blocks_sent"], 16) << r.dump();
  rig.ExpectReplicasEqualSources();
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

// The replica file replaced behind the receiver's back by a copy of itself
// with one block altered (same size, another inode): an incremental cycle
// would go onto the wrong base without anyone noticing. The receiver must
// report the replica replaced, the run resync it, and only the altered
// block travel.
TEST(ResyncTest, AReplicaReplacedByAnAlteredCopyIsResyncedAndNotUpdatedIncrementally) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x51 0 1M"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_EQ(rig.Run("vm100-1")["mode"], "full");

  const std::string replica = rig.ReplicaPath("disk0");
  struct stat before{};
  ASSERT_EQ(::stat(replica.c_str(), &before), 0);
  std::vector<std::uint8_t> copy = ReadAll(replica);
  ASSERT_EQ(copy.size(), 1 * kMiB);
  std::fill_n(copy.begin() + 77 * kBlockBytes, kBlockBytes, std::uint8_t{0xEE});
  const std::string fresh = replica + ".restored";
  {
    std::ofstream out(fresh, std::ios::binary);
    out.write(reinterpret_cast<const char*>(copy.data()), static_cast<std::streamsize>(copy.size()));
    ASSERT_TRUE(out.good());
  }
  ASSERT_EQ(::rename(fresh.c_str(), replica.c_str()), 0);
  struct stat after{};
  ASSERT_EQ(::stat(replica.c_str(), &after), 0);
  ASSERT_NE(after.st_ino, before.st_ino) << "the copy must be another file";

  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "resync") << r.dump();
  EXPECT_EQ(r["blocks_sent"], 1) << r.dump();
  rig.ExpectReplicasEqualSources();
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");

  // The resync's commit recorded the new file: the next cycle is an
  // incremental onto it again.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x52 8K 4K"}));
  json next = rig.Run("vm100-1");
  EXPECT_EQ(next["mode"], "incremental") << next.dump();
  EXPECT_EQ(next["blocks_sent"], 1) << next.dump();
  rig.ExpectReplicasEqualSources();
}

}  // namespace
}  // namespace blkrep::jobs::test

namespace blkrep::jobs::test {
namespace {

// Against a receiver that cannot compare hashes (an older blkrep: the
// feature is not granted), a resync falls back to a full cycle instead of
// failing every time; verify reports that it cannot run.
TEST(ResyncTest, AgainstAReceiverWithoutHashComparisonAResyncIsAFullCycle) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x71 0 1M"}));
  // Zstd and resume only: bits 0 and 1.
  ASSERT_TRUE(rig.AddTarget("old", {"--exec", rig.ReceiveCommand() + " --compat-features 3"}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "old"));
  ASSERT_EQ(rig.Run("vm100-1")["mode"], "full");
  DamageBlocks(rig.ReplicaPath("disk0"), 9, 3, 1);
  RunResult resync = rig.Blkrep({"resync", "vm100-1", "--now", "--json"});
  ASSERT_EQ(resync.exit_status, 0) << Describe(resync);
  json r = json::parse(resync.out, nullptr, false);
  ASSERT_TRUE(r.is_array() && r.size() == 1) << resync.out;
  EXPECT_EQ(r[0]["mode"], "full");
  EXPECT_EQ(r[0]["blocks_sent"], 256);
  EXPECT_NE(r[0]["resync_reason"].get<std::string>().find("cannot compare"), std::string::npos) << resync.out;
  rig.ExpectReplicasEqualSources();
  EXPECT_EQ(rig.Status("vm100-1")["state"], "ok");
  RunResult verify = rig.Blkrep({"verify", "vm100-1"});
  EXPECT_EQ(verify.exit_status, 1) << Describe(verify);
  EXPECT_NE(verify.err.find("does not compare block hashes"), std::string::npos) << verify.err;
}

}  // namespace
}  // namespace blkrep::jobs::test
