// Journal implementation: recovery (replay), the MarkDirty fast and slow
// paths, freeze/commit, checkpoints and compaction. See journal.h for the
// design note and docs/journal-format.md for the format.
#include "tracker/journal.h"

#include <algorithm>
#include <bit>
#include <new>
#include <chrono>
#include <cstdio>
#include <map>

namespace blkrep::tracker {

namespace jf = journal_format;
using core::Result;
using core::Status;

const char* CycleModeName(CycleMode mode) {
  switch (mode) {
    case CycleMode::kIncremental: return "incremental";
    case CycleMode::kFull: return "full";
    case CycleMode::kResync: return "resync";
  }
  return "unknown";
}

namespace {

std::int64_t NowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct TargetData {
  std::uint32_t id = 0;
  std::string name;
  bool needs_full = false;
  bool needs_resync = false;
  bool resync_raised_while_frozen = false;
  std::string resync_reason;
  std::uint64_t last_cycle = 0;
  DirtyBitmap live;
  bool frozen = false;
  std::uint64_t frozen_epoch = 0;
  CycleMode frozen_mode = CycleMode::kIncremental;
  DirtyBitmap frozen_bits;

  // Ends the frozen cycle without committing it: its blocks are dirty again.
  void Unfreeze() {
    live.Or(frozen_bits);
    frozen = false;
    frozen_bits = DirtyBitmap();
    resync_raised_while_frozen = false;
  }
};

}  // namespace

struct Journal::State {
  jf::FileHeader header;
  std::uint64_t block_count = 0;
  std::uint64_t blocks_per_extent = 0;
  std::uint64_t extent_count = 0;
  unsigned block_shift = 0;   // log2(block size): sizes are powers of two
  unsigned extent_shift = 0;  // log2(blocks per extent)
  DirtyBitmap base;
  bool base_unknown = false;
  std::string base_reason;
  std::vector<TargetData> targets;
  std::vector<std::uint64_t> slot_extent;   // al slot -> extent or kNoExtent
  std::vector<std::int32_t> extent_slot;    // extent -> slot, -1 when cold
  std::vector<std::uint8_t> referenced;     // clock bits per slot
  std::uint32_t clock_hand = 0;
  std::uint64_t epoch = 0;
  std::uint64_t next_sequence = 1;
  bool sealed = false;
  std::optional<jf::Seal> seal;
  bool degraded = false;
  std::string torn_tail;

  void InitGeometry() {
    block_count = (header.volume_size_bytes + header.block_size_bytes - 1) / header.block_size_bytes;
    blocks_per_extent = header.extent_size_bytes / header.block_size_bytes;
    extent_count = (block_count + blocks_per_extent - 1) / blocks_per_extent;
    block_shift = static_cast<unsigned>(std::countr_zero(header.block_size_bytes));
    extent_shift = static_cast<unsigned>(std::countr_zero(blocks_per_extent));
    base = DirtyBitmap(block_count);
    slot_extent.assign(header.al_slots, jf::kNoExtent);
    extent_slot.assign(extent_count, -1);
    referenced.assign(header.al_slots, 0);
  }

  TargetData* FindTarget(std::uint32_t id) {
    for (auto& t : targets) {
      if (t.id == id) return &t;
    }
    return nullptr;
  }
  TargetData* FindTarget(const std::string& name) {
    for (auto& t : targets) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }

  std::uint64_t ExtentFirstBlock(std::uint64_t extent) const { return extent * blocks_per_extent; }
  std::uint64_t ExtentBlockCount(std::uint64_t extent) const {
    return std::min(blocks_per_extent, block_count - ExtentFirstBlock(extent));
  }
  std::uint32_t WordsPerExtent() const {
    return static_cast<std::uint32_t>((blocks_per_extent + 63) / 64);
  }

  // Sets [first, end) in the base and every target's live set.
  void SetDirty(std::uint64_t first_block, std::uint64_t end_block) {
    base.SetRange(first_block, end_block - first_block);
    for (auto& t : targets) t.live.SetRange(first_block, end_block - first_block);
  }

  void MarkResync(TargetData& t, const std::string& reason) {
    if (!t.needs_resync) t.resync_reason = reason;
    t.needs_resync = true;
    if (t.frozen) t.resync_raised_while_frozen = true;
  }
  void MarkResyncAll(const std::string& reason) {
    for (auto& t : targets) MarkResync(t, reason);
    if (!base_unknown) base_reason = reason;
    base_unknown = true;
    base.SetAll();
  }

  // Every block of every AL extent becomes dirty, and the AL empties.
  void FoldActivityLog() {
    for (auto& extent : slot_extent) {
      if (extent == jf::kNoExtent) continue;
      std::uint64_t first = ExtentFirstBlock(extent);
      SetDirty(first, first + ExtentBlockCount(extent));
      extent_slot[extent] = -1;
      extent = jf::kNoExtent;
    }
  }

  // A cycle cut off by a crash is abandoned: its blocks are dirty again.
  void AbandonFrozen() {
    for (auto& t : targets) {
      if (t.frozen) t.Unfreeze();
    }
  }

  // Changes the volume size. New blocks are dirty for everyone.
  void Resize(std::uint64_t size_bytes) {
    FoldActivityLog();
    AbandonFrozen();
    header.volume_size_bytes = size_bytes;
    std::uint64_t old_blocks = block_count;
    block_count = (size_bytes + header.block_size_bytes - 1) / header.block_size_bytes;
    extent_count = (block_count + blocks_per_extent - 1) / blocks_per_extent;
    base.Resize(block_count, true);
    for (auto& t : targets) t.live.Resize(block_count, true);
    extent_slot.assign(extent_count, -1);
    if (old_blocks > 0 && block_count > 0) {
      // The old last block may have been partial: treat it as changed.
      SetDirty(std::min(old_blocks, block_count) - 1, std::min(old_blocks, block_count));
    }
  }

  DirtyBitmap VolumeDirty() const {
    if (targets.empty()) return base;
    DirtyBitmap all(block_count);
    for (const auto& t : targets) {
      all.Or(t.live);
      if (t.frozen) all.Or(t.frozen_bits);
    }
    return all;
  }
};

namespace {

using State = Journal::State;

// Applies records to a State. Each Apply* validates the record against the
// state first (ranges, ids, epochs) and returns kCorruption naming the
// problem, leaving the state as it was before the record.
class Replayer {
 public:
  explicit Replayer(State& s) : s_(s) {}

