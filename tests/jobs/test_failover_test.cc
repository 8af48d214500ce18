// `blkrep test-failover` end to end: a replica made by a real replication
// cycle (track, qemu-io, run through `blkrep receive --stdio`), served by the
// blkrep binary, read with nbdcopy, written with qemu-io, and stopped with
// SIGTERM: the replica's bytes must be the same as before, the overlay
// directory gone. While it runs, a replication session of the guest must be
// refused and the guest's lock held. Optional: mkfs.ext4 and e2fsck on the
// view through nbdfuse (skipped without FUSE).
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/file_system.h"
#include "receiver/guest_state.h"
#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

// A guest vm100 with two volumes, replicated once (full cycle).
void MakeReplicatedGuest(Rig& rig, const std::string& qemu_io, std::uint64_t disk0_bytes) {
  rig.AddVolume("disk0", disk0_bytes);
  rig.AddVolume("disk1", 1 * kMiB + 8 * kBlockBytes);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 512K", "write -P 0x22 1M 100000"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk1", {"write -P 0x33 4096 64K"}));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  json first = rig.Run("vm100-1");
  ASSERT_FALSE(first.is_null());
  ASSERT_EQ(first["mode"], "full");
  rig.ExpectReplicasEqualSources();
}

// One `blkrep test-failover vm100` process; killed on destruction.
class Failover {
 public:
  explicit Failover(Rig& rig) : rig_(rig) {}
  std::string socket() const { return rig_.dir().File("failover.sock"); }
  std::string overlay_parent() const { return rig_.dir().File("overlays"); }
  std::string Uri(const std::string& name) const { return "nbd+unix:///" + name + "?socket=" + socket(); }
  Process& process() { return process_; }

