#include "receiver/staging.h"

#include <algorithm>
#include <iterator>
#include <map>

#include "core/bytes.h"
#include "core/hash.h"
#include "proto/frame.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::uint32_t kIndexMagic = 0x58524B42;   // "BKRX"
constexpr std::uint32_t kRecordMagic = 0x52524B42;  // "BKRR"
constexpr std::uint32_t kIndexVersion = 1;
constexpr std::size_t kIndexHeaderBytes = 32;
constexpr std::size_t kRecordHeaderBytes = 40;

std::string IndexPath(const std::string& dir, const std::string& name) { return dir + "/" + name + ".index"; }
std::string DataPath(const std::string& dir, const std::string& name) { return dir + "/" + name + ".data"; }

std::vector<std::byte> EncodeIndexHeader(std::uint64_t staging_id, std::uint32_t block_size_bytes) {
  std::vector<std::byte> out;
  core::ByteWriter w(out);
  w.U32(kIndexMagic);
  w.U32(kIndexVersion);
  w.U64(staging_id);
  w.U32(block_size_bytes);
  w.U32(0);
  w.U64(core::Xxh3_64(out));
  return out;
}

bool HasHashes(RecordKind kind) { return kind == RecordKind::kData || kind == RecordKind::kKeep; }

// A staging's block size is a HELLO's: a power of two inside the wire's caps.
bool ValidBlockSize(std::uint32_t block_size_bytes) {
  return block_size_bytes >= proto::kMinBlockSizeBytes && block_size_bytes <= proto::kMaxBlockSizeBytes &&
         (block_size_bytes & (block_size_bytes - 1)) == 0;
}

// The gate for the 40 fixed bytes of an index record (docs/replica-format.md,
// "Reading", step 2): every field is checked here, before anything is sized
// or addressed by it. kEndOfData naming the field when the bytes cannot
// start a valid record (which ends the log); otherwise the fixed fields, and
// in *hash_count how many hashes follow.
Result<IndexRecord> DecodeRecordFixed(std::span<const std::byte> fixed, std::uint64_t* hash_count) {
  core::ByteReader r(fixed);
  IndexRecord rec;
  std::uint32_t magic = r.U32();
  std::uint8_t kind = r.U8();
  std::uint8_t pad8 = r.U8();
  std::uint16_t pad16 = r.U16();
  rec.attempt = r.U32();
  std::uint32_t pad32 = r.U32();
  rec.first_block = r.U64();
  rec.block_count = r.U64();
  rec.first_slot = r.U64();
  if (!r.ok()) return Status::EndOfData("torn record header");
  if (magic != kRecordMagic) return Status::EndOfData("bad record magic");
  if (kind < 1 || kind > 4) return Status::EndOfData("bad record kind " + std::to_string(kind));
  if (pad8 != 0 || pad16 != 0 || pad32 != 0) return Status::EndOfData("reserved record bytes not 0");
  if (rec.block_count == 0) return Status::EndOfData("record of 0 blocks");
  rec.kind = static_cast<RecordKind>(kind);
  *hash_count = 0;
  if (HasHashes(rec.kind)) {
    if (rec.block_count > kMaxHashesPerRecord) {
      return Status::EndOfData("record of " + std::to_string(rec.block_count) + " blocks, more than " +
                               std::to_string(kMaxHashesPerRecord));
    }
    *hash_count = rec.block_count;
  }
  if (rec.kind == RecordKind::kData) {
    if (rec.first_slot != kNoSlot && rec.first_slot >= kSlotLimit) {
      return Status::EndOfData("data record slot " + std::to_string(rec.first_slot) + " is impossible");
    }
  } else if (rec.first_slot != kNoSlot) {
    return Status::EndOfData("a record other than data names slot " + std::to_string(rec.first_slot));
  }
  return rec;
}

// Block ranges as disjoint, non-adjacent [first, end) intervals. Its memory
// is O(ranges added), whatever the block numbers.
class RangeSet {
 public:
  // Calls gap(first, end) for each maximal part of [first, end) not in the
  // set, in increasing order, then adds [first, end). REQUIRES: first < end.
  template <typename Fn>
  void AddReportingGaps(std::uint64_t first, std::uint64_t end, Fn gap) {
    auto it = ranges_.upper_bound(first);
    if (it != ranges_.begin() && std::prev(it)->second >= first) --it;
    std::uint64_t merged_first = first, merged_end = end, cursor = first;
    while (it != ranges_.end() && it->first <= end) {
      if (it->first > cursor) gap(cursor, it->first);
      cursor = std::max(cursor, it->second);
      merged_first = std::min(merged_first, it->first);
      merged_end = std::max(merged_end, it->second);
      it = ranges_.erase(it);
    }
    if (cursor < end) gap(cursor, end);
    ranges_.emplace(merged_first, merged_end);
  }

