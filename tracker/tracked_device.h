// TrackedDevice: the tracker as a BlockDevice layer (nbdkit's filter model).
//
// Every Write, Trim and WriteZeroes first marks its range dirty in the
// journal — which returns only once that is durable — then forwards to the
// volume (invariant 1). Reads and flushes forward unchanged. Journal trouble
// never fails the guest's I/O: the journal degrades to resync-required
// (invariant 3); only a range outside the volume is refused, before any side
// effect.
//
// Thread safety: as thread-safe as the inner device; the journal is.
#pragma once

#include "core/block_device.h"
#include "tracker/journal.h"

namespace blkrep::tracker {

class TrackedDevice final : public core::BlockDevice {
 public:
  // Neither is owned; both must outlive this object.
  TrackedDevice(core::BlockDevice& volume, Journal& journal)
      : volume_(volume), journal_(journal) {}

  std::uint64_t SizeBytes() const override { return volume_.SizeBytes(); }
  core::Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  core::Status Write(std::uint64_t offset_bytes, std::span<const std::byte> data) override;
  core::Status Flush() override { return volume_.Flush(); }
  core::Status Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) override;
  core::Status WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                           bool allow_unmap) override;
  core::Result<core::VolumeIdentity> Identity() override { return volume_.Identity(); }

 private:
  core::Status Track(std::uint64_t offset_bytes, std::uint64_t length_bytes);

  core::BlockDevice& volume_;
  Journal& journal_;
};

}  // namespace blkrep::tracker