  Status Apply(const jf::Record& r) {
    if (s_.sealed) return Status::Corruption("a record follows the seal");
    if (record_index_ == 0 && r.type != jf::RecordType::kCheckpointBegin) {
      return Status::Corruption("the journal does not start with a checkpoint");
    }
    ++record_index_;
    if (in_checkpoint_) ++checkpoint_records_;
    if (r.type == jf::RecordType::kCheckpointBegin) {
      if (record_index_ != 1) return Status::Corruption("CHECKPOINT_BEGIN after the first record");
    } else if (r.type == jf::RecordType::kFreezeEnd && in_checkpoint_) {
      if (r.epoch == 0 || r.epoch > s_.epoch) {
        return Status::Corruption("checkpointed FREEZE_END epoch " + std::to_string(r.epoch) +
                                  " is not at or before the checkpoint's epoch " +
                                  std::to_string(s_.epoch));
      }
    } else if (r.type == jf::RecordType::kFreezeEnd) {
      if (r.epoch != s_.epoch + 1) {
        return Status::Corruption("FREEZE_END epoch " + std::to_string(r.epoch) + " where " +
                                  std::to_string(s_.epoch + 1) + " was expected");
      }
    } else if (r.epoch != s_.epoch) {
      return Status::Corruption("record epoch " + std::to_string(r.epoch) + " where " +
                                std::to_string(s_.epoch) + " was expected");
    }
    switch (r.type) {
      case jf::RecordType::kCheckpointBegin: return CheckpointBegin(r);
      case jf::RecordType::kCheckpointEnd: return CheckpointEnd(r);
      case jf::RecordType::kTarget: return Target(r);
      case jf::RecordType::kTargetRemove: return TargetRemove(r);
      case jf::RecordType::kBits: return Bits(r);
      case jf::RecordType::kAlSwap: return AlSwap(r);
      case jf::RecordType::kFreezeBegin: return FreezeBegin(r);
      case jf::RecordType::kFreezeEnd: return FreezeEnd(r);
      case jf::RecordType::kCommit: return Commit(r);
      case jf::RecordType::kAbort: return Abort(r);
      case jf::RecordType::kResyncRequired: return Resync(r);
      case jf::RecordType::kSeal: return Seal(r);
    }
    return Status::Corruption("unknown record type");
  }

  // After the last good record. A checkpoint must be complete; a freeze cut
  // off at the tail never returned to its caller and is dropped.
  Status Finish() {
    if (record_index_ == 0) return Status::Corruption("the journal holds no checkpoint");
    if (in_checkpoint_) return Status::Corruption("the checkpoint is incomplete");
    pending_.reset();
    return Status::Ok();
  }

 private:
  struct PendingFreeze {
    std::uint32_t target_id;
    CycleMode mode;
    DirtyBitmap bits;
  };

  Status CheckpointBegin(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::CheckpointBegin p, jf::DecodeCheckpointBegin(r.payload));
    s_.epoch = r.epoch;
    in_checkpoint_ = true;
    checkpoint_records_ = 1;
    expected_targets_ = p.target_count;
    if (p.flags & jf::kCheckpointFlagBaseUnknown) {
      s_.base_unknown = true;
      s_.base_reason = p.base_reason;
    }
    return Status::Ok();
  }

  Status CheckpointEnd(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::CheckpointEnd p, jf::DecodeCheckpointEnd(r.payload));
    if (!in_checkpoint_) return Status::Corruption("CHECKPOINT_END outside a checkpoint");
    if (p.record_count != checkpoint_records_) {
      return Status::Corruption("CHECKPOINT_END counts " + std::to_string(p.record_count) +
                                " records, the checkpoint has " +
                                std::to_string(checkpoint_records_));
    }
    if (s_.targets.size() != expected_targets_) {
      return Status::Corruption("the checkpoint lists the wrong number of targets");
    }
    if (pending_) return Status::Corruption("a freeze is open at CHECKPOINT_END");
    in_checkpoint_ = false;
    return Status::Ok();
  }

