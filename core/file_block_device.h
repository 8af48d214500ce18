// FileBlockDevice: a volume that is a regular file or a block device.
//
// Design: the device keeps two descriptors of the same inode. The buffered
// one serves every request; the O_DIRECT one (when asked for and supported)
// serves the part of a request whose offset, length and buffer address are
// all kDirectIoAlignmentBytes-aligned, so callers may pass any range and only
// aligned bulk transfers bypass the page cache. Linux keeps the two coherent
// for non-overlapping concurrent use (a direct write invalidates cached pages,
// a direct read writes dirty pages back first).
//
// Trim and WriteZeroes both guarantee that the range reads back as zeroes:
// regular files punch holes or zero ranges with fallocate(2), block devices
// use fallocate/BLKZEROOUT (never BLKDISCARD, which need not zero), and both
// fall back to writing zeroes where the kernel, filesystem or device lacks
// the operation.
//
// The size is fixed when the device is opened; a regular file that shrinks
// underneath us makes reads past its new end fail with kIoError.
//
// Thread safety: Read, Write, Flush, Trim, WriteZeroes and Identity may be
// called concurrently (on disjoint ranges for writes, see block_device.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "core/block_device.h"
#include "core/status.h"

namespace blkrep::core {

struct FileBlockDeviceOptions {
  // Open O_RDONLY; Write, Trim and WriteZeroes then fail with kIoError/EROFS.
  bool read_only = false;
  // Use O_DIRECT for aligned transfers where the filesystem or device
  // supports it (silently buffered where it does not).
  bool direct_io = true;
};

class FileBlockDevice final : public BlockDevice {
 public:
  // Offset, length and buffer address of a transfer must be multiples of
  // this for it to go through the O_DIRECT descriptor.
  static constexpr std::size_t kDirectIoAlignmentBytes = 4096;

  // Opens an existing regular file or block device. Anything else (a
  // directory, a pipe) is kInvalidArgument; open(2) failures keep their errno.
  static Result<std::unique_ptr<FileBlockDevice>> Open(
      const std::string& path, const FileBlockDeviceOptions& options);

  ~FileBlockDevice() override;
  FileBlockDevice(const FileBlockDevice&) = delete;
  FileBlockDevice& operator=(const FileBlockDevice&) = delete;

  std::uint64_t SizeBytes() const override { return size_bytes_; }
  Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Status Write(std::uint64_t offset_bytes,
               std::span<const std::byte> data) override;
  // fdatasync(2): covers writes made through either descriptor.
  Status Flush() override;
  Status Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) override;
  Status WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                     bool allow_unmap) override;
  // fstat of the open descriptor, the current size, a libblkid probe of the
  // content and, for block devices, the sysfs write counter and boot id.
  // Probe and sysfs failures leave their fields empty/zero; only a failing
  // fstat or size query is an error.
  Result<VolumeIdentity> Identity() override;

  // The buffered descriptor: valid for the lifetime of this object; owned by
  // it (do not close). For the I/O backend, which uses pread/pwrite-style
  // positioned I/O only.
  int fd() const { return fd_; }
  // The O_DIRECT descriptor, or -1 when direct I/O is off or unsupported.
  // Transfers through it must be kDirectIoAlignmentBytes-aligned.
  int direct_fd() const { return direct_fd_; }

  const std::string& path() const { return path_; }
  bool is_block_device() const { return is_block_device_; }
  bool read_only() const { return read_only_; }

 private:
  FileBlockDevice(std::string path, int fd, int direct_fd, bool read_only,
                  bool is_block_device, std::uint64_t size_bytes,
                  std::uint32_t logical_block_size_bytes);

  enum class Direction : std::uint8_t { kRead, kWrite };

  // Moves `length_bytes` between `buffer` and the device, completing short
  // transfers and retrying EINTR/EAGAIN. Ranges are already checked.
  Status Transfer(Direction direction, std::uint64_t offset_bytes,
                  std::byte* buffer, std::size_t length_bytes);
  Status CheckWritable() const;
  // Makes a checked, non-empty range read as zeroes (see the design note).
  Status ZeroRange(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                   bool allow_unmap);
  Status ZeroFileRange(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                       bool allow_unmap);
  Status ZeroBlockDeviceRange(std::uint64_t offset_bytes,
                              std::uint64_t length_bytes, bool allow_unmap);
  Status WriteZeroBytes(std::uint64_t offset_bytes, std::uint64_t length_bytes);

  const std::string path_;
  const int fd_;
  const int direct_fd_;
  const bool read_only_;
  const bool is_block_device_;
  const std::uint64_t size_bytes_;
  // Block devices: BLKZEROOUT and fallocate need this alignment.
  const std::uint32_t logical_block_size_bytes_;
  // Serializes libblkid probes, which move the buffered descriptor's file
  // offset (our own I/O is positioned and does not care).
  std::mutex probe_mutex_;
};

}  // namespace blkrep::core
