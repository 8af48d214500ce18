// The write workloads of `blkrep bench`: where a synthetic guest writes, how
// much, and what bytes.
//
// Design note. A workload is a pure function of its options and a seed: the
// same seed gives the same sequence of writes (offsets, lengths, zero or
// data) and the same bytes in each, on any machine, so two runs of the bench
// (or a run and its replay elsewhere) write exactly the same blocks. The
// generator never looks at the clock; phases that are capped in time simply
// stop taking writes from it.
//
// Offsets follow a skew over "regions" (the volume cut into at most 65536
// equal parts, shuffled by the seed so hot regions are scattered):
//   - uniform: every region alike;
//   - hot/cold "A/B": A% of the writes land in B% of the regions;
//   - Zipf exponent s > 0: the k-th hottest region gets weight 1/k^s.
// Within a region the offset is uniform, aligned to 4 KiB.
//
// Bytes: each 4 KiB of a data write starts with `compressibility_pct`% of a
// repeating 16-byte pattern (compresses to almost nothing) followed by
// pseudo-random bytes (do not compress). A write is all zeroes with
// probability `zero_fraction`.
//
// Thread safety: none; one generator per thread. FillData is pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace blkrep::tools::bench {

inline constexpr std::uint32_t kMaxWriteBytes = 32u << 20;  // NBD's usual request cap
inline constexpr std::uint64_t kOffsetAlignBytes = 4096;

struct WriteSize {
  std::uint32_t size_bytes = 0;
  std::uint32_t weight = 0;
};

enum class SkewKind : std::uint8_t { kUniform, kHotCold, kZipf };

struct Skew {
  SkewKind kind = SkewKind::kUniform;
  double zipf_exponent = 0;     // kZipf
  double hot_write_share = 0;   // kHotCold: share of writes into the hot regions
  double hot_space_share = 0;   // kHotCold: share of the regions that are hot
  std::string text;             // as given, for reports
};

// "4K" or "4K:60,64K:30,1M:10": sizes multiple of 512 from 512 to 32M,
// weights whole numbers >= 1 (a bare size has weight 1).
core::Result<std::vector<WriteSize>> ParseWriteSizes(std::string_view text);
// "0" or "uniform", "A/B" (whole percents, 0 < A,B < 100), or a Zipf
// exponent in (0, 5].
core::Result<Skew> ParseSkew(std::string_view text);
// "0.001,0.01": each in (0, 1], strictly increasing.
core::Result<std::vector<double>> ParseFractions(std::string_view text);
// A real number in [lo, hi]; `what` names the flag in errors.
core::Result<double> ParseReal(std::string_view text, double lo, double hi, std::string_view what);

struct WorkloadOptions {
  std::uint64_t volume_bytes = 0;   // > 0, multiple of 4 KiB
  std::uint32_t block_bytes = 65536;
  std::vector<WriteSize> sizes;     // non-empty
  Skew skew;
  std::uint64_t seed = 1;
  std::uint32_t compressibility_pct = 50;  // 0..100
  double zero_fraction = 0;                // 0..1
};

struct Write {
  std::uint64_t index = 0;  // position in the workload's sequence
  std::uint64_t offset_bytes = 0;
  std::uint32_t length_bytes = 0;
  bool zero = false;
};

class WorkloadGenerator {
 public:
  // `stream` tells apart the workloads of one run (phases) that share a seed.
  WorkloadGenerator(const WorkloadOptions& options, std::uint64_t stream);

  Write Next();
  // The bytes of `w` into `out` (out.size() == w.length_bytes).
  void Fill(const Write& w, std::span<std::byte> out) const;
  // xxh3 of the (offset, length, zero) of every write taken so far: equal
  // digests mean the same blocks were written.
  std::uint64_t digest() const { return digest_; }

 private:
  std::uint64_t NextRandom();
  std::uint64_t PickRegion();

  WorkloadOptions options_;
  std::uint64_t stream_seed_;
  std::uint64_t state_[4];
  std::uint64_t next_index_ = 0;
  std::uint64_t digest_ = 0;
  std::uint64_t total_weight_ = 0;
  std::uint64_t region_count_ = 1;
  std::vector<std::uint32_t> region_order_;  // rank -> region
  std::vector<double> zipf_cdf_;             // kZipf: by rank
};

// Deterministic bytes for write number `index` of the stream seeded with
// `seed` (see the design note); used by the generator and by replay.
void FillData(std::uint64_t seed, std::uint64_t index, std::uint32_t compressibility_pct, bool zero,
              std::span<std::byte> out);

// Tracks the distinct blocks a workload touched.
class BlockSet {
 public:
  BlockSet(std::uint64_t volume_bytes, std::uint32_t block_bytes);
  // Marks the blocks of [offset, offset + length); returns how many were new.
  std::uint64_t Add(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  std::uint64_t count() const { return count_; }
  std::uint64_t block_count() const { return bits_.size(); }
  bool Has(std::uint64_t block) const { return bits_[block]; }

 private:
  std::uint32_t block_bytes_;
  std::vector<bool> bits_;
  std::uint64_t count_ = 0;
};

}  // namespace blkrep::tools::bench
