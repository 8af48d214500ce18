#include "receiver/async_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "proto/frame.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

struct AsyncWriter::Slot {
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> buffer;
  core::AsyncOp op;
};

AsyncWriter::AsyncWriter() = default;

AsyncWriter::~AsyncWriter() {
  (void)Drain();
  io_.reset();  // waits for the engine; the slots outlive every operation
}

Status AsyncWriter::Start() {
  BLKREP_ASSIGN_OR_RETURN(io_, core::MakeAsyncIo(core::IoBackendKind::kAuto, kBuffers));
  for (std::size_t i = 0; i < kBuffers; ++i) {
    auto slot = std::make_unique<Slot>();
    void* p = std::aligned_alloc(4096, proto::kMaxBatchBytes);
    if (!p) return Status::ResourceExhausted("cannot allocate the receiver's write buffers");
    slot->buffer.reset(static_cast<std::byte*>(p));
    free_.push_back(slot.get());
    slots_.push_back(std::move(slot));
  }
  return Status::Ok();
}

Result<std::byte*> AsyncWriter::Current() {
  if (current_) return current_->buffer.get();
  if (!io_) BLKREP_RETURN_IF_ERROR(Start());
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !free_.empty(); });
  if (!failure_.ok()) return failure_;
  current_ = free_.back();
  free_.pop_back();
  return current_->buffer.get();
}

Status AsyncWriter::Submit(core::FileBlockDevice& device, std::uint64_t offset_bytes, std::size_t length) {
  if (!current_) return Status::Internal("AsyncWriter::Submit without a buffer");
  Slot* slot = current_;
  current_ = nullptr;
  // O_DIRECT for the aligned case; a short tail (the volume's last block)
  // goes through the page cache.
  bool direct = !direct_refused_ && device.direct_fd() >= 0 && offset_bytes % 4096 == 0 && length % 4096 == 0;
  slot->op = core::AsyncOp{};
  slot->op.kind = core::AsyncOp::Kind::kWrite;
  slot->op.fd = direct ? device.direct_fd() : device.fd();
  slot->op.offset_bytes = offset_bytes;
  slot->op.buffer = slot->buffer.get();
  slot->op.length_bytes = length;
  std::string path = device.path();
  int buffered_fd = device.fd();
  slot->op.done = [this, slot, path, offset_bytes, length, direct, buffered_fd](Status s) {
    if (!s.ok() && direct && s.error_number() == EINVAL) {
      // The device wants a larger alignment than 4 KiB: write this one
      // through the page cache (rare; blocks the engine thread briefly)
      // and send later ones there too.
      s = Status::Ok();
      for (std::size_t done = 0; done < length;) {
        ssize_t n = ::pwrite(buffered_fd, slot->buffer.get() + done, length - done,
                             static_cast<off_t>(offset_bytes + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          s = core::ErrnoStatus(n < 0 ? errno : EIO, "write");
          break;
        }
        done += static_cast<std::size_t>(n);
      }
      direct_refused_ = true;
    }
    std::lock_guard lock(mu_);
    if (!s.ok() && failure_.ok()) {
      failure_ = s.WithContext("write " + path + " at [" + std::to_string(offset_bytes) + ", +" +
                               std::to_string(length) + ")");
    }
    free_.push_back(slot);
    --in_flight_;
    cv_.notify_all();
  };
  {
    std::lock_guard lock(mu_);
    ++in_flight_;
  }
  io_->Submit(&slot->op);
  return Status::Ok();
}

Status AsyncWriter::Drain() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0; });
  // Sticky: a later flush must not make the record of a failed write
  // durable. A session ends on the first failure anyway.
  return failure_;
}

}  // namespace blkrep::receiver
