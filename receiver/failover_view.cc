#include "receiver/failover_view.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::uint32_t kDefaultBlockBytes = 64 << 10;
constexpr std::uint32_t kMinBlockBytes = 512;
constexpr std::uint32_t kMaxBlockBytes = 16 << 20;

bool UsableBlockSize(std::uint64_t n) {
  return n >= kMinBlockBytes && n <= kMaxBlockBytes && std::has_single_bit(n);
}

// pread until `out` is full; a short file is kOutOfRange naming `what`.
Status PreadFull(int fd, std::uint64_t offset_bytes, std::span<std::byte> out, const std::string& what) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset_bytes + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return core::ErrnoStatus(errno, "read " + what + " at offset " + std::to_string(offset_bytes + done));
    if (n == 0) {
      return Status::OutOfRange(what + " ends at offset " + std::to_string(offset_bytes + done) +
                                ", before the volume's end");
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------
// ReplicaFileVolume

Result<std::unique_ptr<ReplicaFileVolume>> ReplicaFileVolume::Open(const std::string& path, std::uint64_t size_bytes,
                                                                   std::uint32_t block_size_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return core::ErrnoStatus(errno, "open replica " + path);
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int saved = errno;
    ::close(fd);
    return core::ErrnoStatus(saved, "stat replica " + path);
  }
  if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) < size_bytes) {
    ::close(fd);
    return Status::Corruption("replica " + path + " is " + std::to_string(st.st_size) +
                              " bytes, the guest state says " + std::to_string(size_bytes));
  }
  return std::unique_ptr<ReplicaFileVolume>(new ReplicaFileVolume(path, fd, size_bytes, block_size_bytes));
}

ReplicaFileVolume::~ReplicaFileVolume() { ::close(fd_); }

Status ReplicaFileVolume::Read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  BLKREP_RETURN_IF_ERROR(core::CheckRange(offset_bytes, out.size(), size_bytes_, "replica " + path_));
  return PreadFull(fd_, offset_bytes, out, "replica " + path_);
}

// ---------------------------------------------------------------------------
// CopyOnWriteView

