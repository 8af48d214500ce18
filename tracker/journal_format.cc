// Encoders and validating decoders for docs/journal-format.md.
#include "tracker/journal_format.h"

#include "core/names.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/bytes.h"
#include "core/names.h"
#include "core/hash.h"

namespace blkrep::tracker::journal_format {

using core::ByteReader;
using core::ByteWriter;
using core::LoadLe32;
using core::LoadLe64;
using core::Result;
using core::Status;
using core::StoreLe32;
using core::StoreLe64;

namespace {

// Header field offsets (see docs/journal-format.md, "File header").
constexpr std::size_t kOffMagic = 0;
constexpr std::size_t kOffVersion = 8;
constexpr std::size_t kOffHeaderBytes = 12;
constexpr std::size_t kOffFlags = 16;
constexpr std::size_t kOffBlockSize = 20;
constexpr std::size_t kOffVolumeSize = 24;
constexpr std::size_t kOffExtentSize = 32;
constexpr std::size_t kOffAlSlots = 36;
constexpr std::size_t kOffCap = 40;
constexpr std::size_t kOffFirstSequence = 48;
constexpr std::size_t kOffGeneration = 56;
constexpr std::size_t kOffCreated = 64;
constexpr std::size_t kOffDev = 72;
constexpr std::size_t kOffIno = 80;
constexpr std::size_t kOffRdev = 88;
constexpr std::size_t kOffKind = 96;
constexpr std::size_t kOffGuest = 104;
constexpr std::size_t kOffVolumeName = 168;
constexpr std::size_t kOffProbeType = 232;
constexpr std::size_t kOffUuid = 296;
constexpr std::size_t kOffPtuuid = 360;
constexpr std::size_t kOffPath = 424;
constexpr std::size_t kShortField = 64;
constexpr std::size_t kOffChecksum = kHeaderBytes - 8;

void PutField(std::vector<std::byte>& out, std::size_t offset, std::size_t width,
              const std::string& s) {
  std::size_t n = std::min(width, s.size());
  std::memcpy(out.data() + offset, s.data(), n);
}

// A NUL-padded field: text up to the first NUL, zeroes after it.
bool GetField(std::span<const std::byte> in, std::size_t offset, std::size_t width,
              std::string* out) {
  const char* p = reinterpret_cast<const char*>(in.data() + offset);
  std::size_t n = strnlen(p, width);
  for (std::size_t i = n; i < width; ++i) {
    if (p[i] != 0) return false;
  }
  out->assign(p, n);
  return true;
}

bool IsPowerOfTwo(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

Status Bad(std::string what) { return Status::Corruption(std::move(what)); }

template <typename T>
Result<T> Finish(const ByteReader& r, T value, const char* what) {
  if (!r.ok()) return Bad(std::string(what) + " record is truncated or a field is too long");
  if (r.remaining() != 0) {
    return Bad(std::string(what) + " record has " + std::to_string(r.remaining()) +
               " trailing bytes");
  }
  return value;
}

bool ValidKind(std::uint8_t kind) { return kind <= static_cast<std::uint8_t>(SetKind::kFrozen); }

}  // namespace

bool IsValidName(std::string_view name) { return core::IsValidName(name); }

std::vector<std::byte> EncodeHeader(const FileHeader& h) {
  std::vector<std::byte> out(kHeaderBytes, std::byte{0});
  StoreLe64(&out[kOffMagic], kFileMagic);
  StoreLe32(&out[kOffVersion], kFormatVersion);
  StoreLe32(&out[kOffHeaderBytes], static_cast<std::uint32_t>(kHeaderBytes));
  StoreLe32(&out[kOffFlags], h.flags);
  StoreLe32(&out[kOffBlockSize], h.block_size_bytes);
  StoreLe64(&out[kOffVolumeSize], h.volume_size_bytes);
  StoreLe32(&out[kOffExtentSize], h.extent_size_bytes);
  StoreLe32(&out[kOffAlSlots], h.al_slots);
  StoreLe64(&out[kOffCap], h.cap_bytes);
  StoreLe64(&out[kOffFirstSequence], h.first_sequence);
  StoreLe64(&out[kOffGeneration], h.generation);
  StoreLe64(&out[kOffCreated], static_cast<std::uint64_t>(h.created_unix_ns));
  StoreLe64(&out[kOffDev], h.dev);
  StoreLe64(&out[kOffIno], h.ino);
  StoreLe64(&out[kOffRdev], h.rdev);
  out[kOffKind] = static_cast<std::byte>(h.volume_kind);
  PutField(out, kOffGuest, kShortField, h.guest);
  PutField(out, kOffVolumeName, kShortField, h.volume_name);
  PutField(out, kOffProbeType, kShortField, h.probe_type);
  PutField(out, kOffUuid, kShortField, h.uuid);
  PutField(out, kOffPtuuid, kShortField, h.ptuuid);
  PutField(out, kOffPath, kMaxPathBytes, h.volume_path);
  StoreLe64(&out[kOffChecksum], core::Xxh3_64(out.data(), kOffChecksum));
  return out;
}

Result<FileHeader> DecodeHeader(std::span<const std::byte> in) {
  if (in.size() < kHeaderBytes) {
    return Bad("journal header is truncated: " + std::to_string(in.size()) + " of " +
               std::to_string(kHeaderBytes) + " bytes");
  }
  if (LoadLe64(&in[kOffMagic]) != kFileMagic) return Bad("journal header has a bad magic number");
  if (LoadLe64(&in[kOffChecksum]) != core::Xxh3_64(in.data(), kOffChecksum)) {
    return Bad("journal header checksum mismatch");
  }
  std::uint32_t version = LoadLe32(&in[kOffVersion]);
  if (version != kFormatVersion) {
    return Bad("journal format version " + std::to_string(version) + " is not supported");
  }
  if (LoadLe32(&in[kOffHeaderBytes]) != kHeaderBytes) return Bad("journal header size is wrong");
  FileHeader h;
  h.flags = LoadLe32(&in[kOffFlags]);
  h.block_size_bytes = LoadLe32(&in[kOffBlockSize]);
  h.volume_size_bytes = LoadLe64(&in[kOffVolumeSize]);
  h.extent_size_bytes = LoadLe32(&in[kOffExtentSize]);
  h.al_slots = LoadLe32(&in[kOffAlSlots]);
  h.cap_bytes = LoadLe64(&in[kOffCap]);
  h.first_sequence = LoadLe64(&in[kOffFirstSequence]);
  h.generation = LoadLe64(&in[kOffGeneration]);
  h.created_unix_ns = static_cast<std::int64_t>(LoadLe64(&in[kOffCreated]));
  h.dev = LoadLe64(&in[kOffDev]);
  h.ino = LoadLe64(&in[kOffIno]);
  h.rdev = LoadLe64(&in[kOffRdev]);
  h.volume_kind = static_cast<std::uint8_t>(in[kOffKind]);
  if ((h.flags & ~kHeaderFlagResyncRequired) != 0) return Bad("journal header has unknown flags");
  if (!IsPowerOfTwo(h.block_size_bytes) || h.block_size_bytes < kMinBlockSizeBytes ||
      h.block_size_bytes > kMaxBlockSizeBytes) {
    return Bad("journal header block size " + std::to_string(h.block_size_bytes) +
               " is not a power of two from 4 KiB to 1 MiB");
  }
  if (!IsPowerOfTwo(h.extent_size_bytes) || h.extent_size_bytes < h.block_size_bytes ||
      h.extent_size_bytes > kMaxExtentSizeBytes) {
    return Bad("journal header extent size " + std::to_string(h.extent_size_bytes) +
               " is invalid");
  }
  if (h.al_slots == 0 || h.al_slots > kMaxAlSlots) return Bad("journal header AL slot count is invalid");
  if (h.volume_size_bytes == 0 || h.volume_size_bytes > kMaxVolumeSizeBytes) {
    return Bad("journal header volume size " + std::to_string(h.volume_size_bytes) + " is invalid");
  }
  if (h.cap_bytes < kMinCapBytes) return Bad("journal header cap is below 64 KiB");
  if (h.volume_kind > 2) return Bad("journal header volume kind is invalid");
  for (std::size_t i = kOffKind + 1; i < kOffGuest; ++i) {
    if (in[i] != std::byte{0}) return Bad("journal header reserved bytes are not zero");
  }
  for (std::size_t i = kOffPath + kMaxPathBytes; i < kOffChecksum; ++i) {
    if (in[i] != std::byte{0}) return Bad("journal header reserved bytes are not zero");
  }
  if (!GetField(in, kOffGuest, kShortField, &h.guest) ||
      !GetField(in, kOffVolumeName, kShortField, &h.volume_name) ||
      !GetField(in, kOffProbeType, kShortField, &h.probe_type) ||
      !GetField(in, kOffUuid, kShortField, &h.uuid) ||
      !GetField(in, kOffPtuuid, kShortField, &h.ptuuid) ||
      !GetField(in, kOffPath, kMaxPathBytes, &h.volume_path)) {
    return Bad("journal header has bytes after a string's terminator");
  }
  if (!IsValidName(h.guest) || !IsValidName(h.volume_name)) {
    return Bad("journal header guest or volume name is invalid");
  }
  return h;
}

const char* RecordTypeName(RecordType type) {
  switch (type) {
    case RecordType::kCheckpointBegin: return "CHECKPOINT_BEGIN";
    case RecordType::kCheckpointEnd: return "CHECKPOINT_END";
    case RecordType::kTarget: return "TARGET";
    case RecordType::kTargetRemove: return "TARGET_REMOVE";
    case RecordType::kBits: return "BITS";
    case RecordType::kAlSwap: return "AL_SWAP";
    case RecordType::kFreezeBegin: return "FREEZE_BEGIN";
    case RecordType::kFreezeEnd: return "FREEZE_END";
    case RecordType::kCommit: return "COMMIT";
    case RecordType::kAbort: return "ABORT";
    case RecordType::kResyncRequired: return "RESYNC_REQUIRED";
    case RecordType::kSeal: return "SEAL";
  }
  return "UNKNOWN";
}

std::size_t RecordBytes(std::size_t payload_bytes) {
  return kRecordHeaderBytes + (payload_bytes + kRecordAlignmentBytes - 1) /
                                  kRecordAlignmentBytes * kRecordAlignmentBytes;
}

void AppendRecord(std::vector<std::byte>& out, RecordType type, std::uint64_t sequence,
                  std::uint64_t epoch, std::span<const std::byte> payload) {
  std::size_t start = out.size();
  out.resize(start + RecordBytes(payload.size()), std::byte{0});
  std::byte* h = out.data() + start;
  StoreLe32(h + 0, kRecordMagic);
  h[4] = static_cast<std::byte>(type);
  StoreLe32(h + 8, static_cast<std::uint32_t>(payload.size()));
  StoreLe64(h + 16, sequence);
  StoreLe64(h + 24, epoch);
  StoreLe64(h + 32, core::Xxh3_64(payload));
  StoreLe64(h + 40, core::Xxh3_64(h, 40));
  if (!payload.empty()) std::memcpy(h + kRecordHeaderBytes, payload.data(), payload.size());
}

std::string RecordScanner::Check(Record* record) const {
  std::uint64_t size = file_.size();
  if (size - offset_ < kRecordHeaderBytes) {
    return "record header cut off after " + std::to_string(size - offset_) + " bytes";
  }
  const std::byte* h = file_.data() + offset_;
  if (LoadLe32(h) != kRecordMagic) return "bad record magic";
  if (LoadLe64(h + 40) != core::Xxh3_64(h, 40)) return "record header checksum mismatch";
  std::uint8_t type = static_cast<std::uint8_t>(h[4]);
  if (type == 0 || type > kMaxRecordType) return "unknown record type " + std::to_string(type);
  if (h[5] != std::byte{0} || h[6] != std::byte{0} || h[7] != std::byte{0} ||
      LoadLe32(h + 12) != 0) {
    return "record reserved bytes are not zero";
  }
  std::uint32_t payload_bytes = LoadLe32(h + 8);
  if (payload_bytes > kMaxPayloadBytes) {
    return "record payload length " + std::to_string(payload_bytes) + " exceeds the cap";
  }
  std::uint64_t total = RecordBytes(payload_bytes);
  if (size - offset_ < total) {
    return "record cut off: " + std::to_string(size - offset_) + " of " +
           std::to_string(total) + " bytes present";
  }
  std::span<const std::byte> payload(h + kRecordHeaderBytes, payload_bytes);
  if (LoadLe64(h + 32) != core::Xxh3_64(payload)) return "record payload checksum mismatch";
  for (std::uint64_t i = kRecordHeaderBytes + payload_bytes; i < total; ++i) {
    if (h[i] != std::byte{0}) return "record padding is not zero";
  }
  std::uint64_t sequence = LoadLe64(h + 16);
  if (sequence != next_sequence_) {
    return "record sequence " + std::to_string(sequence) + " where " +
           std::to_string(next_sequence_) + " was expected";
  }
  record->type = static_cast<RecordType>(type);
  record->sequence = sequence;
  record->epoch = LoadLe64(h + 24);
  record->offset_bytes = offset_;
  record->size_bytes = total;
  record->payload = payload;
  return {};
}

bool RecordScanner::ValidRecordFollows(std::uint64_t after_offset) const {
  // Records are 8-byte aligned; a record header with a good magic and header
  // checksum anywhere after the bad one means the bad one is not the tail.
  std::uint64_t size = file_.size();
  for (std::uint64_t o = after_offset + kRecordAlignmentBytes;
       o + kRecordHeaderBytes <= size; o += kRecordAlignmentBytes) {
    const std::byte* h = file_.data() + o;
    if (LoadLe32(h) == kRecordMagic && LoadLe64(h + 40) == core::Xxh3_64(h, 40)) return true;
  }
  return false;
}

RecordScanner::Outcome RecordScanner::Next(Record* record) {
  if (offset_ >= file_.size()) return Outcome::kEnd;
  std::string problem = Check(record);
  if (problem.empty()) {
    offset_ += record->size_bytes;
    ++next_sequence_;
    return Outcome::kRecord;
  }
  error_ = "record " + std::to_string(next_sequence_) + " at offset " +
           std::to_string(offset_) + ": " + problem;
  return ValidRecordFollows(offset_) ? Outcome::kCorrupt : Outcome::kTornTail;
}

// ---- Payloads -------------------------------------------------------------

std::vector<std::byte> Encode(const CheckpointBegin& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_count);
  w.U32(p.flags);
  w.String16(p.base_reason);
  return out;
}

Result<CheckpointBegin> DecodeCheckpointBegin(std::span<const std::byte> b) {
  ByteReader r(b);
  CheckpointBegin p;
  p.target_count = r.U32();
  p.flags = r.U32();
  p.base_reason = r.String16(kMaxReasonBytes);
  if (r.ok() && (p.flags & ~std::uint32_t{kCheckpointFlagBaseUnknown}) != 0) {
    return Bad("CHECKPOINT_BEGIN has unknown flags");
  }
  if (r.ok() && p.target_count > kMaxTargets) return Bad("CHECKPOINT_BEGIN has too many targets");
  return Finish(r, std::move(p), "CHECKPOINT_BEGIN");
}

std::vector<std::byte> Encode(const CheckpointEnd& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.record_count);
  w.U32(0);
  return out;
}

