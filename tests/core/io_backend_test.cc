// Tests of both I/O backends through MakeIoBackend. Every behavioural test
// runs against the sync backend and the io_uring backend; the latter skips
// (with the kernel's reason) where io_uring is unavailable.
#include "core/io_backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/file_block_device.h"
#include "core/status.h"
#include "tests/core/temp_dir.h"

namespace blkrep::core {
namespace {

using test_support::AlignedBuffer;
using test_support::Pattern;
using test_support::ReadFile;
using test_support::TempDir;
using test_support::WriteFile;

// Closes a descriptor at the end of a test.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

IoRequest Request(IoRequest::Op op, int fd, std::uint64_t offset_bytes,
                  std::span<std::byte> buffer) {
  IoRequest request;
  request.op = op;
  request.fd = fd;
  request.offset_bytes = offset_bytes;
  request.buffer = buffer;
  return request;
}
constexpr IoRequest::Op kRead = IoRequest::Op::kRead;
constexpr IoRequest::Op kWrite = IoRequest::Op::kWrite;

class IoBackendTest : public ::testing::TestWithParam<IoBackendKind> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    Result<std::unique_ptr<IoBackend>> backend = Make(8);
    if (!backend.ok() && backend.status().code() == Code::kUnsupported) {
      GTEST_SKIP() << "io_uring is unavailable here: "
                   << backend.status().ToString();
    }
    ASSERT_TRUE(backend.ok()) << backend.status().ToString();
    backend_ = std::move(backend).value();
  }

  static Result<std::unique_ptr<IoBackend>> Make(unsigned queue_depth) {
    return MakeIoBackend({.kind = GetParam(), .queue_depth = queue_depth});
  }

  int OpenFile(const std::string& name, int flags) {
    return ::open(dir_.File(name).c_str(), flags | O_CLOEXEC, 0644);
  }

  TempDir dir_;
  std::unique_ptr<IoBackend> backend_;
};

TEST_P(IoBackendTest, KindAndNameMatchTheRequest) {
  EXPECT_EQ(backend_->kind(), GetParam());
  EXPECT_EQ(backend_->name(),
            GetParam() == IoBackendKind::kSync ? "sync" : "io_uring");
}

TEST_P(IoBackendTest, ManyMoreRequestsThanQueueDepthWriteAndReadBack) {
  Fd fd(OpenFile("data", O_RDWR | O_CREAT | O_TRUNC));
  ASSERT_GE(fd.get(), 0);
  constexpr int kRequests = 300;
  std::vector<std::vector<std::byte>> data;
  std::vector<IoRequest> writes;
  std::uint64_t offset = 0;
  for (int i = 0; i < kRequests; ++i) {
    data.push_back(Pattern(1 + (i * 7919) % 20000, i));
  }
  for (int i = 0; i < kRequests; ++i) {
    writes.push_back(Request(kWrite, fd.get(), offset, data[i]));
    offset += data[i].size();
  }
  ASSERT_TRUE(backend_->Execute(writes).ok());
  for (const IoRequest& request : writes) EXPECT_TRUE(request.status.ok());

  std::vector<std::vector<std::byte>> back;
  std::vector<IoRequest> reads;
  for (int i = 0; i < kRequests; ++i) back.emplace_back(data[i].size());
  for (int i = kRequests - 1; i >= 0; --i) {  // a different order than written
    reads.push_back(Request(kRead, fd.get(), writes[i].offset_bytes, back[i]));
  }
  ASSERT_TRUE(backend_->Execute(reads).ok());
  for (int i = 0; i < kRequests; ++i)
    ASSERT_EQ(back[i], data[i]) << "request " << i;

  std::vector<std::byte> expected;
  for (const auto& chunk : data)
    expected.insert(expected.end(), chunk.begin(), chunk.end());
  EXPECT_EQ(ReadFile(dir_.File("data")), expected);
}

TEST_P(IoBackendTest, QueueDepthOfOneStillCompletesEverything) {
  Result<std::unique_ptr<IoBackend>> made = Make(1);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  std::unique_ptr<IoBackend> backend = std::move(made).value();
  Fd fd(OpenFile("data", O_RDWR | O_CREAT | O_TRUNC));
  ASSERT_GE(fd.get(), 0);
  std::vector<std::byte> data = Pattern(50 * 1000, 1);
  std::vector<IoRequest> writes;
  for (int i = 0; i < 50; ++i) {
    writes.push_back(Request(kWrite, fd.get(),
                             static_cast<std::uint64_t>(i) * 1000,
                             std::span(data).subspan(i * 1000, 1000)));
  }
  ASSERT_TRUE(backend->Execute(writes).ok());
  EXPECT_EQ(ReadFile(dir_.File("data")), data);
}

