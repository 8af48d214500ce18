// IoBackend: how blkrep moves bytes between buffers and file descriptors.
//
// Two implementations, chosen once by MakeIoBackend(): io_uring (liburing),
// with many requests in flight, and a pread/pwrite fallback for kernels
// without io_uring (or where it is disabled). Both complete short transfers
// and retry -EAGAIN/-EINTR; a -errno becomes a Status here and nowhere else.
//
// Thread safety: one IoBackend per thread; Execute is not reentrant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/status.h"

namespace blkrep::core {

struct IoRequest {
  enum class Op : std::uint8_t { kRead, kWrite };
  Op op = Op::kRead;
  int fd = -1;
  std::uint64_t offset_bytes = 0;
  // For kRead the buffer is filled; for kWrite it is written. A read that
  // meets end of file fills the rest with zeroes and succeeds (volumes have a
  // fixed size; callers check ranges before they submit).
  std::span<std::byte> buffer;
  // Set by Execute for each request.
  Status status;
};

enum class IoBackendKind : std::uint8_t { kAuto, kIoUring, kSync };

class IoBackend {
 public:
  virtual ~IoBackend() = default;
  // Runs every request to completion, keeping up to the queue depth in
  // flight. Each request gets its own status; the return value is the first
  // failure (OK if all succeeded).
  virtual Status Execute(std::span<IoRequest> requests) = 0;
  virtual IoBackendKind kind() const = 0;
  virtual std::string_view name() const = 0;
};

struct IoBackendOptions {
  IoBackendKind kind = IoBackendKind::kAuto;
  unsigned queue_depth = 32;
};

// kAuto tries io_uring and falls back to the sync backend when the kernel
// refuses (ENOSYS, EPERM from a disabled io_uring, ENOMEM on locked memory).
// kIoUring fails with kUnsupported instead of falling back.
Result<std::unique_ptr<IoBackend>> MakeIoBackend(const IoBackendOptions& options);

}  // namespace blkrep::core
