// The io_uring backend (liburing), after liburing's examples/io_uring-cp.c.
//
// Execute keeps up to queue_depth requests in flight. Each submission
// carries a pointer to its request's Pending record (io_uring_sqe_set_data);
// a completion either finishes the request or puts it back on the ready
// queue: short transfers continue from where they stopped, -EAGAIN/-EINTR
// resubmit the same remainder, a read that returns 0 (end of file) fills
// the rest with zeroes. A negative result becomes a Status here, once.
//
// Because at most queue_depth requests are in flight and the completion
// queue holds twice the ring size, completions never overflow.
//
// If the ring itself fails (io_uring_submit with an unexpected error), the
// backend is marked broken: requests not yet completed fail, submissions
// left in the ring are never handed to the kernel, and every later Execute
// fails with the same status.
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "core/io_backend.h"
#include "core/io_backend_internal.h"

namespace blkrep::core::internal {
namespace {

class UringIoBackend final : public IoBackend {
 public:
  explicit UringIoBackend(unsigned queue_depth) : queue_depth_(queue_depth) {}
  ~UringIoBackend() override {
    if (initialized_) io_uring_queue_exit(&ring_);
  }
  UringIoBackend(const UringIoBackend&) = delete;
  UringIoBackend& operator=(const UringIoBackend&) = delete;

  // See MakeUringIoBackend.
  Status Init();

  Status Execute(std::span<IoRequest> requests) override;
  IoBackendKind kind() const override { return IoBackendKind::kIoUring; }
  std::string_view name() const override { return "io_uring"; }

 private:
  // Per-request progress; the SQE's user data points at it.
  struct Pending {
    std::size_t index = 0;       // into the requests of this Execute
    std::size_t done_bytes = 0;  // transferred so far
    int retries = 0;             // consecutive -EAGAIN/-EINTR
    bool finished = false;       // status is final
  };

  void Prepare(io_uring_sqe* sqe, const IoRequest& request, Pending& pending);

  const unsigned queue_depth_;
  io_uring ring_{};
  bool initialized_ = false;
  Status broken_;  // OK until the ring fails; then sticky
};

Status UringIoBackend::Init() {
  const int ret = io_uring_queue_init(queue_depth_, &ring_, 0);
  if (ret < 0) {
    if (ret == -ENOSYS || ret == -EPERM || ret == -ENOMEM) {
      return Status::Unsupported(
          "io_uring_queue_init: the kernel refused io_uring", -ret);
    }
    return ErrnoStatus(ret, "io_uring_queue_init");
  }
  initialized_ = true;
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  if (probe == nullptr) {
    return Status::Unsupported(
        "io_uring: the kernel cannot list its operations (older than 5.6)");
  }
  const bool supported = io_uring_opcode_supported(probe, IORING_OP_READ) &&
                         io_uring_opcode_supported(probe, IORING_OP_WRITE);
  io_uring_free_probe(probe);
  if (!supported) {
    return Status::Unsupported(
        "io_uring: the kernel lacks IORING_OP_READ/WRITE");
  }
  return Status::Ok();
}

void UringIoBackend::Prepare(io_uring_sqe* sqe, const IoRequest& request,
                             Pending& pending) {
  std::byte* const cursor = request.buffer.data() + pending.done_bytes;
  const auto chunk = static_cast<unsigned>(
      std::min(request.buffer.size() - pending.done_bytes, kMaxTransferBytes));
  const std::uint64_t position = request.offset_bytes + pending.done_bytes;
  if (request.op == IoRequest::Op::kRead) {
    io_uring_prep_read(sqe, request.fd, cursor, chunk, position);
  } else {
    io_uring_prep_write(sqe, request.fd, cursor, chunk, position);
  }
  io_uring_sqe_set_data(sqe, &pending);
}

Status UringIoBackend::Execute(std::span<IoRequest> requests) {
  if (!broken_.ok()) {
    for (IoRequest& request : requests) request.status = broken_;
    return broken_;
  }

  // Never resized: submitted SQEs point into it.
  std::vector<Pending> pending(requests.size());
  std::deque<std::size_t> ready;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    pending[i].index = i;
    requests[i].status = ValidateIoRequest(requests[i]);
    if (requests[i].status.ok() && !requests[i].buffer.empty()) {
      ready.push_back(i);
    } else {
      pending[i].finished = true;
    }
  }

