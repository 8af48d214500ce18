// A real filesystem on a tracked volume: nbdfuse exposes the NBD export as a
// file, a loop device turns that into a block device, and ext4 is made,
// mounted, filled with a tree of files and unmounted. e2fsck must find it
// clean, every file must read back intact after a remount, and every 4 KiB
// block of the volume that changed must be in the dirty set.
//
// Also a block device (a loop device) as the tracked volume, written,
// zeroed and trimmed through NBD.
//
// Needs root, /dev/fuse, loop devices, nbdfuse, fusermount3, losetup,
// mkfs.ext4, e2fsck, mount and umount; skips naming what is missing. Every
// mount, loop device and FUSE mount is undone on the way out, also when the
// test fails half way.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "tests/tracker/nbd_model.h"
#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

// Runs `undo` on destruction unless dismissed.
class Cleanup {
 public:
  explicit Cleanup(std::function<void()> undo) : undo_(std::move(undo)) {}
  ~Cleanup() {
    if (undo_) undo_();
  }
  Cleanup(const Cleanup&) = delete;
  Cleanup& operator=(const Cleanup&) = delete;
  void Dismiss() { undo_ = nullptr; }
  void RunNow() {
    if (undo_) {
      auto undo = std::move(undo_);
      undo_ = nullptr;
      undo();
    }
  }

 private:
  std::function<void()> undo_;
};

bool LooksLikeNoPermission(const std::string& text) {
  for (const char* needle : {"ermission denied", "not permitted", "only root", "must be superuser"}) {
    if (text.find(needle) != std::string::npos) return true;
  }
  return false;
}

// The files of the tree: deterministic names, sizes and contents.
struct TreeFile {
  std::string relative_path;
  std::vector<std::uint8_t> contents;
};

std::vector<TreeFile> MakeTree() {
  std::vector<TreeFile> files;
  std::uint32_t seed = 1;
  for (int d = 0; d < 12; ++d) {
    for (int f = 0; f < 10; ++f, ++seed) {
      std::size_t size = (seed * 7919u) % (180 * 1024) + (f == 0 ? 0 : 1);  // includes empty files
      files.push_back({"dir" + std::to_string(d) + "/sub" + std::to_string(f % 3) + "/file" + std::to_string(f),
                       RandomBytes(size, seed)});
    }
  }
  files.push_back({"big/blob.bin", RandomBytes(3 * kMiB + 123, 999)});
  return files;
}

