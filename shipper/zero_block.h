// Zero-block detection: all-zero blocks travel as zero ranges, not data.
#pragma once

#include <cstddef>
#include <span>

namespace blkrep::shipper {

// True when every byte of `block` is zero. Reads 64 bytes per step.
bool IsZeroBlock(std::span<const std::byte> block);

}  // namespace blkrep::shipper
