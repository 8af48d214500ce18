// MemoryBlockDevice: a BlockDevice backed by a zero-initialized buffer, for
// tests. Trim and WriteZeroes zero the range, as on every device of ours.
// Counters let tests see how often each operation reached the device.
//
// Thread safety: every method may be called from any thread; a mutex
// serializes them. contents() is the exception, see there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "core/block_device.h"
#include "core/status.h"

namespace blkrep::core {

class MemoryBlockDevice final : public BlockDevice {
 public:
  // A device of size_bytes zero bytes.
  explicit MemoryBlockDevice(std::uint64_t size_bytes);
  MemoryBlockDevice(const MemoryBlockDevice&) = delete;
  MemoryBlockDevice& operator=(const MemoryBlockDevice&) = delete;

  std::uint64_t SizeBytes() const override { return size_bytes_; }
  Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Status Write(std::uint64_t offset_bytes,
               std::span<const std::byte> data) override;
  Status Flush() override;
  Status Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) override;
  Status WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                     bool allow_unmap) override;
  // kind kMemory and the size; every other field empty.
  Result<VolumeIdentity> Identity() override;

  // The device's bytes, for assertions in tests. The span stays valid for
  // the lifetime of the device (the buffer never moves), but reading it is
  // unsynchronized: REQUIRES no concurrent Write/Trim/WriteZeroes.
  std::span<const std::byte> contents() const { return data_; }

  // How many calls of each kind succeeded (range errors are not counted).
  std::uint64_t read_count() const;
  std::uint64_t write_count() const;
  std::uint64_t flush_count() const;
  std::uint64_t trim_count() const;
  std::uint64_t write_zeroes_count() const;

 private:
  const std::uint64_t size_bytes_;
  mutable std::mutex mutex_;
  // Sized once in the constructor; elements GUARDED_BY(mutex_).
  std::vector<std::byte> data_;
  std::uint64_t read_count_ = 0;          // GUARDED_BY(mutex_)
  std::uint64_t write_count_ = 0;         // GUARDED_BY(mutex_)
  std::uint64_t flush_count_ = 0;         // GUARDED_BY(mutex_)
  std::uint64_t trim_count_ = 0;          // GUARDED_BY(mutex_)
  std::uint64_t write_zeroes_count_ = 0;  // GUARDED_BY(mutex_)
};

}  // namespace blkrep::core
