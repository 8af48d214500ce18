#include "core/memory_block_device.h"

#include <algorithm>
#include <cstring>

namespace blkrep::core {
namespace {
constexpr std::string_view kWhat = "memory device";
}  // namespace

MemoryBlockDevice::MemoryBlockDevice(std::uint64_t size_bytes)
    : size_bytes_(size_bytes), data_(static_cast<std::size_t>(size_bytes)) {}

Status MemoryBlockDevice::Read(std::uint64_t offset_bytes,
                               std::span<std::byte> out) {
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, out.size(), size_bytes_, kWhat));
  std::lock_guard<std::mutex> lock(mutex_);
  if (!out.empty())
    std::memcpy(out.data(), data_.data() + offset_bytes, out.size());
  ++read_count_;
  return Status::Ok();
}

Status MemoryBlockDevice::Write(std::uint64_t offset_bytes,
                                std::span<const std::byte> data) {
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, data.size(), size_bytes_, kWhat));
  std::lock_guard<std::mutex> lock(mutex_);
  if (!data.empty())
    std::memcpy(data_.data() + offset_bytes, data.data(), data.size());
  ++write_count_;
  return Status::Ok();
}

Status MemoryBlockDevice::Flush() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++flush_count_;
  return Status::Ok();
}

Status MemoryBlockDevice::Trim(std::uint64_t offset_bytes,
                               std::uint64_t length_bytes) {
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, length_bytes, size_bytes_, kWhat));
  std::lock_guard<std::mutex> lock(mutex_);
  std::fill_n(data_.begin() + static_cast<std::ptrdiff_t>(offset_bytes),
              length_bytes, std::byte{0});
  ++trim_count_;
  return Status::Ok();
}

Status MemoryBlockDevice::WriteZeroes(std::uint64_t offset_bytes,
                                      std::uint64_t length_bytes,
                                      bool /*allow_unmap*/) {
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, length_bytes, size_bytes_, kWhat));
  std::lock_guard<std::mutex> lock(mutex_);
  std::fill_n(data_.begin() + static_cast<std::ptrdiff_t>(offset_bytes),
              length_bytes, std::byte{0});
  ++write_zeroes_count_;
  return Status::Ok();
}

Result<VolumeIdentity> MemoryBlockDevice::Identity() {
  VolumeIdentity identity;
  identity.kind = VolumeIdentity::Kind::kMemory;
  identity.size_bytes = size_bytes_;
  return identity;
}

std::uint64_t MemoryBlockDevice::read_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return read_count_;
}
std::uint64_t MemoryBlockDevice::write_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return write_count_;
}
std::uint64_t MemoryBlockDevice::flush_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return flush_count_;
}
std::uint64_t MemoryBlockDevice::trim_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return trim_count_;
}
std::uint64_t MemoryBlockDevice::write_zeroes_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return write_zeroes_count_;
}

}  // namespace blkrep::core