  // Starts it and waits until it serves. False with a test failure if not.
  bool Start(std::vector<std::string> more = {}) {
    std::filesystem::create_directories(overlay_parent());
    std::vector<std::string> argv = {BlkrepBinary(), "test-failover", kGuest, "--replica-dir", rig_.replica_dir(),
                                     "--nbd-socket", socket(), "--overlay-dir", overlay_parent()};
    argv.insert(argv.end(), more.begin(), more.end());
    if (!process_.Start(argv, rig_.dir().File("failover.out"), rig_.dir().File("failover.err"))) return false;
    auto deadline = Clock::now() + std::chrono::seconds(15);
    while (Clock::now() < deadline) {
      if (!process_.running()) {
        ADD_FAILURE() << "blkrep test-failover exited with " << process_.exit_status().value_or(-1) << ": "
                      << process_.err();
        return false;
      }
      if (UnixSocketAccepts(socket())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "blkrep test-failover did not serve within 15 s: " << process_.err();
    return false;
  }

  // The entries of the overlay parent directory.
  std::vector<std::string> OverlayDirs() const {
    std::vector<std::string> out;
    std::error_code ignored;
    for (const auto& e : std::filesystem::directory_iterator(overlay_parent(), ignored)) {
      out.push_back(e.path().filename().string());
    }
    return out;
  }

 private:
  Rig& rig_;
  Process process_;
};

// The export `name` copied to a file with nbdcopy, and its bytes.
std::vector<std::uint8_t> CopyExport(Rig& rig, const std::string& nbdcopy, const Failover& failover,
                                     const std::string& name) {
  std::string out = rig.dir().File(name + ".copy");
  RunResult r = RunProgram(rig.dir(), {nbdcopy, failover.Uri(name), out});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  return ReadAll(out);
}

TEST(TestFailoverTest, ServesTheReplicasWritableAndLeavesThemUntouched) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PROGRAM(nbdcopy, "nbdcopy");
  Rig rig;
  MakeReplicatedGuest(rig, qemu_io, 2 * kMiB);
  if (HasFatalFailure()) return;
  std::vector<std::vector<std::uint8_t>> replicas_before = rig.ReplicaImages();
  Failover failover(rig);
  ASSERT_TRUE(failover.Start());
  std::string err = failover.process().err();
  EXPECT_NE(err.find(failover.Uri("disk0")), std::string::npos) << err;
  EXPECT_NE(err.find(failover.Uri("disk1")), std::string::npos) << err;
  ASSERT_EQ(failover.OverlayDirs().size(), 1u);
  EXPECT_EQ(failover.OverlayDirs()[0].rfind("blkrep-failover-vm100-", 0), 0u) << failover.OverlayDirs()[0];

  // Every export reads as its replica.
  for (std::size_t i = 0; i < rig.volumes().size(); ++i) {
    const std::string& name = rig.volumes()[i].name;
    std::vector<std::uint8_t> image = CopyExport(rig, nbdcopy, failover, name);
    ASSERT_EQ(image.size(), replicas_before[i].size()) << name;
    EXPECT_TRUE(image == replicas_before[i]) << name << " differs from its replica in blocks "
                                             << Difference({}, ChangedBlocks(replicas_before[i], image));
  }

  // Writes through NBD: whole blocks, a partial block, zeroes; they read
  // back through NBD (another connection) and nothing else changed.
  RunResult write = RunProgram(rig.dir(), {qemu_io, "-f", "raw", "-c", "write -P 0x5a 8192 16384", "-c",
                                           "write -P 0x6b 1000000 3000", "-c", "write -z 0 4096",
                                           failover.Uri("disk0")});
  ASSERT_EQ(write.exit_status, 0) << Describe(write);
  std::vector<std::uint8_t> expected = replicas_before[0];
  std::fill_n(expected.begin() + 8192, 16384, 0x5a);
  std::fill_n(expected.begin() + 1000000, 3000, 0x6b);
  std::fill_n(expected.begin(), 4096, 0);
  std::vector<std::uint8_t> written = CopyExport(rig, nbdcopy, failover, "disk0");
  EXPECT_TRUE(written == expected) << "disk0 through NBD differs from what was written in blocks "
                                   << Difference({}, ChangedBlocks(expected, written));
  EXPECT_TRUE(CopyExport(rig, nbdcopy, failover, "disk1") == replicas_before[1]);
  EXPECT_TRUE(rig.ReplicaImages() == replicas_before) << "the replica changed while the view was written";

  // The guest's lock is held: a replication session is refused, and flock
  // on the lock file fails.
  std::string lock_path = rig.replica_dir() + "/" + kGuest + "/.lock";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << lock_path;
  EXPECT_NE(::flock(fd, LOCK_EX | LOCK_NB), 0) << "the guest lock is free while a test failover runs";
  ::close(fd);
  RunResult second = RunProgram(rig.dir(), {BlkrepBinary(), "test-failover", kGuest, "--replica-dir",
                                            rig.replica_dir(), "--nbd-socket", rig.dir().File("second.sock")});
  EXPECT_EQ(second.exit_status, 1) << Describe(second);
  EXPECT_NE(second.err.find("guest vm100 is being received by a replication session (or tested by another test "
                            "failover)"),
            std::string::npos)
      << Describe(second);
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x77 0 64K"}));  // something to replicate
  RunResult run = rig.Blkrep({"run", "--id", "vm100-1", "--json"});
  EXPECT_NE(run.exit_status, 0) << Describe(run);
  EXPECT_NE((run.out + run.err).find("being received by another session"), std::string::npos) << Describe(run);

  // SIGTERM: exit 0, the overlay directory removed, the replicas as before.
  failover.process().Signal(SIGTERM);
  std::optional<int> status = failover.process().Wait(std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value()) << "blkrep test-failover did not stop on SIGTERM";
  EXPECT_EQ(*status, 0) << failover.process().err();
  EXPECT_TRUE(failover.OverlayDirs().empty()) << failover.OverlayDirs()[0] << " is left behind";
  EXPECT_NE(::access(failover.socket().c_str(), F_OK), 0) << "the socket is left behind";
  EXPECT_TRUE(rig.ReplicaImages() == replicas_before) << "the replica changed";

  // Replication goes on once it stopped.
  json next = rig.Run("vm100-1");
  ASSERT_FALSE(next.is_null());
  EXPECT_EQ(next["mode"], "incremental");
  rig.ExpectReplicasEqualSources();
}

// Every NBD command through the view, with libnbd (tests/tracker/nbd_ops.py
// checks each reply): FUA, write-zeroes with and without holes, trim,
// flush, FAST_ZERO refused, a read past the end refused with the connection
// kept, writes in flight together, block status, the size.
TEST(TestFailoverTest, EveryNbdCommandThroughTheViewAnswersCorrectly) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PYTHON_NBD(python);
  Rig rig;
  MakeReplicatedGuest(rig, qemu_io, 2 * kMiB);
  if (HasFatalFailure()) return;
  std::vector<std::vector<std::uint8_t>> replicas_before = rig.ReplicaImages();
  Failover failover(rig);
  ASSERT_TRUE(failover.Start());
  // disk0's replica: 0x11 in [0, 512K), 0x22 in [1M, 1M + 100000), zeroes elsewhere.
  RunResult ops = RunProgram(
      rig.dir(), {python, ScriptPath("nbd_ops.py"), failover.Uri("disk0"), "size:2097152", "read:0:4096:0x11",
                  "write:0x10000:0x2000:0xa1:fua", "read:0x10000:0x2000:0xa1", "read:0x12000:0x1000:0x11",
                  "zero:0:4096", "read:0:4096:0", "zero:4096:100:nohole", "read:4096:100:0", "read:4196:3996:0x11",
                  "trim:8192:8192:fua", "read:8192:8192:0", "read:16384:4096:0x11", "fail:ENOTSUP:zero:0x20000:4096:flags=16",
                  "read:0x20000:4096:0x11", "fail:EINVAL|ENOSPC:read:0x1ff000:0x2000", "flush",
                  "writes:0x100000:3000:32:8192:0xb2", "read:0x100000:3000:0xb2", "read:0x100bb8:5192:0x22",
                  "read:0x13e000:3000:0xb2", "read:0x13ebb8:5192:0", "blockstatus:0:65536"});
  ASSERT_EQ(ops.exit_status, 0) << Describe(ops);
  EXPECT_NE(ops.out.find("[0, 65536, 0]"), std::string::npos) << "block status: " << ops.out;
  EXPECT_TRUE(rig.ReplicaImages() == replicas_before) << "the replica changed";
  failover.process().Signal(SIGTERM);
  std::optional<int> status = failover.process().Wait(std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 0) << failover.process().err();
}

