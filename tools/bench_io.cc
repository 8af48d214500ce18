#include "tools/bench_io.h"

#include <fcntl.h>
#include <libnbd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <linux/falloc.h>
#include <map>
#include <vector>

namespace blkrep::tools::bench {

using core::Result;
using core::Status;

namespace {

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte, AlignedFree>;

AlignedBuffer Allocate(std::size_t n) {
  return AlignedBuffer(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096)));
}

// A write the buffers cannot hold is refused (never copied past them).
Status CheckLength(std::uint32_t length, std::uint32_t max_write_bytes) {
  if (length > max_write_bytes) {
    return Status::InvalidArgument("a write of " + std::to_string(length) + " bytes (at most " +
                                   std::to_string(max_write_bytes) + ")");
  }
  return Status::Ok();
}

class FileSink : public WriteSink {
 public:
  FileSink(int fd, std::string path, std::uint32_t max_write_bytes)
      : fd_(fd), path_(std::move(path)), buffer_(Allocate(max_write_bytes)), max_write_bytes_(max_write_bytes) {}
  ~FileSink() override { ::close(fd_); }

  Status Write(std::uint64_t offset, std::uint32_t length,
               const std::function<void(std::span<std::byte>)>& fill) override {
    BLKREP_RETURN_IF_ERROR(CheckLength(length, max_write_bytes_));
    fill({buffer_.get(), length});
    return PwriteAll(buffer_.get(), length, offset);
  }
  Status WriteZeroes(std::uint64_t offset, std::uint32_t length) override {
    if (::fallocate(fd_, FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset), length) == 0) return Status::Ok();
    // In pieces the buffer holds.
    for (std::uint32_t done = 0; done < length;) {
      std::uint32_t n = std::min(length - done, max_write_bytes_);
      std::memset(buffer_.get(), 0, n);
      BLKREP_RETURN_IF_ERROR(PwriteAll(buffer_.get(), n, offset + done));
      done += n;
    }
    return Status::Ok();
  }
  Status Trim(std::uint64_t offset, std::uint32_t length) override {
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), length) == 0) {
      return Status::Ok();
    }
    return WriteZeroes(offset, length);
  }
  Status Finish() override {
    if (::fdatasync(fd_) != 0) return core::ErrnoStatus(errno, "fdatasync " + path_);
    return Status::Ok();
  }

 private:
  Status PwriteAll(const std::byte* p, std::uint32_t length, std::uint64_t offset) {
    std::uint32_t done = 0;
    while (done < length) {
      ssize_t n = ::pwrite(fd_, p + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return core::ErrnoStatus(n < 0 ? errno : EIO, "pwrite " + path_ + " at offset " + std::to_string(offset));
      }
      done += static_cast<std::uint32_t>(n);
    }
    return Status::Ok();
  }

  int fd_;
  std::string path_;
  AlignedBuffer buffer_;
  std::uint32_t max_write_bytes_;
};

Status NbdError(const std::string& what) {
  const char* e = nbd_get_error();
  return Status::IoError(what + ": " + (e != nullptr ? e : "unknown libnbd error"));
}

class NbdSink : public WriteSink {
 public:
  NbdSink(nbd_handle* h, std::string name, int queue_depth, std::uint32_t max_write_bytes)
      : h_(h), name_(std::move(name)), max_write_bytes_(max_write_bytes) {
    for (int i = 0; i < queue_depth; ++i) {
      buffers_.push_back(Allocate(max_write_bytes));
      free_.push_back(i);
    }
  }
  ~NbdSink() override {
    // Best effort: finish what is in flight before closing.
    while (nbd_aio_in_flight(h_) > 0 && nbd_poll(h_, 1000) >= 0) {
    }
    nbd_shutdown(h_, 0);
    nbd_close(h_);
  }