TEST_P(IoBackendTest, ReadPastEndOfFileFillsTheRestWithZeroes) {
  const std::vector<std::byte> contents = Pattern(1000, 2);
  ASSERT_TRUE(WriteFile(dir_.File("short"), contents));
  Fd fd(OpenFile("short", O_RDONLY));
  ASSERT_GE(fd.get(), 0);
  std::vector<std::byte> straddling(4096, std::byte{0xAA});
  std::vector<std::byte> beyond(512, std::byte{0xAA});
  std::vector<IoRequest> requests = {
      Request(kRead, fd.get(), 0, straddling),
      Request(kRead, fd.get(), 8192, beyond),
  };
  ASSERT_TRUE(backend_->Execute(requests).ok());
  EXPECT_TRUE(std::equal(contents.begin(), contents.end(), straddling.begin()));
  EXPECT_TRUE(std::all_of(straddling.begin() + 1000, straddling.end(),
                          [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_TRUE(std::all_of(beyond.begin(), beyond.end(),
                          [](std::byte b) { return b == std::byte{0}; }));
}

TEST_P(IoBackendTest, BadFdFailsOnlyItsRequestWithEbadf) {
  Fd fd(OpenFile("data", O_RDWR | O_CREAT | O_TRUNC));
  ASSERT_GE(fd.get(), 0);
  std::vector<std::byte> good = Pattern(100, 3);
  std::vector<std::byte> bad(100);
  std::vector<IoRequest> requests = {
      Request(kRead, -1, 0, bad),
      Request(kWrite, fd.get(), 0, good),
  };
  Status status = backend_->Execute(requests);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.error_number(), EBADF) << status.ToString();
  EXPECT_EQ(requests[0].status.code(), Code::kIoError);
  EXPECT_EQ(requests[0].status.error_number(), EBADF);
  EXPECT_TRUE(requests[1].status.ok()) << requests[1].status.ToString();
  EXPECT_EQ(ReadFile(dir_.File("data")), good);
}

TEST_P(IoBackendTest, WriteToReadOnlyFdIsAnError) {
  ASSERT_TRUE(WriteFile(dir_.File("ro"), Pattern(100, 4)));
  Fd fd(OpenFile("ro", O_RDONLY));
  ASSERT_GE(fd.get(), 0);
  std::vector<std::byte> data = Pattern(100, 5);
  std::vector<IoRequest> requests = {Request(kWrite, fd.get(), 0, data)};
  EXPECT_EQ(backend_->Execute(requests).error_number(), EBADF);
  EXPECT_EQ(ReadFile(dir_.File("ro")), Pattern(100, 4));
}

TEST_P(IoBackendTest, OffsetBeyondFileOffsetRangeIsInvalidArgument) {
  Fd fd(OpenFile("data", O_RDWR | O_CREAT | O_TRUNC));
  ASSERT_GE(fd.get(), 0);
  std::vector<std::byte> data(10);
  std::vector<IoRequest> requests = {
      Request(kWrite, fd.get(), UINT64_MAX - 5, data)};
  EXPECT_EQ(backend_->Execute(requests).code(), Code::kInvalidArgument);
  EXPECT_TRUE(ReadFile(dir_.File("data")).empty());
}

TEST_P(IoBackendTest, EmptyBatchAndEmptyBuffersSucceed) {
  EXPECT_TRUE(backend_->Execute({}).ok());
  std::vector<IoRequest> requests = {Request(kRead, -1, 0, {})};
  EXPECT_TRUE(backend_->Execute(requests).ok());
  EXPECT_TRUE(requests[0].status.ok());
}

TEST_P(IoBackendTest, StatusesAreResetOnEveryExecute) {
  Fd fd(OpenFile("data", O_RDWR | O_CREAT | O_TRUNC));
  ASSERT_GE(fd.get(), 0);
  std::vector<std::byte> data = Pattern(10, 6);
  std::vector<IoRequest> requests = {Request(kWrite, -1, 0, data)};
  EXPECT_FALSE(backend_->Execute(requests).ok());
  requests[0].fd = fd.get();
  EXPECT_TRUE(backend_->Execute(requests).ok());
  EXPECT_TRUE(requests[0].status.ok());
}

TEST_P(IoBackendTest, WorksWithTheDirectFdOfAFileBlockDevice) {
  constexpr std::size_t kAlign = FileBlockDevice::kDirectIoAlignmentBytes;
  const std::string path = dir_.File("volume.img");
  ASSERT_TRUE(WriteFile(path, std::vector<std::byte>(64 * kAlign)));
  auto device = FileBlockDevice::Open(path, {});
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  const int fd =
      (*device)->direct_fd() >= 0 ? (*device)->direct_fd() : (*device)->fd();

  std::vector<std::unique_ptr<AlignedBuffer>> buffers;
  std::vector<IoRequest> writes;
  std::vector<std::byte> expected(64 * kAlign);
  for (int i = 0; i < 16; ++i) {
    buffers.push_back(std::make_unique<AlignedBuffer>(2 * kAlign, kAlign));
    const std::vector<std::byte> data = Pattern(2 * kAlign, 10 + i);
    std::copy(data.begin(), data.end(), buffers.back()->data());
    std::copy(data.begin(), data.end(), expected.begin() + i * 4 * kAlign);
    writes.push_back(Request(kWrite, fd,
                             static_cast<std::uint64_t>(i) * 4 * kAlign,
                             buffers.back()->span()));
  }
  ASSERT_TRUE(backend_->Execute(writes).ok());
  ASSERT_TRUE((*device)->Flush().ok());
  AlignedBuffer whole(64 * kAlign, kAlign);
  std::vector<IoRequest> read = {Request(kRead, fd, 0, whole.span())};
  ASSERT_TRUE(backend_->Execute(read).ok());
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), whole.data()));
  EXPECT_EQ(ReadFile(path), expected);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, IoBackendTest,
    ::testing::Values(IoBackendKind::kSync, IoBackendKind::kIoUring),
    [](const ::testing::TestParamInfo<IoBackendKind>& info) {
      return info.param == IoBackendKind::kSync ? std::string("Sync")
                                                : std::string("IoUring");
    });