TEST(TestFailoverTest, RefusesAGuestWithoutACompleteCommittedReplica) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  // Nothing received for the guest yet.
  RunResult none = RunProgram(rig.dir(), {BlkrepBinary(), "test-failover", kGuest, "--replica-dir",
                                          rig.replica_dir(), "--nbd-socket", rig.dir().File("f.sock")});
  EXPECT_EQ(none.exit_status, 1) << Describe(none);
  EXPECT_NE(none.err.find("holds no replica of guest vm100"), std::string::npos) << Describe(none);
  // A point that is not a number is a usage error.
  RunResult point = RunProgram(rig.dir(), {BlkrepBinary(), "test-failover", kGuest, "--replica-dir",
                                           rig.replica_dir(), "--nbd-socket", rig.dir().File("f.sock"), "--point",
                                           "x3"});
  EXPECT_EQ(point.exit_status, 2) << Describe(point);
  EXPECT_NE(point.err.find("--point x3"), std::string::npos) << Describe(point);

  MakeReplicatedGuest(rig, qemu_io, 2 * kMiB);
  if (HasFatalFailure()) return;
  // The state says a full cycle was cut off in disk1's replica.
  core::FileSystem& fs = core::PosixFileSystemInstance();
  const std::string guest_dir = rig.replica_dir() + "/" + kGuest;
  auto state = receiver::ReadGuestStateFile(fs, guest_dir);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  receiver::VolumeState* disk1 = state->Find("disk1");
  ASSERT_NE(disk1, nullptr);
  disk1->incomplete = true;
  ASSERT_TRUE(receiver::WriteGuestStateFile(fs, guest_dir, *state).ok());
  RunResult incomplete = RunProgram(rig.dir(), {BlkrepBinary(), "test-failover", kGuest, "--replica-dir",
                                                rig.replica_dir(), "--nbd-socket", rig.dir().File("f.sock")});
  EXPECT_EQ(incomplete.exit_status, 1) << Describe(incomplete);
  EXPECT_NE(incomplete.err.find("disk1.img holds an incomplete"), std::string::npos) << Describe(incomplete);
  EXPECT_EQ(std::count(incomplete.err.begin(), incomplete.err.end(), '\n'), 1) << Describe(incomplete);
  EXPECT_NE(::access(rig.dir().File("f.sock").c_str(), F_OK), 0);
}