Result<CheckpointEnd> DecodeCheckpointEnd(std::span<const std::byte> b) {
  ByteReader r(b);
  CheckpointEnd p;
  p.record_count = r.U32();
  if (r.U32() != 0) return Bad("CHECKPOINT_END reserved field is not zero");
  return Finish(r, p, "CHECKPOINT_END");
}

std::vector<std::byte> Encode(const TargetRecord& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_id);
  w.U8(p.flags);
  w.Zeroes(3);
  w.U64(p.last_cycle);
  w.String16(p.name);
  w.String16(p.resync_reason);
  return out;
}

Result<TargetRecord> DecodeTarget(std::span<const std::byte> b) {
  ByteReader r(b);
  TargetRecord p;
  p.target_id = r.U32();
  p.flags = r.U8();
  bool reserved_zero = r.U8() == 0 && r.U16() == 0;
  p.last_cycle = r.U64();
  p.name = r.String16(kMaxNameBytes);
  p.resync_reason = r.String16(kMaxReasonBytes);
  if (r.ok()) {
    if (!reserved_zero) return Bad("TARGET reserved bytes are not zero");
    if ((p.flags & ~(kTargetFlagNeedsFull | kTargetFlagNeedsResync)) != 0) {
      return Bad("TARGET has unknown flags");
    }
    if (!IsValidName(p.name)) return Bad("TARGET name is invalid");
    if (p.target_id == kAllTargets) return Bad("TARGET id is reserved");
  }
  return Finish(r, std::move(p), "TARGET");
}

