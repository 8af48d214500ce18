// Fuzz target: full recovery of a journal file — Journal::Read, then
// Journal::Open on a small memory volume (4 KiB blocks, 64 KiB extents, 4 AL
// slots), traffic through the API, and an end: Close, the process dying, or
// a power cut.
//
// The input is not the file itself but a list of edits of a valid journal
// (BaseImages()), because random bytes never pass the xxh3 checksums:
//
//   u8 image       which base image (modulo their number)
//   u8 flags       bit 0: keep sequences as edited (default: renumber)
//                  bit 1: keep epochs as edited (default: make them what the
//                         replayer expects from each record's position)
//   op*            up to kMaxOps edits, each a u8 opcode and its operands:
//     record-level edits (payload bytes and words, payload length, type,
//     epoch, sequence, delete/duplicate/swap/move records, insert a record
//     synthesized from the input with the format's encoders), header field
//     edits (checksum recomputed), garbage or a torn record after the last
//     record — all re-framed with fresh checksums so they reach the
//     replayer's semantic validators — and raw byte edits and a truncation
//     applied to the final bytes (which do not fix checksums).
//
// What happens after Open is derived from a hash of the input: the volume's
// kind, identity and size (matching the header or not), a 64 KiB cap with
// heavy traffic (compaction), one injected file-system fault (a failed or
// torn write, sync, open, rename or directory sync; or a full disk), a
// freeze with commit or abort, target add/remove, resync requests, writes,
// checkpoints, and the end.
//
// Invariants checked:
//   - Read never fails on an existing file; Open fails only with
//     kInvalidArgument (a journal of another volume or block size);
//   - recovered reports are well formed (bitmap sizes, counts, empty AL);
//   - Open never loses what Read recovered: each target's dirty set and the
//     base set only grow, resync-required is kept;
//   - MarkDirty inside the volume succeeds (even when the journal fails),
//     outside it is kOutOfRange; a degraded journal has every target
//     resync-required;
//   - after a clean Close the file scans clean and reads back as exactly the
//     state the journal reported before Close, sealed;
//   - whatever the end and the fault, recovery covers every accepted write:
//     dirty in the base set and for every target, or that target
//     resync-required (invariant 1: no lost change).
//
// Environment: BLKREP_FUZZ_VERBOSE=1 narrates a run;
// BLKREP_FUZZ_DUMP_JOURNAL=PATH writes the journal built from the input;
// BLKREP_FUZZ_NO_FILTER=all|N,... turns off the filters for known tracker
// bugs (listed below).
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/fault_injecting_file_system.h"
#include "core/hash.h"
#include "core/memory_file_system.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/journal_images.h"
#include "tracker/journal.h"
#include "tracker/journal_format.h"

