// Fuzz target for the receiver's staging index reader (receiver/staging.h,
// docs/replica-format.md "The index"): StagingFiles::Open (header, scan to
// the last valid record), ForEachRecord, LoadCandidates and TruncateToValid,
// over an in-memory file system.
//
// Input: u8 mode; the staging the caller expects (staging id, block size —
// sometimes outside the wire's caps, as a corrupt state file would give it),
// the volume's block count (small, or edge values up to 2^64 - 1, as a
// corrupt state file could claim) and the attempt limit; then either
//   raw:        the index file is a correct header followed by the rest of
//               the input (or, rarely, the input alone), or
//   structured: a correct header and up to 24 records built from the input
//               (kinds, attempts, block ranges and slots near the volume's
//               edges and the format's caps, reserved bytes, hash counts)
//               with a correct checksum, so the fuzzer reaches the field
//               checks behind it; then optionally a bit flipped (checksum
//               recomputed or not), the file cut, or garbage appended.
// Invariants, against a reference reader written here from the document:
//   - Open fails exactly when the block size is out of the caps or the
//     header is not the expected one, and only with kCorruption;
//   - the log ends at the first record the document calls invalid:
//     valid_bytes, has_torn_tail, next_slot and the records ForEachRecord
//     gives are the reference's;
//   - LoadCandidates fails (kCorruption) exactly when a record that counts
//     lies outside the volume, else returns the reference's candidates,
//     sorted, one per block, inside the volume — whatever the block count,
//     without memory sized by it (the driver's memory limit catches that);
//   - TruncateToValid leaves exactly the valid records, which a reopen reads
//     again.
#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/memory_file_system.h"
#include "receiver/staging.h"
#include "tests/fuzz/fuzz_util.h"