 private:
  std::map<std::uint64_t, std::uint64_t> ranges_;  // first -> end
};

}  // namespace

bool RecordInVolume(const IndexRecord& record, std::uint64_t volume_blocks) {
  return record.first_block < volume_blocks && record.block_count <= volume_blocks - record.first_block;
}

void EncodeIndexRecord(const IndexRecord& r, std::vector<std::byte>& out) {
  std::size_t start = out.size();
  core::ByteWriter w(out);
  w.U32(kRecordMagic);
  w.U8(static_cast<std::uint8_t>(r.kind));
  w.U8(0);
  w.U16(0);
  w.U32(r.attempt);
  w.U32(0);
  w.U64(r.first_block);
  w.U64(r.block_count);
  w.U64(r.first_slot);
  for (std::uint64_t h : r.hashes) w.U64(h);
  w.U64(core::Xxh3_64(std::span(out).subspan(start)));
}

// ---- StagedBlocks, BlockBitmap ----

const StagedBlock* StagedBlocks::Find(std::uint64_t block) const {
  auto it = std::lower_bound(blocks_.begin(), blocks_.end(), block,
                             [](const StagedBlock& b, std::uint64_t v) { return b.block < v; });
  return it != blocks_.end() && it->block == block ? &*it : nullptr;
}

bool StagedBlocks::AnyIn(std::uint64_t first, std::uint64_t count) const {
  auto it = std::lower_bound(blocks_.begin(), blocks_.end(), first,
                             [](const StagedBlock& b, std::uint64_t v) { return b.block < v; });
  return it != blocks_.end() && it->block - first < count;
}

std::uint64_t BlockBitmap::FirstSetIn(std::uint64_t first, std::uint64_t count) const {
  std::uint64_t end = first + count;
  std::uint64_t b = first;
  while (b < end) {
    std::uint64_t word = words_[b / 64] >> (b % 64);
    if (word != 0) {
      std::uint64_t hit = b + static_cast<std::uint64_t>(__builtin_ctzll(word));
      return hit < end ? hit : kNoSlot;
    }
    b = (b / 64 + 1) * 64;
  }
  return kNoSlot;
}

void BlockBitmap::SetRange(std::uint64_t first, std::uint64_t count) {
  std::uint64_t b = first;
  std::uint64_t end = first + count;
  while (b < end && b % 64 != 0) Set(b++);
  while (end - b >= 64) {
    words_[b / 64] = ~std::uint64_t{0};
    b += 64;
  }
  while (b < end) Set(b++);
}

// ---- StagingFiles ----

StagingFiles::StagingFiles(std::string index_path, std::unique_ptr<core::File> index,
                           std::unique_ptr<core::File> data, std::uint32_t block_size_bytes)
    : index_path_(std::move(index_path)),
      index_(std::move(index)),
      data_(std::move(data)),
      block_size_bytes_(block_size_bytes) {}

Result<std::unique_ptr<StagingFiles>> StagingFiles::Create(core::FileSystem& fs, const std::string& dir,
                                                           const std::string& name, std::uint64_t staging_id,
                                                           std::uint32_t block_size_bytes) {
  if (!ValidBlockSize(block_size_bytes)) {
    return Status::InvalidArgument("staging block size " + std::to_string(block_size_bytes) + " out of range");
  }
  BLKREP_RETURN_IF_ERROR(fs.CreateDirectories(dir));
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> data,
                          fs.Open(DataPath(dir, name), core::OpenMode::kCreateTruncate));
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> index,
                          fs.Open(IndexPath(dir, name), core::OpenMode::kCreateTruncate));
  std::vector<std::byte> header = EncodeIndexHeader(staging_id, block_size_bytes);
  BLKREP_RETURN_IF_ERROR(index->WriteAt(0, header));
  BLKREP_RETURN_IF_ERROR(index->Sync());
  BLKREP_RETURN_IF_ERROR(data->Sync());
  BLKREP_RETURN_IF_ERROR(fs.SyncDir(dir));
  std::unique_ptr<StagingFiles> files(
      new StagingFiles(IndexPath(dir, name), std::move(index), std::move(data), block_size_bytes));
  files->index_size_bytes_ = files->valid_bytes_ = header.size();
  return files;
}