namespace blkrep::fuzz {
namespace {

namespace jf = tracker::journal_format;
using tracker::DirtyBitmap;
using tracker::Journal;
using tracker::JournalReport;

constexpr int kMaxOps = 128;
// Edits stop growing the image past this size (a bound on each run's work).
constexpr std::size_t kMaxImageBytes = 4 << 20;

// Header field offsets (docs/journal-format.md, "File header").
struct HeaderField {
  std::size_t offset;
  std::size_t width;
};
constexpr HeaderField kHeaderFields[] = {
    {16, 4},  // flags
    {20, 4},  // block_size
    {24, 8},  // volume_size
    {32, 4},  // extent_size
    {36, 4},  // al_slots
    {40, 8},  // cap_bytes
    {48, 8},  // first_sequence
    {56, 8},  // generation
    {96, 1},  // volume_kind
    {72, 8},  // dev
    {80, 8},  // ino
    {8, 4},   // format_version
    {12, 4},  // header_bytes
};

struct Slot {
  RecordImage::Rec rec;
  std::optional<std::uint64_t> forced_sequence;
  std::optional<std::uint64_t> forced_epoch;
};

std::uint32_t SmallTargetId(InputReader& in) {
  std::uint8_t pick = in.U8();
  if (pick < 200) return pick % 6;
  if (pick < 230) return jf::kAllTargets;
  return in.U32();
}

std::string TargetName(InputReader& in) {
  static const char* const kNames[] = {"dr", "backup", "b2", "third", "fz", "", ".bad", "x"};
  return kNames[in.U8() % (sizeof(kNames) / sizeof(kNames[0]))];
}

std::uint64_t SmallOrInteresting(InputReader& in, std::uint64_t small_bound) {
  return in.Bool() ? in.Below(small_bound) : in.InterestingU64();
}

std::uint64_t ExtentNumber(InputReader& in) {
  std::uint8_t pick = in.U8();
  if (pick < 64) return jf::kNoExtent;
  if (pick < 240) return pick % 18;
  return in.InterestingU64();
}

// A record with a payload built by the format's own encoders from fields
// chosen by the input: well formed, often semantically plausible.
RecordImage::Rec SynthesizeRecord(InputReader& in) {
  RecordImage::Rec rec;
  rec.type = static_cast<jf::RecordType>(1 + in.Below(jf::kMaxRecordType));
  switch (rec.type) {
    case jf::RecordType::kCheckpointBegin: {
      jf::CheckpointBegin p;
      p.target_count = static_cast<std::uint32_t>(in.Below(5));
      p.flags = static_cast<std::uint32_t>(in.Below(3));
      p.base_reason = in.String(16);
      rec.payload = jf::Encode(p);
      break;
    }
    case jf::RecordType::kCheckpointEnd:
      rec.payload = jf::Encode(jf::CheckpointEnd{static_cast<std::uint32_t>(in.Below(40))});
      break;
    case jf::RecordType::kTarget: {
      jf::TargetRecord p;
      p.target_id = SmallTargetId(in);
      p.flags = static_cast<std::uint8_t>(in.Below(5));
      p.last_cycle = SmallOrInteresting(in, 8);
      p.name = TargetName(in);
      p.resync_reason = in.String(16);
      rec.payload = jf::Encode(p);
      break;
    }
    case jf::RecordType::kTargetRemove:
      rec.payload = jf::Encode(jf::TargetRemove{SmallTargetId(in)});
      break;
    case jf::RecordType::kBits: {
      auto kind = static_cast<jf::SetKind>(in.Below(3));
      std::uint32_t id = SmallTargetId(in);
      std::uint64_t first = SmallOrInteresting(in, 300);
      std::uint64_t count = std::clamp<std::uint64_t>(SmallOrInteresting(in, 300), 1,
                                                      jf::kMaxBitsRecordBlocks);
      // The encoder reads an absolute bitmap; give it words up to block 320
      // from the input (blocks past the words read as clear).
      std::vector<std::uint64_t> words(5);
      std::uint8_t fill = in.U8();
      for (auto& w : words) w = fill < 64 ? ~std::uint64_t{0} : in.U64();
      rec.payload = jf::EncodeBits(kind, id, first, count, words);
      break;
    }
    case jf::RecordType::kAlSwap: {
      jf::AlSwap p;
      p.slot = static_cast<std::uint32_t>(in.U8() < 240 ? in.Below(5) : in.U32());
      p.new_extent = ExtentNumber(in);
      p.old_extent = ExtentNumber(in);
      p.words_per_set = static_cast<std::uint32_t>(in.U8() < 200 ? 1 : in.Below(4));
      std::uint64_t sets = p.old_extent == jf::kNoExtent && in.U8() < 200 ? 0 : in.Below(5);
      for (std::uint64_t i = 0; i < sets; ++i) {
        jf::AlSwap::SetBits set;
        set.kind = i == 0 ? jf::SetKind::kBase : static_cast<jf::SetKind>(in.Below(2));
        set.target_id = set.kind == jf::SetKind::kBase ? 0 : SmallTargetId(in);
        set.words.resize(p.words_per_set);
        for (auto& w : set.words) w = in.Bool() ? 0xFFFF : in.U64();
        p.sets.push_back(std::move(set));
      }
      rec.payload = jf::Encode(p);
      break;
    }
    case jf::RecordType::kFreezeBegin:
      rec.payload = jf::Encode(jf::FreezeBegin{SmallTargetId(in),
                                               static_cast<jf::CycleMode>(in.Below(4))});
      break;
    case jf::RecordType::kFreezeEnd:
      rec.payload = jf::Encode(jf::FreezeEnd{SmallTargetId(in), SmallOrInteresting(in, 300)});
      break;
    case jf::RecordType::kCommit:
    case jf::RecordType::kAbort:
      rec.payload = jf::Encode(jf::CycleEnd{SmallTargetId(in), SmallOrInteresting(in, 8)});
      break;
    case jf::RecordType::kResyncRequired:
      rec.payload = jf::Encode(jf::ResyncRequired{SmallTargetId(in), in.String(32)});
      break;
    case jf::RecordType::kSeal: {
      jf::Seal p;
      p.sealed_unix_ns = static_cast<std::int64_t>(in.InterestingU64());
      p.volume_kind = static_cast<std::uint8_t>(in.Below(4));
      p.size_bytes = in.Bool() ? kVolumeBytes : in.InterestingU64();
      p.mtime_ns = static_cast<std::int64_t>(in.U8());
      p.sectors_written = in.U8();
      p.boot_id = in.String(8);
      p.probe_type = in.Bool() ? "" : "ext4";
      p.uuid = in.String(8);
      rec.payload = jf::Encode(p);
      break;
    }
  }
  return rec;
}

struct RawEdit {
  enum Kind : std::uint8_t { kSet, kXor, kTruncate } kind;
  std::uint32_t offset;
  std::uint8_t value;
};

std::size_t Pick(InputReader& in, std::size_t n) { return static_cast<std::size_t>(in.Below(n)); }

// Known tracker bugs (reported, not yet fixed) that the fuzzer would
// otherwise hit within seconds, hiding everything else. Each has a filter
// that skips the inputs (or the part of a run) reaching it, unless
// BLKREP_FUZZ_NO_FILTER turns it off (see KnownBugFilterEnabled); SeedInputs
// holds reproducers. Remove a filter once its bug is fixed.
//
// 1. A TARGET_REMOVE of target T between FREEZE_BEGIN(T) and FREEZE_END(T)
//    makes Replayer::FreezeEnd dereference a null TargetData (journal.cc,
//    Replayer::FreezeEnd: `t->frozen = true` after FindTarget returned
//    nullptr): SIGSEGV on Read and Open.
bool RemovesTargetInsideFreeze(const RecordImage& image) {
  bool pending = false;
  std::uint32_t pending_id = 0;
  for (const auto& rec : image.records) {
    if (rec.type == jf::RecordType::kFreezeBegin) {
      auto p = jf::DecodeFreezeBegin(rec.payload);
      pending = p.ok();
      if (p.ok()) pending_id = p.value().target_id;
    } else if (rec.type == jf::RecordType::kFreezeEnd ||
               rec.type == jf::RecordType::kCheckpointEnd) {
      pending = false;
    } else if (rec.type == jf::RecordType::kTargetRemove && pending) {
      auto p = jf::DecodeTargetRemove(rec.payload);
      if (p.ok() && p.value().target_id == pending_id) return true;
    }
  }
  return false;
}

// 2. Journal::Read (no volume to compare with) accepts a header claiming up
//    to 2^34 blocks and sizes its maps from it: a 2^34-extent claim (4 KiB
//    blocks and extents) is 64 GiB of extent_slot alone, a 46 TB claim a
//    2.8 GB allocation plus a 1.4 GB bitmap, each zero-filled. (Filtered:
//    such files skip Read; Open, which bounds the claim by the volume, still
//    runs.)
bool ClaimsHugeVolume(std::span<const std::byte> file) {
  core::Result<jf::FileHeader> h = jf::DecodeHeader(file);
  if (!h.ok()) return false;
  const jf::FileHeader& header = h.value();
  std::uint64_t blocks = header.volume_size_bytes / header.block_size_bytes + 1;
  std::uint64_t extents = blocks / (header.extent_size_bytes / header.block_size_bytes) + 1;
  // The base bitmap plus the extent map, the least Read allocates.
  std::uint64_t bytes = blocks / 8 + extents * sizeof(std::int32_t);
  return bytes > (std::uint64_t{64} << 20);
}

// 3. (Found, fixed: a failed directory sync after a rewrite left `file_`
//    on the old file. Numbers are kept stable for BLKREP_FUZZ_NO_FILTER.)
//
// 4. When a Commit's append (or the compaction it triggers) fails,
//    Journal::Commit degrades the journal — EnterDegraded marks every target
//    resync-required — and then rolls the target back with `*t = before`, a
//    copy taken before the failure: the committing target loses its
//    resync-required while the journal stays degraded (Report() shows it
//    clean until the journal is reopened, when the header flag brings it
//    back). (Filtered: runs in which a Commit failed and degraded.)

// BLKREP_FUZZ_NO_FILTER=all turns every filter off; a list of numbers
// ("1,3") turns off those.
bool KnownBugFilterEnabled(int bug) {
  // Bugs 1, 2 and 4 are fixed; their reproducers stay among the seeds.
  if (bug == 1 || bug == 2 || bug == 4) return false;
  static const char* const off = std::getenv("BLKREP_FUZZ_NO_FILTER");
  if (off == nullptr) return true;
  std::string list = std::string(",") + off + ",";
  return list != ",all," && list.find("," + std::to_string(bug) + ",") == std::string::npos;
}

// Builds the journal file the input describes; nullopt when it would only
// reach a known bug (see above).
std::optional<std::vector<std::byte>> BuildFile(InputReader& in) {
  const auto& images = BaseImages();
  const std::vector<std::byte>& base = images[in.U8() % images.size()];
  std::uint8_t flags = in.U8();
  RecordImage image = *SplitImage(base);
  std::vector<Slot> slots;
  for (auto& rec : image.records) slots.push_back(Slot{std::move(rec), {}, {}});
  image.records.clear();
  std::vector<RawEdit> raw;
  bool header_edited = false;
  std::size_t approx_bytes = base.size();

  for (int op = 0; op < kMaxOps && !in.empty(); ++op) {
    std::uint8_t code = in.U8() % 19;
    // Ops on an existing record pick it first (and are skipped if none).
    if (code >= 3 && code <= 13 && slots.empty()) continue;
    switch (code) {
      case 0:
      case 1:
      case 2: {
        RawEdit e{static_cast<RawEdit::Kind>(code), in.U32(), in.U8()};
        raw.push_back(e);
        break;
      }
      case 3: {  // one payload byte
        auto& p = slots[Pick(in, slots.size())].rec.payload;
        std::size_t at = in.U16();
        std::uint8_t value = in.U8();
        if (!p.empty()) p[at % p.size()] = static_cast<std::byte>(value);
        break;
      }
      case 4:
      case 5: {  // one payload u64 / u32 field
        auto& p = slots[Pick(in, slots.size())].rec.payload;
        std::size_t at = in.U16();
        std::uint64_t value = in.InterestingU64();
        std::size_t width = code == 4 ? 8 : 4;
        if (p.size() >= width) {
          at = at % (p.size() - width + 1);
          for (std::size_t i = 0; i < width; ++i) p[at + i] = static_cast<std::byte>(value >> (8 * i));
        }
        break;
      }
      case 6: {  // payload length
        auto& p = slots[Pick(in, slots.size())].rec.payload;
        std::size_t length = in.U16() % (p.size() + 33);
        std::uint8_t fill = in.U8();
        p.resize(length, static_cast<std::byte>(fill));
        break;
      }
      case 7:  // type, including invalid ones
        slots[Pick(in, slots.size())].rec.type = static_cast<jf::RecordType>(in.U8() % 14);
        break;
      case 8: {
        auto& s = slots[Pick(in, slots.size())];
        s.forced_epoch = in.Bool() ? s.rec.epoch + (in.U8() % 3) - 1 : in.InterestingU64();
        break;
      }
      case 9: {
        auto& s = slots[Pick(in, slots.size())];
        s.forced_sequence = in.Bool() ? s.rec.sequence + (in.U8() % 3) - 1 : in.InterestingU64();
        break;
      }
      case 10:
        slots.erase(slots.begin() + static_cast<std::ptrdiff_t>(Pick(in, slots.size())));
        break;
      case 11: {
        std::size_t i = Pick(in, slots.size());
        if (approx_bytes + slots[i].rec.payload.size() > kMaxImageBytes) break;
        approx_bytes += jf::RecordBytes(slots[i].rec.payload.size());
        Slot copy = slots[i];
        slots.insert(slots.begin() + static_cast<std::ptrdiff_t>(i) + 1, std::move(copy));
        break;
      }
      case 12: {
        std::size_t a = Pick(in, slots.size());
        std::size_t b = Pick(in, slots.size());
        std::swap(slots[a], slots[b]);
        break;
      }
      case 13: {
        std::size_t a = Pick(in, slots.size());
        std::size_t b = Pick(in, slots.size());
        Slot moved = std::move(slots[a]);
        slots.erase(slots.begin() + static_cast<std::ptrdiff_t>(a));
        slots.insert(slots.begin() + static_cast<std::ptrdiff_t>(std::min(b, slots.size())),
                     std::move(moved));
        break;
      }
      case 14: {  // insert a synthesized record
        std::size_t at = Pick(in, slots.size() + 1);
        RecordImage::Rec rec = SynthesizeRecord(in);
        if (approx_bytes + rec.payload.size() > kMaxImageBytes) break;
        approx_bytes += jf::RecordBytes(rec.payload.size());
        slots.insert(slots.begin() + static_cast<std::ptrdiff_t>(at), Slot{std::move(rec), {}, {}});
        break;
      }
      case 15: {  // a header field (checksum fixed below)
        const HeaderField& f = kHeaderFields[Pick(in, std::size(kHeaderFields))];
        std::uint64_t value = in.InterestingU64();
        for (std::size_t i = 0; i < f.width; ++i) {
          image.header[f.offset + i] = static_cast<std::byte>(value >> (8 * i));
        }
        header_edited = true;
        break;
      }
      case 16: {  // a header byte (checksum fixed below)
        std::size_t at = in.U16() % (jf::kHeaderBytes - 8);
        image.header[at] = static_cast<std::byte>(in.U8());
        header_edited = true;
        break;
      }
      case 17: {  // garbage after the last record
        std::span<const std::byte> bytes = in.Bytes(in.U8());
        image.tail.insert(image.tail.end(), bytes.begin(), bytes.end());
        approx_bytes += bytes.size();
        break;
      }
      case 18: {  // a torn record after the last one
        RecordImage::Rec rec = SynthesizeRecord(in);
        std::vector<std::byte> framed;
        jf::AppendRecord(framed, rec.type, 0, 0, rec.payload);
        std::size_t keep = in.U16() % (framed.size() + 1);
        if (approx_bytes + keep > kMaxImageBytes) break;
        image.tail.insert(image.tail.end(), framed.begin(),
                          framed.begin() + static_cast<std::ptrdiff_t>(keep));
        approx_bytes += keep;
        break;
      }
    }
  }

  if (header_edited) FixHeaderChecksum(image.header);
  for (auto& s : slots) image.records.push_back(s.rec);
  if ((flags & 1U) == 0) RenumberSequences(image);
  if ((flags & 2U) == 0) FixEpochs(image);
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].forced_sequence) image.records[i].sequence = *slots[i].forced_sequence;
    if (slots[i].forced_epoch) image.records[i].epoch = *slots[i].forced_epoch;
  }
  if (KnownBugFilterEnabled(1) && RemovesTargetInsideFreeze(image)) return std::nullopt;
  std::vector<std::byte> file = JoinImage(image);
  for (const RawEdit& e : raw) {
    if (file.empty()) break;
    std::size_t at = e.offset % file.size();
    switch (e.kind) {
      case RawEdit::kSet: file[at] = static_cast<std::byte>(e.value); break;
      case RawEdit::kXor: file[at] ^= static_cast<std::byte>(e.value == 0 ? 1 : e.value); break;
      case RawEdit::kTruncate: file.resize(at); break;
    }
  }
  return file;
}