  Status Target(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::TargetRecord p, jf::DecodeTarget(r.payload));
    if (s_.FindTarget(p.target_id) || s_.FindTarget(p.name)) {
      return Status::Corruption("TARGET " + p.name + " is declared twice");
    }
    if (s_.targets.size() >= jf::kMaxTargets) return Status::Corruption("too many targets");
    TargetData t;
    t.id = p.target_id;
    t.name = p.name;
    t.needs_full = p.flags & jf::kTargetFlagNeedsFull;
    t.needs_resync = p.flags & jf::kTargetFlagNeedsResync;
    t.resync_reason = p.resync_reason;
    t.last_cycle = p.last_cycle;
    // In a checkpoint the bits follow; a target added later starts full.
    t.live = DirtyBitmap(s_.block_count, !in_checkpoint_);
    s_.targets.push_back(std::move(t));
    if (!in_checkpoint_) s_.base_unknown = false;
    return Status::Ok();
  }

  Status TargetRemove(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::TargetRemove p, jf::DecodeTargetRemove(r.payload));
    if (in_checkpoint_) return Status::Corruption("TARGET_REMOVE inside a checkpoint");
    auto it = std::find_if(s_.targets.begin(), s_.targets.end(),
                           [&](const TargetData& t) { return t.id == p.target_id; });
    if (it == s_.targets.end()) return Status::Corruption("TARGET_REMOVE of an unknown target");
    if (pending_ && pending_->target_id == p.target_id) {
      return Status::Corruption("TARGET_REMOVE inside a freeze of that target");
    }
    s_.targets.erase(it);
    return Status::Ok();
  }

  Status Bits(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::Bits p, jf::DecodeBits(r.payload));
    if (p.first_block >= s_.block_count || p.block_count > s_.block_count - p.first_block) {
      return Status::Corruption("BITS range is outside the volume");
    }
    DirtyBitmap* set = nullptr;
    switch (p.kind) {
      case jf::SetKind::kBase: set = &s_.base; break;
      case jf::SetKind::kLive: {
        TargetData* t = s_.FindTarget(p.target_id);
        if (!t) return Status::Corruption("BITS for an unknown target");
        set = &t->live;
        break;
      }
      case jf::SetKind::kFrozen:
        if (!pending_ || pending_->target_id != p.target_id) {
          return Status::Corruption("frozen BITS outside a freeze of that target");
        }
        set = &pending_->bits;
        break;
    }
    for (auto [first, count] : p.runs) set->SetRange(first, count);
    return Status::Ok();
  }

  Status AlSwap(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::AlSwap p, jf::DecodeAlSwap(r.payload));
    if (in_checkpoint_) return Status::Corruption("AL_SWAP inside a checkpoint");
    if (p.slot >= s_.slot_extent.size()) return Status::Corruption("AL_SWAP slot is out of range");
    if (s_.slot_extent[p.slot] != p.old_extent) {
      return Status::Corruption("AL_SWAP evicts extent " + std::to_string(p.old_extent) +
                                " from slot " + std::to_string(p.slot) + " which holds another");
    }
    if (p.new_extent != jf::kNoExtent &&
        (p.new_extent >= s_.extent_count || s_.extent_slot[p.new_extent] >= 0)) {
      return Status::Corruption("AL_SWAP brings in an invalid or already hot extent");
    }
    if (p.old_extent != jf::kNoExtent) {
      if (p.words_per_set != s_.WordsPerExtent()) {
        return Status::Corruption("AL_SWAP words per set do not match the extent size");
      }
      // An eviction carries the base set and every target's live set, once.
      if (p.sets.size() != 1 + s_.targets.size()) {
        return Status::Corruption("AL_SWAP carries " + std::to_string(p.sets.size()) +
                                  " sets; the base and " + std::to_string(s_.targets.size()) +
                                  " targets need " + std::to_string(1 + s_.targets.size()));
      }
      std::vector<DirtyBitmap*> sets;
      for (const auto& set : p.sets) {
        DirtyBitmap* bits = nullptr;
        if (set.kind == jf::SetKind::kBase) {
          bits = &s_.base;
        } else {
          TargetData* t = s_.FindTarget(set.target_id);
          if (!t) return Status::Corruption("AL_SWAP bits for an unknown target");
          bits = &t->live;
        }
        if (std::find(sets.begin(), sets.end(), bits) != sets.end()) {
          return Status::Corruption("AL_SWAP carries a set twice");
        }
        sets.push_back(bits);
      }
      std::uint64_t first = s_.ExtentFirstBlock(p.old_extent);
      for (std::size_t i = 0; i < sets.size(); ++i) {
        for (std::uint32_t w = 0; w < p.words_per_set; ++w) {
          sets[i]->OrWord(first + 64ULL * w, p.sets[i].words[w]);
        }
      }
      s_.extent_slot[p.old_extent] = -1;
    }
    s_.slot_extent[p.slot] = p.new_extent;
    if (p.new_extent != jf::kNoExtent) s_.extent_slot[p.new_extent] = static_cast<std::int32_t>(p.slot);
    return Status::Ok();
  }

  Status FreezeBegin(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::FreezeBegin p, jf::DecodeFreezeBegin(r.payload));
    TargetData* t = s_.FindTarget(p.target_id);
    if (!t || t->frozen || pending_) return Status::Corruption("FREEZE_BEGIN for a target that cannot freeze");
    pending_ = PendingFreeze{p.target_id, p.mode, DirtyBitmap(s_.block_count)};
    return Status::Ok();
  }

  Status FreezeEnd(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::FreezeEnd p, jf::DecodeFreezeEnd(r.payload));
    if (!pending_ || pending_->target_id != p.target_id) {
      return Status::Corruption("FREEZE_END without its FREEZE_BEGIN");
    }
    if (pending_->bits.Count() != p.frozen_blocks) {
      return Status::Corruption("FREEZE_END counts " + std::to_string(p.frozen_blocks) +
                                " frozen blocks, the freeze holds " +
                                std::to_string(pending_->bits.Count()));
    }
    TargetData* t = s_.FindTarget(p.target_id);
    if (!t) return Status::Corruption("FREEZE_END for an unknown target");
    t->frozen = true;
    t->frozen_epoch = r.epoch;
    t->frozen_mode = pending_->mode;
    t->frozen_bits = std::move(pending_->bits);
    t->resync_raised_while_frozen = false;
    t->live.ClearAll();
    if (!in_checkpoint_) s_.epoch = r.epoch;
    pending_.reset();
    return Status::Ok();
  }

  Status Commit(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::CycleEnd p, jf::DecodeCycleEnd(r.payload));
    TargetData* t = s_.FindTarget(p.target_id);
    if (!t || !t->frozen || t->frozen_epoch != p.epoch) {
      return Status::Corruption("COMMIT of epoch " + std::to_string(p.epoch) +
                                " that is not frozen");
    }
    ApplyCommit(*t);
    return Status::Ok();
  }

  Status Abort(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::CycleEnd p, jf::DecodeCycleEnd(r.payload));
    TargetData* t = s_.FindTarget(p.target_id);
    if (!t || !t->frozen || t->frozen_epoch != p.epoch) {
      return Status::Corruption("ABORT of epoch " + std::to_string(p.epoch) + " that is not frozen");
    }
    t->Unfreeze();
    return Status::Ok();
  }

  Status Resync(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::ResyncRequired p, jf::DecodeResyncRequired(r.payload));
    if (p.target_id == jf::kAllTargets) {
      s_.MarkResyncAll(p.reason);
      return Status::Ok();
    }
    TargetData* t = s_.FindTarget(p.target_id);
    if (!t) return Status::Corruption("RESYNC_REQUIRED for an unknown target");
    s_.MarkResync(*t, p.reason);
    return Status::Ok();
  }

  Status Seal(const jf::Record& r) {
    BLKREP_ASSIGN_OR_RETURN(jf::Seal p, jf::DecodeSeal(r.payload));
    if (in_checkpoint_) return Status::Corruption("SEAL inside a checkpoint");
    s_.sealed = true;
    s_.seal = std::move(p);
    return Status::Ok();
  }

 public:
  static void ApplyCommit(TargetData& t) {
    t.last_cycle = t.frozen_epoch;
    if (t.frozen_mode != CycleMode::kIncremental) t.needs_full = false;
    if (t.frozen_mode == CycleMode::kResync && !t.resync_raised_while_frozen) {
      t.needs_resync = false;
      t.resync_reason.clear();
    }
    t.resync_raised_while_frozen = false;
    t.frozen = false;
    t.frozen_bits = DirtyBitmap();
  }

 private:
  State& s_;
  std::uint64_t record_index_ = 0;
  bool in_checkpoint_ = false;
  std::uint32_t checkpoint_records_ = 0;
  std::uint32_t expected_targets_ = 0;
  std::optional<PendingFreeze> pending_;
};

// Reads and replays a journal file into `state`. Never fails on bad bytes:
// corruption marks everything resync-required with the reason. Fails only
// when the file cannot be read (or does not exist: kNotFound).
Status Recover(core::FileSystem& fs, const std::string& path, State& state,
               std::uint64_t* file_bytes, std::optional<std::uint64_t> volume_bytes) {
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, core::ReadWholeFile(fs, path));
  *file_bytes = bytes.size();
  Result<jf::FileHeader> header = jf::DecodeHeader(bytes);
  if (!header.ok()) return header.status();
  // Bitmaps are sized from the header: bound it before allocating. Against
  // the real volume when there is one (a volume may shrink, not by much),
  // else (inspect) 512 MiB for the base bitmap and the extent map.
  std::uint64_t blocks = header->volume_size_bytes / header->block_size_bytes + 1;
  std::uint64_t extents = header->volume_size_bytes / header->extent_size_bytes + 1;
  std::uint64_t map_bytes = blocks / 8 + extents * 4;  // the base bitmap and the extent map
  if (volume_bytes ? header->volume_size_bytes > 4 * *volume_bytes + (std::uint64_t{1} << 30)
                   : map_bytes > (std::uint64_t{512} << 20)) {
    return Status::Corruption("journal header claims a volume of " +
                              std::to_string(header->volume_size_bytes) + " bytes" +
                              (volume_bytes ? ", the volume has " + std::to_string(*volume_bytes) : ""));
  }
  state.header = *header;
  try {
    state.InitGeometry();
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("not enough memory for the bitmaps of journal " + path);
  }
  state.next_sequence = header->first_sequence;
  jf::RecordScanner scanner(bytes, jf::kHeaderBytes, header->first_sequence);
  Replayer replayer(state);
  jf::Record record;
  std::string corruption;
  for (;;) {
    auto outcome = scanner.Next(&record);
    if (outcome == jf::RecordScanner::Outcome::kRecord) {
      Status applied = replayer.Apply(record);
      if (!applied.ok()) {
        corruption = "record " + std::to_string(record.sequence) + " (" +
                     jf::RecordTypeName(record.type) + ") at offset " +
                     std::to_string(record.offset_bytes) + ": " + applied.message();
        break;
      }
      state.next_sequence = record.sequence + 1;
      continue;
    }
    if (outcome == jf::RecordScanner::Outcome::kCorrupt) corruption = scanner.error();
    if (outcome == jf::RecordScanner::Outcome::kTornTail) state.torn_tail = scanner.error();
    break;
  }
  if (corruption.empty()) {
    Status finished = replayer.Finish();
    if (!finished.ok()) corruption = finished.message();
  }
  state.FoldActivityLog();
  if (!corruption.empty()) {
    state.sealed = false;
    state.MarkResyncAll("journal " + path + " is corrupt: " + corruption);
  }
  if (header->flags & jf::kHeaderFlagResyncRequired) {
    state.MarkResyncAll("a write to journal " + path + " failed earlier; its tracking is incomplete");
  }
  return Status::Ok();
}