Result<std::unique_ptr<StagingFiles>> StagingFiles::Open(core::FileSystem& fs, const std::string& dir,
                                                         const std::string& name, std::uint64_t staging_id,
                                                         std::uint32_t block_size_bytes) {
  if (!ValidBlockSize(block_size_bytes)) {
    return Status::Corruption(IndexPath(dir, name) + ": staging block size " + std::to_string(block_size_bytes) +
                              " is not a power of two in [" + std::to_string(proto::kMinBlockSizeBytes) + ", " +
                              std::to_string(proto::kMaxBlockSizeBytes) + "]");
  }
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> index,
                          fs.Open(IndexPath(dir, name), core::OpenMode::kReadWrite));
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> data,
                          fs.Open(DataPath(dir, name), core::OpenMode::kReadWrite));
  std::string path = IndexPath(dir, name);
  std::vector<std::byte> header(kIndexHeaderBytes);
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, index->ReadAt(0, header));
  if (got != header.size() || header != EncodeIndexHeader(staging_id, block_size_bytes)) {
    return Status::Corruption(path + ": header does not belong to staging " + std::to_string(staging_id));
  }
  std::unique_ptr<StagingFiles> files(new StagingFiles(path, std::move(index), std::move(data), block_size_bytes));
  BLKREP_RETURN_IF_ERROR(files->Scan());
  return files;
}

Status StagingFiles::Remove(core::FileSystem& fs, const std::string& dir, const std::string& name) {
  for (const std::string& path : {IndexPath(dir, name), DataPath(dir, name)}) {
    BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(path));
    if (exists) BLKREP_RETURN_IF_ERROR(fs.Remove(path));
  }
  return Status::Ok();
}

Result<IndexRecord> StagingFiles::ReadRecord(std::uint64_t offset, std::uint64_t* next_offset) {
  std::byte header[kRecordHeaderBytes];
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, index_->ReadAt(offset, header));
  std::uint64_t hash_count = 0;
  BLKREP_ASSIGN_OR_RETURN(IndexRecord rec, DecodeRecordFixed(std::span(header, got), &hash_count));
  // hash_count <= kMaxHashesPerRecord: at most 512 KiB.
  std::vector<std::byte> rest(hash_count * 8 + 8);
  BLKREP_ASSIGN_OR_RETURN(got, index_->ReadAt(offset + kRecordHeaderBytes, rest));
  if (got != rest.size()) return Status::EndOfData("torn record");
  core::Xxh3Stream h;
  h.Update(header);
  h.Update(std::span(rest).first(hash_count * 8));
  if (h.Digest() != core::LoadLe64(rest.data() + hash_count * 8)) return Status::EndOfData("record checksum");
  rec.hashes.resize(hash_count);
  for (std::uint64_t i = 0; i < hash_count; ++i) rec.hashes[i] = core::LoadLe64(rest.data() + i * 8);
  *next_offset = offset + kRecordHeaderBytes + rest.size();
  return rec;
}

Status StagingFiles::Scan() {
  BLKREP_ASSIGN_OR_RETURN(index_size_bytes_, index_->Size());
  std::uint64_t offset = kIndexHeaderBytes;
  record_offsets_.clear();
  next_slot_ = 0;
  while (offset < index_size_bytes_) {
    std::uint64_t next = 0;
    Result<IndexRecord> rec = ReadRecord(offset, &next);
    if (!rec.ok()) {
      if (rec.status().code() == core::Code::kEndOfData) break;  // torn tail: the log ends here
      return rec.status();
    }
    if (rec->kind == RecordKind::kData && rec->first_slot != kNoSlot) {
      // The gate keeps first_slot below kSlotLimit: no overflow.
      next_slot_ = std::max(next_slot_, rec->first_slot + rec->block_count);
    }
    record_offsets_.push_back(offset);
    offset = next;
  }
  valid_bytes_ = offset;
  return Status::Ok();
}

Status StagingFiles::TruncateToValid() {
  if (index_size_bytes_ == valid_bytes_) return Status::Ok();
  BLKREP_RETURN_IF_ERROR(index_->Truncate(valid_bytes_));
  BLKREP_RETURN_IF_ERROR(index_->Sync());
  index_size_bytes_ = valid_bytes_;
  return Status::Ok();
}