bool Contains(const DirtyBitmap& outer, const DirtyBitmap& inner) {
  if (outer.block_count() != inner.block_count()) return false;
  for (std::size_t i = 0; i < inner.words().size(); ++i) {
    if ((inner.words()[i] & ~outer.words()[i]) != 0) return false;
  }
  return true;
}

bool RangeSet(const DirtyBitmap& bits, std::uint64_t first_block, std::uint64_t end_block) {
  for (std::uint64_t b = first_block; b < end_block; ++b) {
    if (b >= bits.block_count() || !bits.Test(b)) return false;
  }
  return true;
}

std::string Cut(const std::string& s) { return s.substr(0, jf::kMaxReasonBytes); }

// Open never loses what Read recovered (same geometry only: a size change
// resizes and marks everything anyway).
void CheckOpenKeepsRecovered(const JournalReport& read, const JournalReport& opened) {
  if (read.block_size_bytes != opened.block_size_bytes ||
      read.volume_size_bytes != opened.volume_size_bytes) {
    return;
  }
  BLKREP_FUZZ_CHECK(Contains(opened.since_tracking_began, read.since_tracking_began),
                    "Open lost base-set blocks that Read recovered");
  BLKREP_FUZZ_CHECK(Contains(opened.dirty, read.dirty), "Open lost dirty blocks that Read recovered");
  BLKREP_FUZZ_CHECK(opened.targets.size() == read.targets.size(), "Open changed the target list");
  for (std::size_t i = 0; i < read.targets.size(); ++i) {
    const auto& r = read.targets[i];
    const auto& o = opened.targets[i];
    BLKREP_FUZZ_CHECK(o.name == r.name, "Open changed the target list");
    BLKREP_FUZZ_CHECK(Contains(o.dirty, r.dirty), "Open lost dirty blocks of target " + r.name);
    BLKREP_FUZZ_CHECK(!r.resync_required || o.resync_required,
                      "Open dropped resync-required of target " + r.name);
    BLKREP_FUZZ_CHECK(!o.frozen_epoch, "a frozen cycle survived Open");
  }
  BLKREP_FUZZ_CHECK(!read.resync_required || opened.resync_required, "Open dropped resync-required");
}