TEST(NbdExt4Test, Ext4OnATrackedVolumeIsCleanIntactAndEveryChangedBlockIsDirty) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (losetup, mount)";
  BLKREP_REQUIRE_PROGRAM(nbdfuse, "nbdfuse");
  BLKREP_REQUIRE_PROGRAM(fusermount, "fusermount3");
  BLKREP_REQUIRE_PROGRAM(losetup, "losetup");
  BLKREP_REQUIRE_PROGRAM(mkfs, "mkfs.ext4");
  BLKREP_REQUIRE_PROGRAM(e2fsck, "e2fsck");
  BLKREP_REQUIRE_PROGRAM(mount, "mount");
  BLKREP_REQUIRE_PROGRAM(umount, "umount");
  {
    int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) GTEST_SKIP() << "FUSE is unavailable: cannot open /dev/fuse: " << std::strerror(errno);
    ::close(fd);
  }
  if (::access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "loop devices are unavailable: no /dev/loop-control";

  TempDir dir;
  const std::uint64_t size = 64 * kMiB;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, size);
  std::vector<std::uint8_t> before = ReadAll(volume);
  Tracker tracker(dir, {{"disk0", volume}});
  ASSERT_TRUE(tracker.Start());

  // nbdfuse: the export as the file FUSEDIR/disk.
  std::string fuse_dir = dir.File("fuse"), mount_dir = dir.File("mnt"), pid_file = dir.File("nbdfuse.pid");
  ASSERT_TRUE(std::filesystem::create_directory(fuse_dir));
  ASSERT_TRUE(std::filesystem::create_directory(mount_dir));
  std::string fuse_file = fuse_dir + "/disk";
  Process nbdfuse_process;
  ASSERT_TRUE(nbdfuse_process.Start({nbdfuse, "-P", pid_file, fuse_file, tracker.Uri("disk0")},
                                    dir.File("nbdfuse.out"), dir.File("nbdfuse.err")));
  Cleanup unfuse([&] {
    RunProgram(dir, {fusermount, "-u", fuse_dir}, std::chrono::seconds(10));
    if (!nbdfuse_process.Wait(std::chrono::seconds(5))) {
      RunProgram(dir, {fusermount, "-uz", fuse_dir}, std::chrono::seconds(10));
      nbdfuse_process.Reap();
    }
  });
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (FileSize(pid_file) == 0 && nbdfuse_process.running() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!nbdfuse_process.running()) {
    std::string err = nbdfuse_process.err();
    unfuse.Dismiss();
    if (LooksLikeNoPermission(err) || err.find("fuse:") != std::string::npos) {
      GTEST_SKIP() << "FUSE mounts are not allowed here: " << err;
    }
    FAIL() << "nbdfuse exited: " << err;
  }
  ASSERT_GT(FileSize(pid_file), 0u) << "nbdfuse did not become ready: " << nbdfuse_process.err();
  ASSERT_EQ(FileSize(fuse_file), size) << "nbdfuse shows the export with the wrong size";

  // A loop device over the FUSE file.
  RunResult attach = RunProgram(dir, {losetup, "-f", "--show", fuse_file});
  if (attach.exit_status != 0) {
    GTEST_SKIP() << "loop devices are unavailable: " << Describe(attach);
  }
  std::string loop = attach.out.substr(0, attach.out.find('\n'));
  ASSERT_EQ(loop.rfind("/dev/loop", 0), 0u) << attach.out;
  Cleanup detach([&] { RunProgram(dir, {losetup, "-d", loop}, std::chrono::seconds(20)); });

  // No discard: mkfs would otherwise trim the whole device, which makes
  // every block dirty and the check below trivially true.
  RunResult mkfs_run = RunProgram(
      dir, {mkfs, "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", loop},
      std::chrono::seconds(60));
  ASSERT_EQ(mkfs_run.exit_status, 0) << Describe(mkfs_run);

  bool mounted = false;
  Cleanup unmount([&] {
    if (!mounted) return;
    if (RunProgram(dir, {umount, mount_dir}, std::chrono::seconds(30)).exit_status != 0) {
      RunProgram(dir, {umount, "-l", mount_dir}, std::chrono::seconds(30));
    }
    mounted = false;
  });
  RunResult mount_run = RunProgram(dir, {mount, "-t", "ext4", loop, mount_dir});
  if (mount_run.exit_status != 0 && LooksLikeNoPermission(mount_run.err)) {
    GTEST_SKIP() << "mounting is not allowed here: " << mount_run.err;
  }
  ASSERT_EQ(mount_run.exit_status, 0) << Describe(mount_run);
  mounted = true;

  const std::vector<TreeFile> tree = MakeTree();
  for (const TreeFile& f : tree) {
    std::filesystem::path path = std::filesystem::path(mount_dir) / f.relative_path;
    std::filesystem::create_directories(path.parent_path());
    MakeVolume(path.string(), 0);
    if (!f.contents.empty()) WriteAt(path.string(), 0, f.contents);
  }
  unmount.RunNow();
  ASSERT_FALSE(mounted);

  RunResult fsck = RunProgram(dir, {e2fsck, "-f", "-n", loop}, std::chrono::seconds(60));
  EXPECT_EQ(fsck.exit_status, 0) << "e2fsck found problems: " << Describe(fsck);

  // Remount read-only: every file reads back byte for byte.
  Cleanup unmount_again([&] {
    if (mounted && RunProgram(dir, {umount, mount_dir}, std::chrono::seconds(30)).exit_status != 0) {
      RunProgram(dir, {umount, "-l", mount_dir}, std::chrono::seconds(30));
    }
    mounted = false;
  });
  RunResult remount = RunProgram(dir, {mount, "-t", "ext4", "-o", "ro", loop, mount_dir});
  ASSERT_EQ(remount.exit_status, 0) << Describe(remount);
  mounted = true;
  std::size_t damaged = 0;
  for (const TreeFile& f : tree) {
    std::string path = (std::filesystem::path(mount_dir) / f.relative_path).string();
    if (ReadAll(path) != f.contents && damaged++ < 5) ADD_FAILURE() << f.relative_path << " did not read back intact";
  }
  EXPECT_EQ(damaged, 0u);
  unmount_again.RunNow();
  detach.RunNow();
  unfuse.RunNow();
  EXPECT_FALSE(nbdfuse_process.running());

  // Compare the volume file before/after, block by block.
  std::vector<std::uint8_t> after = ReadAll(volume);
  ASSERT_EQ(after.size(), size);
  BlockSet changed = ChangedBlocks(before, after);
  EXPECT_GT(changed.size(), 1000u) << "the filesystem barely reached the volume";
  json report = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(report.value("resync_required", true), false);
  BlockSet dirty = DirtyBlocks(report, "disk0");
  std::size_t missing = 0;
  for (auto b : changed) {
    if (!dirty.count(b) && missing++ < 10) ADD_FAILURE() << "block " << b << " changed but is not dirty";
  }
  EXPECT_EQ(missing, 0u) << missing << " of " << changed.size() << " changed blocks are not in the dirty set";
}