std::vector<std::byte> Encode(const TargetRemove& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_id);
  w.U32(0);
  return out;
}

Result<TargetRemove> DecodeTargetRemove(std::span<const std::byte> b) {
  ByteReader r(b);
  TargetRemove p;
  p.target_id = r.U32();
  if (r.U32() != 0) return Bad("TARGET_REMOVE reserved field is not zero");
  return Finish(r, p, "TARGET_REMOVE");
}

namespace {
constexpr std::uint8_t kEncodingRaw = 0;
constexpr std::uint8_t kEncodingRuns = 1;

std::uint64_t WordAt(const std::vector<std::uint64_t>& words, std::uint64_t first_block) {
  std::uint64_t w = first_block >> 6;
  unsigned shift = static_cast<unsigned>(first_block & 63);
  std::uint64_t bits = w < words.size() ? words[w] >> shift : 0;
  if (shift != 0 && w + 1 < words.size()) bits |= words[w + 1] << (64 - shift);
  return bits;
}
}  // namespace

std::vector<std::byte> EncodeBits(SetKind kind, std::uint32_t target_id,
                                  std::uint64_t first_block, std::uint64_t block_count,
                                  const std::vector<std::uint64_t>& words) {
  // Collect runs (relative), stopping once they would not beat raw words.
  std::uint64_t word_count = (block_count + 63) / 64;
  std::uint64_t raw_bytes = word_count * 8;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
  bool use_runs = true;
  std::uint64_t run_start = 0;
  bool in_run = false;
  for (std::uint64_t i = 0; i < word_count && use_runs; ++i) {
    std::uint64_t bits = WordAt(words, first_block + i * 64);
    std::uint64_t valid = std::min<std::uint64_t>(64, block_count - i * 64);
    if (valid < 64) bits &= (std::uint64_t{1} << valid) - 1;
    if ((bits == 0 && !in_run) || (bits == ~std::uint64_t{0} && in_run)) continue;
    for (std::uint64_t j = 0; j < valid; ++j) {
      bool set = (bits >> j) & 1U;
      if (set && !in_run) {
        run_start = i * 64 + j;
        in_run = true;
      } else if (!set && in_run) {
        runs.emplace_back(run_start, i * 64 + j - run_start);
        in_run = false;
      }
    }
    if ((runs.size() + 1) * 16 + 8 >= raw_bytes) use_runs = false;
  }
  if (in_run) runs.emplace_back(run_start, block_count - run_start);
  if ((runs.size() * 16 + 8) >= raw_bytes) use_runs = false;

  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U8(static_cast<std::uint8_t>(kind));
  w.U8(use_runs ? kEncodingRuns : kEncodingRaw);
  w.U16(0);
  w.U32(target_id);
  w.U64(first_block);
  w.U64(block_count);
  if (use_runs) {
    w.U32(static_cast<std::uint32_t>(runs.size()));
    w.U32(0);
    for (auto [start, length] : runs) {
      w.U64(start);
      w.U64(length);
    }
  } else {
    for (std::uint64_t i = 0; i < word_count; ++i) {
      std::uint64_t bits = WordAt(words, first_block + i * 64);
      std::uint64_t valid = std::min<std::uint64_t>(64, block_count - i * 64);
      if (valid < 64) bits &= (std::uint64_t{1} << valid) - 1;
      w.U64(bits);
    }
  }
  return out;
}