void CheckReportShape(const JournalReport& r) {
  if (r.block_size_bytes == 0) return;  // the report of an undecodable header
  std::uint64_t blocks = (r.volume_size_bytes + r.block_size_bytes - 1) / r.block_size_bytes;
  BLKREP_FUZZ_CHECK(r.dirty.block_count() == blocks && r.since_tracking_began.block_count() == blocks,
                    "report bitmaps do not match the volume");
  for (const auto& t : r.targets) {
    BLKREP_FUZZ_CHECK(t.dirty.block_count() == blocks, "target bitmap does not match the volume");
    BLKREP_FUZZ_CHECK(t.dirty_blocks == t.dirty.Count(), "dirty_blocks is not the count");
    BLKREP_FUZZ_CHECK(Contains(r.dirty, t.dirty), "volume dirty set misses a target's blocks");
  }
  BLKREP_FUZZ_CHECK(r.hot_extents.empty(), "recovery left extents in the activity log");
}

// Close wrote everything: Read of the sealed file is what the journal held.
void CheckSameState(const JournalReport& before, const JournalReport& after) {
  BLKREP_FUZZ_CHECK(after.clean_close, "a closed journal does not read as sealed");
  BLKREP_FUZZ_CHECK(after.torn_tail.empty(), "a closed journal has a torn tail: " + after.torn_tail);
  BLKREP_FUZZ_CHECK(after.epoch == before.epoch, "Close lost the epoch");
  BLKREP_FUZZ_CHECK(after.dirty == before.dirty, "Close changed the dirty set");
  BLKREP_FUZZ_CHECK(after.since_tracking_began == before.since_tracking_began,
                    "Close changed the base set");
  BLKREP_FUZZ_CHECK(after.resync_required == before.resync_required &&
                        after.resync_reason == Cut(before.resync_reason),
                    "Close changed resync-required: '" + before.resync_reason + "' -> '" +
                        after.resync_reason + "'");
  BLKREP_FUZZ_CHECK(after.targets.size() == before.targets.size(), "Close changed the targets");
  for (std::size_t i = 0; i < before.targets.size(); ++i) {
    const auto& b = before.targets[i];
    const auto& a = after.targets[i];
    const std::string what = "Close changed target " + b.name + ": ";
    BLKREP_FUZZ_CHECK(a.name == b.name, what + "name");
    BLKREP_FUZZ_CHECK(a.dirty == b.dirty, what + "dirty set");
    BLKREP_FUZZ_CHECK(a.last_cycle == b.last_cycle, what + "last cycle");
    BLKREP_FUZZ_CHECK(a.needs_full == b.needs_full, what + "needs full");
    BLKREP_FUZZ_CHECK(a.resync_required == b.resync_required &&
                          a.resync_reason == Cut(b.resync_reason),
                      what + "resync");
    BLKREP_FUZZ_CHECK(!a.frozen_epoch, what + "a frozen cycle survived Close");
  }
}