  Status fatal;            // the ring failed; nothing more is submitted
  unsigned in_flight = 0;  // submitted, completion not yet reaped
  unsigned prepared = 0;   // in the submission queue, not yet submitted
  int submit_retries = 0;

  auto finish = [&](Pending& p, Status status) {
    requests[p.index].status = std::move(status);
    p.finished = true;
  };
  auto requeue = [&](Pending& p) {
    if (fatal.ok()) {
      ready.push_back(p.index);
    } else {
      finish(p, fatal);
    }
  };
  auto complete = [&](Pending& p, int res) {
    IoRequest& request = requests[p.index];
    if (res < 0) {
      if ((res == -EAGAIN || res == -EINTR) &&
          ++p.retries < kMaxConsecutiveRetries) {
        requeue(p);
      } else {
        finish(p, ErrnoStatus(res, DescribeIoRequest(request)));
      }
      return;
    }
    if (res == 0) {
      if (request.op == IoRequest::Op::kRead) {  // end of file: zeroes
        std::memset(request.buffer.data() + p.done_bytes, 0,
                    request.buffer.size() - p.done_bytes);
        finish(p, Status::Ok());
      } else {
        finish(p, Status::IoError(DescribeIoRequest(request) +
                                  ": write made no progress"));
      }
      return;
    }
    p.retries = 0;
    p.done_bytes += static_cast<std::size_t>(res);
    if (p.done_bytes >= request.buffer.size()) {
      finish(p, Status::Ok());
    } else {
      requeue(p);
    }
  };

  while (in_flight > 0 || (fatal.ok() && (prepared > 0 || !ready.empty()))) {
    if (fatal.ok()) {
      while (!ready.empty() && in_flight + prepared < queue_depth_) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {
          // The submission queue is full: submit first. With nothing
          // prepared or in flight it cannot be, and waiting would hang.
          if (prepared == 0 && in_flight == 0) {
            fatal = Status::Internal("io_uring: no free submission entry");
          }
          break;
        }
        Pending& p = pending[ready.front()];
        ready.pop_front();
        Prepare(sqe, requests[p.index], p);
        ++prepared;
      }
      if (prepared > 0) {
        const int ret = io_uring_submit(&ring_);
        if (ret > 0) {
          in_flight += static_cast<unsigned>(ret);
          prepared -= std::min(prepared, static_cast<unsigned>(ret));
          submit_retries = 0;
        } else if ((ret == 0 || ret == -EINTR || ret == -EAGAIN ||
                    ret == -EBUSY) &&
                   ++submit_retries < kMaxConsecutiveRetries) {
          // The kernel took nothing for now; reap completions and retry.
        } else {
          fatal = ret < 0
                      ? ErrnoStatus(ret, "io_uring_submit")
                      : Status::IoError("io_uring_submit accepts no requests");
        }
      }
    }
    if (in_flight == 0) continue;

    io_uring_cqe* cqe = nullptr;
    const int ret = io_uring_wait_cqe(&ring_, &cqe);
    if (ret == -EINTR || ret == -EAGAIN) continue;
    if (ret < 0) {
      // The kernel still owns the buffers of in-flight requests; returning
      // would let it write into memory the caller frees. Only a broken ring
      // (a bug of ours) gets here.
      std::fprintf(stderr, "blkrep: fatal: io_uring_wait_cqe: %s\n",
                   std::strerror(-ret));
      std::abort();
    }
    unsigned head = 0;
    unsigned reaped = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      complete(*static_cast<Pending*>(io_uring_cqe_get_data(cqe)), cqe->res);
      ++reaped;
    }
    io_uring_cq_advance(&ring_, reaped);
    in_flight -= reaped;
  }

  if (!fatal.ok()) {
    broken_ = fatal;
    for (Pending& p : pending) {
      if (!p.finished) finish(p, fatal);
    }
  }
  for (const IoRequest& request : requests) {
    if (!request.status.ok()) return request.status;
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<IoBackend>> MakeUringIoBackend(unsigned queue_depth) {
  auto backend = std::make_unique<UringIoBackend>(queue_depth);
  BLKREP_RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<IoBackend>(std::move(backend));
}

}  // namespace blkrep::core::internal
