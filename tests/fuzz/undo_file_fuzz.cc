// Fuzz target for the recovery points' gates (receiver/recovery_points.h,
// docs/replica-format.md "Recovery points"): DecodeUndoMeta, the metadata
// of an undo file .points/ID.undo, and DecodePointsHead, .points/head.
//
// Input: u8 mode, then either
//   raw:        u32 extra data bytes, then the metadata as found on disk
//               (the file is that metadata plus the extra bytes), or
//   structured: a recipe for an undo file the receiver could have written
//               (1-4 volumes inside the wire's caps, sorted extents inside
//               them), encoded, then optionally a byte set, a bit flipped,
//               the bytes cut or the file size changed, the checksum
//               recomputed (mostly), so the field checks behind it are
//               reached; or a points head, likewise.
// Invariants:
//   - a decoder fails only with kCorruption, one line, starting "undo file: "
//     or "points head: ";
//   - what DecodeUndoMeta accepts keeps the gate's promises, re-checked
//     here: names, geometry, extents inside their volume and in order, one
//     hash per extent block, every extent's bytes inside the file and the
//     file exactly metadata plus data; re-encoding gives the input back;
//   - an unmutated structured file is accepted and comes back equal.
#include <set>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "receiver/recovery_points.h"
#include "tests/fuzz/fuzz_util.h"

