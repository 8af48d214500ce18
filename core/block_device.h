// BlockDevice: the seam between blkrep and a volume.
//
// A BlockDevice is a fixed-size array of bytes addressed by byte offset. The
// tracker is a BlockDevice that records and forwards; tests use the in-memory
// device and the fault-injecting decorator. Implementations:
//   - FileBlockDevice (file_block_device.h): regular files and block devices.
//   - MemoryBlockDevice (memory_block_device.h): a buffer, for tests.
//   - FaultInjectingBlockDevice (fault_injecting_block_device.h): fails chosen
//     operations of another device.
//
// Thread safety: implementations are safe for concurrent calls on disjoint
// ranges; overlapping concurrent writes have unspecified order (as on a disk).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core/status.h"

namespace blkrep::core {

// What identifies a volume: enough to tell whether the journal still belongs
// to it, and whether it changed while nobody tracked it.
struct VolumeIdentity {
  enum class Kind : std::uint8_t { kMemory = 0, kRegularFile = 1, kBlockDevice = 2 };
  Kind kind = Kind::kMemory;
  std::uint64_t size_bytes = 0;
  // libblkid probe of the content: filesystem or partition-table type, the
  // filesystem UUID, the partition table UUID. Empty where absent. The guest
  // controls these bytes: they change legitimately through tracked writes.
  std::string probe_type;
  std::string uuid;
  std::string ptuuid;
  // stat(2) of the path: device/inode of a regular file, rdev of a device.
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t rdev = 0;
  std::int64_t mtime_ns = 0;
  // Block devices: sectors written since boot (/sys/dev/block/M:m/stat) and
  // the boot id it belongs to; 0 and empty where unknown.
  std::uint64_t sectors_written = 0;
  std::string boot_id;
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual std::uint64_t SizeBytes() const = 0;

  // Reads exactly out.size() bytes at offset_bytes. A range past the end is
  // kOutOfRange; nothing is read.
  virtual Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) = 0;

  // Writes all of data at offset_bytes. A range past the end is kOutOfRange
  // and nothing is written.
  virtual Status Write(std::uint64_t offset_bytes,
                       std::span<const std::byte> data) = 0;

  // Returns once every completed write is durable.
  virtual Status Flush() = 0;

  // Discards a range. Reads of a trimmed range return zeroes afterwards on
  // every implementation of ours (we punch holes or write zeroes), so trim
  // and write-zeroes can be tracked the same way.
  virtual Status Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) = 0;

  // Makes a range read as zeroes. allow_unmap lets the device deallocate.
  virtual Status WriteZeroes(std::uint64_t offset_bytes,
                             std::uint64_t length_bytes, bool allow_unmap) = 0;

  // The identity as of now (re-probed on every call where that is cheap).
  virtual Result<VolumeIdentity> Identity() = 0;
};

// Validates that [offset_bytes, offset_bytes + length_bytes) lies inside a
// device of size_bytes without overflow. `what` names the object in errors.
Status CheckRange(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                  std::uint64_t size_bytes, std::string_view what);

}  // namespace blkrep::core