TEST(NbdBlockDeviceTest, LoopDeviceVolumeServesWritesZeroesAndTrimsAndTracksThem) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (losetup)";
  BLKREP_REQUIRE_PROGRAM(losetup, "losetup");
  BLKREP_REQUIRE_PYTHON_NBD(python);
  if (::access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "loop devices are unavailable: no /dev/loop-control";
  TempDir dir;
  const std::uint64_t size = 16 * kMiB;
  std::string backing = dir.File("backing.img");
  std::vector<std::uint8_t> initial = RandomBytes(size, 5);
  MakeVolume(backing, size);
  WriteAt(backing, 0, initial);
  RunResult attach = RunProgram(dir, {losetup, "-f", "--show", backing});
  if (attach.exit_status != 0) GTEST_SKIP() << "loop devices are unavailable: " << Describe(attach);
  std::string loop = attach.out.substr(0, attach.out.find('\n'));
  ASSERT_EQ(loop.rfind("/dev/loop", 0), 0u) << attach.out;
  Cleanup detach([&] { RunProgram(dir, {losetup, "-d", loop}, std::chrono::seconds(20)); });

  Tracker tracker(dir, {{"disk0", loop}});
  ASSERT_TRUE(tracker.Start());
  VolumeModel model(initial);
  // Unaligned everywhere: a block device zeroes whole sectors only, so the
  // partial head and tail must be written as zeroes, nothing beyond.
  std::vector<std::string> ops = {"write:1000:3000:0x31",
                                  "zero:" + std::to_string(kMiB + 100) + ":70000",
                                  "zero:" + std::to_string(2 * kMiB + 7) + ":9000:nohole",
                                  "zero:" + std::to_string(3 * kMiB) + ":65536:fua",
                                  "trim:" + std::to_string(4 * kMiB) + ":131072",
                                  "write:" + std::to_string(size - 5) + ":5:0x32:fua",
                                  "read:1000:3000:0x31",
                                  "read:" + std::to_string(kMiB + 100) + ":70000:0",
                                  "read:" + std::to_string(2 * kMiB + 7) + ":9000:0",
                                  "flush"};
  model.Write(1000, 3000, 0x31);
  model.Zero(kMiB + 100, 70000);
  model.Zero(2 * kMiB + 7, 9000);
  model.Zero(3 * kMiB, 65536);
  model.Trim(4 * kMiB, 131072);
  model.Write(size - 5, 5, 0x32);
  std::vector<std::string> argv = {python, ScriptPath("nbd_ops.py"), tracker.Uri("disk0")};
  argv.insert(argv.end(), ops.begin(), ops.end());
  RunResult run = RunProgram(dir, argv);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  // FAST_ZERO on a block device: either done quickly or refused with
  // ENOTSUP leaving the contents alone.
  std::uint64_t fast_offset = 6 * kMiB, fast_length = 65536;
  RunResult fast = RunProgram(dir, {python, ScriptPath("nbd_ops.py"), tracker.Uri("disk0"),
                                    "zero:" + std::to_string(fast_offset) + ":" + std::to_string(fast_length) +
                                        ":fastzero"});
  bool fast_zeroed = fast.exit_status == 0;
  if (fast_zeroed) {
    model.Zero(fast_offset, fast_length);
  } else {
    EXPECT_TRUE(fast.err.find("EOPNOTSUPP") != std::string::npos || fast.err.find("ENOTSUP") != std::string::npos)
        << "FAST_ZERO failed otherwise: " << Describe(fast);
  }

  json report = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(report.value("resync_required", true), false);
  BlockSet dirty = DirtyBlocks(report, "disk0");
  BlockSet allowed = model.dirty();
  AddRange(allowed, fast_offset, fast_length);  // a refused FAST_ZERO may still be counted
  for (auto b : model.dirty()) EXPECT_TRUE(dirty.count(b)) << "block " << b << " was changed but is not dirty";
  for (auto b : dirty) EXPECT_TRUE(allowed.count(b)) << "block " << b << " is dirty but was not touched";
  // The block device (read through the same page cache the tracker wrote).
  std::vector<std::uint8_t> image = ReadAt(loop, 0, size);
  std::string copy = dir.File("image-copy.img");
  MakeVolume(copy, size);
  WriteAt(copy, 0, image);
  model.ExpectFileMatches(copy);
}


