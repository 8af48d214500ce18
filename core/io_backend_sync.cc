// The pread/pwrite backend: requests run one after another, each to
// completion, with the same semantics as the io_uring backend (short
// transfers continued, EAGAIN/EINTR retried, end of file zero-filled).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/io_backend.h"
#include "core/io_backend_internal.h"

namespace blkrep::core::internal {
namespace {

class SyncIoBackend final : public IoBackend {
 public:
  Status Execute(std::span<IoRequest> requests) override {
    Status first_failure;
    for (IoRequest& request : requests) {
      request.status = Run(request);
      if (!request.status.ok() && first_failure.ok())
        first_failure = request.status;
    }
    return first_failure;
  }
  IoBackendKind kind() const override { return IoBackendKind::kSync; }
  std::string_view name() const override { return "sync"; }

 private:
  static Status Run(const IoRequest& request) {
    BLKREP_RETURN_IF_ERROR(ValidateIoRequest(request));
    const bool reading = request.op == IoRequest::Op::kRead;
    std::byte* const buffer = request.buffer.data();
    const std::size_t length_bytes = request.buffer.size();
    std::size_t done = 0;
    int retries = 0;
    while (done < length_bytes) {
      const std::size_t chunk =
          std::min(length_bytes - done, kMaxTransferBytes);
      const auto position = static_cast<off_t>(request.offset_bytes + done);
      const ssize_t n =
          reading ? ::pread(request.fd, buffer + done, chunk, position)
                  : ::pwrite(request.fd, buffer + done, chunk, position);
      if (n < 0) {
        const int error_number = errno;
        if ((error_number == EINTR || error_number == EAGAIN) &&
            ++retries < kMaxConsecutiveRetries) {
          continue;
        }
        return ErrnoStatus(error_number, DescribeIoRequest(request));
      }
      if (n == 0) {
        if (reading) {  // end of file: the rest reads as zeroes
          std::memset(buffer + done, 0, length_bytes - done);
          return Status::Ok();
        }
        return Status::IoError(DescribeIoRequest(request) +
                               ": write made no progress");
      }
      retries = 0;
      done += static_cast<std::size_t>(n);
    }
    return Status::Ok();
  }
};

}  // namespace

std::unique_ptr<IoBackend> MakeSyncIoBackend() {
  return std::make_unique<SyncIoBackend>();
}

}  // namespace blkrep::core::internal