void CheckScansClean(std::span<const std::byte> file) {
  core::Result<jf::FileHeader> header = jf::DecodeHeader(file);
  BLKREP_FUZZ_CHECK(header.ok(), "a closed journal's header does not decode: " +
                                     header.status().ToString());
  jf::RecordScanner scanner(file, jf::kHeaderBytes, header.value().first_sequence);
  jf::Record record;
  jf::RecordScanner::Outcome outcome;
  while ((outcome = scanner.Next(&record)) == jf::RecordScanner::Outcome::kRecord) {
  }
  BLKREP_FUZZ_CHECK(outcome == jf::RecordScanner::Outcome::kEnd,
                    "a closed journal does not scan clean: " + scanner.error());
}

// Tiny deterministic generator for what happens after Open (derived from a
// hash of the input, so the op list stays about the file).
struct SplitMix {
  std::uint64_t state;
  std::uint64_t Next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
};

using BlockRanges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;  // [first, end)

// BLKREP_FUZZ_VERBOSE=1 narrates what a run does after Open (for triage).
void Trace(const std::string& what) {
  static const bool verbose = std::getenv("BLKREP_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "replay: %s\n", what.c_str());
}

// The volume the journal is opened for: mostly the one the header names (so
// the seal checks compare like with like), sometimes another kind, identity
// or size.
tracker::VolumeDescriptor ChooseVolume(std::span<const std::byte> file, SplitMix& rng) {
  tracker::VolumeDescriptor v = MemoryVolume(kVolumeBytes);
  std::uint64_t r = rng.Next();
  core::Result<jf::FileHeader> h = jf::DecodeHeader(file);
  core::VolumeIdentity& id = v.identity;
  if (h.ok() && (r & 3) != 0 && h.value().volume_kind <= 2) {
    id.kind = static_cast<core::VolumeIdentity::Kind>(h.value().volume_kind);
    id.dev = h.value().dev;
    id.ino = h.value().ino;
    id.rdev = h.value().rdev;
  } else if ((r & 3) == 0) {
    id.kind = static_cast<core::VolumeIdentity::Kind>((r >> 2) % 3);
    id.dev = (r >> 4) & 7;
    id.ino = (r >> 7) & 7;
  }
  // Values the sealed base images were closed with, or different ones.
  id.mtime_ns = (r >> 10) & 1 ? kSealMtimeNs : kSealMtimeNs + 1;
  id.sectors_written = (r >> 11) & 1 ? kSealSectorsWritten : kSealSectorsWritten + 50;
  id.boot_id = (r >> 12) & 1 ? kSealBootId : "another-boot";
  id.probe_type = (r >> 13) & 7 ? "" : "xfs";
  std::uint64_t size = (r >> 16) & 15;
  id.size_bytes = size == 0 ? kVolumeBytes + 70000 : size == 1 ? kVolumeBytes - 5000 : kVolumeBytes;
  Trace("volume kind " + std::to_string(static_cast<int>(id.kind)) + " size " +
        std::to_string(id.size_bytes));
  return v;
}

struct Fault {
  bool armed = false;
};

// Arms one fault for what follows Open (about one run in four): a one-shot
// failure of a write, sync, open, rename or directory sync, possibly torn, or
// a full file system (every extending write fails).
Fault ArmFault(core::FaultInjectingFileSystem& fs, SplitMix& rng) {
  Fault fault;
  std::uint64_t r = rng.Next();
  if ((r & 3) != 0) return fault;
  fault.armed = true;
  static constexpr core::FileOp kOps[] = {core::FileOp::kWrite, core::FileOp::kSync,
                                          core::FileOp::kOpen, core::FileOp::kRename,
                                          core::FileOp::kSyncDir};
  if (((r >> 2) & 7) == 0) {
    fs.FailExtendingWrites(ENOSPC);
    Trace("fault: every extending write fails");
  } else {
    std::size_t op = (r >> 5) % std::size(kOps);
    fs.FailAfter(kOps[op], (r >> 8) % 8, (r >> 11) & 1 ? EIO : ENOSPC, /*sticky=*/false);
    Trace("fault: op " + std::to_string(static_cast<int>(kOps[op])) + " fails once after " +
          std::to_string((r >> 8) % 8) + " more calls");
  }
  if (((r >> 12) & 3) == 0) {
    fs.SetTornWriteBytes((r >> 14) % 100);
    Trace("fault: a failing write writes " + std::to_string((r >> 14) % 100) + " bytes first");
  }
  return fault;
}

struct TrafficResult {
  // Blocks written after the last cycle ended: dirty for every target.
  BlockRanges marked;
  // A Commit failed and degraded the journal (see known bug 4).
  bool commit_failed_degrading = false;
};

// Freeze/commit/abort, target changes and writes through the API. With a
// fault armed, calls other than MarkDirty may fail.
TrafficResult Traffic(Journal& journal, std::uint64_t volume_bytes, bool faulty, bool heavy,
                      SplitMix& rng) {
  TrafficResult result;
  BlockRanges& marked = result.marked;
  std::uint64_t block = journal.block_size_bytes();
  JournalReport start = journal.Report();
  auto allowed = [&](const core::Status& status) {
    return status.ok() || faulty || status.code() == core::Code::kAborted ||
           status.code() == core::Code::kResourceExhausted;
  };

  // A cycle for one target: freeze, then commit or abort.
  if (!start.targets.empty() && (rng.Next() & 1) != 0) {
    const std::string& name = start.targets[rng.Next() % start.targets.size()].name;
    core::Result<tracker::FrozenCycle> cycle = journal.Freeze(name);
    Trace("Freeze " + name + ": " + cycle.status().ToString());
    BLKREP_FUZZ_CHECK(allowed(cycle.status()), "Freeze after Open failed: " + cycle.status().ToString());
    if (cycle.ok()) {
      BLKREP_FUZZ_CHECK(cycle.value().blocks.block_count() == journal.block_count(),
                        "a frozen cycle does not cover the volume");
      bool commit = (rng.Next() & 1) != 0;
      bool was_degraded = journal.degraded();
      core::Status ended = commit ? journal.Commit(name, cycle.value().epoch)
                                  : journal.Abort(name, cycle.value().epoch);
      Trace(std::string(commit ? "Commit: " : "Abort: ") + ended.ToString());
      result.commit_failed_degrading = commit && !ended.ok() && !was_degraded && journal.degraded();
      BLKREP_FUZZ_CHECK(allowed(ended), "ending a frozen cycle failed: " + ended.ToString());
    }
  }
  if ((rng.Next() & 3) == 0) {
    core::Status added = journal.AddTarget("fz");
    Trace("AddTarget fz: " + added.ToString());
    BLKREP_FUZZ_CHECK(allowed(added) || added.code() == core::Code::kInvalidArgument,
                      "AddTarget failed: " + added.ToString());
  }
  if ((rng.Next() & 7) == 0 && !start.targets.empty()) {
    core::Status removed = journal.RemoveTarget(start.targets[0].name);
    Trace("RemoveTarget " + start.targets[0].name + ": " + removed.ToString());
    BLKREP_FUZZ_CHECK(allowed(removed), "RemoveTarget failed: " + removed.ToString());
  }
  if ((rng.Next() & 7) == 0) {
    core::Status resync = journal.RequireResync("", "fuzz");
    Trace("RequireResync: " + resync.ToString());
    BLKREP_FUZZ_CHECK(allowed(resync), "RequireResync failed: " + resync.ToString());
  }

  // Heavy: enough single-block writes spread over the extents (AL swaps)
  // to pass a 64 KiB cap.
  int writes = heavy ? 600 : 1 + static_cast<int>(rng.Next() % 8);
  for (int i = 0; i < writes; ++i) {
    if (heavy && (rng.Next() & 7) != 0) {
      std::uint64_t offset = rng.Next() % volume_bytes;
      core::Status marked_ok = journal.MarkDirty(offset, 1);
      BLKREP_FUZZ_CHECK(marked_ok.ok(), "MarkDirty inside the volume failed: " + marked_ok.ToString());
      marked.emplace_back(offset / block, offset / block + 1);
      continue;
    }
    std::uint64_t offset = rng.Next() % volume_bytes;
    std::uint64_t max_length = (rng.Next() & 1) != 0 ? 3 * block : volume_bytes;
    std::uint64_t length = 1 + rng.Next() % std::min(max_length, volume_bytes - offset);
    core::Status marked_ok = journal.MarkDirty(offset, length);
    Trace("MarkDirty " + std::to_string(offset) + "+" + std::to_string(length) + ": " +
          marked_ok.ToString() + (journal.degraded() ? " (degraded)" : ""));
    BLKREP_FUZZ_CHECK(marked_ok.ok(), "MarkDirty inside the volume failed: " + marked_ok.ToString());
    marked.emplace_back(offset / block, (offset + length - 1) / block + 1);
    if ((rng.Next() & 15) == 0) {
      core::Status checkpoint = journal.Checkpoint();
      Trace("Checkpoint: " + checkpoint.ToString());
      BLKREP_FUZZ_CHECK(checkpoint.ok() || faulty, "Checkpoint failed: " + checkpoint.ToString());
    }
  }
  core::Status outside = journal.MarkDirty(volume_bytes - 1, 2);
  BLKREP_FUZZ_CHECK(outside.code() == core::Code::kOutOfRange,
                    "MarkDirty past the end was not kOutOfRange: " + outside.ToString());
  return result;
}

// Invariant 3: a degraded journal has every target resync-required.
void CheckDegradedMarksAll(const Journal& journal, const JournalReport& r) {
  if (!journal.degraded()) return;
  for (const auto& t : r.targets) {
    BLKREP_FUZZ_CHECK(t.resync_required,
                      "the journal is degraded but target " + t.name + " is not resync-required");
  }
  BLKREP_FUZZ_CHECK(!r.targets.empty() || r.resync_required,
                    "the journal is degraded but the base set is not resync-required");
}

// Invariant 1 as recovery sees it: every write MarkDirty accepted is dirty
// for the base set and for every target — or that target is
// resync-required (the journal degraded).
void CheckCovered(const JournalReport& r, const BlockRanges& marked, const char* when) {
  for (auto [first, end] : marked) {
    BLKREP_FUZZ_CHECK(RangeSet(r.since_tracking_began, first, end),
                      std::string(when) + ": a write is missing from the base set");
    for (const auto& t : r.targets) {
      BLKREP_FUZZ_CHECK(t.resync_required || RangeSet(t.dirty, first, end),
                        std::string(when) + ": a write is missing for target " + t.name);
    }
  }
}

// BLKREP_FUZZ_DUMP_JOURNAL=PATH writes the journal file built from each
// input to PATH (for `blkrep journal inspect` when reproducing a crash).
void MaybeDump(const std::vector<std::byte>& file) {
  static const char* const path = std::getenv("BLKREP_FUZZ_DUMP_JOURNAL");
  if (path == nullptr) return;
  std::FILE* f = std::fopen(path, "wb");
  if (f == nullptr) return;
  std::fwrite(file.data(), 1, file.size(), f);
  std::fclose(f);
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  for (std::uint8_t i = 0; i < BaseImages().size(); ++i) {
    seeds.push_back({i, 0});                     // untouched
    seeds.push_back({i, 0, 14, 3, 5, 1, 2, 3});  // one synthesized record
    seeds.push_back({i, 0, 3, 2, 0, 0, 7});      // one payload byte
    seeds.push_back({i, 3, 2, 0, 0x20, 0, 0});   // a cut, sequences and epochs as they are
  }
  // Reproducers of the known bugs (skipped while their filter is on; they
  // depend on the base images and the op encoding staying as they are).
  // 1: TARGET_REMOVE(dr) inserted after the first FREEZE_BEGIN(dr) of image 0.
  seeds.push_back({0, 0, 14, 12, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1});
  // 4: a Commit whose compaction fails (fdatasync of the .tmp file).
  seeds.push_back({0x95, 0xe9, 0x70, 0xb9, 0xc7, 0xf4, 0x6c, 0x77, 0x16, 0x3d, 0xed, 0xcd,
                   0x1f, 0xe7, 0x58, 0x6e, 0xc5, 0x5b});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  namespace core = blkrep::core;
  using blkrep::tracker::Journal;
  using blkrep::tracker::JournalReport;

  InputReader in(data, size);
  std::optional<std::vector<std::byte>> built = BuildFile(in);
  if (!built) return 0;  // reaches a known bug
  const std::vector<std::byte>& file = *built;
  MaybeDump(file);

  core::MemoryFileSystem memory;
  BLKREP_FUZZ_CHECK(memory.CreateDirectories(kJournalDir).ok(), "CreateDirectories");
  memory.SetContents(kJournalPath, file);
  core::FaultInjectingFileSystem fs(memory);

  std::optional<JournalReport> read;
  if (!KnownBugFilterEnabled(2) || !ClaimsHugeVolume(file)) {
    core::Result<JournalReport> result = Journal::Read(fs, kJournalPath);
    BLKREP_FUZZ_CHECK(result.ok(), "Read of an existing journal failed: " + result.status().ToString());
    CheckReportShape(result.value());
    read = std::move(result).value();
  }

  SplitMix rng{core::Xxh3_64(data, size)};
  blkrep::tracker::VolumeDescriptor volume = ChooseVolume(file, rng);
  blkrep::tracker::JournalOptions options = SmallOptions();
  // Sometimes the smallest cap, with heavy traffic below, so that appends
  // reach it and compaction runs.
  bool small_cap = (rng.Next() & 7) == 0;
  if (small_cap) options.cap_bytes = blkrep::tracker::journal_format::kMinCapBytes;
  options.on_degraded = [](const std::string& reason) { Trace("degraded: " + reason); };
  auto opened = Journal::Open(fs, kJournalPath, volume, options);
  if (!opened.ok()) {
    BLKREP_FUZZ_CHECK(opened.status().code() == core::Code::kInvalidArgument,
                      "Open failed with other than kInvalidArgument: " + opened.status().ToString());
    return 0;
  }
  std::unique_ptr<Journal> journal = std::move(opened).value();
  if (read) CheckOpenKeepsRecovered(*read, journal->Report());

  Fault fault = ArmFault(fs, rng);
  bool faulty = fault.armed;
  TrafficResult traffic = Traffic(*journal, volume.identity.size_bytes, faulty, small_cap, rng);
  if (KnownBugFilterEnabled(4) && traffic.commit_failed_degrading) return 0;  // known bug 4
  const BlockRanges& marked = traffic.marked;
  JournalReport before = journal->Report();
  CheckCovered(before, marked, "in memory");
  CheckDegradedMarksAll(*journal, before);

  // The end: a clean Close, the process dying (what it wrote stays, synced or
  // not), or a power cut (only what was synced stays, or a torn prefix).
  const char* ending = "after Close";
  switch (rng.Next() % 4) {
    case 0:
    case 1: {
      core::Status closed = journal->Close(volume.identity);
      Trace("Close: " + closed.ToString());
      BLKREP_FUZZ_CHECK(closed.ok() || faulty, "Close failed: " + closed.ToString());
      fs.ClearFaults();
      if (closed.ok()) {
        // Close wrote the whole state: the file scans clean and reads back
        // as exactly what the journal held.
        CheckScansClean(memory.Contents(kJournalPath));
        core::Result<JournalReport> after = Journal::Read(fs, kJournalPath);
        BLKREP_FUZZ_CHECK(after.ok(), "Read after Close failed: " + after.status().ToString());
        CheckReportShape(after.value());
        CheckSameState(before, after.value());
      }
      break;
    }
    case 2:
      journal.reset();
      ending = "after the process died";
      Trace(ending);
      break;
    case 3:
      journal.reset();
      memory.SimulateCrash((rng.Next() & 1) != 0 ? core::MemoryFileSystem::CrashMode::kDropUnsynced
                                                 : core::MemoryFileSystem::CrashMode::kTornTail,
                           rng.Next());
      ending = "after a power cut";
      Trace(ending);
      break;
  }
  fs.ClearFaults();
  // Whatever failed, what is on disk covers every accepted write.
  core::Result<JournalReport> recovered = Journal::Read(fs, kJournalPath);
  BLKREP_FUZZ_CHECK(recovered.ok(), std::string("Read ") + ending + " failed: " +
                                        recovered.status().ToString());
  CheckReportShape(recovered.value());
  CheckCovered(recovered.value(), marked, ending);
  return 0;
}
