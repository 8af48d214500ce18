#include "core/units.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace blkrep::core {
namespace {

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = kKiB * 1024;
constexpr std::uint64_t kGiB = kMiB * 1024;
constexpr std::uint64_t kTiB = kGiB * 1024;

std::uint64_t ParseOrDie(std::string_view text) {
  Result<std::uint64_t> value = ParseSize(text);
  EXPECT_TRUE(value.ok()) << text << ": " << value.status().ToString();
  return value.ok() ? *value : 0;
}

TEST(ParseSizeTest, PlainDigitsAreBytes) {
  EXPECT_EQ(ParseOrDie("0"), 0u);
  EXPECT_EQ(ParseOrDie("4096"), 4096u);
  EXPECT_EQ(ParseOrDie("512B"), 512u);
  EXPECT_EQ(ParseOrDie("18446744073709551615"), UINT64_MAX);
}

TEST(ParseSizeTest, SuffixesArePowersOf1024InEitherCase) {
  EXPECT_EQ(ParseOrDie("64K"), 64 * kKiB);
  EXPECT_EQ(ParseOrDie("64k"), 64 * kKiB);
  EXPECT_EQ(ParseOrDie("4M"), 4 * kMiB);
  EXPECT_EQ(ParseOrDie("2G"), 2 * kGiB);
  EXPECT_EQ(ParseOrDie("3t"), 3 * kTiB);
  EXPECT_EQ(ParseOrDie("1P"), 1024 * kTiB);
  EXPECT_EQ(ParseOrDie("15E"), 15 * 1024 * 1024 * kTiB);
}

TEST(ParseSizeTest, OptionalTrailingBOrIbIsAccepted) {
  EXPECT_EQ(ParseOrDie("64KB"), 64 * kKiB);
  EXPECT_EQ(ParseOrDie("64kb"), 64 * kKiB);
  EXPECT_EQ(ParseOrDie("4MiB"), 4 * kMiB);
  EXPECT_EQ(ParseOrDie("4mib"), 4 * kMiB);
  EXPECT_EQ(ParseOrDie("1GIB"), kGiB);
}

TEST(ParseSizeTest, GarbageIsInvalidArgumentNamingTheText) {
  for (std::string_view text :
       {"", "K", "-1", "+1", " 1", "1 ", "1.5G", "1X", "1KiBB", "1Ki", "1iB",
        "0x10", "1KB5", "12 MiB", "abc"}) {
    Result<std::uint64_t> value = ParseSize(text);
    ASSERT_FALSE(value.ok()) << "'" << text << "' was accepted";
    EXPECT_EQ(value.status().code(), Code::kInvalidArgument);
    std::string quoted = "'";
    quoted.append(text).append("'");
    EXPECT_NE(value.status().message().find(quoted), std::string::npos)
        << value.status().message();
  }
}

TEST(ParseSizeTest, OverflowIsInvalidArgument) {
  for (std::string_view text :
       {"18446744073709551616", "99999999999999999999999", "16E", "16777216T",
        "17179869184G"}) {
    Result<std::uint64_t> value = ParseSize(text);
    ASSERT_FALSE(value.ok()) << text << " was accepted";
    EXPECT_EQ(value.status().code(), Code::kInvalidArgument);
  }
}

TEST(FormatSizeTest, WholeMultiplesHaveNoFraction) {
  EXPECT_EQ(FormatSize(0), "0 B");
  EXPECT_EQ(FormatSize(512), "512 B");
  EXPECT_EQ(FormatSize(1023), "1023 B");
  EXPECT_EQ(FormatSize(64 * kKiB), "64 KiB");
  EXPECT_EQ(FormatSize(4 * kMiB), "4 MiB");
  EXPECT_EQ(FormatSize(kGiB), "1 GiB");
  EXPECT_EQ(FormatSize(2 * kTiB), "2 TiB");
}

TEST(FormatSizeTest, OtherSizesRoundToOneDecimal) {
  EXPECT_EQ(FormatSize(kGiB + kGiB / 2), "1.5 GiB");
  EXPECT_EQ(FormatSize(1025), "1.0 KiB");
  EXPECT_EQ(FormatSize(1536 + 51), "1.5 KiB");
  EXPECT_EQ(FormatSize(1536 + 52), "1.6 KiB");  // 1.5508 rounds up
  EXPECT_EQ(FormatSize(kMiB - 1), "1.0 MiB");   // not "1024.0 KiB"
  EXPECT_EQ(FormatSize(UINT64_MAX), "16.0 EiB");
}

TEST(FormatSizeTest, RoundTripsThroughParseSizeForWholeMultiples) {
  for (std::uint64_t size : {kKiB, 64 * kKiB, 3 * kMiB, 7 * kGiB, 5 * kTiB}) {
    std::string text = FormatSize(size);
    text.erase(text.find(' '), 1);
    EXPECT_EQ(ParseOrDie(text), size) << text;
  }
}

}  // namespace
}  // namespace blkrep::core