JournalReport MakeReport(const State& s, const std::string& path, std::uint64_t journal_bytes) {
  JournalReport r;
  r.path = path;
  r.guest = s.header.guest;
  r.volume_name = s.header.volume_name;
  r.volume_path = s.header.volume_path;
  r.volume_size_bytes = s.header.volume_size_bytes;
  r.block_size_bytes = s.header.block_size_bytes;
  r.extent_size_bytes = s.header.extent_size_bytes;
  r.al_slots = s.header.al_slots;
  r.cap_bytes = s.header.cap_bytes;
  r.journal_bytes = journal_bytes;
  r.generation = s.header.generation;
  r.epoch = s.epoch;
  r.clean_close = s.sealed;
  r.torn_tail = s.torn_tail;
  for (auto extent : s.slot_extent) {
    if (extent != jf::kNoExtent) r.hot_extents.push_back(extent);
  }
  r.dirty = s.VolumeDirty();
  r.since_tracking_began = s.base;
  if (s.targets.empty() && s.base_unknown) {
    r.resync_required = true;
    r.resync_reason = s.base_reason;
  }
  std::vector<const TargetData*> sorted;
  for (const auto& t : s.targets) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](auto* a, auto* b) { return a->name < b->name; });
  for (const TargetData* t : sorted) {
    TargetReport tr;
    tr.name = t->name;
    tr.dirty = t->live;
    if (t->frozen) {
      tr.dirty.Or(t->frozen_bits);
      tr.frozen_epoch = t->frozen_epoch;
    }
    tr.dirty_blocks = tr.dirty.Count();
    tr.last_cycle = t->last_cycle;
    tr.needs_full = t->needs_full;
    tr.resync_required = t->needs_resync;
    tr.resync_reason = t->resync_reason;
    if (t->needs_resync && !r.resync_required) {
      r.resync_required = true;
      r.resync_reason = t->resync_reason;
    }
    r.targets.push_back(std::move(tr));
  }
  return r;
}

// Appends BITS records covering all of `bits` (nothing for empty chunks).
template <typename AddFn>
void AddBitsRecords(const DirtyBitmap& bits, jf::SetKind kind, std::uint32_t target_id,
                    AddFn&& add) {
  for (std::uint64_t first = 0; first < bits.block_count(); first += jf::kMaxBitsRecordBlocks) {
    std::uint64_t count = std::min(jf::kMaxBitsRecordBlocks, bits.block_count() - first);
    bool any = false;
    for (std::uint64_t w = first / 64; w < (first + count + 63) / 64 && !any; ++w) {
      any = bits.words()[w] != 0;
    }
    if (!any) continue;
    add(jf::EncodeBits(kind, target_id, first, count, bits.words()));
  }
}

// The target `name` with cycle `epoch` frozen, or why there is none.
Result<TargetData*> FindFrozen(State& s, const std::string& name, std::uint64_t epoch,
                               const std::string& path) {
  TargetData* t = s.FindTarget(name);
  if (!t) return Status::NotFound("no target " + name + " in journal " + path);
  if (!t->frozen || t->frozen_epoch != epoch) {
    return Status::InvalidArgument("target " + name + " has no frozen cycle " + std::to_string(epoch));
  }
  return t;
}

std::string IdentityMismatch(const State& s, const core::VolumeIdentity& now) {
  using Kind = core::VolumeIdentity::Kind;
  const jf::FileHeader& h = s.header;
  if (h.volume_kind == static_cast<std::uint8_t>(Kind::kRegularFile) &&
      now.kind == Kind::kRegularFile && (h.dev != now.dev || h.ino != now.ino)) {
    return "volume " + h.volume_path + " is not the file the journal was made for (device/inode " +
           std::to_string(h.dev) + "/" + std::to_string(h.ino) + ", now " +
           std::to_string(now.dev) + "/" + std::to_string(now.ino) + ")";
  }
  if (h.volume_kind != static_cast<std::uint8_t>(now.kind)) {
    return "volume " + h.volume_path + " changed kind (file/block device) while untracked";
  }
  if (!s.sealed || !s.seal) return {};
  const jf::Seal& seal = *s.seal;
  if (now.kind == Kind::kRegularFile && seal.mtime_ns != now.mtime_ns) {
    return "volume " + h.volume_path + " was modified while untracked (mtime changed after the seal)";
  }
  if (now.kind == Kind::kBlockDevice && !seal.boot_id.empty() && seal.boot_id == now.boot_id &&
      seal.sectors_written != now.sectors_written) {
    return "volume " + h.volume_path + " was written while untracked (" +
           std::to_string(now.sectors_written - seal.sectors_written) + " sectors since the seal)";
  }
  if (seal.probe_type != now.probe_type || seal.uuid != now.uuid || seal.ptuuid != now.ptuuid) {
    return "volume " + h.volume_path + " content identity changed while untracked (type/UUID " +
           seal.probe_type + "/" + seal.uuid + ", now " + now.probe_type + "/" + now.uuid + ")";
  }
  return {};
}

}  // namespace

Journal::Journal(core::FileSystem& fs, std::string path)
    : fs_(fs), path_(std::move(path)), state_(std::make_unique<State>()) {}

Journal::~Journal() = default;

