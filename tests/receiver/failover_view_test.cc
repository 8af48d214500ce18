// CopyOnWriteView (receiver/failover_view.h) over a real replica file: every
// result is compared with a model (a byte vector the test writes the same
// way), and the replica's bytes with what they were before.
#include "receiver/failover_view.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "tests/core/temp_dir.h"

namespace blkrep::receiver {
namespace {

using core::test_support::Pattern;
using core::test_support::ReadFile;
using core::test_support::TempDir;
using core::test_support::WriteFile;

constexpr std::uint32_t kBlock = 4096;
// Ten whole blocks and a short last one.
constexpr std::uint64_t kSize = 10 * kBlock + 1000;

struct Fixture {
  TempDir dir;
  std::string replica = dir.File("disk0.img");
  std::string overlay = dir.File("disk0.overlay");
  std::vector<std::byte> model = Pattern(kSize, 7);
  std::unique_ptr<CopyOnWriteView> view;

  Fixture() {
    EXPECT_TRUE(WriteFile(replica, model));
    auto base = ReplicaFileVolume::Open(replica, kSize, kBlock);
    EXPECT_TRUE(base.ok()) << base.status().ToString();
    if (!base.ok()) return;
    auto made = CopyOnWriteView::Create(std::move(*base), overlay);
    EXPECT_TRUE(made.ok()) << made.status().ToString();
    if (made.ok()) view = std::move(*made);
  }

  std::vector<std::byte> ReadAll() {
    std::vector<std::byte> out(kSize);
    core::Status s = view->Read(0, out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  }
  void Write(std::uint64_t offset, std::uint64_t length, std::uint32_t seed) {
    std::vector<std::byte> data = Pattern(length, seed);
    core::Status s = view->Write(offset, data);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(offset));
  }
  void ModelZero(std::uint64_t offset, std::uint64_t length) {
    std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(offset), length, std::byte{0});
  }
};

// The first byte offset where a and b differ, or -1.
long FirstDifference(const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
  if (a.size() != b.size()) return 0;
  auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin());
  return ia == a.end() ? -1 : static_cast<long>(ia - a.begin());
}

TEST(CopyOnWriteViewTest, ReadsTheBaseUntilWritten) {
  Fixture f;
  ASSERT_NE(f.view, nullptr);
  EXPECT_EQ(f.view->SizeBytes(), kSize);
  EXPECT_EQ(f.view->block_size_bytes(), kBlock);
  EXPECT_EQ(FirstDifference(f.ReadAll(), f.model), -1);
  std::vector<std::byte> part(5000);
  ASSERT_TRUE(f.view->Read(kBlock - 7, part).ok());
  EXPECT_EQ(std::memcmp(part.data(), f.model.data() + kBlock - 7, part.size()), 0);
  EXPECT_EQ(f.view->OverlayBlocks(), 0u);
}

TEST(CopyOnWriteViewTest, WholeAndPartialBlockWritesReadBackAndLeaveTheReplicaUntouched) {
  Fixture f;
  ASSERT_NE(f.view, nullptr);
  const std::vector<std::byte> replica_before = ReadFile(f.replica);
  f.Write(2 * kBlock, 2 * kBlock, 11);           // whole blocks 2, 3
  f.Write(5 * kBlock + 100, 10, 12);             // inside block 5
  f.Write(6 * kBlock - 3, kBlock + 6, 13);       // end of 5, all of 6, start of 7
  f.Write(5 * kBlock + 50, 100, 14);             // again into block 5, now in the overlay
  f.Write(10 * kBlock + 10, 990, 15);            // the short last block, to its end
  EXPECT_EQ(FirstDifference(f.ReadAll(), f.model), -1);
  // Reads that straddle overlay and base blocks.
  std::vector<std::byte> part(3 * kBlock + 17);
  ASSERT_TRUE(f.view->Read(kBlock + 5, part).ok());
  EXPECT_EQ(std::memcmp(part.data(), f.model.data() + kBlock + 5, part.size()), 0);
  EXPECT_EQ(f.view->OverlayBlocks(), 6u);  // 2, 3, 5, 6, 7, 10
  ASSERT_TRUE(f.view->Flush().ok());
  EXPECT_EQ(FirstDifference(ReadFile(f.replica), replica_before), -1) << "the replica was written";
}

TEST(CopyOnWriteViewTest, TrimAndWriteZeroesReadAsZeroes) {
  Fixture f;
  ASSERT_NE(f.view, nullptr);
  const std::vector<std::byte> replica_before = ReadFile(f.replica);
  ASSERT_TRUE(f.view->WriteZeroes(kBlock, 2 * kBlock, true).ok());  // whole blocks: holes in the overlay
  f.ModelZero(kBlock, 2 * kBlock);
  ASSERT_TRUE(f.view->WriteZeroes(4 * kBlock + 10, 20, false).ok());  // partial: read-modify-write
  f.ModelZero(4 * kBlock + 10, 20);
  ASSERT_TRUE(f.view->Trim(8 * kBlock - 1, kBlock + 2).ok());
  f.ModelZero(8 * kBlock - 1, kBlock + 2);
  EXPECT_EQ(FirstDifference(f.ReadAll(), f.model), -1);
  // A block written, then zeroed whole, reads as zeroes (the hole replaces it).
  f.Write(0, kBlock, 21);
  ASSERT_TRUE(f.view->Trim(0, kBlock).ok());
  f.ModelZero(0, kBlock);
  EXPECT_EQ(FirstDifference(f.ReadAll(), f.model), -1);
  EXPECT_EQ(FirstDifference(ReadFile(f.replica), replica_before), -1) << "the replica was written";
}