// mkfs.ext4 and e2fsck on the view, through nbdfuse (the export as a file):
// a real filesystem's writes land in the overlay only.
TEST(TestFailoverTest, AnExt4FilesystemMadeOnTheViewChecksCleanAndTheReplicaStaysUntouched) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PROGRAM(nbdfuse, "nbdfuse");
  BLKREP_REQUIRE_PROGRAM(fusermount, "fusermount3");
  BLKREP_REQUIRE_PROGRAM(mkfs, "mkfs.ext4");
  BLKREP_REQUIRE_PROGRAM(e2fsck, "e2fsck");
  {
    int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) GTEST_SKIP() << "FUSE is unavailable: cannot open /dev/fuse: " << std::strerror(errno);
    ::close(fd);
  }
  Rig rig;
  MakeReplicatedGuest(rig, qemu_io, 16 * kMiB);
  if (HasFatalFailure()) return;
  std::vector<std::vector<std::uint8_t>> replicas_before = rig.ReplicaImages();
  Failover failover(rig);
  ASSERT_TRUE(failover.Start());

  std::string fuse_dir = rig.dir().File("fuse"), pid_file = rig.dir().File("nbdfuse.pid");
  ASSERT_TRUE(std::filesystem::create_directory(fuse_dir));
  std::string fuse_file = fuse_dir + "/disk";
  Process nbdfuse_process;
  ASSERT_TRUE(nbdfuse_process.Start({nbdfuse, "-P", pid_file, fuse_file, failover.Uri("disk0")},
                                    rig.dir().File("nbdfuse.out"), rig.dir().File("nbdfuse.err")));
  bool fused = true;
  auto unfuse = [&] {
    if (!fused) return;
    fused = false;
    RunProgram(rig.dir(), {fusermount, "-u", fuse_dir}, std::chrono::seconds(10));
    if (!nbdfuse_process.Wait(std::chrono::seconds(5))) {
      RunProgram(rig.dir(), {fusermount, "-uz", fuse_dir}, std::chrono::seconds(10));
      nbdfuse_process.Reap();
    }
  };
  struct Guard {
    std::function<void()> f;
    ~Guard() { f(); }
  } guard{unfuse};
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (FileSize(pid_file) == 0 && nbdfuse_process.running() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!nbdfuse_process.running()) {
    fused = false;
    GTEST_SKIP() << "nbdfuse could not mount here: " << nbdfuse_process.err();
  }
  ASSERT_GT(FileSize(pid_file), 0u) << "nbdfuse did not become ready: " << nbdfuse_process.err();
  ASSERT_EQ(FileSize(fuse_file), 16 * kMiB);

  RunResult made = RunProgram(rig.dir(), {mkfs, "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", fuse_file},
                              std::chrono::seconds(60));
  ASSERT_EQ(made.exit_status, 0) << Describe(made);
  RunResult fsck = RunProgram(rig.dir(), {e2fsck, "-f", "-n", fuse_file}, std::chrono::seconds(60));
  EXPECT_EQ(fsck.exit_status, 0) << "e2fsck found problems: " << Describe(fsck);
  unfuse();
  EXPECT_TRUE(rig.ReplicaImages() == replicas_before) << "the replica changed";

  failover.process().Signal(SIGTERM);
  std::optional<int> status = failover.process().Wait(std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 0) << failover.process().err();
  EXPECT_TRUE(failover.OverlayDirs().empty());
  EXPECT_TRUE(rig.ReplicaImages() == replicas_before) << "the replica changed";
}