Result<Bits> DecodeBits(std::span<const std::byte> b) {
  ByteReader r(b);
  Bits p;
  std::uint8_t kind = r.U8();
  std::uint8_t encoding = r.U8();
  std::uint16_t reserved = r.U16();
  p.target_id = r.U32();
  p.first_block = r.U64();
  p.block_count = r.U64();
  if (!r.ok()) return Bad("BITS record is truncated");
  if (!ValidKind(kind)) return Bad("BITS record has unknown set kind " + std::to_string(kind));
  p.kind = static_cast<SetKind>(kind);
  if (reserved != 0) return Bad("BITS reserved field is not zero");
  if (p.block_count == 0 || p.block_count > kMaxBitsRecordBlocks) {
    return Bad("BITS record block count " + std::to_string(p.block_count) + " is invalid");
  }
  if (p.first_block > (std::uint64_t{1} << 60)) return Bad("BITS record first block is invalid");
  if (encoding == kEncodingRuns) {
    std::uint32_t count = r.U32();
    if (r.U32() != 0) return Bad("BITS runs reserved field is not zero");
    if (!r.ok() || count > r.remaining() / 16) return Bad("BITS run count exceeds the record");
    std::uint64_t previous_end = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
      std::uint64_t start = r.U64();
      std::uint64_t length = r.U64();
      if (length == 0 || start < previous_end || start > p.block_count ||
          length > p.block_count - start) {
        return Bad("BITS run " + std::to_string(i) + " is out of order or out of range");
      }
      previous_end = start + length;
      p.runs.emplace_back(p.first_block + start, length);
    }
  } else if (encoding == kEncodingRaw) {
    std::uint64_t word_count = (p.block_count + 63) / 64;
    if (r.remaining() != word_count * 8) return Bad("BITS raw bitmap has the wrong length");
    std::uint64_t run_start = 0;
    bool in_run = false;
    for (std::uint64_t i = 0; i < word_count; ++i) {
      std::uint64_t bits = r.U64();
      std::uint64_t valid = std::min<std::uint64_t>(64, p.block_count - i * 64);
      if (valid < 64 && (bits >> valid) != 0) return Bad("BITS raw bitmap has bits past its end");
      for (std::uint64_t j = 0; j < valid; ++j) {
        bool set = (bits >> j) & 1U;
        if (set && !in_run) {
          run_start = i * 64 + j;
          in_run = true;
        } else if (!set && in_run) {
          p.runs.emplace_back(p.first_block + run_start, i * 64 + j - run_start);
          in_run = false;
        }
      }
    }
    if (in_run) p.runs.emplace_back(p.first_block + run_start, p.block_count - run_start);
  } else {
    return Bad("BITS record has unknown encoding " + std::to_string(encoding));
  }
  return Finish(r, std::move(p), "BITS");
}