Result<std::unique_ptr<CopyOnWriteView>> CopyOnWriteView::Create(std::unique_ptr<ReadOnlyVolume> base,
                                                                 const std::string& overlay_path,
                                                                 std::uint32_t block_size_bytes) {
  if (base == nullptr) return Status::InvalidArgument("copy-on-write view: no base volume");
  if (block_size_bytes == 0) {
    block_size_bytes = UsableBlockSize(base->block_size_bytes()) ? base->block_size_bytes() : kDefaultBlockBytes;
  }
  if (!UsableBlockSize(block_size_bytes)) {
    return Status::InvalidArgument("copy-on-write view: block size " + std::to_string(block_size_bytes) +
                                   " is not a power of two from 512 to 16M");
  }
  int fd = ::open(overlay_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return core::ErrnoStatus(errno, "create overlay " + overlay_path);
  if (::ftruncate(fd, static_cast<off_t>(base->size_bytes())) != 0) {
    int saved = errno;
    ::close(fd);
    ::unlink(overlay_path.c_str());
    return core::ErrnoStatus(saved, "size overlay " + overlay_path);
  }
  return std::unique_ptr<CopyOnWriteView>(new CopyOnWriteView(std::move(base), overlay_path, fd, block_size_bytes));
}

CopyOnWriteView::CopyOnWriteView(std::unique_ptr<ReadOnlyVolume> base, std::string overlay_path, int overlay_fd,
                                 std::uint32_t block_size_bytes)
    : base_(std::move(base)),
      overlay_path_(std::move(overlay_path)),
      overlay_fd_(overlay_fd),
      size_bytes_(base_->size_bytes()),
      block_size_bytes_(block_size_bytes),
      block_count_((size_bytes_ + block_size_bytes - 1) / block_size_bytes),
      present_((block_count_ + 63) / 64) {}

CopyOnWriteView::~CopyOnWriteView() {
  ::close(overlay_fd_);
  ::unlink(overlay_path_.c_str());
}

bool CopyOnWriteView::Present(std::uint64_t block) const {
  return (present_[block / 64].load(std::memory_order_acquire) >> (block % 64)) & 1;
}

void CopyOnWriteView::MarkPresent(std::uint64_t block) {
  present_[block / 64].fetch_or(std::uint64_t{1} << (block % 64), std::memory_order_release);
}

std::uint64_t CopyOnWriteView::BlockLength(std::uint64_t block) const {
  return std::min<std::uint64_t>(block_size_bytes_, size_bytes_ - BlockStart(block));
}

std::uint64_t CopyOnWriteView::OverlayBlocks() const {
  std::uint64_t n = 0;
  for (const auto& word : present_) n += static_cast<std::uint64_t>(std::popcount(word.load(std::memory_order_acquire)));
  return n;
}

Status CopyOnWriteView::OverlayWrite(std::uint64_t offset_bytes, std::span<const std::byte> data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(overlay_fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset_bytes + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return core::ErrnoStatus(n < 0 ? errno : EIO,
                               "write overlay " + overlay_path_ + " at offset " + std::to_string(offset_bytes + done));
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

Status CopyOnWriteView::OverlayRead(std::uint64_t offset_bytes, std::span<std::byte> out) {
  return PreadFull(overlay_fd_, offset_bytes, out, "overlay " + overlay_path_);
}

Status CopyOnWriteView::Read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  BLKREP_RETURN_IF_ERROR(core::CheckRange(offset_bytes, out.size(), size_bytes_, "copy-on-write view"));
  std::uint64_t pos = offset_bytes;
  const std::uint64_t end = offset_bytes + out.size();
  while (pos < end) {
    // The run of blocks from pos that all come from the same place.
    std::uint64_t block = pos / block_size_bytes_;
    const bool in_overlay = Present(block);
    std::uint64_t run_end = std::min(end, BlockStart(block) + BlockLength(block));
    while (run_end < end && Present(run_end / block_size_bytes_) == in_overlay) {
      run_end = std::min(end, run_end + block_size_bytes_);
    }
    std::span<std::byte> part = out.subspan(pos - offset_bytes, run_end - pos);
    BLKREP_RETURN_IF_ERROR(in_overlay ? OverlayRead(pos, part) : base_->Read(pos, part));
    pos = run_end;
  }
  return Status::Ok();
}

Status CopyOnWriteView::ApplyToBlock(std::uint64_t block, std::uint64_t offset_in_block, std::uint64_t length_bytes,
                                     const std::byte* data) {
  const std::uint64_t start = BlockStart(block);
  const std::uint64_t block_length = BlockLength(block);
  std::lock_guard lock(StripeOf(block));
  if (offset_in_block == 0 && length_bytes == block_length) {
    if (data != nullptr) {
      BLKREP_RETURN_IF_ERROR(OverlayWrite(start, {data, length_bytes}));
    } else if (::fallocate(overlay_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(start),
                           static_cast<off_t>(length_bytes)) != 0) {
      if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
        return core::ErrnoStatus(errno, "punch a hole in overlay " + overlay_path_);
      }
      std::vector<std::byte> zeroes(length_bytes);
      BLKREP_RETURN_IF_ERROR(OverlayWrite(start, zeroes));
    }
    MarkPresent(block);
    return Status::Ok();
  }
  if (Present(block)) {
    if (data != nullptr) return OverlayWrite(start + offset_in_block, {data, length_bytes});
    std::vector<std::byte> zeroes(length_bytes);
    return OverlayWrite(start + offset_in_block, zeroes);
  }
  // Part of a block the overlay lacks: the whole block, merged, goes there
  // before its bit is set.
  std::vector<std::byte> merged(block_length);
  BLKREP_RETURN_IF_ERROR(base_->Read(start, merged));
  if (data != nullptr) std::memcpy(merged.data() + offset_in_block, data, length_bytes);
  else std::memset(merged.data() + offset_in_block, 0, length_bytes);
  BLKREP_RETURN_IF_ERROR(OverlayWrite(start, merged));
  MarkPresent(block);
  return Status::Ok();
}

Status CopyOnWriteView::ApplyToRange(std::uint64_t offset_bytes, std::uint64_t length_bytes, const std::byte* data) {
  BLKREP_RETURN_IF_ERROR(core::CheckRange(offset_bytes, length_bytes, size_bytes_, "copy-on-write view"));
  std::uint64_t pos = offset_bytes;
  const std::uint64_t end = offset_bytes + length_bytes;
  while (pos < end) {
    std::uint64_t block = pos / block_size_bytes_;
    std::uint64_t in_block = pos - BlockStart(block);
    std::uint64_t n = std::min(end - pos, BlockLength(block) - in_block);
    BLKREP_RETURN_IF_ERROR(ApplyToBlock(block, in_block, n, data == nullptr ? nullptr : data + (pos - offset_bytes)));
    pos += n;
  }
  return Status::Ok();
}

Status CopyOnWriteView::Write(std::uint64_t offset_bytes, std::span<const std::byte> data) {
  return ApplyToRange(offset_bytes, data.size(), data.data());
}

Status CopyOnWriteView::Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  return ApplyToRange(offset_bytes, length_bytes, nullptr);
}

Status CopyOnWriteView::WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes, bool /*allow_unmap*/) {
  return ApplyToRange(offset_bytes, length_bytes, nullptr);
}

Status CopyOnWriteView::Flush() {
  if (::fdatasync(overlay_fd_) != 0) return core::ErrnoStatus(errno, "fdatasync overlay " + overlay_path_);
  return Status::Ok();
}

Result<core::VolumeIdentity> CopyOnWriteView::Identity() {
  core::VolumeIdentity identity;
  identity.kind = core::VolumeIdentity::Kind::kMemory;
  identity.size_bytes = size_bytes_;
  return identity;
}

}  // namespace blkrep::receiver
