// Fuzz target for the receiver's diverged-blocks file gate (receiver/
// diverged.h, docs/replica-format.md "Promoted guests and diverged blocks").
//
// Input: u8 mode; 0: the rest is the file as found on disk; otherwise a
// recipe (geometry and ranges from the bytes) encoded, then one byte
// mutated at a chosen offset and (mostly) the checksum recomputed, so the
// fuzzer reaches the field checks behind the checksum.
// Invariants: DecodeDiverged fails only with kCorruption, one line,
// starting "diverged blocks file: "; what it accepts has sorted, disjoint,
// non-empty ranges inside block_count and re-encodes to the input bytes;
// CoarsenRanges of what it accepts covers every block with at most the
// ranges asked for, inside the same bounds.
#include <cstring>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "receiver/diverged.h"
#include "tests/fuzz/fuzz_util.h"

using blkrep::receiver::DivergedBlocks;

namespace {

void Check(const std::vector<std::byte>& bytes) {
  auto d = blkrep::receiver::DecodeDiverged(bytes);
  if (!d.ok()) {
    BLKREP_FUZZ_CHECK(d.status().code() == blkrep::core::Code::kCorruption, "an error that is not kCorruption");
    BLKREP_FUZZ_CHECK(d.status().message().rfind("diverged blocks file: ", 0) == 0, "an error without its prefix");
    BLKREP_FUZZ_CHECK(d.status().message().find('\n') == std::string::npos, "a multi-line error");
    return;
  }
  std::uint64_t end = 0;
  for (auto [first, count] : d->ranges) {
    BLKREP_FUZZ_CHECK(count > 0 && first >= end && first < d->block_count && count <= d->block_count - first, "an accepted range out of order or outside the volume");
    end = first + count;
  }
  BLKREP_FUZZ_CHECK(blkrep::receiver::EncodeDiverged(*d) == bytes, "an accepted file that does not re-encode to itself");
  for (std::size_t max : {std::size_t{1}, std::size_t{3}, std::size_t{1024}}) {
    auto c = blkrep::receiver::CoarsenRanges(d->ranges, max);
    BLKREP_FUZZ_CHECK(c.size() <= std::max<std::size_t>(max, 0) || d->ranges.size() <= max, "more ranges than asked for");
    std::size_t j = 0;
    for (auto [first, count] : d->ranges) {
      while (j < c.size() && c[j].first + c[j].second <= first) ++j;
      BLKREP_FUZZ_CHECK(j < c.size() && c[j].first <= first && first + count <= c[j].first + c[j].second, "a block the coarsened ranges do not cover");
    }
  }
}

}  // namespace

std::vector<std::vector<std::uint8_t>> blkrep::fuzz::SeedInputs() {
  DivergedBlocks d;
  d.block_size_bytes = 4096;
  d.block_count = 1000;
  d.ranges = {{0, 3}, {10, 1}, {500, 100}};
  std::vector<std::byte> bytes = blkrep::receiver::EncodeDiverged(d);
  std::vector<std::uint8_t> raw = {0};
  for (std::byte b : bytes) raw.push_back(static_cast<std::uint8_t>(b));
  return {raw, {1, 0, 0, 1, 0, 0, 5, 1, 0, 2, 0, 3, 0, 4, 0, 9, 0, 7, 1, 2}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  std::vector<std::byte> rest(reinterpret_cast<const std::byte*>(data + 1), reinterpret_cast<const std::byte*>(data + size));
  if (mode % 2 == 0) {
    Check(rest);
    return 0;
  }
  blkrep::core::ByteReader r(rest);
  DivergedBlocks d;
  d.block_size_bytes = 4096u << (r.U8() % 9);
  d.block_count = 1 + r.U32();
  std::uint64_t at = 0;
  for (int n = r.U8() % 40; n > 0 && r.remaining() >= 4; --n) {
    std::uint64_t gap = r.U16(), count = 1 + r.U16();
    if (at + gap >= d.block_count) break;
    at += gap;
    count = std::min(count, d.block_count - at);
    d.ranges.emplace_back(at, count);
    at += count;
  }
  std::vector<std::byte> bytes = blkrep::receiver::EncodeDiverged(d);
  if (r.remaining() >= 3) {
    std::size_t offset = r.U16() % bytes.size();
    bytes[offset] = static_cast<std::byte>(r.U8());
    if ((mode & 2) == 0 && bytes.size() >= 8) {
      std::uint64_t sum = blkrep::core::Xxh3_64(std::span(bytes).first(bytes.size() - 8));
      for (int i = 0; i < 8; ++i) bytes[bytes.size() - 8 + i] = static_cast<std::byte>(sum >> (8 * i));
    }
  }
  Check(bytes);
  return 0;
}