Result<std::unique_ptr<Journal>> Journal::Open(core::FileSystem& fs, const std::string& path,
                                               const VolumeDescriptor& volume,
                                               const JournalOptions& options) {
  if (!jf::IsValidName(volume.guest) || !jf::IsValidName(volume.name)) {
    return Status::InvalidArgument("guest and volume names must be 1-64 characters of [A-Za-z0-9._-]: '" +
                                   volume.guest + "', '" + volume.name + "'");
  }
  if (volume.path.size() > jf::kMaxPathBytes) {
    return Status::InvalidArgument("volume path is longer than 1024 bytes: " + volume.path);
  }
  if (volume.identity.size_bytes == 0 || volume.identity.size_bytes > jf::kMaxVolumeSizeBytes) {
    return Status::InvalidArgument("volume " + volume.path + " has an unsupported size " +
                                   std::to_string(volume.identity.size_bytes));
  }
  std::uint32_t block_size = options.block_size_bytes ? options.block_size_bytes : kDefaultBlockSizeBytes;
  auto power_of_two = [](std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; };
  if (!power_of_two(block_size) || block_size < jf::kMinBlockSizeBytes ||
      block_size > jf::kMaxBlockSizeBytes) {
    return Status::InvalidArgument("block size " + std::to_string(block_size) +
                                   " is not a power of two from 4K to 1M");
  }
  if (!power_of_two(options.extent_size_bytes) || options.extent_size_bytes > jf::kMaxExtentSizeBytes) {
    return Status::InvalidArgument("extent size must be a power of two up to 64M");
  }
  if (options.al_slots == 0 || options.al_slots > jf::kMaxAlSlots) {
    return Status::InvalidArgument("activity log slots must be 1 to 65536");
  }
  if (options.cap_bytes != 0 && options.cap_bytes < jf::kMinCapBytes) {
    return Status::InvalidArgument("journal cap must be at least 64K");
  }

  BLKREP_RETURN_IF_ERROR(fs.CreateDirectories(core::DirName(path)));
  std::unique_ptr<Journal> journal(new Journal(fs, path));
  BLKREP_ASSIGN_OR_RETURN(journal->lock_, fs.Lock(path + ".lock"));
  journal->on_degraded_ = options.on_degraded;
  if (!journal->on_degraded_) {
    journal->on_degraded_ = [](const std::string& reason) {
      std::fprintf(stderr, "blkrep: warning: %s; replication needs a resync\n", reason.c_str());
    };
  }
  State& s = *journal->state_;
  std::uint64_t old_bytes = 0;
  Status recovered = Recover(fs, path, s, &old_bytes, volume.identity.size_bytes);
  bool fresh = false;
  if (recovered.code() == core::Code::kNotFound) {
    fresh = true;
  } else if (recovered.code() == core::Code::kCorruption) {
    // The header is unusable: nothing the journal says can be trusted.
    std::string reason = "journal " + path + " is corrupt: " + recovered.message();
    s = State();
    fresh = true;
    s.base_unknown = true;
    s.base_reason = reason;
  } else if (!recovered.ok()) {
    return recovered;
  }
  if (fresh) {
    bool unknown = s.base_unknown;
    std::string reason = s.base_reason;
    s.header = jf::FileHeader();
    s.header.block_size_bytes = block_size;
    s.header.volume_size_bytes = volume.identity.size_bytes;
    s.header.extent_size_bytes = std::max(options.extent_size_bytes, block_size);
    s.header.al_slots = options.al_slots;
    s.header.first_sequence = 1;
    s.header.created_unix_ns = NowUnixNs();
    s.InitGeometry();
    s.next_sequence = 1;
    if (unknown) s.MarkResyncAll(reason);
  } else {
    if (options.block_size_bytes != 0 && options.block_size_bytes != s.header.block_size_bytes) {
      return Status::InvalidArgument("journal " + path + " tracks " + volume.name + " in blocks of " +
                                     std::to_string(s.header.block_size_bytes) +
                                     " bytes, not " + std::to_string(options.block_size_bytes));
    }
    if (s.header.guest != volume.guest || s.header.volume_name != volume.name) {
      return Status::InvalidArgument("journal " + path + " belongs to " + s.header.guest + "/" +
                                     s.header.volume_name + ", not " + volume.guest + "/" + volume.name);
    }
    // The cap and AL size may change between runs; the AL was folded.
    if (s.header.al_slots != options.al_slots) {
      s.header.al_slots = options.al_slots;
      s.slot_extent.assign(options.al_slots, jf::kNoExtent);
      s.referenced.assign(options.al_slots, 0);
    }
    if (volume.identity.size_bytes != s.header.volume_size_bytes) {
      std::string reason = "volume " + volume.path + " changed size from " +
                           std::to_string(s.header.volume_size_bytes) + " to " +
                           std::to_string(volume.identity.size_bytes) + " bytes while untracked";
      s.Resize(volume.identity.size_bytes);
      s.MarkResyncAll(reason);
    } else if (std::string mismatch = IdentityMismatch(s, volume.identity); !mismatch.empty()) {
      s.MarkResyncAll(mismatch);
    }
    s.AbandonFrozen();
  }
  s.header.cap_bytes = options.cap_bytes != 0
                          ? options.cap_bytes
                          : std::max<std::uint64_t>(64ULL << 20, 16 * ((s.block_count + 63) / 64 * 8));
  s.header.guest = volume.guest;
  s.header.volume_name = volume.name;
  s.header.volume_path = volume.path;
  s.header.volume_kind = static_cast<std::uint8_t>(volume.identity.kind);
  s.header.dev = volume.identity.dev;
  s.header.ino = volume.identity.ino;
  s.header.rdev = volume.identity.rdev;
  s.header.probe_type = volume.identity.probe_type.substr(0, 64);
  s.header.uuid = volume.identity.uuid.substr(0, 64);
  s.header.ptuuid = volume.identity.ptuuid.substr(0, 64);
  s.header.flags = 0;  // the reasons now live in the checkpoint
  s.sealed = false;
  s.seal.reset();
  s.torn_tail.clear();

  std::lock_guard log(journal->log_mu_);
  Status rewritten = journal->Rewrite(nullptr);
  if (!rewritten.ok()) return rewritten.WithContext("cannot write journal " + path);
  if (journal->file_size_ > s.header.cap_bytes / 2) {
    journal->EnterDegraded("journal " + path + " overflowed its cap of " +
                           std::to_string(s.header.cap_bytes) + " bytes (a checkpoint takes " +
                           std::to_string(journal->file_size_) + ")");
  }
  return journal;
}

Result<JournalReport> Journal::Read(core::FileSystem& fs, const std::string& path) {
  State s;
  std::uint64_t bytes = 0;
  Status recovered = Recover(fs, path, s, &bytes, std::nullopt);
  if (recovered.code() == core::Code::kCorruption) {
    JournalReport r;
    r.path = path;
    r.journal_bytes = bytes;
    r.resync_required = true;
    r.resync_reason = "journal " + path + " is corrupt: " + recovered.message();
    return r;
  }
  BLKREP_RETURN_IF_ERROR(recovered);
  return MakeReport(s, path, bytes);
}

void Journal::AddRecord(std::vector<std::byte>& out, jf::RecordType type,
                        std::span<const std::byte> payload, std::uint64_t epoch) {
  jf::AppendRecord(out, type, state_->next_sequence++, epoch, payload);
}

void Journal::AddRecord(std::vector<std::byte>& out, jf::RecordType type,
                        std::span<const std::byte> payload) {
  AddRecord(out, type, payload, state_->epoch);
}

