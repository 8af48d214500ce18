// Review tests for the point-in-time freeze between the tracker's
// CycleControl/WriteGate and the shipper's view of the copy-on-write store.
// Each test fails on the code as reviewed and names the behaviour it proves:
// a shipper holding a store either gets the frozen image from it, or the
// store tells it (overflowed()) that the image is no longer a point in time.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/memory_file_system.h"
#include "tests/core/temp_dir.h"
#include "tracker/cow_store.h"
#include "tracker/cycle_control.h"
#include "tracker/journal.h"

namespace blkrep::tracker {
namespace {

using core::test_support::TempDir;

constexpr std::uint32_t kBlock = 4096;
constexpr std::uint64_t kBlocks = 16;
constexpr char kGuest[] = "vm1";

class CycleReviewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    volume_path_ = dir_.File("disk0.img");
    fd_ = ::open(volume_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd_, 0);
    for (std::uint64_t b = 0; b < kBlocks; ++b) Fill(b, static_cast<char>('a' + b));
    core::VolumeIdentity id;
    id.size_bytes = kBlocks * kBlock;
    VolumeDescriptor d{kGuest, "disk0", volume_path_, id};
    JournalOptions o;
    o.block_size_bytes = kBlock;
    o.extent_size_bytes = 16 * kBlock;
    auto j = Journal::Open(fs_, "/j/disk0.journal", d, o);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    journal_ = std::move(j).value();
    gate_ = std::make_unique<WriteGate>(fd_);
    control_ = std::make_unique<CycleControl>(
        dir_.path() + "/state", kGuest,
        std::vector<ControlledVolume>{{"disk0", volume_path_, kBlocks * kBlock, journal_.get(), gate_.get()}},
        1 << 20);
  }
  void TearDown() override {
    control_.reset();
    gate_.reset();
    journal_.reset();
    ::close(fd_);
  }

  void Fill(std::uint64_t block, char c) {
    std::vector<char> data(kBlock, c);
    ASSERT_EQ(::pwrite(fd_, data.data(), kBlock, static_cast<off_t>(block * kBlock)), kBlock);
  }
  // A guest write through the export's path: gate, mark, write, exit.
  void GuestWrite(std::uint64_t block, char c) {
    gate_->Enter(block * kBlock, kBlock);
    ASSERT_TRUE(journal_->MarkDirty(block * kBlock, kBlock).ok());
    Fill(block, c);
    gate_->Exit();
  }
  // "freeze JOB" as `blkrep run` asks it, then the store opened the way the
  // shipper opens it (by the path in the reply).
  std::unique_ptr<CowStore> FreezeAndOpen(const std::string& job) {
    EXPECT_EQ(control_->Handle("add-target " + job), "ok\n");
    std::string reply = control_->Handle("freeze " + job);
    std::istringstream in(reply);
    std::string line, tag, name, mode, path;
    std::uint64_t epoch = 0, blocks = 0;
    std::getline(in, line);
    EXPECT_EQ(line, "ok") << reply;
    std::getline(in, line);
    std::istringstream words(line);
    words >> tag >> name >> epoch >> mode >> blocks >> path;
    auto store = CowStore::Open(path);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    if (!store.ok()) return nullptr;
    EXPECT_EQ((*store)->epoch(), epoch);
    return std::move(store).value();
  }
  // What a shipper of `store` would ship for `block` if it read the volume
  // now: the preserved copy if there is one, else the volume.
  char ShipperSees(CowStore& store, std::uint64_t block) {
    std::vector<std::byte> out(kBlock);
    auto got = store.ReadPreserved(block, out);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (got.ok() && *got) return static_cast<char>(out[0]);
    char c = 0;
    EXPECT_EQ(::pread(fd_, &c, 1, static_cast<off_t>(block * kBlock)), 1);
    return c;
  }