TEST(CopyOnWriteViewTest, RangesPastTheEndAreRefusedAndWriteNothing) {
  Fixture f;
  ASSERT_NE(f.view, nullptr);
  std::vector<std::byte> data(kBlock, std::byte{1});
  EXPECT_EQ(f.view->Write(kSize - 10, data).code(), core::Code::kOutOfRange);
  EXPECT_EQ(f.view->Read(kSize - 10, data).code(), core::Code::kOutOfRange);
  EXPECT_EQ(f.view->WriteZeroes(kSize, 1, true).code(), core::Code::kOutOfRange);
  EXPECT_EQ(f.view->Trim(~std::uint64_t{0}, 2).code(), core::Code::kOutOfRange);
  EXPECT_EQ(f.view->OverlayBlocks(), 0u);
  EXPECT_EQ(FirstDifference(f.ReadAll(), f.model), -1);
}

// Threads released together write disjoint slices of the same blocks of a
// fresh view (every first write to a block is a read-modify-write of the
// base): one that raced another on the same block would lose its bytes.
// Repeated on fresh views, since the race needs the blocks still absent.
TEST(CopyOnWriteViewTest, ConcurrentPartialWritesToOneBlockAreAllKept) {
  TempDir dir;
  const std::string replica = dir.File("disk0.img");
  ASSERT_TRUE(WriteFile(replica, Pattern(kSize, 3)));
  constexpr int kThreads = 4;
  constexpr std::uint64_t kBlocks = 10;
  constexpr std::uint64_t kSlice = kBlock / kThreads;
  for (int round = 0; round < 40; ++round) {
    auto base = ReplicaFileVolume::Open(replica, kSize, kBlock);
    ASSERT_TRUE(base.ok()) << base.status().ToString();
    auto view = CopyOnWriteView::Create(std::move(*base), dir.File("overlay" + std::to_string(round)));
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    std::latch start(kThreads);
    std::vector<core::Status> results(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<std::byte> bytes(kSlice, static_cast<std::byte>(0x10 + t));
        start.arrive_and_wait();
        for (std::uint64_t block = 0; block < kBlocks && results[t].ok(); ++block) {
          results[t] = (*view)->Write(block * kBlock + t * kSlice, bytes);
        }
      });
    }
    for (auto& th : threads) th.join();
    for (const auto& s : results) ASSERT_TRUE(s.ok()) << s.ToString();
    std::vector<std::byte> image(kSize);
    ASSERT_TRUE((*view)->Read(0, image).ok());
    for (std::uint64_t block = 0; block < kBlocks; ++block) {
      for (int t = 0; t < kThreads; ++t) {
        for (std::uint64_t i = 0; i < kSlice; ++i) {
          ASSERT_EQ(image[block * kBlock + t * kSlice + i], static_cast<std::byte>(0x10 + t))
              << "round " << round << ": block " << block << " lost the write of thread " << t;
        }
      }
    }
  }
}

// The replica is opened read-only (the view could not write it if it
// tried), and the overlay is gone once the view is.
TEST(CopyOnWriteViewTest, OpensTheReplicaReadOnlyAndUnlinksTheOverlay) {
  Fixture f;
  ASSERT_NE(f.view, nullptr);
  struct stat overlay_stat{};
  ASSERT_EQ(::stat(f.overlay.c_str(), &overlay_stat), 0);
  EXPECT_EQ(overlay_stat.st_mode & 0777, 0600u);
  int replica_fds = 0;
  DIR* fds = ::opendir("/proc/self/fd");
  ASSERT_NE(fds, nullptr);
  while (dirent* e = ::readdir(fds)) {
    char target[4096];
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0 || std::string(target, static_cast<std::size_t>(n)) != f.replica) continue;
    ++replica_fds;
    std::ifstream info(std::string("/proc/self/fdinfo/") + e->d_name);
    std::string key, flags;
    while (info >> key >> flags && key != "flags:") {
    }
    EXPECT_EQ(std::stoul(flags, nullptr, 8) & O_ACCMODE, static_cast<unsigned long>(O_RDONLY));
  }
  ::closedir(fds);
  EXPECT_EQ(replica_fds, 1);
  f.view.reset();
  EXPECT_NE(::access(f.overlay.c_str(), F_OK), 0) << "the overlay is still there";
}

TEST(CopyOnWriteViewTest, AReplicaShorterThanItsStateIsRefused) {
  TempDir dir;
  ASSERT_TRUE(WriteFile(dir.File("short.img"), Pattern(1000, 1)));
  auto base = ReplicaFileVolume::Open(dir.File("short.img"), 4096, kBlock);
  ASSERT_FALSE(base.ok());
  EXPECT_EQ(base.status().code(), core::Code::kCorruption);
  EXPECT_NE(base.status().message().find("short.img"), std::string::npos) << base.status().ToString();
  EXPECT_EQ(ReplicaFileVolume::Open(dir.File("missing.img"), 4096, kBlock).status().code(), core::Code::kNotFound);
}

}  // namespace
}  // namespace blkrep::receiver