// Recovery points end to end: a job that keeps 2, four cycles, the points
// listed; a test failover at the oldest serves exactly the source as that
// cycle froze it (the replica untouched); promote at that point rolls the
// replica back, and the reversed job ships exactly the blocks the rollback
// rewrote plus what the guest wrote after the failover.
TEST(TestFailoverTest, RecoveryPointsAreListedServedAtAnyPointAndPromotedAt) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PROGRAM(nbdcopy, "nbdcopy");
  const std::string job = std::string(kGuest) + "-0";
  Rig a;
  Rig b;
  a.AddVolume("disk0", 4 * kMiB);
  ASSERT_TRUE(a.StartTracker());
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 2M"}));
  ASSERT_TRUE(a.AddTarget("nodeB", {"--exec", b.ReceiveCommand()}));
  ASSERT_TRUE(a.CreateJob(job, "nodeB", {"--recovery-points", "2"}));
  std::vector<std::vector<std::uint8_t>> images;  // the source after each cycle
  auto cycle = [&](const std::vector<std::string>& writes, const char* mode) {
    if (!writes.empty()) {
      ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", writes));
    }
    json r = a.Run(job);
    ASSERT_EQ(r["mode"], mode) << r.dump();
    images.push_back(ReadAll(a.volumes()[0].path));
  };
  auto at = [](std::uint64_t block, std::uint64_t count, int pattern) {
    return "write -P " + std::to_string(pattern) + " " + std::to_string(block * kBlockBytes) + " " +
           std::to_string(count * kBlockBytes);
  };
  cycle({}, "full");
  cycle({at(100, 10, 0x22)}, "incremental");
  cycle({at(200, 10, 0x33), at(105, 2, 0x34)}, "incremental");
  cycle({at(300, 5, 0x44)}, "incremental");

  RunResult listed = b.Blkrep({"recovery-points", kGuest, "--replica-dir", b.replica_dir(), "--json"});
  ASSERT_EQ(listed.exit_status, 0) << Describe(listed);
  json points = json::parse(listed.out, nullptr, false);
  if (points.is_object() && points.contains("points")) points = points["points"];
  ASSERT_TRUE(points.is_array() && points.size() == 3) << listed.out;  // 2 kept + the replica itself
  EXPECT_EQ(points[2]["latest"], true) << listed.out;
  const std::string oldest = std::to_string(points[0]["id"].get<std::uint64_t>());
  const std::string middle = std::to_string(points[1]["id"].get<std::uint64_t>());

  // Test failover at the oldest point (the source after the 2nd cycle).
  const std::vector<std::uint8_t> replica_before = ReadAll(b.ReplicaPath("disk0"));
  {
    Failover failover(b);
    ASSERT_TRUE(failover.Start({"--point", oldest}));
    EXPECT_TRUE(CopyExport(b, nbdcopy, failover, "disk0") == images[1]) << "point " << oldest;
    RunResult w = RunProgram(b.dir(), {qemu_io, "-f", "raw", "-c", "write -P 0x77 0 64K", failover.Uri("disk0")});
    EXPECT_EQ(w.exit_status, 0) << Describe(w);
    failover.process().Signal(SIGTERM);
    EXPECT_EQ(failover.process().Wait(std::chrono::seconds(20)).value_or(-1), 0) << failover.process().err();
  }
  {
    Failover failover(b);
    ASSERT_TRUE(failover.Start({"--point", middle}));
    EXPECT_TRUE(CopyExport(b, nbdcopy, failover, "disk0") == images[2]) << "point " << middle;
    failover.process().Signal(SIGTERM);
    EXPECT_EQ(failover.process().Wait(std::chrono::seconds(20)).value_or(-1), 0) << failover.process().err();
  }
  EXPECT_TRUE(ReadAll(b.ReplicaPath("disk0")) == replica_before) << "a test failover changed the replica";
  RunResult none = b.Blkrep({"test-failover", kGuest, "--replica-dir", b.replica_dir(), "--nbd-socket",
                             b.dir().File("x.sock"), "--point", "999"});
  EXPECT_EQ(none.exit_status, 1) << Describe(none);
  EXPECT_NE(none.err.find("no recovery point 999"), std::string::npos) << none.err;

  RunResult negative = b.Blkrep({"promote", kGuest, "--replica-dir", b.replica_dir(), "--point", "-2"});
  EXPECT_EQ(negative.exit_status, 2) << Describe(negative);

  // Failover to the oldest point: the replica becomes the source as it was.
  ASSERT_EQ(a.tracker().Stop(SIGTERM), std::optional<int>(0));
  RunResult promoted = b.Blkrep({"promote", kGuest, "--replica-dir", b.replica_dir(), "--point", oldest, "--json"});
  ASSERT_EQ(promoted.exit_status, 0) << Describe(promoted);
  EXPECT_TRUE(ReadAll(b.ReplicaPath("disk0")) == images[1]);
  json p = json::parse(promoted.out);
  // Rolled back: blocks 200-209 and 105-106 (3rd cycle), 300-304 (4th).
  EXPECT_EQ(p["volumes"][0]["rolled_back_blocks"], 17) << promoted.out;
  // A running source has no recovery points: the guest writes it directly.
  RunResult gone = b.Blkrep({"recovery-points", kGuest, "--replica-dir", b.replica_dir()});
  EXPECT_EQ(gone.exit_status, 1) << Describe(gone);
  EXPECT_NE(gone.err.find("promoted"), std::string::npos) << gone.err;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(b.replica_dir() + "/" + kGuest + "/.points", ec)) {
    EXPECT_EQ(e.path().extension(), "") << "an undo file is left after promote: " << e.path();
  }
  RunResult tested = b.Blkrep({"test-failover", kGuest, "--replica-dir", b.replica_dir(), "--nbd-socket",
                               b.dir().File("y.sock")});
  EXPECT_EQ(tested.exit_status, 1) << Describe(tested);
  EXPECT_NE(tested.err.find("promoted"), std::string::npos) << tested.err;
  Tracker tb(b.dir(), {{"disk0", b.ReplicaPath("disk0")}});
  ASSERT_TRUE(tb.Start());
  RunResult w = RunProgram(b.dir(), {qemu_io, "-f", "raw", "-c", at(400, 3, 0x55), tb.Uri("disk0")});
  ASSERT_EQ(w.exit_status, 0) << Describe(w);
  RunResult demoted = a.Blkrep({"demote", kGuest, "--replica-dir", a.replica_dir()});
  ASSERT_EQ(demoted.exit_status, 0) << Describe(demoted);
  ASSERT_TRUE(b.AddTarget("nodeA", {"--exec", a.ReceiveCommand()}));
  ASSERT_TRUE(b.CreateJob(job, "nodeA"));
  json reverse = b.Run(job);
  EXPECT_EQ(reverse["mode"], "incremental") << reverse.dump();
  EXPECT_EQ(reverse["blocks_sent"], 17 + 3) << reverse.dump();
  ASSERT_EQ(tb.Stop(SIGTERM), std::optional<int>(0));
  EXPECT_TRUE(ReadAll(a.volumes()[0].path) == ReadAll(b.ReplicaPath("disk0")));
}

}  // namespace
}  // namespace blkrep::jobs::test