std::vector<std::byte> Encode(const AlSwap& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.slot);
  w.U32(static_cast<std::uint32_t>(p.sets.size()));
  w.U64(p.new_extent);
  w.U64(p.old_extent);
  w.U32(p.words_per_set);
  w.U32(0);
  for (const auto& set : p.sets) {
    w.U8(static_cast<std::uint8_t>(set.kind));
    w.Zeroes(3);
    w.U32(set.target_id);
    for (std::uint64_t word : set.words) w.U64(word);
  }
  return out;
}

Result<AlSwap> DecodeAlSwap(std::span<const std::byte> b) {
  ByteReader r(b);
  AlSwap p;
  p.slot = r.U32();
  std::uint32_t set_count = r.U32();
  p.new_extent = r.U64();
  p.old_extent = r.U64();
  p.words_per_set = r.U32();
  std::uint32_t reserved = r.U32();
  if (!r.ok()) return Bad("AL_SWAP record is truncated");
  if (reserved != 0) return Bad("AL_SWAP reserved field is not zero");
  if (set_count > kMaxTargets + 1) return Bad("AL_SWAP has too many sets");
  if (p.words_per_set > kMaxExtentSizeBytes / kMinBlockSizeBytes / 64) {
    return Bad("AL_SWAP words per set is invalid");
  }
  if (p.old_extent == kNoExtent && set_count != 0) return Bad("AL_SWAP has bits but no old extent");
  if (static_cast<std::uint64_t>(set_count) * (8 + 8ULL * p.words_per_set) != r.remaining()) {
    return Bad("AL_SWAP length does not match its set count");
  }
  for (std::uint32_t i = 0; i < set_count; ++i) {
    AlSwap::SetBits set;
    std::uint8_t kind = r.U8();
    bool zero = r.U8() == 0 && r.U16() == 0;
    set.target_id = r.U32();
    if (!ValidKind(kind) || static_cast<SetKind>(kind) == SetKind::kFrozen || !zero) {
      return Bad("AL_SWAP set " + std::to_string(i) + " has a bad kind or reserved bytes");
    }
    set.kind = static_cast<SetKind>(kind);
    set.words.resize(p.words_per_set);
    for (auto& word : set.words) word = r.U64();
    p.sets.push_back(std::move(set));
  }
  return Finish(r, std::move(p), "AL_SWAP");
}

