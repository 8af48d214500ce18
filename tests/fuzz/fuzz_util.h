// Helpers shared by the fuzz targets of tests/fuzz.
//
// Design note. Every target is a plain libFuzzer entry point
// (LLVMFuzzerTestOneInput), built either against libFuzzer (clang,
// BLKREP_LIBFUZZER=ON) or against standalone_driver.cc, which feeds it
// random and mutated inputs where libFuzzer is missing (GCC). A target reads
// its input through an InputReader, which never runs out: past the end it
// yields zeroes, so every input — including the empty one — is a valid
// program for the structured targets. A broken invariant is reported with
// BLKREP_FUZZ_CHECK, which prints what was wrong and aborts, so both drivers
// record the input as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace blkrep::fuzz {

// Reads fixed-width fields from a fuzz input. Past the end every read yields
// zeroes (and Bytes() an empty span). Does not own the input: `data` must
// outlive the reader.
class InputReader {
 public:
  InputReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  std::size_t remaining() const { return pos_ < size_ ? size_ - pos_ : 0; }

  std::uint8_t U8();
  std::uint16_t U16();
  std::uint32_t U32();
  std::uint64_t U64();
  bool Bool() { return (U8() & 1U) != 0; }
  // A value in [0, bound). REQUIRES: bound > 0.
  std::uint64_t Below(std::uint64_t bound) { return U64() % bound; }
  // A value that is often an edge case of a 64-bit field (0, 1, powers of
  // two, all ones, the format's limits), otherwise arbitrary.
  std::uint64_t InterestingU64();
  // Up to `n` bytes (fewer at the end of the input).
  std::span<const std::byte> Bytes(std::size_t n);
  // A string of up to `max_bytes` bytes taken from the input.
  std::string String(std::size_t max_bytes);

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Prints "fuzz check failed at FILE:LINE: WHAT" and aborts.
[[noreturn]] void CheckFailed(const char* file, int line, const std::string& what);

#define BLKREP_FUZZ_CHECK(condition, what)                                      \
  do {                                                                          \
    if (!(condition)) ::blkrep::fuzz::CheckFailed(__FILE__, __LINE__, (what));  \
  } while (0)

// Seed inputs of the target, for the standalone driver's mutations and for a
// libFuzzer seed corpus (standalone_driver --write-seeds). Each target
// defines it.
std::vector<std::vector<std::uint8_t>> SeedInputs();

// Byte-vector conversions between the fuzz entry point's uint8_t and the
// codebase's std::byte.
inline std::span<const std::byte> AsBytes(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const std::byte*>(data), size};
}
inline std::vector<std::uint8_t> ToU8(std::span<const std::byte> bytes) {
  std::vector<std::uint8_t> out(bytes.size());
  for (std::size_t i = 0; i < bytes.size(); ++i) out[i] = static_cast<std::uint8_t>(bytes[i]);
  return out;
}

}  // namespace blkrep::fuzz
