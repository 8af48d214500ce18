#include "core/hash.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <string_view>
#include <vector>

namespace blkrep::core {
namespace {

std::vector<std::byte> Bytes(std::string_view text) {
  std::vector<std::byte> bytes(text.size());
  for (std::size_t i = 0; i < text.size(); ++i)
    bytes[i] = static_cast<std::byte>(text[i]);
  return bytes;
}

TEST(HashTest, Xxh3OfEmptyInputIsTheReferenceValue) {
  EXPECT_EQ(Xxh3_64(std::span<const std::byte>()), 0x2D06800538D394C2ull);
  EXPECT_EQ(Xxh3_64(nullptr, 0), 0x2D06800538D394C2ull);
}

TEST(HashTest, SpanAndPointerOverloadsAgree) {
  const std::vector<std::byte> data = Bytes("blkrep block");
  EXPECT_EQ(Xxh3_64(data), Xxh3_64(data.data(), data.size()));
}

TEST(HashTest, ChangingOneByteChangesTheHash) {
  std::vector<std::byte> data(65536, std::byte{7});
  const std::uint64_t before64 = Xxh3_64(data);
  const Hash128 before128 = Xxh3_128(data);
  data[40000] ^= std::byte{1};
  EXPECT_NE(Xxh3_64(data), before64);
  EXPECT_NE(Xxh3_128(data), before128);
}

TEST(HashTest, HashBlocksHashesEachBlockAndAShortLastBlock) {
  std::vector<std::byte> data(2 * 4096 + 100);
  for (std::size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<std::byte>(i * 31 + i / 251);
  std::vector<Hash128> hashes(3);
  HashBlocks(data, 4096, hashes);
  const std::span<const std::byte> all(data);
  EXPECT_EQ(hashes[0], Xxh3_128(all.subspan(0, 4096)));
  EXPECT_EQ(hashes[1], Xxh3_128(all.subspan(4096, 4096)));
  EXPECT_EQ(hashes[2], Xxh3_128(all.subspan(8192, 100)));
  EXPECT_NE(hashes[0], hashes[1]);
}

TEST(HashTest, HashBlocksOfExactMultipleHasNoExtraBlock) {
  std::vector<std::byte> data(3 * 512, std::byte{1});
  std::vector<Hash128> hashes(3);
  HashBlocks(data, 512, hashes);
  EXPECT_EQ(hashes[0], hashes[2]);
  EXPECT_EQ(hashes[2],
            Xxh3_128(std::span<const std::byte>(data).subspan(1024)));
}

}  // namespace
}  // namespace blkrep::core
