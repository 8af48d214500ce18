#include "tests/fuzz/fuzz_util.h"

#include <cstdio>
#include <cstdlib>

namespace blkrep::fuzz {

std::uint8_t InputReader::U8() { return pos_ < size_ ? data_[pos_++] : 0; }

std::uint16_t InputReader::U16() {
  std::uint16_t v = U8();
  return static_cast<std::uint16_t>(v | (std::uint16_t{U8()} << 8));
}

std::uint32_t InputReader::U32() {
  std::uint32_t v = U16();
  return v | (std::uint32_t{U16()} << 16);
}

std::uint64_t InputReader::U64() {
  std::uint64_t v = U32();
  return v | (std::uint64_t{U32()} << 32);
}

std::uint64_t InputReader::InterestingU64() {
  static constexpr std::uint64_t kValues[] = {
      0,          1,           2,          7,           8,           15,
      16,         63,          64,         255,         256,         4095,
      4096,       65535,       65536,      1ULL << 20,  (1ULL << 20) + 4096,
      1ULL << 23, (1ULL << 23) + 1,        1ULL << 26,  1ULL << 31,  1ULL << 32,
      1ULL << 40, 1ULL << 60,  (1ULL << 60) + 1,        ~0ULL >> 1,  ~0ULL - 1,
      ~0ULL,      0xFFFFFFFFULL,           0x80000000ULL};
  std::uint8_t pick = U8();
  if (pick < 160) return kValues[pick % (sizeof(kValues) / sizeof(kValues[0]))];
  if (pick < 224) return U8();
  return U64();
}

std::span<const std::byte> InputReader::Bytes(std::size_t n) {
  std::size_t take = n < remaining() ? n : remaining();
  std::span<const std::byte> out(reinterpret_cast<const std::byte*>(data_ + pos_), take);
  pos_ += take;
  return out;
}

std::string InputReader::String(std::size_t max_bytes) {
  std::size_t n = U16() % (max_bytes + 1);
  std::span<const std::byte> b = Bytes(n);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

void CheckFailed(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace blkrep::fuzz
