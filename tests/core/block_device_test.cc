// Tests of the BlockDevice implementations: FileBlockDevice on a temporary
// file (and on a loop device when we may create one), MemoryBlockDevice and
// the FaultInjectingBlockDevice decorator.
#include "core/block_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/fault_injecting_block_device.h"
#include "core/file_block_device.h"
#include "core/memory_block_device.h"
#include "core/status.h"
#include "tests/core/temp_dir.h"

namespace blkrep::core {
namespace {

using test_support::AlignedBuffer;
using test_support::FindProgram;
using test_support::Pattern;
using test_support::ReadFile;
using test_support::TempDir;
using test_support::WriteFile;
using Op = FaultInjectingBlockDevice::Op;

constexpr std::size_t kFileSizeBytes = 1 << 20;
constexpr std::size_t kAlign = FileBlockDevice::kDirectIoAlignmentBytes;

// Runs argv (no shell); returns its exit status (or -1) and its stdout.
struct CommandResult {
  int exit_status = -1;
  std::string output;
};
CommandResult RunCommand(const std::vector<std::string>& argv) {
  CommandResult result;
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return result;
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return result;
  }
  if (pid == 0) {
    ::dup2(pipe_fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const std::string& arg : argv)
      args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  char chunk[256];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], chunk, sizeof(chunk))) > 0)
    result.output.append(chunk, n);
  ::close(pipe_fds[0]);
  int wait_status = 0;
  if (::waitpid(pid, &wait_status, 0) == pid && WIFEXITED(wait_status)) {
    result.exit_status = WEXITSTATUS(wait_status);
  }
  return result;
}

std::span<const std::byte> Slice(const std::vector<std::byte>& data,
                                 std::size_t offset, std::size_t length) {
  return std::span<const std::byte>(data).subspan(offset, length);
}

// Copies `data` over `base` at `offset` (the expected image after a write).
void Overlay(std::vector<std::byte>& base, std::size_t offset,
             std::span<const std::byte> data) {
  for (std::size_t i = 0; i < data.size(); ++i) base.at(offset + i) = data[i];
}

bool AllZero(std::span<const std::byte> data) {
  return std::all_of(data.begin(), data.end(),
                     [](std::byte b) { return b == std::byte{0}; });
}

bool Equal(std::span<const std::byte> a, std::span<const std::byte> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

class FileBlockDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    path_ = dir_.File("volume.img");
    original_ = Pattern(kFileSizeBytes, 1);
    ASSERT_TRUE(WriteFile(path_, original_));
  }

  std::unique_ptr<FileBlockDevice> OpenDevice(
      FileBlockDeviceOptions options = {}) {
    Result<std::unique_ptr<FileBlockDevice>> device =
        FileBlockDevice::Open(path_, options);
    EXPECT_TRUE(device.ok()) << device.status().ToString();
    return device.ok() ? std::move(device).value() : nullptr;
  }

  TempDir dir_;
  std::string path_;
  std::vector<std::byte> original_;
};

TEST_F(FileBlockDeviceTest, OpenOfMissingPathIsNotFound) {
  auto device = FileBlockDevice::Open(dir_.File("missing"), {});
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), Code::kNotFound);
  EXPECT_EQ(device.status().error_number(), ENOENT);
}

TEST_F(FileBlockDeviceTest, OpenOfDirectoryIsInvalidArgument) {
  auto device = FileBlockDevice::Open(dir_.path(), {.read_only = true});
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), Code::kInvalidArgument);
}

TEST_F(FileBlockDeviceTest, SizeIsTheFileSize) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->SizeBytes(), kFileSizeBytes);
  EXPECT_FALSE(device->is_block_device());
}

TEST_F(FileBlockDeviceTest, ReadReturnsFileContents) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  std::vector<std::byte> out(kFileSizeBytes);
  ASSERT_TRUE(device->Read(0, out).ok());
  EXPECT_EQ(out, original_);
}