  Status Write(std::uint64_t offset, std::uint32_t length,
               const std::function<void(std::span<std::byte>)>& fill) override {
    BLKREP_RETURN_IF_ERROR(CheckLength(length, max_write_bytes_));
    BLKREP_ASSIGN_OR_RETURN(int slot, TakeSlot(offset, length));
    fill({buffers_[slot].get(), length});
    std::int64_t cookie = nbd_aio_pwrite(h_, buffers_[slot].get(), length, offset, NBD_NULL_COMPLETION, 0);
    return Issued(cookie, slot, "write", offset, length);
  }
  Status WriteZeroes(std::uint64_t offset, std::uint32_t length) override {
    BLKREP_ASSIGN_OR_RETURN(int slot, TakeSlot(offset, length));
    std::int64_t cookie = nbd_aio_zero(h_, length, offset, NBD_NULL_COMPLETION, 0);
    return Issued(cookie, slot, "write-zeroes", offset, length);
  }
  Status Trim(std::uint64_t offset, std::uint32_t length) override {
    BLKREP_ASSIGN_OR_RETURN(int slot, TakeSlot(offset, length));
    std::int64_t cookie = nbd_aio_trim(h_, length, offset, NBD_NULL_COMPLETION, 0);
    return Issued(cookie, slot, "trim", offset, length);
  }
  Status Finish() override {
    while (!in_flight_.empty()) BLKREP_RETURN_IF_ERROR(WaitOne());
    if (nbd_flush(h_, 0) != 0) return NbdError("NBD flush of export " + name_);
    return Status::Ok();
  }

 private:
  struct Pending {
    int slot;
    std::uint64_t offset;
    std::uint32_t length;
    const char* what;
  };

  bool OverlapsInFlight(std::uint64_t offset, std::uint32_t length) const {
    for (const auto& [cookie, p] : in_flight_) {
      if (offset < p.offset + p.length && p.offset < offset + length) return true;
    }
    return false;
  }

  // A free buffer slot; first, every in-flight request that overlaps
  // [offset, offset + length) is finished: NBD does not order requests in
  // flight, so overlapping ones (a write, then write-zeroes of the same
  // block, in a replayed trace) would land in either order.
  Result<int> TakeSlot(std::uint64_t offset, std::uint32_t length) {
    while (OverlapsInFlight(offset, length)) BLKREP_RETURN_IF_ERROR(WaitOne());
    while (free_.empty()) BLKREP_RETURN_IF_ERROR(WaitOne());
    int slot = free_.back();
    free_.pop_back();
    return slot;
  }
  Status Issued(std::int64_t cookie, int slot, const char* what, std::uint64_t offset, std::uint32_t length) {
    if (cookie < 0) {
      free_.push_back(slot);
      return NbdError(std::string("NBD ") + what + " at offset " + std::to_string(offset) + " of export " + name_);
    }
    in_flight_[cookie] = {slot, offset, length, what};
    return Reap();
  }
  // Retires every completed request without waiting.
  Status Reap() {
    while (true) {
      std::int64_t cookie = nbd_aio_peek_command_completed(h_);
      if (cookie <= 0) return Status::Ok();
      auto it = in_flight_.find(cookie);
      Pending p = it->second;
      in_flight_.erase(it);
      free_.push_back(p.slot);
      if (nbd_aio_command_completed(h_, cookie) < 0) {
        return NbdError(std::string("NBD ") + p.what + " at offset " + std::to_string(p.offset) + " of export " +
                        name_);
      }
    }
  }
  Status WaitOne() {
    std::size_t before = in_flight_.size();
    while (in_flight_.size() == before) {
      if (nbd_poll(h_, -1) < 0) return NbdError("NBD poll of export " + name_);
      BLKREP_RETURN_IF_ERROR(Reap());
    }
    return Status::Ok();
  }

  nbd_handle* h_;
  std::string name_;
  std::uint32_t max_write_bytes_;
  std::vector<AlignedBuffer> buffers_;
  std::vector<int> free_;
  std::map<std::int64_t, Pending> in_flight_;
};

}  // namespace

Result<std::unique_ptr<WriteSink>> OpenFileSink(const std::string& path, std::uint32_t max_write_bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return core::ErrnoStatus(errno, "open " + path);
  return std::unique_ptr<WriteSink>(new FileSink(fd, path, max_write_bytes));
}

Result<std::unique_ptr<WriteSink>> ConnectNbdSink(const std::string& socket_path, const std::string& export_name,
                                                  int queue_depth, std::uint32_t max_write_bytes) {
  nbd_handle* h = nbd_create();
  if (h == nullptr) return NbdError("libnbd");
  if (nbd_set_export_name(h, export_name.c_str()) != 0 || nbd_connect_unix(h, socket_path.c_str()) != 0) {
    Status s = NbdError("NBD connect to " + socket_path + " export " + export_name);
    nbd_close(h);
    return s;
  }
  return std::unique_ptr<WriteSink>(new NbdSink(h, export_name, queue_depth, max_write_bytes));
}

}  // namespace blkrep::tools::bench