namespace blkrep::fuzz {
namespace {

using core::Code;
using receiver::PointsHead;
using receiver::UndoExtent;
using receiver::UndoMeta;

bool NameRule(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

std::uint64_t RangeBytes(std::uint64_t size, std::uint32_t bs, std::uint64_t first, std::uint64_t count) {
  std::uint64_t start = first * bs, end = std::min(size, (first + count) * bs);
  return end > start ? end - start : 0;
}

void CheckError(const core::Status& s, const std::string& prefix) {
  BLKREP_FUZZ_CHECK(s.code() == Code::kCorruption, "failed with a code other than kCorruption: " + s.ToString());
  BLKREP_FUZZ_CHECK(s.message().rfind(prefix, 0) == 0, "error does not say what it is about: " + s.message());
  BLKREP_FUZZ_CHECK(s.message().find('\n') == std::string::npos, "error is not one line");
}

bool DecodeAndCheck(std::span<const std::byte> meta, std::uint64_t file_size) {
  core::Result<UndoMeta> m = receiver::DecodeUndoMeta(meta, file_size);
  if (!m.ok()) {
    CheckError(m.status(), "undo file: ");
    return false;
  }
  BLKREP_FUZZ_CHECK(m->point_id >= 1 && m->next_point_id > m->point_id, "accepted bad point ids");
  BLKREP_FUZZ_CHECK(m->retain >= 1 && m->retain <= 24, "accepted retain out of 1..24");
  BLKREP_FUZZ_CHECK(!m->volumes.empty() && m->volumes.size() <= 4096, "accepted a bad volume count");
  std::set<std::string> names;
  for (const receiver::PointVolume& v : m->volumes) {
    BLKREP_FUZZ_CHECK(NameRule(v.name) && names.insert(v.name).second, "accepted a bad or repeated name");
    const std::uint32_t bs = v.block_size_bytes;
    BLKREP_FUZZ_CHECK(bs >= 4096 && bs <= (1U << 20) && (bs & (bs - 1)) == 0, "accepted a bad block size");
    BLKREP_FUZZ_CHECK(v.size_bytes >= 1 && v.size_bytes <= (std::uint64_t{1} << 60), "accepted a bad size");
    BLKREP_FUZZ_CHECK(v.epoch != 0, "accepted epoch 0");
  }
  std::uint64_t hashes = 0, data = m->meta_bytes;
  for (std::size_t i = 0; i < m->extents.size(); ++i) {
    const UndoExtent& e = m->extents[i];
    BLKREP_FUZZ_CHECK(e.volume < m->volumes.size(), "accepted an extent of no volume");
    const receiver::PointVolume& v = m->volumes[e.volume];
    const std::uint64_t blocks = (v.size_bytes + v.block_size_bytes - 1) / v.block_size_bytes;
    BLKREP_FUZZ_CHECK(e.block_count >= 1 && e.first_block < blocks && e.block_count <= blocks - e.first_block,
                      "accepted an extent outside its volume");
    if (i > 0) {
      const UndoExtent& p = m->extents[i - 1];
      BLKREP_FUZZ_CHECK(p.volume < e.volume || (p.volume == e.volume && p.first_block + p.block_count <= e.first_block),
                        "accepted extents out of order or overlapping");
    }
    BLKREP_FUZZ_CHECK(e.first_hash == hashes && e.data_offset == data, "extent offsets are not consecutive");
    hashes += e.block_count;
    data += RangeBytes(v.size_bytes, v.block_size_bytes, e.first_block, e.block_count);
    BLKREP_FUZZ_CHECK(data <= file_size, "an extent's bytes lie past the end of the file");
  }
  BLKREP_FUZZ_CHECK(hashes == m->hashes.size(), "not one hash per extent block");
  BLKREP_FUZZ_CHECK(data == file_size, "the file is not exactly metadata plus data");
  std::vector<std::byte> again = receiver::EncodeUndoMeta(*m);
  BLKREP_FUZZ_CHECK(again.size() == meta.size() && std::equal(again.begin(), again.end(), meta.begin()),
                    "accepted a non-canonical encoding");
  return true;
}

UndoMeta Plausible(InputReader& in) {
  UndoMeta m;
  m.point_id = 1 + in.U8();
  m.next_point_id = m.point_id + 1 + in.U8() % 3;
  m.commit_time = in.U64();
  m.attempt = in.U32();
  m.retain = 1 + in.U8() % 24;
  int count = 1 + in.U8() % 4;
  for (int i = 0; i < count; ++i) {
    receiver::PointVolume v;
    v.name = "disk" + std::to_string(i);
    v.block_size_bytes = 4096U << (in.U8() % 9);
    v.size_bytes = in.Bool() ? 1 + in.U16() : v.block_size_bytes * (1 + std::uint64_t{in.U8()}) - in.U8() % 2;
    v.epoch = 1 + in.U8();
    const std::uint64_t blocks = (v.size_bytes + v.block_size_bytes - 1) / v.block_size_bytes;
    std::uint64_t next = in.U8() % blocks;
    int extents = in.U8() % 4;
    for (int e = 0; e < extents && next < blocks; ++e) {
      std::uint64_t n = 1 + in.U8() % std::min<std::uint64_t>(8, blocks - next);
      m.extents.push_back({static_cast<std::uint32_t>(i), next, n, 0, 0});
      next += n + in.U8() % 3;
    }
    m.volumes.push_back(v);
  }
  for (const UndoExtent& e : m.extents) {
    for (std::uint64_t b = 0; b < e.block_count; ++b) m.hashes.push_back(in.U64());
  }
  return m;
}

void FixChecksum(std::vector<std::byte>& bytes) {
  if (bytes.size() < 8) return;
  std::uint64_t sum = core::Xxh3_64(std::span(bytes).first(bytes.size() - 8));
  core::StoreLe64(bytes.data() + bytes.size() - 8, sum);
}

void StructuredUndo(InputReader& in) {
  UndoMeta m = Plausible(in);
  std::vector<std::byte> bytes = receiver::EncodeUndoMeta(m);
  std::uint64_t file_size = m.meta_bytes + m.data_bytes;
  bool mutated = true;
  switch (in.U8() % 6) {
    case 1: bytes[in.U32() % bytes.size()] = static_cast<std::byte>(in.U8()); break;
    case 2: bytes[in.U32() % bytes.size()] ^= static_cast<std::byte>(1U << (in.U8() % 8)); break;
    case 3: bytes.resize(in.U32() % bytes.size()); break;
    case 4: file_size = in.InterestingU64(); break;
    case 5: core::StoreLe64(bytes.data() + 8 * (1 + in.U8() % 7), in.InterestingU64()); break;
    default: mutated = false; break;
  }
  if (in.U8() % 8 != 7) FixChecksum(bytes);
  const bool accepted = DecodeAndCheck(bytes, file_size);
  if (!mutated) BLKREP_FUZZ_CHECK(accepted, "refused an undo file the receiver could write");
}

void Head(InputReader& in, bool raw) {
  std::vector<std::byte> bytes;
  if (raw) {
    std::span<const std::byte> b = in.Bytes(in.remaining());
    bytes.assign(b.begin(), b.end());
  } else {
    PointsHead h;
    h.point_id = in.U8();
    h.next_id = h.point_id + 1 + in.U8();
    h.commit_time = in.U64();
    h.attempt = in.U32();
    h.rollback_to = in.Bool() ? in.U8() % h.next_id : 0;
    bytes = receiver::EncodePointsHead(h);
    if (in.Bool()) bytes[in.U8() % bytes.size()] ^= static_cast<std::byte>(1U << (in.U8() % 8));
    if (in.Bool()) FixChecksum(bytes);
  }
  core::Result<PointsHead> h = receiver::DecodePointsHead(bytes);
  if (!h.ok()) {
    CheckError(h.status(), "points head: ");
    return;
  }
  BLKREP_FUZZ_CHECK(h->next_id > h->point_id && h->rollback_to < h->next_id, "accepted a bad head");
  BLKREP_FUZZ_CHECK(receiver::EncodePointsHead(*h) == bytes, "accepted a non-canonical head");
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  UndoMeta m;
  m.point_id = 3;
  m.next_point_id = 4;
  m.commit_time = 1718000000;
  m.attempt = 5;
  m.retain = 2;
  m.volumes.push_back({"disk0", 3, 1 << 20, 4096});
  m.extents.push_back({0, 2, 2, 0, 0});
  m.hashes = {1, 2};
  std::vector<std::uint8_t> raw = {1, 0, 0x20, 0, 0};  // raw, 8192 data bytes
  std::vector<std::uint8_t> enc = ToU8(receiver::EncodeUndoMeta(m));
  raw.insert(raw.end(), enc.begin(), enc.end());
  seeds.push_back(raw);
  seeds.push_back({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
  seeds.push_back({2, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1});
  seeds.push_back({3});
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  InputReader in(data, size);
  switch (in.U8() % 4) {
    case 0: StructuredUndo(in); break;
    case 1: {
      std::uint64_t extra = in.U32();
      std::span<const std::byte> meta = in.Bytes(in.remaining());
      DecodeAndCheck(meta, meta.size() + extra);
      break;
    }
    case 2: Head(in, false); break;
    default: Head(in, true); break;
  }
  return 0;
}