TEST_F(FileBlockDeviceTest, AlignedWriteReadsBackAndReachesTheFile) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  const std::vector<std::byte> data = Pattern(16 * kAlign, 2);
  AlignedBuffer buffer(data.size(), kAlign);
  std::copy(data.begin(), data.end(), buffer.data());
  ASSERT_TRUE(device->Write(2 * kAlign, buffer.span()).ok());

  AlignedBuffer back(data.size(), kAlign);
  ASSERT_TRUE(device->Read(2 * kAlign, back.span()).ok());
  EXPECT_TRUE(Equal(back.span(), data));

  std::vector<std::byte> expected = original_;
  Overlay(expected, 2 * kAlign, data);
  EXPECT_EQ(ReadFile(path_), expected);
}

TEST_F(FileBlockDeviceTest, UnalignedOffsetLengthAndBufferAreServed) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  // A buffer one byte past an aligned address, at an odd offset and length.
  AlignedBuffer storage(20000 + 1, kAlign);
  std::span<std::byte> unaligned = storage.span().subspan(1, 20000);
  const std::vector<std::byte> data = Pattern(unaligned.size(), 3);
  std::copy(data.begin(), data.end(), unaligned.begin());
  ASSERT_TRUE(device->Write(4097, unaligned).ok());

  std::vector<std::byte> expected = original_;
  Overlay(expected, 4097, data);

  std::vector<std::byte> back(30001);
  ASSERT_TRUE(device->Read(4000, back).ok());
  EXPECT_TRUE(Equal(back, Slice(expected, 4000, back.size())));
  EXPECT_EQ(ReadFile(path_), expected);
}

TEST_F(FileBlockDeviceTest, AlignedStartWithUnalignedTailIsServed) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  const std::size_t length = 3 * kAlign + 100;
  AlignedBuffer buffer(length, kAlign);
  const std::vector<std::byte> data = Pattern(length, 4);
  std::copy(data.begin(), data.end(), buffer.data());
  ASSERT_TRUE(device->Write(kAlign, buffer.span()).ok());

  AlignedBuffer back(length, kAlign);
  ASSERT_TRUE(device->Read(kAlign, back.span()).ok());
  EXPECT_TRUE(Equal(back.span(), data));
}

TEST_F(FileBlockDeviceTest, BufferedAndDirectWritesStayCoherent) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  AlignedBuffer block(8 * kAlign, kAlign);
  const std::vector<std::byte> first = Pattern(block.size(), 5);
  std::copy(first.begin(), first.end(), block.data());
  ASSERT_TRUE(device->Write(0, block.span()).ok());  // direct if available
  const std::vector<std::byte> second = Pattern(333, 6);
  ASSERT_TRUE(device->Write(1000, second).ok());  // buffered
  AlignedBuffer back(8 * kAlign, kAlign);
  ASSERT_TRUE(device->Read(0, back.span()).ok());  // direct if available

  std::vector<std::byte> expected = first;
  Overlay(expected, 1000, second);
  EXPECT_TRUE(Equal(back.span(), expected));
}

TEST_F(FileBlockDeviceTest, WithoutDirectIoThereIsNoDirectFd) {
  auto device = OpenDevice({.direct_io = false});
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->direct_fd(), -1);
  EXPECT_GE(device->fd(), 0);
  const std::vector<std::byte> data = Pattern(2 * kAlign, 7);
  ASSERT_TRUE(device->Write(0, data).ok());
  std::vector<std::byte> back(data.size());
  ASSERT_TRUE(device->Read(0, back).ok());
  EXPECT_EQ(back, data);
}

