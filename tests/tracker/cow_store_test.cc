// The copy-on-write store and the write gate: a frozen block's old content
// is preserved before the first write over it, only once, never for shipped
// or unfrozen blocks; the cap fails the cycle, never the write; a freeze
// waits for writes in flight.
#include "tracker/cow_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "tests/core/temp_dir.h"
#include "tracker/cycle_control.h"

namespace blkrep::tracker {
namespace {

using core::test_support::TempDir;

constexpr std::uint32_t kBlock = 4096;

class CowStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    volume_path_ = dir_.File("volume.img");
    fd_ = ::open(volume_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd_, 0);
    for (std::uint64_t b = 0; b < kBlocks; ++b) Fill(b, static_cast<char>('a' + b));
  }
  void TearDown() override { ::close(fd_); }

  void Fill(std::uint64_t block, char c) {
    std::vector<char> data(kBlock, c);
    ASSERT_EQ(::pwrite(fd_, data.data(), kBlock, static_cast<off_t>(block * kBlock)), kBlock);
  }
  char Preserved(CowStore& store, std::uint64_t block) {
    std::vector<std::byte> out(kBlock);
    auto got = store.ReadPreserved(block, out);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (!got.ok() || !*got) return 0;
    return static_cast<char>(out[0]);
  }

  static constexpr std::uint64_t kBlocks = 16;
  TempDir dir_;
  std::string volume_path_;
  int fd_ = -1;
};

TEST_F(CowStoreTest, FrozenBlocksArePreservedOnceBeforeTheFirstOverwrite) {
  DirtyBitmap frozen(kBlocks);
  frozen.SetRange(2, 4);  // blocks 2..5
  auto store = CowStore::Create(dir_.File("v.cow"), kBlock, kBlocks * kBlock, 7, frozen, 1 << 20);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto reader = CowStore::Open(dir_.File("v.cow"));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->epoch(), 7u);
  EXPECT_EQ((*reader)->FrozenBitmap(), frozen);

  // A write over blocks 1..3 (partially): 2 and 3 are frozen.
  (*store)->Preserve(fd_, kBlock + 100, 2 * kBlock);
  Fill(2, 'X');
  Fill(3, 'X');
  EXPECT_EQ(Preserved(**reader, 1), 0);    // not frozen
  EXPECT_EQ(Preserved(**reader, 2), 'c');  // the frozen content
  EXPECT_EQ(Preserved(**reader, 3), 'd');
  EXPECT_EQ(Preserved(**reader, 4), 0);    // not overwritten
  // A second write over block 2 keeps the first copy.
  (*store)->Preserve(fd_, 2 * kBlock, kBlock);
  Fill(2, 'Y');
  EXPECT_EQ(Preserved(**reader, 2), 'c');
  EXPECT_EQ((*reader)->preserved_blocks(), 2u);
  // Shipped blocks need no copy.
  (*reader)->MarkShipped(4, 1);
  (*store)->Preserve(fd_, 4 * kBlock, kBlock);
  EXPECT_EQ(Preserved(**reader, 4), 0);
  EXPECT_FALSE((*reader)->overflowed());
}

TEST_F(CowStoreTest, PassingTheCapFailsTheCycleNotTheWrite) {
  DirtyBitmap frozen(kBlocks, true);
  auto store = CowStore::Create(dir_.File("v.cow"), kBlock, kBlocks * kBlock, 1, frozen, 2 * kBlock);
  ASSERT_TRUE(store.ok());
  (*store)->Preserve(fd_, 0, 2 * kBlock);
  EXPECT_FALSE((*store)->overflowed());
  (*store)->Preserve(fd_, 5 * kBlock, kBlock);  // a third block: past the cap
  EXPECT_TRUE((*store)->overflowed());
  EXPECT_NE((*store)->overflow_reason().find("passed its cap of 8192 bytes"), std::string::npos);
  EXPECT_EQ((*store)->preserved_blocks(), 2u);
}

TEST_F(CowStoreTest, OpenRejectsAStoreWhoseLayoutDoesNotMatch) {
  DirtyBitmap frozen(kBlocks, true);
  std::string path = dir_.File("v.cow");
  ASSERT_TRUE(CowStore::Create(path, kBlock, kBlocks * kBlock, 1, frozen, 1 << 20).ok());
  // Corrupt the block count.
  int fd = ::open(path.c_str(), O_RDWR);
  std::uint64_t bad = 1ULL << 40;
  ASSERT_EQ(::pwrite(fd, &bad, 8, 24), 8);
  ::close(fd);
  auto opened = CowStore::Open(path);
  EXPECT_EQ(opened.status().code(), core::Code::kCorruption) << opened.status().ToString();
  EXPECT_EQ(CowStore::Open(dir_.File("missing.cow")).status().code(), core::Code::kNotFound);
}

TEST_F(CowStoreTest, PauseWaitsForWritesInFlightAndHoldsNewOnes) {
  WriteGate gate(fd_);
  gate.Enter(0, kBlock);  // a write in flight
  std::atomic<bool> paused = false;
  std::thread freezer([&] {
    gate.Pause();
    paused = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(paused) << "the freeze did not wait for the write in flight";
  gate.Exit();
  freezer.join();
  EXPECT_TRUE(paused);
  std::atomic<bool> entered = false;
  std::thread writer([&] {
    gate.Enter(0, kBlock);
    entered = true;
    gate.Exit();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(entered) << "a write started during the freeze";
  gate.Resume();
  writer.join();
  EXPECT_TRUE(entered);
}

}  // namespace
}  // namespace blkrep::tracker
