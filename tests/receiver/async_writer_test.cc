// AsyncWriter: a failed in-place write stays reported. The receiver's
// error path flushes again after the flush that failed; had Drain forgotten
// the failure, that second flush would make the index record of the failed
// write durable, and a resumed cycle would KEEP blocks the replica never
// received (found by a review).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "core/file_block_device.h"
#include "receiver/async_writer.h"
#include "tests/core/temp_dir.h"

namespace blkrep::receiver {
namespace {

TEST(AsyncWriterTest, AWriteFailureIsNotForgottenByTheNextDrain) {
  core::test_support::TempDir dir;
  const std::string path = dir.File("replica");
  { std::ofstream(path) << std::string(1 << 20, '\0'); }
  // Read-only: the write fails (EBADF), as a full disk or EIO would.
  auto device = core::FileBlockDevice::Open(path, {.read_only = true, .direct_io = false});
  ASSERT_TRUE(device.ok());
  AsyncWriter writer;
  auto buffer = writer.Current();
  ASSERT_TRUE(buffer.ok());
  std::memset(*buffer, 0xab, 4096);
  ASSERT_TRUE(writer.Submit(**device, 0, 4096).ok());
  EXPECT_FALSE(writer.Drain().ok());  // FlushVolume: the first FlushBatch fails
  EXPECT_FALSE(writer.Drain().ok());  // ReceiveCycle's (void)FlushBatch(): must fail too
}

TEST(AsyncWriterTest, WritesLandAndANewWriterDrainsClean) {
  core::test_support::TempDir dir;
  const std::string path = dir.File("replica");
  { std::ofstream(path) << std::string(1 << 20, '\0'); }
  auto device = core::FileBlockDevice::Open(path, {.read_only = false, .direct_io = true});
  ASSERT_TRUE(device.ok());
  AsyncWriter writer;
  for (int i = 0; i < 10; ++i) {  // more batches than buffers
    auto buffer = writer.Current();
    ASSERT_TRUE(buffer.ok());
    std::memset(*buffer, 'a' + i, 65536);
    ASSERT_TRUE(writer.Submit(**device, std::uint64_t(i) * 65536, 65536).ok());
  }
  ASSERT_TRUE(writer.Drain().ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(bytes[std::size_t(i) * 65536 + 100], 'a' + i) << i;
}

}  // namespace
}  // namespace blkrep::receiver