namespace blkrep::fuzz {
namespace {

using core::Code;
using receiver::IndexRecord;
using receiver::RecordKind;

constexpr std::uint64_t kNoSlot = ~std::uint64_t{0};
constexpr std::uint32_t kIndexMagic = 0x58524B42;   // "BKRX"
constexpr std::uint32_t kRecordMagic = 0x52524B42;  // "BKRR"
constexpr std::uint64_t kHashCap = 65536;
constexpr std::uint64_t kSlotCap = std::uint64_t{1} << 43;
const char* const kDir = "/g/.staging";
const char* const kIndexPath = "/g/.staging/v.index";
const char* const kDataPath = "/g/.staging/v.data";

std::vector<std::byte> Header(std::uint64_t staging_id, std::uint32_t block_size) {
  std::vector<std::byte> out;
  core::ByteWriter w(out);
  w.U32(kIndexMagic);
  w.U32(1);
  w.U64(staging_id);
  w.U32(block_size);
  w.U32(0);
  w.U64(core::Xxh3_64(out));
  return out;
}

bool BlockSizeRule(std::uint64_t bs) { return bs >= 4096 && bs <= (1U << 20) && (bs & (bs - 1)) == 0; }

// ---- the reference reader (docs/replica-format.md, "Reading") ----

struct RefRecord {
  std::uint64_t offset = 0;
  IndexRecord record;
};

struct RefLog {
  std::vector<RefRecord> records;
  std::uint64_t end = 0;  // of the last valid record
  std::uint64_t next_slot = 0;
};

std::uint64_t Le(std::span<const std::byte> b, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(b[at + static_cast<std::size_t>(i)]) << (8 * i);
  return v;
}

RefLog ReferenceScan(std::span<const std::byte> index) {
  RefLog log;
  std::size_t at = 32;
  for (;;) {
    log.end = at;
    if (index.size() < at || index.size() - at < 40) break;
    std::uint32_t magic = static_cast<std::uint32_t>(Le(index, at, 4));
    std::uint64_t kind = Le(index, at + 4, 1);
    bool reserved_zero = Le(index, at + 5, 1) == 0 && Le(index, at + 6, 2) == 0 && Le(index, at + 12, 4) == 0;
    IndexRecord r;
    r.attempt = static_cast<std::uint32_t>(Le(index, at + 8, 4));
    r.first_block = Le(index, at + 16, 8);
    r.block_count = Le(index, at + 24, 8);
    r.first_slot = Le(index, at + 32, 8);
    if (magic != kRecordMagic || kind < 1 || kind > 4 || !reserved_zero || r.block_count == 0) break;
    r.kind = static_cast<RecordKind>(kind);
    bool hashes = kind == 1 || kind == 3;
    if (hashes && r.block_count > kHashCap) break;
    if (kind == 1 ? (r.first_slot != kNoSlot && r.first_slot >= kSlotCap) : r.first_slot != kNoSlot) break;
    std::uint64_t h = hashes ? r.block_count : 0;
    std::uint64_t size = 40 + 8 * h + 8;
    if (index.size() - at < size) break;
    if (core::Xxh3_64(index.subspan(at, 40 + 8 * h)) != Le(index, at + 40 + 8 * h, 8)) break;
    for (std::uint64_t i = 0; i < h; ++i) r.hashes.push_back(Le(index, at + 40 + 8 * i, 8));
    if (r.kind == RecordKind::kData && r.first_slot != kNoSlot) {
      log.next_slot = std::max(log.next_slot, r.first_slot + r.block_count);
    }
    log.records.push_back({at, std::move(r)});
    at += size;
  }
  return log;
}

bool SameRecord(const IndexRecord& a, const IndexRecord& b) {
  return a.kind == b.kind && a.attempt == b.attempt && a.first_block == b.first_block &&
         a.block_count == b.block_count && a.first_slot == b.first_slot && a.hashes == b.hashes;
}

bool Covers(const IndexRecord& r, std::uint64_t block) {
  return block >= r.first_block && block - r.first_block < r.block_count;
}

// The candidates by the document's rule, block by block (only the blocks of
// data records are looked at, so any volume size is fine). False when a
// record that counts lies outside the volume.
bool ReferenceCandidates(const RefLog& log, std::uint32_t limit, std::uint64_t volume_blocks,
                         std::map<std::uint64_t, receiver::StagedBlock>* out) {
  std::vector<const IndexRecord*> counted;
  for (const RefRecord& r : log.records) {
    if (r.record.attempt >= limit || r.record.kind == RecordKind::kKeep) continue;
    if (r.record.first_block >= volume_blocks || r.record.block_count > volume_blocks - r.record.first_block) {
      return false;
    }
    counted.push_back(&r.record);
  }
  for (std::size_t j = 0; j < counted.size(); ++j) {
    const IndexRecord& r = *counted[j];
    if (r.kind != RecordKind::kData) continue;
    for (std::uint64_t i = 0; i < r.block_count; ++i) {
      std::uint64_t b = r.first_block + i;
      bool later = false;
      for (std::size_t k = j + 1; k < counted.size() && !later; ++k) later = Covers(*counted[k], b);
      if (!later) (*out)[b] = {b, r.hashes[i], r.first_slot == kNoSlot ? kNoSlot : r.first_slot + i};
    }
  }
  return true;
}

// ---- running the reader ----

// `hint`: the block count the records were built around (0: none).
void Check(InputReader& in, std::span<const std::byte> index, std::span<const std::byte> data,
           std::uint64_t header_id, std::uint32_t header_bs, std::uint64_t hint) {
  // What the caller (the state file) says the staging is.
  std::uint64_t open_id = in.U8() % 16 == 15 ? header_id + 1 : header_id;
  std::uint32_t open_bs = header_bs;
  if (in.U8() % 16 == 15) open_bs = static_cast<std::uint32_t>(in.InterestingU64());
  std::uint64_t volume_blocks;
  switch (in.U8() % 4) {
    case 0: volume_blocks = 1 + in.U8(); break;
    case 1: volume_blocks = 1 + in.U16(); break;
    default: volume_blocks = in.InterestingU64(); break;
  }
  if (hint != 0 && in.U8() % 4 != 0) volume_blocks = hint;
  std::uint32_t limit = in.U8() % 8 == 0 ? ~std::uint32_t{0} : in.U8() % 8;

  core::MemoryFileSystem fs;
  fs.SetContents(kIndexPath, std::vector<std::byte>(index.begin(), index.end()));
  fs.SetContents(kDataPath, std::vector<std::byte>(data.begin(), data.end()));
  auto opened = receiver::StagingFiles::Open(fs, kDir, "v", open_id, open_bs);
  std::vector<std::byte> expected_header = Header(open_id, open_bs);
  bool header_ok = BlockSizeRule(open_bs) && index.size() >= 32 &&
                   std::equal(expected_header.begin(), expected_header.end(), index.begin());
  if (!header_ok) {
    BLKREP_FUZZ_CHECK(!opened.ok() && opened.status().code() == Code::kCorruption,
                      "Open accepted a bad block size or header, or failed otherwise: " + opened.status().ToString());
    BLKREP_FUZZ_CHECK(opened.status().message().find('\n') == std::string::npos, "Open error is not one line");
    return;
  }
  BLKREP_FUZZ_CHECK(opened.ok(), "Open refused a good header: " + opened.status().ToString());
  receiver::StagingFiles& files = **opened;

  RefLog ref = ReferenceScan(index);
  BLKREP_FUZZ_CHECK(files.valid_bytes() == ref.end, "the log ends elsewhere than the document says");
  BLKREP_FUZZ_CHECK(files.has_torn_tail() == (ref.end != index.size()), "has_torn_tail is wrong");
  BLKREP_FUZZ_CHECK(files.next_slot() == ref.next_slot, "next_slot is wrong");

  std::size_t n = 0;
  core::Status each = files.ForEachRecord([&](const IndexRecord& r) {
    BLKREP_FUZZ_CHECK(n < ref.records.size(), "ForEachRecord gave a record past the valid ones");
    BLKREP_FUZZ_CHECK(SameRecord(r, ref.records[n].record), "ForEachRecord gave a record other than the file's");
    ++n;
    return core::Status::Ok();
  });
  BLKREP_FUZZ_CHECK(each.ok() && n == ref.records.size(), "ForEachRecord: " + each.ToString());

  std::map<std::uint64_t, receiver::StagedBlock> want;
  bool inside = ReferenceCandidates(ref, limit, volume_blocks, &want);
  core::Result<receiver::StagedBlocks> got = files.LoadCandidates(limit, volume_blocks);
  if (!inside) {
    BLKREP_FUZZ_CHECK(!got.ok() && got.status().code() == Code::kCorruption,
                      "LoadCandidates accepted a record outside the volume: " + got.status().ToString());
  } else {
    BLKREP_FUZZ_CHECK(got.ok(), "LoadCandidates refused a staging inside the volume: " + got.status().ToString());
    BLKREP_FUZZ_CHECK(got->size() == want.size(), "LoadCandidates found another number of staged blocks");
    auto it = want.begin();
    for (const receiver::StagedBlock& b : got->blocks()) {
      BLKREP_FUZZ_CHECK(b.block < volume_blocks, "a staged block outside the volume");
      BLKREP_FUZZ_CHECK(it != want.end() && it->first == b.block && it->second.hash == b.hash &&
                            it->second.slot == b.slot,
                        "LoadCandidates found other staged blocks than the document's rule");
      BLKREP_FUZZ_CHECK(got->Find(b.block) == &b, "StagedBlocks::Find does not find a staged block");
      ++it;
    }
  }

  BLKREP_FUZZ_CHECK(files.TruncateToValid().ok(), "TruncateToValid failed");
  BLKREP_FUZZ_CHECK(fs.Contents(kIndexPath).size() == ref.end, "TruncateToValid left other bytes");
  auto again = receiver::StagingFiles::Open(fs, kDir, "v", open_id, open_bs);
  BLKREP_FUZZ_CHECK(again.ok() && (*again)->valid_bytes() == ref.end && !(*again)->has_torn_tail(),
                    "the truncated index does not read back");
}

// ---- structured indexes ----

struct Builder {
  InputReader& in;
  std::uint64_t volume_blocks_hint;