  TempDir dir_;
  core::MemoryFileSystem fs_;
  std::string volume_path_;
  int fd_ = -1;
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<WriteGate> gate_;
  std::unique_ptr<CycleControl> control_;
};

// Two jobs of one guest (two targets) run their cycles at once: `blkrep run`
// locks per job, not per guest. The first job's shipper must still get its
// frozen image after the second job froze, and after the second committed.
TEST_F(CycleReviewTest, ASecondJobsFreezeAndCommitKeepTheFirstJobsCopyOnWrite) {
  std::unique_ptr<CowStore> first = FreezeAndOpen("vm1-1");
  ASSERT_NE(first, nullptr);
  std::unique_ptr<CowStore> second = FreezeAndOpen("vm1-2");
  ASSERT_NE(second, nullptr);

  GuestWrite(3, 'X');
  EXPECT_TRUE(ShipperSees(*first, 3) == 'd' || first->overflowed())
      << "job vm1-1's shipper would ship block 3 as written after its freeze ('" << ShipperSees(*first, 3)
      << "'), and its store does not say the image is broken";
  EXPECT_EQ(ShipperSees(*second, 3), 'd');

  // The second job finishes first; the first job's cycle is still running.
  EXPECT_EQ(control_->Handle("commit vm1-2"), "ok\n");
  GuestWrite(5, 'Y');
  EXPECT_TRUE(ShipperSees(*first, 5) == 'f' || first->overflowed())
      << "after job vm1-2 committed, job vm1-1's shipper would ship block 5 as written after its freeze ('"
      << ShipperSees(*first, 5) << "')";
}

// `blkrep delete` with the tracker running: "remove-target JOB" aborts a
// cycle of the job left frozen (its shipper died) and drops the job from
// the journal; other jobs of the guest are untouched, and a second removal
// is harmless.
TEST_F(CycleReviewTest, RemoveTargetAbortsAFrozenCycleAndDropsOnlyThatJob) {
  std::unique_ptr<CowStore> store = FreezeAndOpen("vm1-1");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(control_->Handle("add-target vm1-2"), "ok\n");
  EXPECT_EQ(control_->Handle("remove-target vm1-1"), "ok\n");
  std::vector<std::string> names;
  for (const TargetReport& t : journal_->Report().targets) names.push_back(t.name);
  EXPECT_EQ(names, std::vector<std::string>{"vm1-2"});
  EXPECT_TRUE(store->overflowed()) << "a shipper still reading the removed job's cycle must not ship it";
  EXPECT_EQ(control_->Handle("commit vm1-1").rfind("error: ", 0), 0u);
  EXPECT_EQ(control_->Handle("remove-target vm1-1"), "ok\n");
  EXPECT_EQ(control_->Handle("remove-target").rfind("error: ", 0), 0u);
  GuestWrite(2, 'Z');
  ASSERT_EQ(journal_->Report().targets.size(), 1u);
  EXPECT_GT(journal_->Report().targets[0].dirty.Count(), 0u);
}

// The tracker stops (SIGTERM: AbortAll) or abandons a cycle while its shipper
// still reads. Nothing preserves blocks for that store any more (a restarted
// tracker has no store), so the store must tell the shipper, which then fails
// the cycle instead of committing a torn image on the replica.
TEST_F(CycleReviewTest, AnAbandonedCycleMarksItsStoreBrokenForTheShipperStillReadingIt) {
  std::unique_ptr<CowStore> store = FreezeAndOpen("vm1-1");
  ASSERT_NE(store, nullptr);
  control_->AbortAll();  // what `blkrep track` does on SIGTERM
  // Guest writes go on (through a restarted tracker, or here the same gate):
  // none is preserved for the abandoned store.
  GuestWrite(2, 'Z');
  EXPECT_TRUE(ShipperSees(*store, 2) == 'c' || store->overflowed())
      << "the shipper of the abandoned cycle would ship block 2 as written after the freeze and cannot tell";
}

}  // namespace
}  // namespace blkrep::tracker
