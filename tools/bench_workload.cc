#include "tools/bench_workload.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/hash.h"
#include "core/units.h"

namespace blkrep::tools::bench {

using core::Result;
using core::Status;

namespace {

std::uint64_t SplitMix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::uint64_t Rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

struct Xoshiro {
  std::uint64_t s[4];
  explicit Xoshiro(std::uint64_t seed) {
    for (auto& v : s) v = SplitMix64(seed);
  }
  std::uint64_t Next() {
    const std::uint64_t result = Rotl(s[1] * 5, 7) * 9;
    const std::uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = Rotl(s[3], 45);
    return result;
  }
};

std::vector<std::string_view> Split(std::string_view text, char sep) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    std::size_t end = text.find(sep, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return parts;
}

double Uniform01(std::uint64_t r) { return static_cast<double>(r >> 11) * 0x1.0p-53; }

}  // namespace

Result<double> ParseReal(std::string_view text, double lo, double hi, std::string_view what) {
  double value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || !std::isfinite(value) ||
      value < lo || value > hi) {
    char range[96];
    std::snprintf(range, sizeof range, "a number from %g to %g", lo, hi);
    return Status::InvalidArgument(std::string(what) + ": expected " + range + ", got '" + std::string(text) + "'");
  }
  return value;
}

Result<std::vector<WriteSize>> ParseWriteSizes(std::string_view text) {
  std::vector<WriteSize> sizes;
  const std::string bad = "--write-size: expected SIZE or SIZE:WEIGHT,... (e.g. 4K:60,64K:30,1M:10), got '" +
                          std::string(text) + "'";
  for (std::string_view part : Split(text, ',')) {
    std::string_view size_text = part, weight_text;
    if (auto colon = part.find(':'); colon != std::string_view::npos) {
      size_text = part.substr(0, colon);
      weight_text = part.substr(colon + 1);
      if (weight_text.empty()) return Status::InvalidArgument(bad);
    }
    auto size = core::ParseSize(size_text);
    if (!size.ok()) return Status::InvalidArgument(bad);
    if (*size < 512 || *size > kMaxWriteBytes || *size % 512 != 0) {
      return Status::InvalidArgument("--write-size: " + std::string(size_text) +
                                     " is not a multiple of 512 from 512 to 32M");
    }
    std::uint32_t weight = 1;
    if (!weight_text.empty()) {
      auto [ptr, ec] = std::from_chars(weight_text.data(), weight_text.data() + weight_text.size(), weight);
      if (ec != std::errc() || ptr != weight_text.data() + weight_text.size() || weight == 0 || weight > 1000000) {
        return Status::InvalidArgument("--write-size: weight '" + std::string(weight_text) +
                                       "' is not a whole number from 1 to 1000000");
      }
    }
    sizes.push_back({static_cast<std::uint32_t>(*size), weight});
  }
  return sizes;
}

Result<Skew> ParseSkew(std::string_view text) {
  Skew skew;
  skew.text = std::string(text);
  if (text == "0" || text == "uniform") return skew;
  const std::string bad = "--skew: expected 0 (uniform), A/B (A% of writes into B% of the volume, e.g. 80/20) "
                          "or a Zipf exponent in (0, 5], got '" + std::string(text) + "'";
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    auto a = ParseReal(text.substr(0, slash), 0, 100, "--skew");
    auto b = ParseReal(text.substr(slash + 1), 0, 100, "--skew");
    if (!a.ok() || !b.ok() || *a <= 0 || *a >= 100 || *b <= 0 || *b >= 100) return Status::InvalidArgument(bad);
    skew.kind = SkewKind::kHotCold;
    skew.hot_write_share = *a / 100;
    skew.hot_space_share = *b / 100;
    return skew;
  }
  auto s = ParseReal(text, 0, 5, "--skew");
  if (!s.ok()) return Status::InvalidArgument(bad);
  if (*s == 0) return skew;
  skew.kind = SkewKind::kZipf;
  skew.zipf_exponent = *s;
  return skew;
}

Result<std::vector<double>> ParseFractions(std::string_view text) {
  std::vector<double> out;
  for (std::string_view part : Split(text, ',')) {
    auto f = ParseReal(part, 0, 1, "--dirty");
    if (!f.ok()) return f.status();
    if (*f <= 0) return Status::InvalidArgument("--dirty: fraction '" + std::string(part) + "' must be above 0");
    if (!out.empty() && *f <= out.back()) {
      return Status::InvalidArgument("--dirty: fractions must be increasing, got '" + std::string(text) + "'");
    }
    out.push_back(*f);
  }
  return out;
}

WorkloadGenerator::WorkloadGenerator(const WorkloadOptions& options, std::uint64_t stream) : options_(options) {
  std::uint64_t x = options.seed * 0x9e3779b97f4a7c15ull + stream;
  stream_seed_ = SplitMix64(x);
  std::uint64_t y = stream_seed_;
  for (auto& v : state_) v = SplitMix64(y);
  for (const WriteSize& s : options_.sizes) total_weight_ += s.weight;
  const std::uint64_t blocks = std::max<std::uint64_t>(1, options_.volume_bytes / kOffsetAlignBytes);
  region_count_ = std::min<std::uint64_t>(65536, blocks);
  region_order_.resize(region_count_);
  for (std::uint64_t i = 0; i < region_count_; ++i) region_order_[i] = static_cast<std::uint32_t>(i);
  for (std::uint64_t i = region_count_; i > 1; --i) {  // Fisher-Yates
    std::swap(region_order_[i - 1], region_order_[NextRandom() % i]);
  }
  if (options_.skew.kind == SkewKind::kZipf) {
    zipf_cdf_.resize(region_count_);
    double sum = 0;
    for (std::uint64_t k = 0; k < region_count_; ++k) {
      sum += 1.0 / std::pow(static_cast<double>(k + 1), options_.skew.zipf_exponent);
      zipf_cdf_[k] = sum;
    }
    for (double& c : zipf_cdf_) c /= sum;
  }
}