  std::uint64_t First() {
    std::uint64_t vb = volume_blocks_hint;
    switch (in.U8() % 6) {
      case 0: return 0;
      case 1: return vb - 1;
      case 2: return vb;
      case 3: return in.U8() % vb;
      case 4: return vb - std::min<std::uint64_t>(vb, in.U8());
      default: return in.InterestingU64();
    }
  }
  std::uint64_t Count(std::uint64_t first, bool hashes) {
    std::uint64_t vb = volume_blocks_hint;
    switch (in.U8() % 8) {
      case 0: return 0;
      case 1: case 2: return 1 + in.U8() % 8;
      case 3: return first < vb ? vb - first : 1;
      case 4: return first < vb ? vb - first + 1 : 2;
      case 5: return hashes ? kHashCap + in.U8() % 2 : in.InterestingU64();  // the cap, and one past it
      default: return in.InterestingU64();
    }
  }
  std::uint64_t Slot(bool data) {
    switch (in.U8() % (data ? 6 : 8)) {
      case 0: return in.U8();
      case 1: return kSlotCap - 1;
      case 2: return kSlotCap;
      case 3: return in.InterestingU64();
      default: return kNoSlot;
    }
  }
};

void PutRecord(std::vector<std::byte>& out, InputReader& in, Builder& b, const std::vector<std::uint64_t>& hash_pool) {
  // Most records are well-formed and inside the hinted volume, so logs of
  // many valid records are common; the others probe the edges.
  const bool tame = in.U8() % 4 != 3;
  std::uint8_t kind_pick = in.U8();
  std::uint8_t kind = kind_pick < 240 || tame ? 1 + kind_pick % 4 : static_cast<std::uint8_t>(in.U8() % 8);
  bool hashes = kind == 1 || kind == 3;
  std::uint64_t first = tame ? in.U64() % b.volume_blocks_hint : b.First();
  std::uint64_t count = tame ? std::min<std::uint64_t>(b.volume_blocks_hint - first, 1 + in.U8() % 8)
                             : b.Count(first, hashes);
  std::uint64_t slot = tame ? (kind == 1 && in.Bool() ? in.U8() : kNoSlot) : b.Slot(kind == 1);
  std::uint8_t reserved = in.U8() % 32 == 31 ? static_cast<std::uint8_t>(1 + in.U8() % 3) : 0;
  // A hash per block (big counts only rarely: each costs time), or a wrong number.
  std::uint64_t h = hashes ? count : 0;
  if (h > 4096 && in.U8() % 8 != 0) h = in.U8();
  if (h > kHashCap + 1) h = in.U8();
  if (in.U8() % 32 == 31) h += 1;
  std::size_t start = out.size();
  core::ByteWriter w(out);
  w.U32(in.U8() % 64 == 63 ? kRecordMagic ^ 1 : kRecordMagic);
  w.U8(kind);
  w.U8(reserved == 1 ? 1 : 0);
  w.U16(reserved == 2 ? 1 : 0);
  w.U32(in.U8() % 6);
  w.U32(reserved == 3 ? 1 : 0);
  w.U64(first);
  w.U64(count);
  w.U64(slot);
  for (std::uint64_t i = 0; i < h; ++i) w.U64(hash_pool[(i + in.U8()) % hash_pool.size()]);
  std::uint64_t sum = core::Xxh3_64(std::span(out).subspan(start));
  if (in.U8() % 64 == 63) sum ^= 1;
  w.U64(sum);
}

void Structured(InputReader& in) {
  std::uint64_t id = 1 + in.U8() % 4;
  std::uint32_t bs = 4096U << (in.U8() % 9);
  std::uint64_t hint = in.U8() % 2 ? 1 + in.U8() : 1 + in.InterestingU64() % (std::uint64_t{1} << 48);
  std::vector<std::uint64_t> pool = {0, 1, in.U64(), in.U64()};
  std::vector<std::byte> index = Header(id, bs);
  Builder b{in, hint};
  int records = in.U8() % 25;
  for (int i = 0; i < records && !in.empty(); ++i) PutRecord(index, in, b, pool);
  switch (in.U8() % 8) {
    case 1:
      if (index.size() > 32) index[32 + in.U32() % (index.size() - 32)] ^= std::byte(1U << (in.U8() % 8));
      break;
    case 2: index.resize(in.U32() % (index.size() + 1)); break;
    case 3: {
      std::span<const std::byte> extra = in.Bytes(in.U8() % 48);
      index.insert(index.end(), extra.begin(), extra.end());
      break;
    }
    default: break;
  }
  std::vector<std::byte> data(in.U8());
  Check(in, index, data, id, bs, hint);
}

void Raw(InputReader& in, bool with_header) {
  std::uint64_t id = 1 + in.U8() % 4;
  std::uint32_t bs = 4096U << (in.U8() % 9);
  std::vector<std::byte> index = with_header ? Header(id, bs) : std::vector<std::byte>{};
  // The tail of the input after the parameters Check reads is the index body.
  std::uint8_t params[8];
  for (std::uint8_t& p : params) p = in.U8();
  std::span<const std::byte> body = in.Bytes(in.remaining());
  index.insert(index.end(), body.begin(), body.end());
  InputReader params_in(params, sizeof(params));
  Check(params_in, index, {}, id, bs, 0);
}

std::vector<std::uint8_t> Bytes(std::span<const std::byte> b) { return ToU8(b); }

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  // Raw: the records of the worked example of docs/replica-format.md (a data
  // record of blocks 2, 3 in slots 0, 1, then a zero record of 10 blocks).
  std::vector<std::byte> body;
  IndexRecord data;
  data.kind = RecordKind::kData;
  data.attempt = 2;
  data.first_block = 2;
  data.block_count = 2;
  data.first_slot = 0;
  data.hashes = {0x88a30670e919701eULL, 0x0df704f8066c4e09ULL};
  receiver::EncodeIndexRecord(data, body);
  IndexRecord zero;
  zero.kind = RecordKind::kZero;
  zero.attempt = 2;
  zero.first_block = 10;
  zero.block_count = 10;
  receiver::EncodeIndexRecord(zero, body);
  // mode 1 (raw, header), id 2, 4 KiB, then params: same id, same block
  // size, 256 blocks (case 0: 1 + 255), limit 3.
  std::vector<std::uint8_t> raw = {1, 1, 0, 1, 1, 0, 255, 1, 3, 0, 0};
  std::vector<std::uint8_t> records = Bytes(body);
  raw.insert(raw.end(), records.begin(), records.end());
  seeds.push_back(raw);
  // Raw with a torn tail.
  std::vector<std::uint8_t> torn = raw;
  torn.resize(torn.size() - 5);
  seeds.push_back(torn);
  // Structured: a few records of each kind.
  std::vector<std::uint8_t> s = {0, 1, 0, 1, 100, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 6};
  for (std::uint8_t k = 0; k < 6; ++k) {
    s.insert(s.end(), {k, 3, 7, 1, 3, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0});
  }
  seeds.push_back(s);
  seeds.push_back({0});
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  InputReader in(data, size);
  std::uint8_t mode = in.U8();
  if (mode & 1) {
    Raw(in, (mode & 2) == 0 || (mode & 4) == 0);  // rarely without a header
  } else {
    Structured(in);
  }
  return 0;
}