Status StagingFiles::ForEachRecord(const std::function<Status(const IndexRecord&)>& fn) {
  for (std::uint64_t offset : record_offsets_) {
    std::uint64_t next = 0;
    Result<IndexRecord> rec = ReadRecord(offset, &next);
    if (!rec.ok()) {
      if (rec.status().code() == core::Code::kEndOfData) {
        return Status::Corruption(index_path_ + ": record at byte " + std::to_string(offset) +
                                  " changed after it was read");
      }
      return rec.status();
    }
    BLKREP_RETURN_IF_ERROR(fn(*rec));
  }
  return Status::Ok();
}

Result<StagedBlocks> StagingFiles::LoadCandidates(std::uint32_t attempt_limit, std::uint64_t volume_blocks) {
  // Walk the log backwards: the first record (from the end) that covers a
  // block decides it; keep records decide nothing. Nothing here is sized by
  // volume_blocks: the decided blocks are kept as ranges, and the result
  // holds at most one entry per hash in the index.
  RangeSet decided;
  std::vector<StagedBlock> blocks;
  for (auto it = record_offsets_.rbegin(); it != record_offsets_.rend(); ++it) {
    std::uint64_t next = 0;
    Result<IndexRecord> rec = ReadRecord(*it, &next);
    if (!rec.ok()) {
      if (rec.status().code() == core::Code::kEndOfData) {
        return Status::Corruption(index_path_ + ": record at byte " + std::to_string(*it) + " changed");
      }
      return rec.status();
    }
    if (rec->attempt >= attempt_limit || rec->kind == RecordKind::kKeep) continue;
    if (!RecordInVolume(*rec, volume_blocks)) {
      return Status::Corruption(index_path_ + ": record at byte " + std::to_string(*it) +
                                " lies past the end of the volume");
    }
    const bool data = rec->kind == RecordKind::kData;
    decided.AddReportingGaps(rec->first_block, rec->first_block + rec->block_count,
                             [&](std::uint64_t first, std::uint64_t end) {
                               if (!data) return;
                               for (std::uint64_t b = first; b < end; ++b) {
                                 std::uint64_t i = b - rec->first_block;
                                 std::uint64_t slot = rec->first_slot == kNoSlot ? kNoSlot : rec->first_slot + i;
                                 blocks.push_back(StagedBlock{b, rec->hashes[i], slot});
                               }
                             });
  }
  std::sort(blocks.begin(), blocks.end(),
            [](const StagedBlock& a, const StagedBlock& b) { return a.block < b.block; });
  return StagedBlocks(std::move(blocks));
}

Status StagingFiles::WriteData(std::uint64_t slot, std::span<const std::byte> data) {
  data_dirty_ = true;
  return data_->WriteAt(slot * block_size_bytes_, data);
}

Status StagingFiles::ReadData(std::uint64_t slot, std::span<std::byte> out) {
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, data_->ReadAt(slot * block_size_bytes_, out));
  if (got != out.size()) {
    return Status::Corruption(index_path_ + ": staged data of slot " + std::to_string(slot) + " is missing");
  }
  return Status::Ok();
}

void StagingFiles::AddRecord(const IndexRecord& record) {
  pending_offsets_.push_back(pending_.size());
  EncodeIndexRecord(record, pending_);
  if (record.kind == RecordKind::kData && record.first_slot != kNoSlot) {
    pending_next_slot_ = std::max(pending_next_slot_, record.first_slot + record.block_count);
  }
}

Status StagingFiles::Flush() {
  if (data_dirty_) {
    BLKREP_RETURN_IF_ERROR(data_->Sync());
    data_dirty_ = false;
  }
  if (pending_.empty()) return Status::Ok();
  BLKREP_RETURN_IF_ERROR(index_->WriteAt(index_size_bytes_, pending_));
  BLKREP_RETURN_IF_ERROR(index_->Sync());
  for (std::uint64_t relative : pending_offsets_) record_offsets_.push_back(index_size_bytes_ + relative);
  index_size_bytes_ += pending_.size();
  valid_bytes_ = index_size_bytes_;
  next_slot_ = std::max(next_slot_, pending_next_slot_);
  pending_.clear();
  pending_offsets_.clear();
  return Status::Ok();
}

}  // namespace blkrep::receiver
