#include "core/io_backend.h"

#include <cstdint>
#include <limits>

#include "core/io_backend_internal.h"

namespace blkrep::core {
namespace internal {

Status ValidateIoRequest(const IoRequest& request) {
  constexpr std::uint64_t kMaxOffset = std::numeric_limits<std::int64_t>::max();
  if (request.offset_bytes > kMaxOffset ||
      request.buffer.size() > kMaxOffset - request.offset_bytes) {
    return Status::InvalidArgument(DescribeIoRequest(request) +
                                   ": range does not fit a file offset");
  }
  return Status::Ok();
}

std::string DescribeIoRequest(const IoRequest& request) {
  return std::string(request.op == IoRequest::Op::kRead ? "read" : "write") +
         " fd " + std::to_string(request.fd) + " offset " +
         std::to_string(request.offset_bytes) + " length " +
         std::to_string(request.buffer.size());
}

}  // namespace internal

Result<std::unique_ptr<IoBackend>> MakeIoBackend(
    const IoBackendOptions& options) {
  if (options.queue_depth == 0 ||
      options.queue_depth > internal::kMaxQueueDepth) {
    return Status::InvalidArgument(
        "I/O queue depth " + std::to_string(options.queue_depth) +
        " is outside 1.." + std::to_string(internal::kMaxQueueDepth));
  }
  switch (options.kind) {
    case IoBackendKind::kSync:
      return internal::MakeSyncIoBackend();
    case IoBackendKind::kIoUring:
      return internal::MakeUringIoBackend(options.queue_depth);
    case IoBackendKind::kAuto: {
      Result<std::unique_ptr<IoBackend>> uring =
          internal::MakeUringIoBackend(options.queue_depth);
      if (uring.ok() || uring.status().code() != Code::kUnsupported)
        return uring;
      return internal::MakeSyncIoBackend();
    }
  }
  return Status::InvalidArgument("unknown I/O backend kind");
}

}  // namespace blkrep::core