TEST_F(FileBlockDeviceTest, OutOfRangeWriteIsRejectedAndWritesNothing) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  const std::vector<std::byte> data = Pattern(200, 8);
  Status status = device->Write(kFileSizeBytes - 100, data);
  EXPECT_EQ(status.code(), Code::kOutOfRange);
  status = device->Write(UINT64_MAX - 10, data);  // offset + length overflows
  EXPECT_EQ(status.code(), Code::kOutOfRange);
  status = device->Write(kFileSizeBytes + 1, {});
  EXPECT_EQ(status.code(), Code::kOutOfRange);
  EXPECT_EQ(ReadFile(path_), original_);
}

TEST_F(FileBlockDeviceTest, OutOfRangeReadIsRejected) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  std::vector<std::byte> out(2);
  EXPECT_EQ(device->Read(kFileSizeBytes - 1, out).code(), Code::kOutOfRange);
  EXPECT_EQ(device->Read(UINT64_MAX, out).code(), Code::kOutOfRange);
  EXPECT_TRUE(device->Read(kFileSizeBytes, {}).ok());
}

TEST_F(FileBlockDeviceTest,
       OutOfRangeTrimAndWriteZeroesAreRejectedAndChangeNothing) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->Trim(kFileSizeBytes - kAlign, 2 * kAlign).code(),
            Code::kOutOfRange);
  EXPECT_EQ(device->WriteZeroes(0, kFileSizeBytes + 1, false).code(),
            Code::kOutOfRange);
  EXPECT_EQ(ReadFile(path_), original_);
}

TEST_F(FileBlockDeviceTest, TrimReadsBackZeroesAndKeepsTheSize) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  // One aligned range (holes can be punched) and one unaligned.
  ASSERT_TRUE(device->Trim(64 * 1024, 128 * 1024).ok());
  ASSERT_TRUE(device->Trim(300001, 12345).ok());
  ASSERT_TRUE(device->Trim(0, 0).ok());

  std::vector<std::byte> expected = original_;
  std::fill_n(expected.begin() + 64 * 1024, 128 * 1024, std::byte{0});
  std::fill_n(expected.begin() + 300001, 12345, std::byte{0});
  std::vector<std::byte> back(kFileSizeBytes);
  ASSERT_TRUE(device->Read(0, back).ok());
  EXPECT_EQ(back, expected);
  EXPECT_EQ(ReadFile(path_), expected);
}

TEST_F(FileBlockDeviceTest, WriteZeroesReadsBackZeroesWithAndWithoutUnmap) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  ASSERT_TRUE(
      device->WriteZeroes(kAlign, 4 * kAlign, /*allow_unmap=*/false).ok());
  ASSERT_TRUE(device->WriteZeroes(500000, 777, /*allow_unmap=*/true).ok());

  std::vector<std::byte> expected = original_;
  std::fill_n(expected.begin() + kAlign, 4 * kAlign, std::byte{0});
  std::fill_n(expected.begin() + 500000, 777, std::byte{0});
  AlignedBuffer back(kFileSizeBytes, kAlign);
  ASSERT_TRUE(device->Read(0, back.span()).ok());
  EXPECT_TRUE(Equal(back.span(), expected));
  EXPECT_EQ(ReadFile(path_), expected);
}

TEST_F(FileBlockDeviceTest, ReadOnlyDeviceRejectsEveryChangeWithErofs) {
  auto device = OpenDevice({.read_only = true});
  ASSERT_NE(device, nullptr);
  const std::vector<std::byte> data = Pattern(10, 9);
  EXPECT_EQ(device->Write(0, data).error_number(), EROFS);
  EXPECT_EQ(device->Trim(0, kAlign).error_number(), EROFS);
  EXPECT_EQ(device->WriteZeroes(0, kAlign, true).error_number(), EROFS);
  std::vector<std::byte> back(10);
  EXPECT_TRUE(device->Read(0, back).ok());
  EXPECT_EQ(ReadFile(path_), original_);
}

TEST_F(FileBlockDeviceTest, FlushSucceeds) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  ASSERT_TRUE(device->Write(0, Pattern(100, 10)).ok());
  EXPECT_TRUE(device->Flush().ok());
}

