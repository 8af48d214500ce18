#include "shipper/zero_block.h"

#include <cstdint>
#include <cstring>

namespace blkrep::shipper {

bool IsZeroBlock(std::span<const std::byte> block) {
  const std::byte* p = block.data();
  std::size_t n = block.size();
  // Word-wise OR over 64-byte strides; the compiler vectorizes the loop.
  while (n >= 64) {
    std::uint64_t words[8];
    std::memcpy(words, p, 64);
    std::uint64_t acc = 0;
    for (auto w : words) acc |= w;
    if (acc != 0) return false;
    p += 64;
    n -= 64;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (p[i] != std::byte{0}) return false;
  }
  return true;
}

}  // namespace blkrep::shipper