std::vector<std::byte> Encode(const FreezeBegin& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_id);
  w.U8(static_cast<std::uint8_t>(p.mode));
  w.Zeroes(3);
  return out;
}

Result<FreezeBegin> DecodeFreezeBegin(std::span<const std::byte> b) {
  ByteReader r(b);
  FreezeBegin p;
  p.target_id = r.U32();
  std::uint8_t mode = r.U8();
  bool zero = r.U8() == 0 && r.U16() == 0;
  if (r.ok() && (mode > static_cast<std::uint8_t>(CycleMode::kResync) || !zero)) {
    return Bad("FREEZE_BEGIN has an unknown mode or reserved bytes");
  }
  p.mode = static_cast<CycleMode>(mode);
  return Finish(r, p, "FREEZE_BEGIN");
}

std::vector<std::byte> Encode(const FreezeEnd& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_id);
  w.U32(0);
  w.U64(p.frozen_blocks);
  return out;
}

Result<FreezeEnd> DecodeFreezeEnd(std::span<const std::byte> b) {
  ByteReader r(b);
  FreezeEnd p;
  p.target_id = r.U32();
  if (r.U32() != 0 && r.ok()) return Bad("FREEZE_END reserved field is not zero");
  p.frozen_blocks = r.U64();
  return Finish(r, p, "FREEZE_END");
}

