// Internal to the I/O backends (io_backend*.cc): the concrete factories that
// MakeIoBackend chooses between, and the per-request rules they share. Not
// for use outside core/.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/io_backend.h"
#include "core/status.h"

namespace blkrep::core::internal {

// One system call or SQE moves at most this much; longer requests continue
// as if the transfer had been short.
inline constexpr std::size_t kMaxTransferBytes = std::size_t{1} << 30;
// Consecutive -EAGAIN/-EINTR results without progress before a request
// fails with that errno (guards against spinning on a non-blocking fd).
inline constexpr int kMaxConsecutiveRetries = 1000;
inline constexpr unsigned kMaxQueueDepth = 4096;

// Rejects requests the kernel would misread: a range that does not fit off_t.
Status ValidateIoRequest(const IoRequest& request);
// "read fd 3 offset 4096 length 512", for error messages.
std::string DescribeIoRequest(const IoRequest& request);

std::unique_ptr<IoBackend> MakeSyncIoBackend();

// Sets up a ring of queue_depth entries. Fails with kUnsupported (carrying
// the errno) when the kernel refuses io_uring (ENOSYS, EPERM, ENOMEM) or
// lacks IORING_OP_READ/WRITE; other failures keep their ErrnoStatus code.
// REQUIRES: 1 <= queue_depth <= kMaxQueueDepth.
Result<std::unique_ptr<IoBackend>> MakeUringIoBackend(unsigned queue_depth);

}  // namespace blkrep::core::internal
