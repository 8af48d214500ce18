#include "tracker/tracked_device.h"

namespace blkrep::tracker {

using core::Status;

Status TrackedDevice::Track(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  BLKREP_RETURN_IF_ERROR(core::CheckRange(offset_bytes, length_bytes, volume_.SizeBytes(), "volume"));
  // MarkDirty fails only for ranges outside the volume, checked above.
  return journal_.MarkDirty(offset_bytes, length_bytes);
}

Status TrackedDevice::Read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  return volume_.Read(offset_bytes, out);
}

Status TrackedDevice::Write(std::uint64_t offset_bytes, std::span<const std::byte> data) {
  BLKREP_RETURN_IF_ERROR(Track(offset_bytes, data.size()));
  return volume_.Write(offset_bytes, data);
}

Status TrackedDevice::Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  BLKREP_RETURN_IF_ERROR(Track(offset_bytes, length_bytes));
  return volume_.Trim(offset_bytes, length_bytes);
}

Status TrackedDevice::WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                  bool allow_unmap) {
  BLKREP_RETURN_IF_ERROR(Track(offset_bytes, length_bytes));
  return volume_.WriteZeroes(offset_bytes, length_bytes, allow_unmap);
}

}  // namespace blkrep::tracker