Status Journal::Rewrite(const jf::Seal* seal) {
  jf::FileHeader header;
  std::uint64_t sequence;
  std::vector<std::byte> bytes;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    // The state's header and sequence change only once the new file has
    // replaced the old one: until then they describe the old file.
    header = s.header;
    header.generation += 1;
    header.first_sequence = s.next_sequence;
    header.flags = s.degraded ? jf::kHeaderFlagResyncRequired : 0;
    bytes = jf::EncodeHeader(header);
    sequence = s.next_sequence;
    std::uint32_t count = 0;
    auto add = [&](jf::RecordType type, const std::vector<std::byte>& payload,
                   std::uint64_t epoch) {
      jf::AppendRecord(bytes, type, sequence++, epoch, payload);
      ++count;
    };
    // The checkpoint carries the current epoch; a frozen cycle's FREEZE_END
    // inside it carries that cycle's own (older) epoch.
    std::uint64_t epoch = s.epoch;
    jf::CheckpointBegin begin;
    begin.target_count = static_cast<std::uint32_t>(s.targets.size());
    if (s.base_unknown) {
      begin.flags = jf::kCheckpointFlagBaseUnknown;
      begin.base_reason = s.base_reason.substr(0, jf::kMaxReasonBytes);
    }
    add(jf::RecordType::kCheckpointBegin, jf::Encode(begin), epoch);
    for (const auto& t : s.targets) {
      jf::TargetRecord tr;
      tr.target_id = t.id;
      tr.flags = static_cast<std::uint8_t>((t.needs_full ? jf::kTargetFlagNeedsFull : 0) |
                                           (t.needs_resync ? jf::kTargetFlagNeedsResync : 0));
      tr.last_cycle = t.last_cycle;
      tr.name = t.name;
      tr.resync_reason = t.resync_reason.substr(0, jf::kMaxReasonBytes);
      add(jf::RecordType::kTarget, jf::Encode(tr), epoch);
    }
    for (const auto& t : s.targets) {
      if (!t.frozen) continue;
      add(jf::RecordType::kFreezeBegin, jf::Encode(jf::FreezeBegin{t.id, t.frozen_mode}), epoch);
      AddBitsRecords(t.frozen_bits, jf::SetKind::kFrozen, t.id,
                     [&](const std::vector<std::byte>& p) { add(jf::RecordType::kBits, p, epoch); });
      add(jf::RecordType::kFreezeEnd, jf::Encode(jf::FreezeEnd{t.id, t.frozen_bits.Count()}),
          t.frozen_epoch);
    }
    AddBitsRecords(s.base, jf::SetKind::kBase, 0,
                   [&](const std::vector<std::byte>& p) { add(jf::RecordType::kBits, p, epoch); });
    for (const auto& t : s.targets) {
      AddBitsRecords(t.live, jf::SetKind::kLive, t.id,
                     [&](const std::vector<std::byte>& p) { add(jf::RecordType::kBits, p, epoch); });
    }
    add(jf::RecordType::kCheckpointEnd, jf::Encode(jf::CheckpointEnd{count + 1}), epoch);
    // A resync raised during a frozen cycle must survive that cycle's
    // commit: it is raised again after the checkpoint.
    for (const auto& t : s.targets) {
      if (t.frozen && t.resync_raised_while_frozen) {
        add(jf::RecordType::kResyncRequired,
            jf::Encode(jf::ResyncRequired{t.id, t.resync_reason.substr(0, jf::kMaxReasonBytes)}), epoch);
      }
    }
    if (seal) add(jf::RecordType::kSeal, jf::Encode(*seal), epoch);
    // Everything in memory is in the checkpoint, so the AL starts empty; it
    // empties now, atomically with the snapshot, so that writes after the
    // snapshot take the slow path and wait for the new file. If the rewrite
    // fails the caller degrades the journal, which then appends nothing.
    for (auto& extent : s.slot_extent) {
      if (extent != jf::kNoExtent) s.extent_slot[extent] = -1;
      extent = jf::kNoExtent;
    }
  }
  std::string tmp = path_ + ".tmp";
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file,
                          fs_.Open(tmp, core::OpenMode::kCreateTruncate));
  BLKREP_RETURN_IF_ERROR(file->WriteAt(0, bytes));
  BLKREP_RETURN_IF_ERROR(file->Sync());
  BLKREP_RETURN_IF_ERROR(fs_.Rename(tmp, path_));
  // The new file is the journal now (the rename may reach the disk even if
  // the directory sync below fails).
  jf::FileHeader old_header;
  {
    std::lock_guard lock(mu_);
    old_header = state_->header;
    state_->header = header;
    state_->next_sequence = sequence;
  }
  std::unique_ptr<core::File> old_file = std::move(file_);
  file_ = std::move(file);
  file_size_ = bytes.size();
  Status synced = fs_.SyncDir(core::DirName(path_));
  if (!synced.ok() && old_file) {
    // Which file a crash leaves behind is unknown: the old one must carry
    // the resync flag too (the caller flags the new one).
    old_header.flags |= jf::kHeaderFlagResyncRequired;
    if (old_file->WriteAt(0, jf::EncodeHeader(old_header)).ok()) (void)old_file->Sync();
  }
  return synced;
}

void Journal::EnterDegraded(const std::string& reason) {
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    if (s.degraded) return;
    s.degraded = true;
    s.MarkResyncAll(reason);
    s.header.flags |= jf::kHeaderFlagResyncRequired;
  }
  if (on_degraded_) on_degraded_(reason);
  // Best effort: the flag lives in the header of the current file, rewritten
  // in place, which needs no new space on the file system.
  if (file_) {
    std::vector<std::byte> header = jf::EncodeHeader(state_->header);
    if (file_->WriteAt(0, header).ok()) (void)file_->Sync();
  }
}

Status Journal::AppendDurably(const std::vector<std::byte>& records) {
  Status written = file_->WriteAt(file_size_, records);
  if (written.ok()) written = file_->Sync();
  if (!written.ok()) {
    EnterDegraded("journal " + path_ + " could not be written: " + written.ToString());
    return written;
  }
  file_size_ += records.size();
  return Status::Ok();
}

Status Journal::CompactOrDegrade() {
  Status rewritten = Rewrite(nullptr);
  if (!rewritten.ok()) {
    EnterDegraded("journal " + path_ + " compaction failed: " + rewritten.ToString());
    return rewritten;
  }
  // A checkpoint must leave room for records, or every append would
  // compact again.
  if (file_size_ > state_->header.cap_bytes / 2) {
    std::string reason = "journal " + path_ + " overflowed its cap of " +
                         std::to_string(state_->header.cap_bytes) + " bytes (a checkpoint takes " +
                         std::to_string(file_size_) + ")";
    EnterDegraded(reason);
    return Status::ResourceExhausted(reason);
  }
  return Status::Ok();
}

Result<bool> Journal::Persist(const std::vector<std::byte>& records) {
  if (file_size_ + records.size() <= state_->header.cap_bytes) {
    BLKREP_RETURN_IF_ERROR(AppendDurably(records));
    return true;
  }
  // The change is already in memory: the checkpoint captures it.
  BLKREP_RETURN_IF_ERROR(CompactOrDegrade());
  return false;
}

Status Journal::MarkDirty(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  std::uint64_t first_block, end_block;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    BLKREP_RETURN_IF_ERROR(core::CheckRange(offset_bytes, length_bytes,
                                            s.header.volume_size_bytes, "mark dirty"));
    if (length_bytes == 0) return Status::Ok();
    first_block = offset_bytes >> s.block_shift;
    end_block = ((offset_bytes + length_bytes - 1) >> s.block_shift) + 1;
    std::uint64_t e0 = first_block >> s.extent_shift;
    std::uint64_t e1 = (end_block - 1) >> s.extent_shift;
    bool all_hot = true;
    for (std::uint64_t e = e0; e <= e1; ++e) {
      std::int32_t slot = s.extent_slot[e];
      if (slot < 0) {
        all_hot = false;
        break;
      }
      s.referenced[static_cast<std::size_t>(slot)] = 1;
    }
    if (all_hot || s.degraded) {
      s.SetDirty(first_block, end_block);
      return Status::Ok();
    }
  }
  return MarkDirtySlow(first_block, end_block);
}

