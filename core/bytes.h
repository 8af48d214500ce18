// Little-endian encoding helpers for on-disk and on-wire formats.
//
// ByteWriter appends; ByteReader consumes with a bounds check on every read.
// A reader that runs short latches a failure (ok() == false) and returns
// zeroes from then on, so a decoder reads all fields and checks ok() once
// before it uses any of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace blkrep::core {

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<std::byte>& out) : out_(out) {}
  void U8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void U16(std::uint16_t v) { Le(v, 2); }
  void U32(std::uint32_t v) { Le(v, 4); }
  void U64(std::uint64_t v) { Le(v, 8); }
  void Bytes(std::span<const std::byte> data) {
    out_.insert(out_.end(), data.begin(), data.end());
  }
  // u16 length, then the bytes. REQUIRES: s.size() <= 65535.
  void String16(std::string_view s) {
    U16(static_cast<std::uint16_t>(s.size()));
    Bytes(std::as_bytes(std::span(s.data(), s.size())));
  }
  void Zeroes(std::size_t n) { out_.insert(out_.end(), n, std::byte{0}); }
  std::size_t size() const { return out_.size(); }

 private:
  void Le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::byte>(v >> (8 * i)));
  }
  std::vector<std::byte>& out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const std::byte> in) : in_(in) {}
  std::uint8_t U8() { return static_cast<std::uint8_t>(Le(1)); }
  std::uint16_t U16() { return static_cast<std::uint16_t>(Le(2)); }
  std::uint32_t U32() { return static_cast<std::uint32_t>(Le(4)); }
  std::uint64_t U64() { return Le(8); }
  std::span<const std::byte> Bytes(std::size_t n) {
    if (!ok_ || n > remaining()) {
      ok_ = false;
      return {};
    }
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  // u16 length, then at most max_length bytes.
  std::string String16(std::size_t max_length) {
    std::size_t n = U16();
    if (n > max_length) {
      ok_ = false;
      return {};
    }
    auto b = Bytes(n);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
  std::size_t remaining() const { return in_.size() - pos_; }
  std::size_t position() const { return pos_; }
  bool ok() const { return ok_; }
  void Fail() { ok_ = false; }

 private:
  std::uint64_t Le(int n) {
    if (!ok_ || static_cast<std::size_t>(n) > remaining()) {
      ok_ = false;
      return 0;
    }
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
      v |= static_cast<std::uint64_t>(in_[pos_ + static_cast<std::size_t>(i)]) << (8 * i);
    }
    pos_ += static_cast<std::size_t>(n);
    return v;
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

// Little-endian loads/stores at a fixed position of a buffer.
inline std::uint64_t LoadLe64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
inline std::uint32_t LoadLe32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
inline void StoreLe64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
inline void StoreLe32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}

}  // namespace blkrep::core
