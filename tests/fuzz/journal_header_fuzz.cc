// Fuzz target: journal_format::DecodeHeader, the first gate a journal file
// passes.
//
// Each input is decoded three ways:
//   1. as is (what a reader meets on disk: almost always a checksum or magic
//      failure);
//   2. copied into a 4096-byte header (zero-padded or cut) with a correct
//      checksum, so the field validators behind the checksum are reached;
//   3. as a list of (offset, byte) edits of a valid header, checksum fixed,
//      so single-field changes of an otherwise good header are explored.
// Invariants: decoding never crashes; a header that decodes re-encodes to
// exactly the same 4096 bytes (EncodeHeader is the inverse of DecodeHeader);
// what it accepts obeys the documented limits.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/bytes.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/journal_images.h"
#include "tracker/journal_format.h"

namespace blkrep::fuzz {
namespace {

namespace jf = tracker::journal_format;

jf::FileHeader SampleHeader() {
  jf::FileHeader h;
  h.block_size_bytes = 4096;
  h.volume_size_bytes = kVolumeBytes;
  h.extent_size_bytes = 64 * 1024;
  h.al_slots = 4;
  h.cap_bytes = 1 << 20;
  h.first_sequence = 1;
  h.generation = 1;
  h.created_unix_ns = 1700000000000000000;
  h.volume_kind = 1;
  h.dev = 2049;
  h.ino = 12;
  h.guest = "vm100";
  h.volume_name = "disk0";
  h.volume_path = "/srv/disk0.img";
  h.probe_type = "ext4";
  h.uuid = "0b4f1d2e-5b8a-4c47-9d7e-3f1b2a6c8d90";
  return h;
}

void CheckDecoded(std::span<const std::byte> bytes) {
  core::Result<jf::FileHeader> decoded = jf::DecodeHeader(bytes);
  if (!decoded.ok()) {
    BLKREP_FUZZ_CHECK(decoded.status().code() == core::Code::kCorruption,
                      "DecodeHeader failed with a code other than kCorruption: " +
                          decoded.status().ToString());
    return;
  }
  const jf::FileHeader& h = decoded.value();
  BLKREP_FUZZ_CHECK(h.block_size_bytes >= jf::kMinBlockSizeBytes &&
                        h.block_size_bytes <= jf::kMaxBlockSizeBytes,
                    "accepted block size out of range");
  BLKREP_FUZZ_CHECK(h.extent_size_bytes >= h.block_size_bytes &&
                        h.extent_size_bytes <= jf::kMaxExtentSizeBytes,
                    "accepted extent size out of range");
  BLKREP_FUZZ_CHECK(h.al_slots >= 1 && h.al_slots <= jf::kMaxAlSlots, "accepted AL slots");
  BLKREP_FUZZ_CHECK(h.volume_size_bytes >= 1 && h.volume_size_bytes <= jf::kMaxVolumeSizeBytes,
                    "accepted volume size out of range");
  BLKREP_FUZZ_CHECK(jf::IsValidName(h.guest) && jf::IsValidName(h.volume_name),
                    "accepted an invalid name");
  std::vector<std::byte> again = jf::EncodeHeader(h);
  BLKREP_FUZZ_CHECK(again.size() == jf::kHeaderBytes, "EncodeHeader size");
  BLKREP_FUZZ_CHECK(std::equal(again.begin(), again.end(), bytes.begin()),
                    "a decoded header does not re-encode to the same bytes");
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  seeds.push_back(ToU8(jf::EncodeHeader(SampleHeader())));
  for (const auto& image : BaseImages()) {
    seeds.push_back(ToU8(std::span(image).first(jf::kHeaderBytes)));
  }
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  namespace jf = blkrep::tracker::journal_format;

  // 1. As found on disk.
  CheckDecoded(AsBytes(data, size));

  // 2. The input as a header with a correct checksum.
  std::vector<std::byte> padded(jf::kHeaderBytes, std::byte{0});
  std::copy_n(AsBytes(data, size).begin(), std::min(size, jf::kHeaderBytes), padded.begin());
  FixHeaderChecksum(padded);
  CheckDecoded(padded);

  // 3. Edits of a valid header: (u16 offset, u8 value) pairs.
  static const std::vector<std::byte> kValid = jf::EncodeHeader(SampleHeader());
  std::vector<std::byte> edited = kValid;
  InputReader in(data, size);
  for (int i = 0; i < 64 && !in.empty(); ++i) {
    std::size_t offset = in.U16() % (jf::kHeaderBytes - 8);
    edited[offset] = static_cast<std::byte>(in.U8());
  }
  FixHeaderChecksum(edited);
  CheckDecoded(edited);
  return 0;
}