TEST_F(FileBlockDeviceTest, ReadOfFileThatShrankIsAnIoError) {
  auto device = OpenDevice({.direct_io = false});
  ASSERT_NE(device, nullptr);
  ASSERT_EQ(::truncate(path_.c_str(), kFileSizeBytes / 2), 0);
  std::vector<std::byte> out(100);
  Status status = device->Read(kFileSizeBytes - 100, out);
  EXPECT_EQ(status.code(), Code::kIoError) << status.ToString();
}

TEST_F(FileBlockDeviceTest, ConcurrentWritesToDisjointRangesAllLand) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  constexpr int kThreads = 4;
  constexpr std::size_t kSlice = kFileSizeBytes / kThreads;
  std::vector<std::vector<std::byte>> data;
  for (int t = 0; t < kThreads; ++t)
    data.push_back(Pattern(kSlice - 3, 20 + t));
  std::vector<std::thread> threads;
  std::vector<Status> statuses(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(
        [&, t] { statuses[t] = device->Write(t * kSlice + 3, data[t]); });
  }
  for (std::thread& thread : threads) thread.join();
  std::vector<std::byte> expected = original_;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_TRUE(statuses[t].ok()) << statuses[t].ToString();
    Overlay(expected, t * kSlice + 3, data[t]);
  }
  EXPECT_EQ(ReadFile(path_), expected);
}

TEST_F(FileBlockDeviceTest, IdentityReportsKindSizeAndInode) {
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  Result<VolumeIdentity> identity = device->Identity();
  ASSERT_TRUE(identity.ok()) << identity.status().ToString();
  EXPECT_EQ(identity->kind, VolumeIdentity::Kind::kRegularFile);
  EXPECT_EQ(identity->size_bytes, kFileSizeBytes);
  EXPECT_EQ(identity->dev, st.st_dev);
  EXPECT_EQ(identity->ino, st.st_ino);
  EXPECT_EQ(identity->mtime_ns,
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
                st.st_mtim.tv_nsec);
  EXPECT_EQ(identity->sectors_written, 0u);
  EXPECT_TRUE(identity->boot_id.empty());
}

TEST_F(FileBlockDeviceTest, IdentityOfUnrecognizedContentHasEmptyProbeFields) {
  ASSERT_TRUE(WriteFile(path_, std::vector<std::byte>(kFileSizeBytes)));
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  Result<VolumeIdentity> identity = device->Identity();
  ASSERT_TRUE(identity.ok()) << identity.status().ToString();
  EXPECT_EQ(identity->probe_type, "");
  EXPECT_EQ(identity->uuid, "");
  EXPECT_EQ(identity->ptuuid, "");
}

TEST_F(FileBlockDeviceTest, IdentityProbeFindsExt4TypeAndUuid) {
  const std::string mkfs = FindProgram("mkfs.ext4");
  if (mkfs.empty()) GTEST_SKIP() << "mkfs.ext4 is not installed";
  const std::string image = dir_.File("ext4.img");
  ASSERT_TRUE(WriteFile(image, std::vector<std::byte>(8 << 20)));
  const std::string uuid = "0b6f1c52-6f0e-4d0a-9d1e-3f2a5c7b8e91";
  CommandResult mkfs_result = RunCommand({mkfs, "-q", "-F", "-U", uuid, image});
  ASSERT_EQ(mkfs_result.exit_status, 0) << "mkfs.ext4 failed";

  auto device = FileBlockDevice::Open(image, {.read_only = true});
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  Result<VolumeIdentity> identity = (*device)->Identity();
  ASSERT_TRUE(identity.ok()) << identity.status().ToString();
  EXPECT_EQ(identity->probe_type, "ext4");
  EXPECT_EQ(identity->uuid, uuid);
  EXPECT_EQ(identity->size_bytes, 8u << 20);
}

