// xxh3 hashing of blocks and records (libxxhash). Hashes are only integrity
// checks, never security: a keyed MAC belongs to the transport.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace blkrep::core {

std::uint64_t Xxh3_64(std::span<const std::byte> data);
std::uint64_t Xxh3_64(const void* data, std::size_t length_bytes);

// Incremental xxh3-64 of a concatenation of spans.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void Update(std::span<const std::byte> data);
  std::uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t
};

struct Hash128 {
  std::uint64_t low = 0;
  std::uint64_t high = 0;
  bool operator==(const Hash128&) const = default;
};
Hash128 Xxh3_128(std::span<const std::byte> data);

// Hashes `data` split into blocks of block_size_bytes (the last one may be
// short): out[i] is the xxh3-128 of block i. out.size() must equal the
// number of blocks.
void HashBlocks(std::span<const std::byte> data, std::size_t block_size_bytes,
                std::span<Hash128> out);

}  // namespace blkrep::core