TEST(MakeIoBackendTest, QueueDepthOutsideLimitsIsInvalidArgument) {
  for (IoBackendKind kind :
       {IoBackendKind::kAuto, IoBackendKind::kSync, IoBackendKind::kIoUring}) {
    EXPECT_EQ(MakeIoBackend({.kind = kind, .queue_depth = 0}).status().code(),
              Code::kInvalidArgument);
    EXPECT_EQ(
        MakeIoBackend({.kind = kind, .queue_depth = 1u << 20}).status().code(),
        Code::kInvalidArgument);
  }
}

TEST(MakeIoBackendTest, AutoGivesIoUringWhereAvailableAndSyncOtherwise) {
  Result<std::unique_ptr<IoBackend>> uring =
      MakeIoBackend({.kind = IoBackendKind::kIoUring});
  Result<std::unique_ptr<IoBackend>> automatic =
      MakeIoBackend({.kind = IoBackendKind::kAuto});
  ASSERT_TRUE(automatic.ok()) << automatic.status().ToString();
  if (uring.ok()) {
    EXPECT_EQ((*automatic)->kind(), IoBackendKind::kIoUring);
  } else {
    EXPECT_EQ(uring.status().code(), Code::kUnsupported);
    EXPECT_EQ((*automatic)->kind(), IoBackendKind::kSync);
  }
}

#if defined(__x86_64__) || defined(__aarch64__)
// Makes io_uring_setup(2) fail with `error_number` in this process, as a
// kernel without io_uring (ENOSYS) or with it disabled (EPERM) would.
bool RefuseIoUringSetup(int error_number) {
#if defined(__x86_64__)
  constexpr std::uint32_t kArch = AUDIT_ARCH_X86_64;
#else
  constexpr std::uint32_t kArch = AUDIT_ARCH_AARCH64;
#endif
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K,
               SECCOMP_RET_ERRNO | (static_cast<std::uint32_t>(error_number) &
                                    SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program = {.len = sizeof(filter) / sizeof(filter[0]),
                        .filter = filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// Exits 0 if, with io_uring refused, kAuto gives a working sync backend and
// kIoUring is kUnsupported carrying the errno; 1 + a reason otherwise.
void CheckFallbackWhenIoUringIsRefused(int error_number) {
  if (!RefuseIoUringSetup(error_number)) std::exit(3);
  auto uring = MakeIoBackend({.kind = IoBackendKind::kIoUring});
  if (uring.ok() || uring.status().code() != Code::kUnsupported ||
      uring.status().error_number() != error_number) {
    std::exit(4);
  }
  auto automatic = MakeIoBackend({.kind = IoBackendKind::kAuto});
  if (!automatic.ok() || (*automatic)->kind() != IoBackendKind::kSync) {
    std::exit(5);
  }
  std::vector<std::byte> buffer(16);
  std::vector<IoRequest> requests = {Request(kRead, -1, 0, buffer)};
  if ((*automatic)->Execute(requests).error_number() != EBADF) std::exit(6);
  std::exit(0);
}

TEST(MakeIoBackendDeathTest, AutoFallsBackToSyncWhenIoUringIsMissing) {
  EXPECT_EXIT(CheckFallbackWhenIoUringIsRefused(ENOSYS),
              ::testing::ExitedWithCode(0), "");
}

TEST(MakeIoBackendDeathTest, AutoFallsBackToSyncWhenIoUringIsDisabled) {
  EXPECT_EXIT(CheckFallbackWhenIoUringIsRefused(EPERM),
              ::testing::ExitedWithCode(0), "");
}
#endif

}  // namespace
}  // namespace blkrep::core