TEST_F(FileBlockDeviceTest, IdentityProbeSeesContentWrittenThroughTheDevice) {
  const std::string mkfs = FindProgram("mkfs.ext4");
  if (mkfs.empty()) GTEST_SKIP() << "mkfs.ext4 is not installed";
  const std::string image = dir_.File("ext4.img");
  ASSERT_TRUE(WriteFile(image, std::vector<std::byte>(8 << 20)));
  ASSERT_EQ(RunCommand({mkfs, "-q", "-F", image}).exit_status, 0)
      << "mkfs.ext4 failed";
  const std::vector<std::byte> filesystem = ReadFile(image);

  // A blank volume, then the filesystem written through the device.
  ASSERT_TRUE(WriteFile(path_, std::vector<std::byte>(filesystem.size())));
  auto device = OpenDevice();
  ASSERT_NE(device, nullptr);
  Result<VolumeIdentity> before = device->Identity();
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->probe_type, "");
  ASSERT_TRUE(device->Write(0, filesystem).ok());
  Result<VolumeIdentity> after = device->Identity();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->probe_type, "ext4");
  EXPECT_FALSE(after->uuid.empty());
}

// A loop device over a file in the temp dir, detached on destruction.
class LoopDevice {
 public:
  static std::unique_ptr<LoopDevice> Attach(const std::string& backing_file,
                                            std::string* why_not) {
    if (::geteuid() != 0) {
      *why_not = "creating a loop device needs root";
      return nullptr;
    }
    const std::string losetup = FindProgram("losetup");
    if (losetup.empty()) {
      *why_not = "losetup is not installed";
      return nullptr;
    }
    CommandResult result =
        RunCommand({losetup, "--find", "--show", backing_file});
    std::string device = result.output;
    while (!device.empty() && device.back() == '\n') device.pop_back();
    if (result.exit_status != 0 || device.empty()) {
      *why_not = "losetup --find --show failed (no loop devices here?)";
      return nullptr;
    }
    return std::unique_ptr<LoopDevice>(new LoopDevice(losetup, device));
  }
  ~LoopDevice() { RunCommand({losetup_, "--detach", path_}); }
  const std::string& path() const { return path_; }

 private:
  LoopDevice(std::string losetup, std::string path)
      : losetup_(std::move(losetup)), path_(std::move(path)) {}
  std::string losetup_;
  std::string path_;
};

TEST_F(FileBlockDeviceTest,
       BlockDeviceZeroesUnalignedRangesAndReportsIdentity) {
  std::string why_not;
  std::unique_ptr<LoopDevice> loop = LoopDevice::Attach(path_, &why_not);
  if (loop == nullptr) GTEST_SKIP() << why_not;

  auto opened = FileBlockDevice::Open(loop->path(), {});
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  FileBlockDevice& device = **opened;
  EXPECT_TRUE(device.is_block_device());
  ASSERT_EQ(device.SizeBytes(), kFileSizeBytes);

  std::vector<std::byte> back(kFileSizeBytes);
  ASSERT_TRUE(device.Read(0, back).ok());
  EXPECT_EQ(back, original_);

  const std::vector<std::byte> data = Pattern(10000, 30);
  ASSERT_TRUE(device.Write(777, data).ok());
  ASSERT_TRUE(device.WriteZeroes(100, 5000, /*allow_unmap=*/false).ok());
  ASSERT_TRUE(device.Trim(200000, 70001).ok());
  ASSERT_TRUE(
      device.WriteZeroes(600 * 1024, 64 * 1024, /*allow_unmap=*/true).ok());
  ASSERT_TRUE(device.Flush().ok());

  std::vector<std::byte> expected = original_;
  Overlay(expected, 777, data);
  std::fill_n(expected.begin() + 100, 5000, std::byte{0});
  std::fill_n(expected.begin() + 200000, 70001, std::byte{0});
  std::fill_n(expected.begin() + 600 * 1024, 64 * 1024, std::byte{0});
  ASSERT_TRUE(device.Read(0, back).ok());
  EXPECT_EQ(back, expected);

  Result<VolumeIdentity> identity = device.Identity();
  ASSERT_TRUE(identity.ok()) << identity.status().ToString();
  EXPECT_EQ(identity->kind, VolumeIdentity::Kind::kBlockDevice);
  EXPECT_EQ(identity->size_bytes, kFileSizeBytes);
  EXPECT_NE(identity->rdev, 0u);
  EXPECT_GT(identity->sectors_written, 0u);
  EXPECT_EQ(identity->boot_id.size(), 36u) << identity->boot_id;
}