std::uint64_t WorkloadGenerator::NextRandom() {
  Xoshiro x(0);
  std::memcpy(x.s, state_, sizeof state_);
  std::uint64_t r = x.Next();
  std::memcpy(state_, x.s, sizeof state_);
  return r;
}

std::uint64_t WorkloadGenerator::PickRegion() {
  std::uint64_t rank = 0;
  switch (options_.skew.kind) {
    case SkewKind::kUniform:
      rank = NextRandom() % region_count_;
      break;
    case SkewKind::kHotCold: {
      std::uint64_t hot = std::clamp<std::uint64_t>(
          static_cast<std::uint64_t>(std::llround(options_.skew.hot_space_share * region_count_)), 1,
          region_count_);
      bool into_hot = Uniform01(NextRandom()) < options_.skew.hot_write_share || hot == region_count_;
      rank = into_hot ? NextRandom() % hot : hot + NextRandom() % (region_count_ - hot);
      break;
    }
    case SkewKind::kZipf: {
      double u = Uniform01(NextRandom());
      rank = static_cast<std::uint64_t>(std::lower_bound(zipf_cdf_.begin(), zipf_cdf_.end(), u) - zipf_cdf_.begin());
      rank = std::min(rank, region_count_ - 1);
      break;
    }
  }
  return region_order_[rank];
}

Write WorkloadGenerator::Next() {
  Write w;
  w.index = next_index_++;
  std::uint64_t pick = NextRandom() % total_weight_;
  for (const WriteSize& s : options_.sizes) {
    if (pick < s.weight) {
      w.length_bytes = s.size_bytes;
      break;
    }
    pick -= s.weight;
  }
  w.length_bytes = static_cast<std::uint32_t>(std::min<std::uint64_t>(w.length_bytes, options_.volume_bytes));
  const std::uint64_t region = PickRegion();
  const std::uint64_t units = options_.volume_bytes / kOffsetAlignBytes;
  const std::uint64_t first = region * units / region_count_;
  const std::uint64_t end = std::max(first + 1, (region + 1) * units / region_count_);
  std::uint64_t offset = (first + NextRandom() % (end - first)) * kOffsetAlignBytes;
  if (offset + w.length_bytes > options_.volume_bytes) {
    offset = (options_.volume_bytes - w.length_bytes) / kOffsetAlignBytes * kOffsetAlignBytes;
  }
  w.offset_bytes = offset;
  w.zero = options_.zero_fraction > 0 && Uniform01(NextRandom()) < options_.zero_fraction;
  std::uint64_t record[3] = {w.offset_bytes, w.length_bytes, static_cast<std::uint64_t>(w.zero) ^ digest_};
  digest_ = core::Xxh3_64(record, sizeof record);
  return w;
}

void WorkloadGenerator::Fill(const Write& w, std::span<std::byte> out) const {
  FillData(stream_seed_, w.index, options_.compressibility_pct, w.zero, out);
}

void FillData(std::uint64_t seed, std::uint64_t index, std::uint32_t compressibility_pct, bool zero,
              std::span<std::byte> out) {
  if (zero) {
    std::memset(out.data(), 0, out.size());
    return;
  }
  Xoshiro rng(seed ^ (index * 0xd1b54a32d192ed03ull));
  std::byte pattern[16];
  for (std::size_t i = 0; i < sizeof pattern; i += 8) {
    std::uint64_t v = rng.Next();
    std::memcpy(pattern + i, &v, 8);
  }
  constexpr std::size_t kChunk = 4096;
  const std::size_t compressible = kChunk * std::min<std::uint32_t>(compressibility_pct, 100) / 100;
  for (std::size_t start = 0; start < out.size(); start += kChunk) {
    const std::size_t n = std::min(kChunk, out.size() - start);
    std::byte* p = out.data() + start;
    const std::size_t c = std::min(compressible, n);
    for (std::size_t i = 0; i < c; ++i) p[i] = pattern[i % sizeof pattern];
    std::size_t i = c;
    for (; i + 8 <= n; i += 8) {
      std::uint64_t v = rng.Next();
      std::memcpy(p + i, &v, 8);
    }
    if (i < n) {
      std::uint64_t v = rng.Next();
      std::memcpy(p + i, &v, n - i);
    }
    // Never an all-zero data write by accident: the first byte is nonzero.
    if (n > 0 && p[0] == std::byte{0}) p[0] = std::byte{1};
  }
}

BlockSet::BlockSet(std::uint64_t volume_bytes, std::uint32_t block_bytes)
    : block_bytes_(block_bytes), bits_((volume_bytes + block_bytes - 1) / block_bytes) {}

std::uint64_t BlockSet::Add(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  if (length_bytes == 0) return 0;
  std::uint64_t added = 0;
  const std::uint64_t last = std::min<std::uint64_t>((offset_bytes + length_bytes - 1) / block_bytes_,
                                                     bits_.size() - 1);
  for (std::uint64_t b = offset_bytes / block_bytes_; b <= last; ++b) {
    if (!bits_[b]) {
      bits_[b] = true;
      ++added;
    }
  }
  count_ += added;
  return added;
}

}  // namespace blkrep::tools::bench