// A FAST_ZERO the server refuses (NBD_ENOTSUP: a block device may only zero
// by writing) changes nothing, so it must dirty nothing either: the journal
// holds exactly the blocks that changed.
TEST(NbdBlockDeviceTest, RefusedFastZeroOnABlockDeviceChangesAndDirtiesNothing) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (losetup)";
  BLKREP_REQUIRE_PROGRAM(losetup, "losetup");
  BLKREP_REQUIRE_PYTHON_NBD(python);
  if (::access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "loop devices are unavailable: no /dev/loop-control";
  TempDir dir;
  const std::uint64_t size = 8 * kMiB;
  std::string backing = dir.File("backing.img");
  std::vector<std::uint8_t> initial = RandomBytes(size, 8);
  MakeVolume(backing, size);
  WriteAt(backing, 0, initial);
  RunResult attach = RunProgram(dir, {losetup, "-f", "--show", backing});
  if (attach.exit_status != 0) GTEST_SKIP() << "loop devices are unavailable: " << Describe(attach);
  std::string loop = attach.out.substr(0, attach.out.find('\n'));
  ASSERT_EQ(loop.rfind("/dev/loop", 0), 0u) << attach.out;
  Cleanup detach([&] { RunProgram(dir, {losetup, "-d", loop}, std::chrono::seconds(20)); });
  Tracker tracker(dir, {{"disk0", loop}});
  ASSERT_TRUE(tracker.Start());

  RunResult fast = RunProgram(dir, {python, ScriptPath("nbd_ops.py"), tracker.Uri("disk0"),
                                    "zero:" + std::to_string(2 * kMiB) + ":65536:fastzero"});
  if (fast.exit_status == 0) GTEST_SKIP() << "this block device zeroes fast; nothing was refused";
  ASSERT_NE(fast.err.find("ENOTSUP"), std::string::npos) << Describe(fast);
  EXPECT_EQ(ReadAt(loop, 2 * kMiB, 65536),
            std::vector<std::uint8_t>(initial.begin() + 2 * kMiB, initial.begin() + 2 * kMiB + 65536))
      << "a refused FAST_ZERO altered the volume";
  json report = Inspect(dir, tracker.state_dir());
  BlockSet dirty = DirtyBlocks(report, "disk0");
  EXPECT_TRUE(dirty.empty()) << "a refused FAST_ZERO left blocks dirty: " << Difference({}, dirty);
}

}  // namespace
}  // namespace blkrep::tracker::nbd_test