// MemoryBlockDevice -----------------------------------------------------------

TEST(MemoryBlockDeviceTest, StartsZeroedAndReadsBackWrites) {
  MemoryBlockDevice device(4096);
  EXPECT_EQ(device.SizeBytes(), 4096u);
  EXPECT_TRUE(AllZero(device.contents()));
  const std::vector<std::byte> data = Pattern(100, 1);
  ASSERT_TRUE(device.Write(1000, data).ok());
  std::vector<std::byte> back(100);
  ASSERT_TRUE(device.Read(1000, back).ok());
  EXPECT_EQ(back, data);
  EXPECT_TRUE(Equal(device.contents().subspan(1000, 100), data));
  EXPECT_TRUE(AllZero(device.contents().first(1000)));
}

TEST(MemoryBlockDeviceTest, OutOfRangeWriteIsRejectedAndWritesNothing) {
  MemoryBlockDevice device(4096);
  const std::vector<std::byte> data = Pattern(100, 2);
  EXPECT_EQ(device.Write(4000, data).code(), Code::kOutOfRange);
  EXPECT_EQ(device.Write(UINT64_MAX - 1, data).code(), Code::kOutOfRange);
  EXPECT_EQ(device.Trim(4000, 100).code(), Code::kOutOfRange);
  EXPECT_TRUE(AllZero(device.contents()));
  EXPECT_EQ(device.write_count(), 0u);
}

TEST(MemoryBlockDeviceTest, TrimAndWriteZeroesZeroTheRange) {
  MemoryBlockDevice device(4096);
  const std::vector<std::byte> data = Pattern(4096, 3);
  ASSERT_TRUE(device.Write(0, data).ok());
  ASSERT_TRUE(device.Trim(10, 20).ok());
  ASSERT_TRUE(device.WriteZeroes(100, 50, false).ok());
  std::vector<std::byte> expected = data;
  std::fill_n(expected.begin() + 10, 20, std::byte{0});
  std::fill_n(expected.begin() + 100, 50, std::byte{0});
  EXPECT_TRUE(Equal(device.contents(), expected));
  EXPECT_EQ(device.trim_count(), 1u);
  EXPECT_EQ(device.write_zeroes_count(), 1u);
}

TEST(MemoryBlockDeviceTest, CountsWritesAndFlushes) {
  MemoryBlockDevice device(4096);
  ASSERT_TRUE(device.Write(0, Pattern(1, 4)).ok());
  ASSERT_TRUE(device.Write(1, Pattern(1, 5)).ok());
  ASSERT_TRUE(device.Flush().ok());
  std::vector<std::byte> out(1);
  ASSERT_TRUE(device.Read(0, out).ok());
  EXPECT_EQ(device.write_count(), 2u);
  EXPECT_EQ(device.flush_count(), 1u);
  EXPECT_EQ(device.read_count(), 1u);
}

TEST(MemoryBlockDeviceTest, IdentityIsMemoryKindWithSize) {
  MemoryBlockDevice device(12345);
  Result<VolumeIdentity> identity = device.Identity();
  ASSERT_TRUE(identity.ok());
  EXPECT_EQ(identity->kind, VolumeIdentity::Kind::kMemory);
  EXPECT_EQ(identity->size_bytes, 12345u);
  EXPECT_TRUE(identity->probe_type.empty());
}