Status Journal::MarkDirtySlow(std::uint64_t first_block, std::uint64_t end_block) {
  std::lock_guard log(log_mu_);
  std::vector<std::byte> records;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> becoming_hot;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    // The bits are set now, before they are durable: nobody reads them
    // before this call returns except a checkpoint, which persists them.
    s.SetDirty(first_block, end_block);
    if (s.degraded || closed_) return Status::Ok();
    std::uint64_t e0 = first_block / s.blocks_per_extent;
    std::uint64_t e1 = (end_block - 1) / s.blocks_per_extent;
    std::vector<std::uint64_t> cold;
    for (std::uint64_t e = e0; e <= e1; ++e) {
      if (s.extent_slot[e] < 0) cold.push_back(e);
    }
    if (cold.empty()) return Status::Ok();  // another writer made them hot meanwhile
    if (e1 - e0 + 1 > s.header.al_slots) {
      // More extents than the AL holds: persist the bits themselves.
      DirtyBitmap range(s.block_count);
      range.SetRange(first_block, end_block - first_block);
      AddBitsRecords(range, jf::SetKind::kBase, 0,
                     [&](const std::vector<std::byte>& p) { AddRecord(records, jf::RecordType::kBits, p); });
      for (const auto& t : s.targets) {
        AddBitsRecords(range, jf::SetKind::kLive, t.id, [&](const std::vector<std::byte>& p) {
          AddRecord(records, jf::RecordType::kBits, p);
        });
      }
    } else {
      for (std::uint64_t extent : cold) {
        // Clock: pass over referenced slots and slots this request needs.
        std::uint32_t slot;
        for (;;) {
          slot = s.clock_hand;
          s.clock_hand = (s.clock_hand + 1) % s.header.al_slots;
          std::uint64_t held = s.slot_extent[slot];
          if (held == jf::kNoExtent) break;
          bool needed = held >= e0 && held <= e1;
          if (needed || s.referenced[slot]) {
            s.referenced[slot] = 0;
            continue;
          }
          break;
        }
        jf::AlSwap swap;
        swap.slot = slot;
        swap.new_extent = extent;
        swap.old_extent = s.slot_extent[slot];
        if (swap.old_extent != jf::kNoExtent) {
          std::uint64_t first = s.ExtentFirstBlock(swap.old_extent);
          std::uint64_t valid = s.ExtentBlockCount(swap.old_extent);
          swap.words_per_set = s.WordsPerExtent();
          auto capture = [&](jf::SetKind kind, std::uint32_t id, const DirtyBitmap& bits) {
            jf::AlSwap::SetBits set{kind, id, std::vector<std::uint64_t>(swap.words_per_set)};
            for (std::uint32_t w = 0; w < swap.words_per_set; ++w) {
              std::uint64_t start = 64ULL * w;
              std::uint64_t word = start < valid ? bits.Word(first + start) : 0;
              if (start < valid && valid - start < 64) word &= (std::uint64_t{1} << (valid - start)) - 1;
              set.words[w] = word;
            }
            swap.sets.push_back(std::move(set));
          };
          capture(jf::SetKind::kBase, 0, s.base);
          for (const auto& t : s.targets) capture(jf::SetKind::kLive, t.id, t.live);
          // From now on writes into the evicted extent take the slow path.
          s.extent_slot[swap.old_extent] = -1;
        }
        s.slot_extent[slot] = extent;  // hot only once durable, below
        s.referenced[slot] = 1;
        becoming_hot.emplace_back(extent, slot);
        AddRecord(records, jf::RecordType::kAlSwap, jf::Encode(swap));
      }
    }
  }
  Result<bool> appended = Persist(records);
  if (appended.ok() && *appended) {
    std::lock_guard lock(mu_);
    for (auto [extent, slot] : becoming_hot) state_->extent_slot[extent] = static_cast<std::int32_t>(slot);
  }
  // Not appended: a checkpoint holds the bits exactly (the AL is empty), or
  // the journal degraded to resync-required. Either way the change is safe.
  return Status::Ok();
}

Status Journal::AddTarget(const std::string& name) {
  if (!jf::IsValidName(name)) {
    return Status::InvalidArgument("target name '" + name + "' must be 1-64 characters of [A-Za-z0-9._-]");
  }
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  std::vector<std::byte> records;
  std::uint32_t id = 1;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    if (s.FindTarget(name)) return Status::InvalidArgument("target " + name + " already exists");
    if (s.targets.size() >= jf::kMaxTargets) return Status::ResourceExhausted("too many targets");
    while (s.FindTarget(id)) ++id;  // the lowest free id; never kAllTargets
    TargetData t;
    t.id = id;
    t.name = name;
    t.needs_full = true;
    t.live = DirtyBitmap(s.block_count, true);  // everything: the first cycle is full
    s.targets.push_back(std::move(t));
    s.base_unknown = false;
    if (s.degraded) {
      s.MarkResync(s.targets.back(), "journal " + path_ + " is degraded");
      return Status::Ok();
    }
    jf::TargetRecord tr;
    tr.target_id = id;
    tr.flags = jf::kTargetFlagNeedsFull;
    tr.name = name;
    AddRecord(records, jf::RecordType::kTarget, jf::Encode(tr));
  }
  Result<bool> persisted = Persist(records);
  if (!persisted.ok()) {
    std::lock_guard lock(mu_);
    auto& targets = state_->targets;
    targets.erase(std::find_if(targets.begin(), targets.end(),
                               [&](const TargetData& x) { return x.id == id; }));
    return persisted.status().WithContext("cannot add target " + name);
  }
  return Status::Ok();
}

Status Journal::RemoveTarget(const std::string& name) {
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  std::vector<std::byte> records;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    TargetData* t = s.FindTarget(name);
    if (!t) return Status::NotFound("no target " + name + " in journal " + path_);
    std::uint32_t id = t->id;
    if (!s.degraded) AddRecord(records, jf::RecordType::kTargetRemove, jf::Encode(jf::TargetRemove{id}));
    s.targets.erase(std::find_if(s.targets.begin(), s.targets.end(),
                                 [&](const TargetData& x) { return x.id == id; }));
  }
  // Removed in memory either way: a removal that is not durable only
  // brings the target back after a crash, which is harmless.
  if (!records.empty()) return Persist(records).status();
  return Status::Ok();
}

Result<FrozenCycle> Journal::Freeze(const std::string& target) {
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  std::vector<std::byte> records;
  FrozenCycle cycle;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    TargetData* t = s.FindTarget(target);
    if (!t) return Status::NotFound("no target " + target + " in journal " + path_);
    if (t->frozen) {
      return Status::InvalidArgument("target " + target + " already has cycle " +
                                     std::to_string(t->frozen_epoch) + " frozen");
    }
    // A degraded journal still freezes, in memory only: every target is
    // resync-required there, so the cycle is a resync (invariant 2), and
    // replication goes on while the tracker runs.
    cycle.target = target;
    cycle.mode = t->needs_resync ? CycleMode::kResync
                 : t->needs_full ? CycleMode::kFull
                                 : CycleMode::kIncremental;
    cycle.epoch = s.epoch + 1;
    cycle.blocks = cycle.mode == CycleMode::kIncremental ? t->live : DirtyBitmap(s.block_count, true);
    AddRecord(records, jf::RecordType::kFreezeBegin, jf::Encode(jf::FreezeBegin{t->id, cycle.mode}));
    AddBitsRecords(cycle.blocks, jf::SetKind::kFrozen, t->id, [&](const std::vector<std::byte>& p) {
      AddRecord(records, jf::RecordType::kBits, p);
    });
    AddRecord(records, jf::RecordType::kFreezeEnd,
              jf::Encode(jf::FreezeEnd{t->id, cycle.blocks.Count()}), cycle.epoch);
    // The instant of the freeze: writes from here on belong to the next cycle.
    t->frozen = true;
    t->frozen_epoch = cycle.epoch;
    t->frozen_mode = cycle.mode;
    t->frozen_bits = cycle.blocks;
    t->resync_raised_while_frozen = false;
    t->live.ClearAll();
    s.epoch = cycle.epoch;
    if (s.degraded) return cycle;  // nothing more is written
  }
  Result<bool> persisted = Persist(records);
  if (!persisted.ok()) {
    std::lock_guard lock(mu_);
    state_->FindTarget(target)->Unfreeze();
    return persisted.status().WithContext("cannot freeze cycle for target " + target);
  }
  return cycle;
}

