#include "core/hash.h"

#include <xxhash.h>

#include <algorithm>
#include <cassert>

namespace blkrep::core {

std::uint64_t Xxh3_64(std::span<const std::byte> data) {
  return XXH3_64bits(data.data(), data.size());
}

std::uint64_t Xxh3_64(const void* data, std::size_t length_bytes) {
  return XXH3_64bits(data, length_bytes);
}

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) {
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Xxh3Stream::Update(std::span<const std::byte> data) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data.data(), data.size());
}
std::uint64_t Xxh3Stream::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

Hash128 Xxh3_128(std::span<const std::byte> data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  return Hash128{h.low64, h.high64};
}

void HashBlocks(std::span<const std::byte> data, std::size_t block_size_bytes,
                std::span<Hash128> out) {
  assert(block_size_bytes > 0);
  assert(out.size() == (data.size() + block_size_bytes - 1) / block_size_bytes);
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::size_t begin = i * block_size_bytes;
    std::size_t length = std::min(block_size_bytes, data.size() - begin);
    out[i] = Xxh3_128(data.subspan(begin, length));
  }
}

}  // namespace blkrep::core
