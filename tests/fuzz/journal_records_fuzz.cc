// Fuzz target: the record framing (RecordScanner) and every payload decoder.
//
// Each input is used three ways:
//   1. as a journal image: RecordScanner from offset 0, and from kHeaderBytes
//      when the input is that large (first sequence from the header if it
//      decodes), every record it accepts decoded by its type's decoder;
//   2. as a payload for every decoder (DecodeCheckpointBegin … DecodeSeal);
//   3. as a recipe for well-framed records (type, epoch, payload taken from
//      the input, framed with AppendRecord), then one corruption (none, a
//      cut, or a changed byte), scanned.
// Invariants:
//   - decoders fail only with kCorruption; what they accept re-encodes to
//     the same bytes (BITS: to the same blocks);
//   - the scanner accepts only whole, aligned, contiguous records, each of
//     which re-frames to exactly its bytes;
//   - records untouched by the corruption are all returned, a clean image
//     ends with kEnd, and a cut never yields kRecord for the cut record.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/journal_images.h"
#include "tracker/journal_format.h"

namespace blkrep::fuzz {
namespace {

namespace jf = tracker::journal_format;
using Outcome = jf::RecordScanner::Outcome;

template <typename T>
bool DecodedOk(const core::Result<T>& result, const char* what) {
  if (result.ok()) return true;
  BLKREP_FUZZ_CHECK(result.status().code() == core::Code::kCorruption,
                    std::string(what) + " failed with a code other than kCorruption: " +
                        result.status().ToString());
  return false;
}

bool SameBytes(const std::vector<std::byte>& a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Decodes `payload` as a record of `type`; what decodes must re-encode.
template <typename T, typename Decode>
void RoundTrip(std::span<const std::byte> payload, Decode decode, const char* what) {
  core::Result<T> decoded = decode(payload);
  if (!DecodedOk(decoded, what)) return;
  BLKREP_FUZZ_CHECK(SameBytes(jf::Encode(decoded.value()), payload),
                    std::string(what) + " does not re-encode to the bytes it decoded");
}

void RoundTripBits(std::span<const std::byte> payload) {
  core::Result<jf::Bits> decoded = jf::DecodeBits(payload);
  if (!DecodedOk(decoded, "DecodeBits")) return;
  const jf::Bits& bits = decoded.value();
  BLKREP_FUZZ_CHECK(bits.block_count >= 1 && bits.block_count <= jf::kMaxBitsRecordBlocks,
                    "DecodeBits accepted a bad block count");
  // Runs are absolute, sorted, inside [first_block, first_block + count).
  std::vector<std::uint64_t> words((bits.block_count + 63) / 64, 0);
  std::uint64_t previous_end = bits.first_block;
  for (auto [first, count] : bits.runs) {
    BLKREP_FUZZ_CHECK(count > 0 && first >= previous_end &&
                          first - bits.first_block + count <= bits.block_count,
                      "DecodeBits produced a run out of order or out of range");
    previous_end = first + count;
    for (std::uint64_t b = first - bits.first_block; b < first - bits.first_block + count; ++b) {
      words[b / 64] |= std::uint64_t{1} << (b % 64);
    }
  }
  // Re-encode relative to block 0, decode again: the same set of blocks.
  std::vector<std::byte> again = jf::EncodeBits(bits.kind, bits.target_id, 0, bits.block_count, words);
  core::Result<jf::Bits> redecoded = jf::DecodeBits(again);
  BLKREP_FUZZ_CHECK(redecoded.ok(), "EncodeBits output does not decode: " +
                                        redecoded.status().ToString());
  std::vector<std::uint64_t> words_again(words.size(), 0);
  for (auto [first, count] : redecoded.value().runs) {
    for (std::uint64_t b = first; b < first + count; ++b) words_again[b / 64] |= std::uint64_t{1} << (b % 64);
  }
  BLKREP_FUZZ_CHECK(words == words_again, "BITS re-encoding changed the set of blocks");
  BLKREP_FUZZ_CHECK(redecoded.value().kind == bits.kind &&
                        redecoded.value().target_id == bits.target_id,
                    "BITS re-encoding changed the set or target");
}

void DecodePayload(jf::RecordType type, std::span<const std::byte> payload) {
  switch (type) {
    case jf::RecordType::kCheckpointBegin:
      RoundTrip<jf::CheckpointBegin>(payload, jf::DecodeCheckpointBegin, "DecodeCheckpointBegin");
      break;
    case jf::RecordType::kCheckpointEnd:
      RoundTrip<jf::CheckpointEnd>(payload, jf::DecodeCheckpointEnd, "DecodeCheckpointEnd");
      break;
    case jf::RecordType::kTarget:
      RoundTrip<jf::TargetRecord>(payload, jf::DecodeTarget, "DecodeTarget");
      break;
    case jf::RecordType::kTargetRemove:
      RoundTrip<jf::TargetRemove>(payload, jf::DecodeTargetRemove, "DecodeTargetRemove");
      break;
    case jf::RecordType::kBits: RoundTripBits(payload); break;
    case jf::RecordType::kAlSwap:
      RoundTrip<jf::AlSwap>(payload, jf::DecodeAlSwap, "DecodeAlSwap");
      break;
    case jf::RecordType::kFreezeBegin:
      RoundTrip<jf::FreezeBegin>(payload, jf::DecodeFreezeBegin, "DecodeFreezeBegin");
      break;
    case jf::RecordType::kFreezeEnd:
      RoundTrip<jf::FreezeEnd>(payload, jf::DecodeFreezeEnd, "DecodeFreezeEnd");
      break;
    case jf::RecordType::kCommit:
    case jf::RecordType::kAbort:
      RoundTrip<jf::CycleEnd>(payload, jf::DecodeCycleEnd, "DecodeCycleEnd");
      break;
    case jf::RecordType::kResyncRequired:
      RoundTrip<jf::ResyncRequired>(payload, jf::DecodeResyncRequired, "DecodeResyncRequired");
      break;
    case jf::RecordType::kSeal:
      RoundTrip<jf::Seal>(payload, jf::DecodeSeal, "DecodeSeal");
      break;
  }
}

// Scans `file` from `start`; checks every accepted record. Returns the
// records accepted (their offsets) and the final outcome.
struct ScanResult {
  std::vector<std::uint64_t> offsets;
  Outcome last = Outcome::kEnd;
};

ScanResult Scan(std::span<const std::byte> file, std::uint64_t start, std::uint64_t first_sequence) {
  ScanResult result;
  jf::RecordScanner scanner(file, start, first_sequence);
  jf::Record record;
  std::uint64_t expected_offset = start;
  std::uint64_t expected_sequence = first_sequence;
  for (;;) {
    Outcome outcome = scanner.Next(&record);
    if (outcome != Outcome::kRecord) {
      result.last = outcome;
      BLKREP_FUZZ_CHECK(scanner.good_end_offset() == expected_offset,
                        "good_end_offset is not the end of the last good record");
      BLKREP_FUZZ_CHECK(outcome != Outcome::kEnd || expected_offset >= file.size(),
                        "kEnd before the end of the file");
      BLKREP_FUZZ_CHECK(outcome == Outcome::kEnd || !scanner.error().empty(),
                        "a bad record without an error message");
      return result;
    }
    BLKREP_FUZZ_CHECK(record.offset_bytes == expected_offset, "records are not contiguous");
    BLKREP_FUZZ_CHECK(record.sequence == expected_sequence, "record sequence skipped");
    BLKREP_FUZZ_CHECK(record.size_bytes == jf::RecordBytes(record.payload.size()) &&
                          record.size_bytes % jf::kRecordAlignmentBytes == 0 &&
                          record.offset_bytes + record.size_bytes <= file.size(),
                      "record size is wrong");
    BLKREP_FUZZ_CHECK(record.payload.size() <= jf::kMaxPayloadBytes, "payload over the cap");
    std::vector<std::byte> framed;
    jf::AppendRecord(framed, record.type, record.sequence, record.epoch, record.payload);
    BLKREP_FUZZ_CHECK(SameBytes(framed, file.subspan(record.offset_bytes, record.size_bytes)),
                      "an accepted record does not re-frame to its own bytes");
    DecodePayload(record.type, record.payload);
    result.offsets.push_back(record.offset_bytes);
    expected_offset += record.size_bytes;
    ++expected_sequence;
  }
}

void ScanRaw(std::span<const std::byte> file) {
  (void)Scan(file, 0, 1);
  if (file.size() >= jf::kHeaderBytes) {
    std::uint64_t first_sequence = 1;
    core::Result<jf::FileHeader> header = jf::DecodeHeader(file);
    if (header.ok()) first_sequence = header.value().first_sequence;
    (void)Scan(file, jf::kHeaderBytes, first_sequence);
  }
}

void DecodeAll(std::span<const std::byte> bytes) {
  for (std::uint8_t t = 1; t <= jf::kMaxRecordType; ++t) {
    DecodePayload(static_cast<jf::RecordType>(t), bytes);
  }
}

// Builds well-framed records from the input, corrupts at most one spot, and
// checks what the scanner makes of it.
void ScanBuilt(InputReader& in) {
  std::vector<std::byte> file;
  std::uint64_t start = in.Bool() ? jf::kHeaderBytes : 0;
  file.resize(start, std::byte{0});
  std::uint64_t first_sequence = in.InterestingU64();
  std::vector<std::uint64_t> ends;  // end offset of each record
  std::uint64_t sequence = first_sequence;
  for (int i = 0; i < 32 && !in.empty(); ++i) {
    std::uint8_t type = static_cast<std::uint8_t>(1 + in.Below(jf::kMaxRecordType));
    std::uint64_t epoch = in.U8();
    std::size_t length = in.U16() % 512;
    std::span<const std::byte> payload = in.Bytes(length);
    jf::AppendRecord(file, static_cast<jf::RecordType>(type), sequence++, epoch, payload);
    ends.push_back(file.size());
  }
  // 0 none, 1 a cut, 2 a changed byte, 3 a changed framing field of one
  // record with its header checksum recomputed (reserved bytes, type,
  // payload length, sequence: what only the field checks catch).
  std::uint8_t corruption = in.U8() % 4;
  std::uint64_t position = file.size() > start ? start + in.Below(file.size() - start) : start;
  if (corruption == 1) {
    file.resize(position);
  } else if (corruption == 2 && position < file.size()) {
    std::uint8_t delta = in.U8();
    file[position] ^= static_cast<std::byte>(delta == 0 ? 1 : delta);
  } else if (corruption == 3 && !ends.empty()) {
    std::size_t index = static_cast<std::size_t>(in.Below(ends.size()));
    std::uint64_t record_start = index == 0 ? start : ends[index - 1];
    std::size_t field = static_cast<std::size_t>(4 + in.Below(20));  // bytes 4..23
    file[record_start + field] = static_cast<std::byte>(in.U8());
    if (in.Bool()) {  // a payload length, often past the cap
      core::StoreLe32(&file[record_start + 8], static_cast<std::uint32_t>(in.InterestingU64()));
    }
    core::StoreLe64(&file[record_start + 40], core::Xxh3_64(&file[record_start], 40));
    position = record_start;
  }
  ScanResult result = Scan(file, start, first_sequence);
  std::size_t intact = ends.size();
  if (corruption != 0) {
    intact = 0;
    while (intact < ends.size() && ends[intact] <= position) ++intact;
  }
  if (corruption == 1) {
    BLKREP_FUZZ_CHECK(result.offsets.size() == intact,
                      "a cut file did not yield exactly the records before the cut");
  } else {
    BLKREP_FUZZ_CHECK(result.offsets.size() >= intact, "a record before the corruption was lost");
  }
  if (corruption == 0) {
    BLKREP_FUZZ_CHECK(result.last == Outcome::kEnd, "a clean image did not end with kEnd");
  } else if (corruption == 2 && intact < ends.size()) {
    BLKREP_FUZZ_CHECK(result.offsets.size() == intact && result.last != Outcome::kEnd,
                      "a changed byte went unnoticed");
  }
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  for (const auto& image : BaseImages()) {
    seeds.push_back(ToU8(image));
    // Each record's payload alone, for the decoders.
    std::optional<RecordImage> split = SplitImage(image);
    for (const auto& rec : split->records) seeds.push_back(ToU8(rec.payload));
  }
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  std::span<const std::byte> bytes = AsBytes(data, size);
  ScanRaw(bytes);
  DecodeAll(bytes);
  InputReader in(data, size);
  ScanBuilt(in);
  return 0;
}