Status Journal::Commit(const std::string& target, std::uint64_t epoch) {
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  std::vector<std::byte> records;
  TargetData before;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    BLKREP_ASSIGN_OR_RETURN(TargetData* t, FindFrozen(s, target, epoch, path_));
    if (s.degraded) {
      // In memory only. The target stays resync-required: what a degraded
      // journal knows does not survive a crash.
      Replayer::ApplyCommit(*t);
      s.MarkResync(*t, s.base_reason);
      return Status::Ok();
    }
    AddRecord(records, jf::RecordType::kCommit, jf::Encode(jf::CycleEnd{t->id, epoch}));
    before = *t;
    Replayer::ApplyCommit(*t);
  }
  Result<bool> persisted = Persist(records);
  if (!persisted.ok()) {
    // Not durable: the cycle stays frozen (a crash would abandon it).
    std::lock_guard lock(mu_);
    if (TargetData* t = state_->FindTarget(target)) {
      DirtyBitmap live = std::move(t->live);
      *t = std::move(before);
      t->live = std::move(live);
      // The failure degraded the journal: that resync flag stands.
      if (state_->degraded) state_->MarkResync(*t, state_->base_reason);
    }
    return persisted.status().WithContext("cannot commit cycle " + std::to_string(epoch) +
                                          " for target " + target);
  }
  return Status::Ok();
}

Status Journal::Abort(const std::string& target, std::uint64_t epoch) {
  std::lock_guard log(log_mu_);
  std::vector<std::byte> records;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    BLKREP_ASSIGN_OR_RETURN(TargetData* t, FindFrozen(s, target, epoch, path_));
    // Memory first: an abort that is not durable is harmless, since
    // recovery abandons uncommitted freezes anyway.
    t->Unfreeze();
    if (s.degraded || closed_) return Status::Ok();
    AddRecord(records, jf::RecordType::kAbort, jf::Encode(jf::CycleEnd{t->id, epoch}));
  }
  (void)Persist(records);  // a failure degrades; the abort stands
  return Status::Ok();
}

Status Journal::RequireResync(const std::string& target, const std::string& reason) {
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  std::vector<std::byte> records;
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    std::uint32_t id = jf::kAllTargets;
    if (!target.empty()) {
      TargetData* t = s.FindTarget(target);
      if (!t) return Status::NotFound("no target " + target + " in journal " + path_);
      id = t->id;
      s.MarkResync(*t, reason);
    } else {
      s.MarkResyncAll(reason);
    }
    if (s.degraded) return Status::Ok();
    AddRecord(records, jf::RecordType::kResyncRequired,
              jf::Encode(jf::ResyncRequired{id, reason.substr(0, jf::kMaxReasonBytes)}));
  }
  // A failure degrades the journal, which marks every target resync-required:
  // the request is honoured either way.
  (void)Persist(records);
  return Status::Ok();
}

Status Journal::SeedTarget(const std::string& name, std::uint64_t epoch, const DirtyBitmap& dirty) {
  if (!jf::IsValidName(name)) {
    return Status::InvalidArgument("target name '" + name + "' must be 1-64 characters of [A-Za-z0-9._-]");
  }
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  {
    std::lock_guard lock(mu_);
    State& s = *state_;
    if (s.degraded) return Status::Aborted("journal " + path_ + " is degraded: a resync is required");
    if (!s.targets.empty() || s.epoch != 0) {
      return Status::Aborted("journal " + path_ + " is not new: it has targets or cycles; cannot seed it");
    }
    if (epoch == 0) return Status::InvalidArgument("cannot seed a journal at cycle 0");
    if (dirty.block_count() != s.block_count) {
      return Status::InvalidArgument("seed bitmap of " + std::to_string(dirty.block_count()) + " blocks for a volume of " +
                                     std::to_string(s.block_count));
    }
    TargetData t;
    t.id = 1;
    t.name = name;
    t.last_cycle = epoch;
    t.live = dirty;
    s.targets.push_back(std::move(t));
    s.base_unknown = false;
    s.epoch = epoch;
  }
  // A checkpoint carries the epoch and the target's last cycle and bits.
  return CompactOrDegrade();
}

Status Journal::Checkpoint() {
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Aborted("journal " + path_ + " is closed");
  if (state_->degraded) return Status::Aborted("journal " + path_ + " is degraded: a resync is required");
  return CompactOrDegrade();
}

Status Journal::Close(const core::VolumeIdentity& final_identity) {
  std::lock_guard log(log_mu_);
  if (closed_) return Status::Ok();
  jf::Seal seal;
  seal.sealed_unix_ns = NowUnixNs();
  seal.volume_kind = static_cast<std::uint8_t>(final_identity.kind);
  seal.size_bytes = final_identity.size_bytes;
  seal.dev = final_identity.dev;
  seal.ino = final_identity.ino;
  seal.rdev = final_identity.rdev;
  seal.mtime_ns = final_identity.mtime_ns;
  seal.sectors_written = final_identity.sectors_written;
  seal.boot_id = final_identity.boot_id.substr(0, 64);
  seal.probe_type = final_identity.probe_type.substr(0, 64);
  seal.uuid = final_identity.uuid.substr(0, 64);
  seal.ptuuid = final_identity.ptuuid.substr(0, 64);
  // Frozen cycles cannot outlive the tracker: they are abandoned.
  {
    std::lock_guard lock(mu_);
    state_->AbandonFrozen();
  }
  // Even a degraded journal is rewritten whole: the checkpoint carries the
  // resync-required reasons.
  Status rewritten = Rewrite(&seal);
  closed_ = true;
  if (!rewritten.ok()) {
    EnterDegraded("journal " + path_ + " could not be sealed: " + rewritten.ToString());
    return rewritten.WithContext("cannot seal journal " + path_);
  }
  return Status::Ok();
}

JournalReport Journal::Report() const {
  std::lock_guard lock(mu_);
  JournalReport r = MakeReport(*state_, path_, file_size_);
  r.clean_close = closed_;
  return r;
}

bool Journal::degraded() const {
  std::lock_guard lock(mu_);
  return state_->degraded;
}

std::uint64_t Journal::block_count() const {
  std::lock_guard lock(mu_);
  return state_->block_count;
}

std::uint32_t Journal::block_size_bytes() const {
  std::lock_guard lock(mu_);
  return state_->header.block_size_bytes;
}

std::uint64_t Journal::MemoryBytes() const {
  std::lock_guard lock(mu_);
  const State& s = *state_;
  std::uint64_t bytes = s.base.MemoryBytes() + s.slot_extent.capacity() * 8 +
                        s.extent_slot.capacity() * 4 + s.referenced.capacity();
  for (const auto& t : s.targets) bytes += t.live.MemoryBytes() + t.frozen_bits.MemoryBytes();
  return bytes;
}

}  // namespace blkrep::tracker
