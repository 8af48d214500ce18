#include "core/units.h"

#include <array>
#include <cctype>
#include <charconv>
#include <limits>

namespace blkrep::core {
namespace {

constexpr std::array<char, 6> kUnitLetters = {'K', 'M', 'G', 'T', 'P', 'E'};
constexpr std::array<std::string_view, 7> kUnitNames = {
    "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
constexpr int kBitsPerUnit = 10;

Status BadSize(std::string_view text, std::string_view why) {
  return Status::InvalidArgument("invalid size '" + std::string(text) +
                                 "': " + std::string(why));
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

Result<std::uint64_t> ParseSize(std::string_view text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
    ++digits;
  if (digits == 0) return BadSize(text, "expected a number of bytes");

  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec == std::errc::result_out_of_range) return BadSize(text, "too large");
  if (ec != std::errc() || end != text.data() + digits) {
    return BadSize(text, "expected a number of bytes");
  }

  std::string_view suffix = text.substr(digits);
  int shift = 0;
  if (!suffix.empty() && !EqualsIgnoreCase(suffix, "B")) {
    const char letter =
        static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    int unit = 0;
    while (unit < static_cast<int>(kUnitLetters.size()) &&
           kUnitLetters[static_cast<std::size_t>(unit)] != letter) {
      ++unit;
    }
    const std::string_view rest = suffix.substr(1);
    if (unit == static_cast<int>(kUnitLetters.size()) ||
        !(rest.empty() || EqualsIgnoreCase(rest, "B") ||
          EqualsIgnoreCase(rest, "iB"))) {
      return BadSize(text, "unknown unit (use K, M, G, T, P or E)");
    }
    shift = (unit + 1) * kBitsPerUnit;
  }
  if (value > (std::numeric_limits<std::uint64_t>::max() >> shift)) {
    return BadSize(text, "too large");
  }
  return value << shift;
}

std::string FormatSize(std::uint64_t size_bytes) {
  std::size_t unit = 0;
  while (unit + 1 < kUnitNames.size() &&
         size_bytes >> ((unit + 1) * kBitsPerUnit) != 0) {
    ++unit;
  }
  auto unit_bytes = [](std::size_t u) {
    return std::uint64_t{1} << (u * kBitsPerUnit);
  };
  if (size_bytes % unit_bytes(unit) == 0) {
    return std::to_string(size_bytes / unit_bytes(unit)) + " " +
           std::string(kUnitNames[unit]);
  }
  // Tenths of the unit, rounded half up. (remainder * 10 cannot overflow:
  // the remainder is below 2^60.)
  auto tenths_of = [&](std::size_t u) {
    const std::uint64_t whole = size_bytes / unit_bytes(u);
    const std::uint64_t remainder = size_bytes % unit_bytes(u);
    return whole * 10 + (remainder * 10 + unit_bytes(u) / 2) / unit_bytes(u);
  };
  std::uint64_t tenths = tenths_of(unit);
  if (tenths >= (std::uint64_t{10} << kBitsPerUnit) &&
      unit + 1 < kUnitNames.size()) {
    tenths = tenths_of(++unit);  // 1023.96 KiB prints as 1.0 MiB
  }
  return std::to_string(tenths / 10) + "." + std::to_string(tenths % 10) + " " +
         std::string(kUnitNames[unit]);
}

}  // namespace blkrep::core
