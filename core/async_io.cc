#include "core/async_io.h"

#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace blkrep::core {
namespace {

// Runs one operation synchronously (the fallback engine's worker).
Status RunSync(AsyncOp& op) {
  if (op.kind == AsyncOp::Kind::kDataSync) {
    if (::fdatasync(op.fd) != 0) return ErrnoStatus(errno, "fdatasync");
    return Status::Ok();
  }
  while (op.transferred_bytes < op.length_bytes) {
    std::byte* p = op.buffer + op.transferred_bytes;
    std::size_t n = op.length_bytes - op.transferred_bytes;
    off_t at = static_cast<off_t>(op.offset_bytes + op.transferred_bytes);
    ssize_t r;
    if (op.kind == AsyncOp::Kind::kRead) {
      r = ::pread(op.fd, p, n, at);
    } else {
      struct iovec iov{p, n};
      r = ::pwritev2(op.fd, &iov, 1, at, op.dsync ? RWF_DSYNC : 0);
    }
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoStatus(errno, op.kind == AsyncOp::Kind::kRead ? "read" : "write");
    }
    if (r == 0) {
      if (op.kind == AsyncOp::Kind::kRead) {
        std::memset(p, 0, n);  // end of file reads as zeroes
        op.transferred_bytes = op.length_bytes;
        break;
      }
      return Status::IoError("write made no progress");
    }
    op.transferred_bytes += static_cast<std::size_t>(r);
  }
  return Status::Ok();
}

class ThreadPoolIo final : public AsyncIo {
 public:
  explicit ThreadPoolIo(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~ThreadPoolIo() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  void Submit(AsyncOp* op) override {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(op);
    }
    cv_.notify_one();
  }
  std::string_view name() const override { return "threads"; }

 private:
  void Work() {
    for (;;) {
      AsyncOp* op;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and everything ran
        op = queue_.front();
        queue_.pop_front();
      }
      Status s = RunSync(*op);
      op->done(std::move(s));
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<AsyncOp*> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;       // GUARDED_BY(mu_)
  std::vector<std::thread> workers_;
};

class UringIo final : public AsyncIo {
 public:
  static Result<std::unique_ptr<AsyncIo>> Make(unsigned depth) {
    auto io = std::unique_ptr<UringIo>(new UringIo());
    int rc = io_uring_queue_init(depth, &io->ring_, 0);
    if (rc < 0) return ErrnoStatus(rc, "io_uring_queue_init");
    io->initialized_ = true;
    // Never more in flight than the completion queue holds: no overflow.
    io->max_in_flight_ = io->ring_.cq.ring_entries;
    io->reaper_ = std::thread([p = io.get()] { p->Reap(); });
    return std::unique_ptr<AsyncIo>(std::move(io));
  }
  ~UringIo() override {
    if (!initialized_) return;
    {
      std::unique_lock lock(mu_);
      idle_.wait(lock, [&] { return in_flight_ == 0; });
      stopping_ = true;
      PrepLocked(nullptr);  // a NOP with no op wakes the reaper
    }
    reaper_.join();
    io_uring_queue_exit(&ring_);
  }
  // Blocks while the completion queue is full (REQUIRES: not called from a
  // `done` callback).
  void Submit(AsyncOp* op) override {
    std::unique_lock lock(mu_);
    space_.wait(lock, [&] { return in_flight_ < max_in_flight_; });
    ++in_flight_;
    PrepLocked(op);
  }
  std::string_view name() const override { return "io_uring"; }

 private:
  UringIo() = default;

  // REQUIRES mu_. Queues op's next piece (or a wake-up NOP) and submits.
  void PrepLocked(AsyncOp* op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {  // the SQ ring is full: hand it to the kernel
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    if (op == nullptr) {
      io_uring_prep_nop(sqe);
    } else if (op->kind == AsyncOp::Kind::kDataSync) {
      io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
    } else {
      std::byte* p = op->buffer + op->transferred_bytes;
      unsigned n = static_cast<unsigned>(op->length_bytes - op->transferred_bytes);
      std::uint64_t at = op->offset_bytes + op->transferred_bytes;
      if (op->kind == AsyncOp::Kind::kRead) {
        io_uring_prep_read(sqe, op->fd, p, n, at);
      } else {
        io_uring_prep_write(sqe, op->fd, p, n, at);
        if (op->dsync) sqe->rw_flags = RWF_DSYNC;
      }
    }
    io_uring_sqe_set_data(sqe, op);
    int rc;
    do {
      rc = io_uring_submit(&ring_);
    } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
  }

  void Reap() {
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR || rc == -EAGAIN) continue;
      if (rc < 0) continue;  // nothing completes without a cqe; retry
      auto* op = static_cast<AsyncOp*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (op == nullptr) {
        std::lock_guard lock(mu_);
        if (stopping_) return;
        continue;
      }
      if (res == -EAGAIN || res == -EINTR) {
        std::lock_guard lock(mu_);
        PrepLocked(op);
        continue;
      }
      Status status;
      if (res < 0) {
        status = ErrnoStatus(res, op->kind == AsyncOp::Kind::kRead    ? "read"
                                  : op->kind == AsyncOp::Kind::kWrite ? "write"
                                                                      : "fdatasync");
      } else if (op->kind != AsyncOp::Kind::kDataSync) {
        if (res == 0 && op->kind == AsyncOp::Kind::kRead) {
          std::memset(op->buffer + op->transferred_bytes, 0, op->length_bytes - op->transferred_bytes);
          op->transferred_bytes = op->length_bytes;
        } else if (res == 0) {
          status = Status::IoError("write made no progress");
        } else {
          op->transferred_bytes += static_cast<std::size_t>(res);
        }
        if (status.ok() && op->transferred_bytes < op->length_bytes) {
          std::lock_guard lock(mu_);
          PrepLocked(op);  // a short transfer: the rest
          continue;
        }
      }
      op->done(std::move(status));
      std::lock_guard lock(mu_);
      if (--in_flight_ == 0) idle_.notify_all();
      space_.notify_one();
    }
  }

  io_uring ring_{};
  bool initialized_ = false;
  std::mutex mu_;                    // guards the SQ and the counters
  std::condition_variable idle_;
  std::condition_variable space_;
  std::uint64_t in_flight_ = 0;      // GUARDED_BY(mu_)
  std::uint64_t max_in_flight_ = 1;
  bool stopping_ = false;            // GUARDED_BY(mu_)
  std::thread reaper_;
};

}  // namespace

Result<std::unique_ptr<AsyncIo>> MakeAsyncIo(IoBackendKind kind, unsigned queue_depth) {
  if (queue_depth == 0 || queue_depth > 4096) {
    return Status::InvalidArgument("queue depth must be 1 to 4096");
  }
  if (kind != IoBackendKind::kSync) {
    auto uring = UringIo::Make(queue_depth);
    if (uring.ok() || kind == IoBackendKind::kIoUring) return uring;
  }
  return std::unique_ptr<AsyncIo>(new ThreadPoolIo(std::min(queue_depth, 16U)));
}

}  // namespace blkrep::core
