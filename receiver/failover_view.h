// The writable view of a replica that a test failover serves (Hyper-V's
// Test-Failover): a copy-on-write BlockDevice over a read-only base.
//
// Design note. The base is a ReadOnlyVolume: the replica file as it is (the
// latest committed cycle, ReplicaFileVolume) or, later, a recovery point. It
// is never written: ReplicaFileVolume opens the replica O_RDONLY. What the
// test VM writes goes to the overlay, a sparse file the view creates (and
// unlinks when destroyed), at the same offsets as in the volume, plus an
// in-memory bitmap of the blocks present in it (one bit per block; block =
// the replica's block size). A read takes each block from the overlay when
// its bit is set, from the base otherwise. A write of a whole block goes to
// the overlay as is; a write of part of a block not yet in the overlay is a
// read-modify-write of the base block (the whole block is written to the
// overlay before its bit is set). Trim and write-zeroes make blocks present
// and zero (a hole punched in the overlay, or written zeroes). Flush is an
// fdatasync of the overlay: a test failover's data is discarded at the end
// anyway, but a guest's flush still means what it says while it runs.
//
// Thread safety: every method is safe to call concurrently. Writes to one
// block are serialized by a striped per-block mutex (a read-modify-write
// cannot lose a concurrent write to the same block); writes to different
// blocks run in parallel. Reads take no lock: a bit is set (release) only
// after its whole block is in the overlay, and a read that checks it
// (acquire) sees either the base block or the overlay block — concurrent
// overlapping reads and writes have unspecified order, as on a disk.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/block_device.h"
#include "core/status.h"

namespace blkrep::receiver {

// A volume that can only be read: the base of a CopyOnWriteView.
// Thread safety: Read is safe to call concurrently.
class ReadOnlyVolume {
 public:
  virtual ~ReadOnlyVolume() = default;
  virtual std::uint64_t size_bytes() const = 0;
  // The replica's block size (the unit cycles replaced it in).
  virtual std::uint32_t block_size_bytes() const = 0;
  // Reads exactly out.size() bytes at offset_bytes; kOutOfRange (nothing
  // read) for a range past the end.
  virtual core::Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) = 0;
};

// The replica file itself, opened O_RDONLY: the latest committed point.
class ReplicaFileVolume : public ReadOnlyVolume {
 public:
  // kNotFound when `path` does not exist; kCorruption when it is a regular
  // file shorter than size_bytes (the state file says what it must hold).
  static core::Result<std::unique_ptr<ReplicaFileVolume>> Open(const std::string& path, std::uint64_t size_bytes,
                                                               std::uint32_t block_size_bytes);
  ~ReplicaFileVolume() override;
  ReplicaFileVolume(const ReplicaFileVolume&) = delete;
  ReplicaFileVolume& operator=(const ReplicaFileVolume&) = delete;

  std::uint64_t size_bytes() const override { return size_bytes_; }
  std::uint32_t block_size_bytes() const override { return block_size_bytes_; }
  core::Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override;

 private:
  ReplicaFileVolume(std::string path, int fd, std::uint64_t size_bytes, std::uint32_t block_size_bytes)
      : path_(std::move(path)), fd_(fd), size_bytes_(size_bytes), block_size_bytes_(block_size_bytes) {}

  std::string path_;
  int fd_;
  std::uint64_t size_bytes_;
  std::uint32_t block_size_bytes_;
};

class CopyOnWriteView : public core::BlockDevice {
 public:
  // Creates the overlay file `overlay_path` (it must not exist; mode 0600),
  // sparse, as large as the base. block_size_bytes: the overlay's unit, a
  // power of two from 512 to 16 MiB; 0 takes the base's block size (or 64 KiB
  // if that is not such a power of two).
  static core::Result<std::unique_ptr<CopyOnWriteView>> Create(std::unique_ptr<ReadOnlyVolume> base,
                                                               const std::string& overlay_path,
                                                               std::uint32_t block_size_bytes = 0);
  // Closes and unlinks the overlay. REQUIRES: no call in progress.
  ~CopyOnWriteView() override;
  CopyOnWriteView(const CopyOnWriteView&) = delete;
  CopyOnWriteView& operator=(const CopyOnWriteView&) = delete;

  std::uint64_t SizeBytes() const override { return size_bytes_; }
  core::Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  core::Status Write(std::uint64_t offset_bytes, std::span<const std::byte> data) override;
  core::Status Flush() override;
  core::Status Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) override;
  core::Status WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes, bool allow_unmap) override;
  // kind kMemory, the size; nothing to probe.
  core::Result<core::VolumeIdentity> Identity() override;

  std::uint32_t block_size_bytes() const { return block_size_bytes_; }
  const std::string& overlay_path() const { return overlay_path_; }
  // Blocks the overlay holds (written, trimmed or zeroed through the view).
  std::uint64_t OverlayBlocks() const;

 private:
  static constexpr std::size_t kLockStripes = 64;

  CopyOnWriteView(std::unique_ptr<ReadOnlyVolume> base, std::string overlay_path, int overlay_fd,
                  std::uint32_t block_size_bytes);

  bool Present(std::uint64_t block) const;
  void MarkPresent(std::uint64_t block);
  std::mutex& StripeOf(std::uint64_t block) { return stripes_[block % kLockStripes]; }
  // [offset, offset + length) of one block: its start and length (the last
  // block may be short).
  std::uint64_t BlockStart(std::uint64_t block) const { return block * block_size_bytes_; }
  std::uint64_t BlockLength(std::uint64_t block) const;
  // Writes length_bytes of `data` (nullptr: zeroes) at offset_in_block of
  // `block`, holding its stripe. REQUIRES: the range lies inside the block.
  core::Status ApplyToBlock(std::uint64_t block, std::uint64_t offset_in_block, std::uint64_t length_bytes,
                            const std::byte* data);
  core::Status ApplyToRange(std::uint64_t offset_bytes, std::uint64_t length_bytes, const std::byte* data);
  core::Status OverlayWrite(std::uint64_t offset_bytes, std::span<const std::byte> data);
  core::Status OverlayRead(std::uint64_t offset_bytes, std::span<std::byte> out);

  std::unique_ptr<ReadOnlyVolume> base_;
  std::string overlay_path_;
  int overlay_fd_;
  std::uint64_t size_bytes_;
  std::uint32_t block_size_bytes_;
  std::uint64_t block_count_;
  std::vector<std::atomic<std::uint64_t>> present_;  // one bit per block
  std::array<std::mutex, kLockStripes> stripes_;     // writers of block b hold stripes_[b % kLockStripes]
};

}  // namespace blkrep::receiver
