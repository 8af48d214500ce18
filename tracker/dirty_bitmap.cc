#include "tracker/dirty_bitmap.h"

#include <bit>

namespace blkrep::tracker {

DirtyBitmap::DirtyBitmap(std::uint64_t block_count, bool all_set)
    : block_count_(block_count),
      words_((block_count + 63) / 64, all_set ? ~std::uint64_t{0} : 0) {
  ClearTail();
}

void DirtyBitmap::ClearTail() {
  if (block_count_ % 64 != 0 && !words_.empty()) {
    words_.back() &= (std::uint64_t{1} << (block_count_ % 64)) - 1;
  }
}

namespace {
// Mask of bits [from, to) within one word, 0 <= from < to <= 64.
inline std::uint64_t Mask(unsigned from, unsigned to) {
  std::uint64_t high = to == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << to) - 1;
  return high & ~((std::uint64_t{1} << from) - 1);
}
}  // namespace

void DirtyBitmap::SetRange(std::uint64_t first_block, std::uint64_t count_blocks) {
  if (count_blocks == 0) return;
  std::uint64_t end = first_block + count_blocks;
  std::uint64_t w0 = first_block >> 6, w1 = (end - 1) >> 6;
  if (w0 == w1) {
    words_[w0] |= Mask(first_block & 63, static_cast<unsigned>((end - 1) & 63) + 1);
    return;
  }
  words_[w0] |= Mask(first_block & 63, 64);
  for (std::uint64_t w = w0 + 1; w < w1; ++w) words_[w] = ~std::uint64_t{0};
  words_[w1] |= Mask(0, static_cast<unsigned>((end - 1) & 63) + 1);
}

void DirtyBitmap::ClearRange(std::uint64_t first_block, std::uint64_t count_blocks) {
  if (count_blocks == 0) return;
  std::uint64_t end = first_block + count_blocks;
  std::uint64_t w0 = first_block >> 6, w1 = (end - 1) >> 6;
  if (w0 == w1) {
    words_[w0] &= ~Mask(first_block & 63, static_cast<unsigned>((end - 1) & 63) + 1);
    return;
  }
  words_[w0] &= ~Mask(first_block & 63, 64);
  for (std::uint64_t w = w0 + 1; w < w1; ++w) words_[w] = 0;
  words_[w1] &= ~Mask(0, static_cast<unsigned>((end - 1) & 63) + 1);
}

void DirtyBitmap::ClearAll() {
  for (auto& w : words_) w = 0;
}

void DirtyBitmap::Or(const DirtyBitmap& other) {
  for (std::size_t i = 0; i < words_.size() && i < other.words_.size(); ++i) {
    words_[i] |= other.words_[i];
  }
}

std::uint64_t DirtyBitmap::Count() const {
  std::uint64_t n = 0;
  for (auto w : words_) n += static_cast<std::uint64_t>(std::popcount(w));
  return n;
}

bool DirtyBitmap::Empty() const {
  for (auto w : words_) {
    if (w != 0) return false;
  }
  return true;
}

void DirtyBitmap::ForEachRun(
    std::uint64_t begin_block, std::uint64_t end_block,
    const std::function<void(std::uint64_t, std::uint64_t)>& fn) const {
  if (end_block > block_count_) end_block = block_count_;
  std::uint64_t block = begin_block;
  while (block < end_block) {
    // Find the next set bit.
    std::uint64_t w = block >> 6;
    std::uint64_t bits = words_[w] & ~((std::uint64_t{1} << (block & 63)) - 1);
    while (bits == 0) {
      ++w;
      if ((w << 6) >= end_block) return;
      bits = words_[w];
    }
    std::uint64_t start = (w << 6) + static_cast<std::uint64_t>(std::countr_zero(bits));
    if (start >= end_block) return;
    // Find the next clear bit after start.
    w = start >> 6;
    std::uint64_t clear = ~words_[w] & ~((std::uint64_t{1} << (start & 63)) - 1);
    while (clear == 0) {
      ++w;
      if ((w << 6) >= end_block) break;
      clear = ~words_[w];
    }
    std::uint64_t stop = clear == 0 ? end_block
                                    : (w << 6) + static_cast<std::uint64_t>(std::countr_zero(clear));
    if (stop > end_block) stop = end_block;
    fn(start, stop - start);
    block = stop;
  }
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> DirtyBitmap::Runs() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
  ForEachRun(0, block_count_, [&](std::uint64_t first, std::uint64_t count) {
    runs.emplace_back(first, count);
  });
  return runs;
}

void DirtyBitmap::Resize(std::uint64_t block_count, bool set_new) {
  std::uint64_t old = block_count_;
  words_.resize((block_count + 63) / 64, 0);
  block_count_ = block_count;
  ClearTail();
  if (set_new && block_count > old) SetRange(old, block_count - old);
}

std::uint64_t DirtyBitmap::Word(std::uint64_t first_block) const {
  if (first_block >= block_count_) return 0;
  std::uint64_t w = first_block >> 6;
  unsigned shift = static_cast<unsigned>(first_block & 63);
  std::uint64_t bits = words_[w] >> shift;
  if (shift != 0 && w + 1 < words_.size()) bits |= words_[w + 1] << (64 - shift);
  std::uint64_t remaining = block_count_ - first_block;
  if (remaining < 64) bits &= (std::uint64_t{1} << remaining) - 1;
  return bits;
}

void DirtyBitmap::OrWord(std::uint64_t first_block, std::uint64_t bits) {
  if (first_block >= block_count_) return;
  std::uint64_t remaining = block_count_ - first_block;
  if (remaining < 64) bits &= (std::uint64_t{1} << remaining) - 1;
  std::uint64_t w = first_block >> 6;
  unsigned shift = static_cast<unsigned>(first_block & 63);
  words_[w] |= bits << shift;
  if (shift != 0 && w + 1 < words_.size()) words_[w + 1] |= bits >> (64 - shift);
}

}  // namespace blkrep::tracker
