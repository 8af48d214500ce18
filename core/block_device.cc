#include "core/block_device.h"

namespace blkrep::core {

Status CheckRange(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                  std::uint64_t size_bytes, std::string_view what) {
  if (offset_bytes > size_bytes || length_bytes > size_bytes - offset_bytes) {
    return Status::OutOfRange(std::string(what) + ": range offset " +
                              std::to_string(offset_bytes) + " length " +
                              std::to_string(length_bytes) +
                              " is outside size " + std::to_string(size_bytes));
  }
  return Status::Ok();
}

}  // namespace blkrep::core