TEST(MemoryBlockDeviceTest, ConcurrentWritersAllLand) {
  constexpr int kThreads = 8;
  constexpr std::size_t kSlice = 4096;
  MemoryBlockDevice device(kThreads * kSlice);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&device, t] {
      for (std::size_t i = 0; i < kSlice; ++i) {
        std::byte b = static_cast<std::byte>(t + 1);
        ASSERT_TRUE(device.Write(t * kSlice + i, {&b, 1}).ok());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(device.write_count(), kThreads * kSlice);
  for (int t = 0; t < kThreads; ++t) {
    auto slice = device.contents().subspan(t * kSlice, kSlice);
    EXPECT_TRUE(std::all_of(slice.begin(), slice.end(), [t](std::byte b) {
      return b == static_cast<std::byte>(t + 1);
    }));
  }
}

// FaultInjectingBlockDevice ---------------------------------------------------

TEST(FaultInjectingBlockDeviceTest, ForwardsWhenNoFaultIsArmed) {
  MemoryBlockDevice inner(4096);
  FaultInjectingBlockDevice device(inner);
  EXPECT_EQ(device.SizeBytes(), 4096u);
  const std::vector<std::byte> data = Pattern(64, 1);
  ASSERT_TRUE(device.Write(64, data).ok());
  std::vector<std::byte> back(64);
  ASSERT_TRUE(device.Read(64, back).ok());
  EXPECT_EQ(back, data);
  ASSERT_TRUE(device.Flush().ok());
  ASSERT_TRUE(device.Trim(0, 10).ok());
  ASSERT_TRUE(device.WriteZeroes(10, 10, true).ok());
  EXPECT_EQ(inner.write_count(), 1u);
  EXPECT_EQ(inner.flush_count(), 1u);
  EXPECT_EQ(inner.trim_count(), 1u);
  EXPECT_EQ(inner.write_zeroes_count(), 1u);
  Result<VolumeIdentity> identity = device.Identity();
  ASSERT_TRUE(identity.ok());
  EXPECT_EQ(identity->size_bytes, 4096u);
}

TEST(FaultInjectingBlockDeviceTest,
     FailNextFailsExactlyTheChosenCallsAndLeavesInnerUntouched) {
  MemoryBlockDevice inner(4096);
  FaultInjectingBlockDevice device(inner);
  device.FailNext(Op::kWrite, EIO, 2);
  const std::vector<std::byte> data = Pattern(100, 2);

  Status first = device.Write(0, data);
  EXPECT_EQ(first.code(), Code::kIoError);
  EXPECT_EQ(first.error_number(), EIO);
  EXPECT_EQ(device.Write(0, data).error_number(), EIO);
  EXPECT_EQ(inner.write_count(), 0u);
  EXPECT_TRUE(AllZero(inner.contents()));

  ASSERT_TRUE(device.Write(0, data).ok());
  EXPECT_EQ(inner.write_count(), 1u);
  EXPECT_TRUE(Equal(inner.contents().first(100), data));
  EXPECT_EQ(device.calls(Op::kWrite), 3u);
  EXPECT_EQ(device.injected_failures(Op::kWrite), 2u);
}

TEST(FaultInjectingBlockDeviceTest,
     FailAfterLetsCallsThroughThenFailsUntilCleared) {
  MemoryBlockDevice inner(4096);
  FaultInjectingBlockDevice device(inner);
  device.FailAfter(Op::kFlush, 2, EIO);
  EXPECT_TRUE(device.Flush().ok());
  EXPECT_TRUE(device.Flush().ok());
  EXPECT_EQ(device.Flush().error_number(), EIO);
  EXPECT_EQ(device.Flush().error_number(), EIO);
  EXPECT_EQ(inner.flush_count(), 2u);
  device.ClearFaults();
  EXPECT_TRUE(device.Flush().ok());
  EXPECT_EQ(inner.flush_count(), 3u);
  EXPECT_EQ(device.calls(Op::kFlush), 5u);
  EXPECT_EQ(device.injected_failures(Op::kFlush), 2u);
}

TEST(FaultInjectingBlockDeviceTest, FaultsApplyOnlyToTheirOperation) {
  MemoryBlockDevice inner(4096);
  FaultInjectingBlockDevice device(inner);
  device.FailNext(Op::kRead, EIO);
  ASSERT_TRUE(device.Write(0, Pattern(10, 3)).ok());
  ASSERT_TRUE(device.Flush().ok());
  std::vector<std::byte> out(10);
  EXPECT_EQ(device.Read(0, out).error_number(), EIO);
  EXPECT_EQ(inner.read_count(), 0u);
  EXPECT_TRUE(device.Read(0, out).ok());
}

TEST(FaultInjectingBlockDeviceTest, FailedTrimAndWriteZeroesLeaveDataInPlace) {
  MemoryBlockDevice inner(4096);
  const std::vector<std::byte> data = Pattern(4096, 4);
  ASSERT_TRUE(inner.Write(0, data).ok());
  FaultInjectingBlockDevice device(inner);
  device.FailNext(Op::kTrim, EIO);
  device.FailNext(Op::kWriteZeroes, ENOSPC);
  EXPECT_EQ(device.Trim(0, 4096).error_number(), EIO);
  Status zeroes = device.WriteZeroes(0, 4096, false);
  EXPECT_EQ(zeroes.code(), Code::kResourceExhausted);
  EXPECT_EQ(zeroes.error_number(), ENOSPC);
  EXPECT_TRUE(Equal(inner.contents(), data));
  EXPECT_EQ(inner.trim_count(), 0u);
  EXPECT_EQ(inner.write_zeroes_count(), 0u);
}

TEST(FaultInjectingBlockDeviceTest, TornWriteWritesOnlyThePrefixAndFails) {
  MemoryBlockDevice inner(4096);
  FaultInjectingBlockDevice device(inner);
  device.TearNextWrite(512, EIO);
  const std::vector<std::byte> data = Pattern(2048, 5);
  EXPECT_EQ(device.Write(1024, data).error_number(), EIO);
  EXPECT_TRUE(Equal(inner.contents().subspan(1024, 512), Slice(data, 0, 512)));
  EXPECT_TRUE(AllZero(inner.contents().subspan(1536)));
  EXPECT_EQ(device.injected_failures(Op::kWrite), 1u);
  ASSERT_TRUE(device.Write(1024, data).ok());  // one-shot
  EXPECT_TRUE(Equal(inner.contents().subspan(1024, 2048), data));
}

TEST(FaultInjectingBlockDeviceTest, RearmingReplacesThePreviousFault) {
  MemoryBlockDevice inner(4096);
  FaultInjectingBlockDevice device(inner);
  device.FailAfter(Op::kFlush, 0, EIO);
  device.FailNext(Op::kFlush, ENOSPC, 1);
  EXPECT_EQ(device.Flush().error_number(), ENOSPC);
  EXPECT_TRUE(device.Flush().ok());
}

TEST(FaultInjectingBlockDeviceTest, StacksOverAFileBlockDevice) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = dir.File("volume.img");
  const std::vector<std::byte> original = Pattern(64 * 1024, 6);
  ASSERT_TRUE(WriteFile(path, original));
  auto file = FileBlockDevice::Open(path, {});
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  FaultInjectingBlockDevice device(**file);
  device.FailNext(Op::kWrite, EIO);
  EXPECT_EQ(device.Write(0, Pattern(4096, 7)).error_number(), EIO);
  EXPECT_EQ(ReadFile(path), original);
}

}  // namespace
}  // namespace blkrep::core