std::vector<std::byte> Encode(const CycleEnd& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_id);
  w.U32(0);
  w.U64(p.epoch);
  return out;
}

Result<CycleEnd> DecodeCycleEnd(std::span<const std::byte> b) {
  ByteReader r(b);
  CycleEnd p;
  p.target_id = r.U32();
  if (r.U32() != 0 && r.ok()) return Bad("COMMIT/ABORT reserved field is not zero");
  p.epoch = r.U64();
  return Finish(r, p, "COMMIT/ABORT");
}

std::vector<std::byte> Encode(const ResyncRequired& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U32(p.target_id);
  w.String16(p.reason);
  return out;
}

Result<ResyncRequired> DecodeResyncRequired(std::span<const std::byte> b) {
  ByteReader r(b);
  ResyncRequired p;
  p.target_id = r.U32();
  p.reason = r.String16(kMaxReasonBytes);
  return Finish(r, std::move(p), "RESYNC_REQUIRED");
}

std::vector<std::byte> Encode(const Seal& p) {
  std::vector<std::byte> out;
  ByteWriter w(out);
  w.U64(static_cast<std::uint64_t>(p.sealed_unix_ns));
  w.U8(p.volume_kind);
  w.Zeroes(7);
  w.U64(p.size_bytes);
  w.U64(p.dev);
  w.U64(p.ino);
  w.U64(p.rdev);
  w.U64(static_cast<std::uint64_t>(p.mtime_ns));
  w.U64(p.sectors_written);
  w.String16(p.boot_id);
  w.String16(p.probe_type);
  w.String16(p.uuid);
  w.String16(p.ptuuid);
  return out;
}

Result<Seal> DecodeSeal(std::span<const std::byte> b) {
  ByteReader r(b);
  Seal p;
  p.sealed_unix_ns = static_cast<std::int64_t>(r.U64());
  p.volume_kind = r.U8();
  bool zero = r.U8() == 0 && r.U16() == 0 && r.U32() == 0;
  p.size_bytes = r.U64();
  p.dev = r.U64();
  p.ino = r.U64();
  p.rdev = r.U64();
  p.mtime_ns = static_cast<std::int64_t>(r.U64());
  p.sectors_written = r.U64();
  p.boot_id = r.String16(kShortField);
  p.probe_type = r.String16(kShortField);
  p.uuid = r.String16(kShortField);
  p.ptuuid = r.String16(kShortField);
  if (r.ok() && (!zero || p.volume_kind > 2)) return Bad("SEAL has a bad volume kind or reserved bytes");
  return Finish(r, std::move(p), "SEAL");
}

}  // namespace blkrep::tracker::journal_format
