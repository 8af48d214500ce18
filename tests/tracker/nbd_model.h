// What a volume should hold after a sequence of NBD operations, and which
// blocks the journal must report dirty: the tests' own bookkeeping,
// independent of the code under test.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {

class VolumeModel {
 public:
  explicit VolumeModel(std::vector<std::uint8_t> initial) : bytes_(std::move(initial)) {}
  explicit VolumeModel(std::uint64_t size_bytes) : VolumeModel(std::vector<std::uint8_t>(size_bytes, 0)) {}

  void Write(std::uint64_t offset, std::uint64_t length, std::uint8_t byte) {
    std::memset(bytes_.data() + offset, byte, length);
    AddRange(dirty_, offset, length);
  }
  void Zero(std::uint64_t offset, std::uint64_t length) { Write(offset, length, 0); }
  // After a trim the contents are unspecified (NBD: the client must not
  // assume anything until it writes there again). Trimmed ranges are not
  // compared; REQUIRES: nothing is written into them afterwards.
  void Trim(std::uint64_t offset, std::uint64_t length) {
    trimmed_.emplace_back(offset, length);
    AddRange(dirty_, offset, length);
  }

  const BlockSet& dirty() const { return dirty_; }
  std::uint64_t size() const { return bytes_.size(); }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }

  // Compares the volume file byte by byte (except trimmed bytes); reports
  // the first few differences.
  void ExpectFileMatches(const std::string& path) const {
    std::vector<std::uint8_t> actual = ReadAll(path);
    ASSERT_EQ(actual.size(), bytes_.size()) << path << " changed size";
    std::vector<std::uint8_t> expected = bytes_;
    for (auto [offset, length] : trimmed_) {
      std::memcpy(expected.data() + offset, actual.data() + offset, length);
    }
    if (std::memcmp(expected.data(), actual.data(), actual.size()) == 0) return;
    int reported = 0;
    for (std::size_t i = 0; i < expected.size() && reported < 5; ++i) {
      if (actual[i] != expected[i]) {
        ADD_FAILURE() << path << " byte " << i << " is 0x" << std::hex << int{actual[i]} << ", expected 0x"
                      << int{expected[i]} << std::dec;
        ++reported;
      }
    }
  }

 private:
  std::vector<std::uint8_t> bytes_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> trimmed_;
  BlockSet dirty_;
};

}  // namespace blkrep::tracker::nbd_test
