// Review tests for the journal: each test names the behaviour it proves.
// Tests under JournalReviewBugTest fail on the code as reviewed (each one
// documents a bug); the others cover behaviour not covered elsewhere.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "core/bytes.h"
#include "core/fault_injecting_file_system.h"
#include "core/memory_file_system.h"
#include "tests/tracker/journal_model.h"
#include "tests/tracker/journal_test_util.h"
#include "tracker/journal.h"
#include "tracker/journal_format.h"

namespace blkrep::tracker {
namespace {

using namespace testing;
using core::FileOp;
using core::MemoryFileSystem;
namespace jf = journal_format;
using Runs = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

constexpr std::uint64_t kVolumeBytes = 1 << 20;  // 256 blocks, 16 extents of 16 blocks

// Runs the first full cycle of `name` so that its dirty set starts empty.
void AddCommittedTarget(Journal& j, const std::string& name) {
  ASSERT_TRUE(j.AddTarget(name).ok());
  auto full = j.Freeze(name);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ASSERT_TRUE(j.Commit(name, full->epoch).ok());
}

// ---- Helpers to craft journal files ---------------------------------------

jf::FileHeader CraftedHeader(std::uint64_t volume_bytes) {
  jf::FileHeader h;
  h.block_size_bytes = 4096;
  h.volume_size_bytes = volume_bytes;
  h.extent_size_bytes = 64 * 1024;
  h.al_slots = 4;
  h.cap_bytes = 1 << 20;
  h.first_sequence = 1;
  h.generation = 1;
  h.guest = "vm100";
  h.volume_name = "disk0";
  h.volume_path = "/dev/memory";
  return h;
}

// Re-frames every record of a journal image, letting `edit` change payloads
// (checksums are recomputed, so the result passes every checksum).
std::vector<std::byte> Reframe(
    const std::vector<std::byte>& image,
    const std::function<void(const jf::Record&, std::vector<std::byte>&)>& edit) {
  std::vector<std::byte> out(image.begin(), image.begin() + jf::kHeaderBytes);
  jf::RecordScanner scanner(image, jf::kHeaderBytes, jf::DecodeHeader(image)->first_sequence);
  jf::Record record;
  while (scanner.Next(&record) == jf::RecordScanner::Outcome::kRecord) {
    std::vector<std::byte> payload(record.payload.begin(), record.payload.end());
    edit(record, payload);
    jf::AppendRecord(out, record.type, record.sequence, record.epoch, payload);
  }
  return out;
}

// ===========================================================================
// Bugs
// ===========================================================================

// Rewrite() bumps header.first_sequence/generation in memory before the new
// file exists. When compaction fails (journal file system full), the
// degraded path writes that *new* header in place over the *old* file,
// whose first record has the old sequence number. Recovery then sees
// "record sequence X where Y was expected" at the very first record: the
// whole file is "corrupt", nothing is replayed and every target vanishes.
TEST(JournalReviewBugTest, FailedCheckpointKeepsTargetsAndTheirDirtyBlocksAfterCrash) {
  MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  AddCommittedTarget(*j, "nodeB");
  ASSERT_TRUE(j->MarkDirty(40 * 4096, 4096).ok());  // extent 2 comes into the AL (durable)
  fs.FailExtendingWrites(ENOSPC);                   // the journal's file system is full
  EXPECT_FALSE(j->Checkpoint().ok());
  EXPECT_TRUE(j->degraded());
  j.reset();  // the node crashes
  fs.ClearFaults();
  mem.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(mem);
  EXPECT_TRUE(r.resync_required);
  EXPECT_EQ(r.resync_reason.find("is corrupt"), std::string::npos)
      << "the journal was never corrupt, a write failed: " << r.resync_reason;
  const TargetReport* t = FindTarget(r, "nodeB");
  ASSERT_NE(t, nullptr) << "target nodeB disappeared from the recovered journal";
  EXPECT_TRUE(t->resync_required);
  EXPECT_TRUE(t->dirty.Test(40));
  EXPECT_EQ(t->last_cycle, 1u);
}

// Same root cause, reached the natural way: the journal hits its cap, the
// compaction cannot create its new file, the journal degrades.
TEST(JournalReviewBugTest, FailedCompactionAtTheCapKeepsTargetsAfterCrash) {
  MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  auto volume = MemoryVolume(kVolumeBytes);
  JournalOptions options = SmallOptions();
  options.cap_bytes = 64 * 1024;
  options.al_slots = 1;  // every extent change appends an AL_SWAP
  auto j = MustOpen(fs, volume, options);
  AddCommittedTarget(*j, "nodeB");
  fs.FailAfter(FileOp::kOpen, 0, ENOSPC);  // only compaction opens files
  for (int i = 0; i < 5000 && !j->degraded(); ++i) {
    ASSERT_TRUE(j->MarkDirty((i % 16) * 65536, 4096).ok());
  }
  ASSERT_TRUE(j->degraded());
  j.reset();
  fs.ClearFaults();
  mem.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(mem);
  EXPECT_TRUE(r.resync_required);
  EXPECT_EQ(r.resync_reason.find("is corrupt"), std::string::npos) << r.resync_reason;
  EXPECT_NE(FindTarget(r, "nodeB"), nullptr) << "target nodeB disappeared from the recovered journal";
}

// Rewrite() renames the new file over the journal and only then fsyncs the
// directory; when that fsync fails it returns before `file_ = file`. The
// journal degrades and EnterDegraded() writes the resync flag into the
// *replaced* (unlinked) inode. Once the rename reaches the disk (ext4
// commits it within seconds anyway; here: another volume's journal of the
// same guest fsyncs the shared directory), a crash recovers the new file,
// which has no flag and none of the writes acknowledged after it: a lost
// change with no resync.
TEST(JournalReviewBugTest, FailedDirectorySyncAfterRenameDoesNotLoseTheDegradedFlag) {
  MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  VolumeDescriptor other = MemoryVolume(kVolumeBytes);
  other.name = "disk1";
  auto sibling = MustOpen(mem, other, SmallOptions(), "/state/journal/vm100/disk1.journal");
  AddCommittedTarget(*j, "nodeB");

  fs.FailAfter(FileOp::kSyncDir, 0, EIO, /*sticky=*/false);
  EXPECT_FALSE(j->Checkpoint().ok());
  ASSERT_TRUE(j->degraded());
  // The guest keeps writing; the journal is degraded, so only memory has it.
  ASSERT_TRUE(j->MarkDirty(100 * 4096, 4096).ok());
  // The sibling journal's compaction syncs the shared directory.
  ASSERT_TRUE(sibling->Checkpoint().ok());
  j.reset();
  mem.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(mem);
  const TargetReport* t = FindTarget(r, "nodeB");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(r.resync_required || t->dirty.Test(100))
      << "block 100 was acknowledged by MarkDirty, is not dirty, and no resync is required";
}

// MarkResync() sets resync_raised_while_frozen, but Abort() (and the
// abandon-on-open path) never clears it. The next cycle is a resync cycle
// that started *after* the request, yet its commit keeps needs_resync,
// because the stale flag says the resync was raised during that cycle.
TEST(JournalReviewBugTest, ResyncCycleAfterAnAbortClearsResyncRequired) {
  MemoryFileSystem fs;
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  AddCommittedTarget(*j, "nodeB");
  ASSERT_TRUE(j->MarkDirty(0, 4096).ok());
  auto cycle = j->Freeze("nodeB");
  ASSERT_TRUE(cycle.ok());
  ASSERT_TRUE(j->RequireResync("nodeB", "replica checksum mismatch").ok());
  ASSERT_TRUE(j->Abort("nodeB", cycle->epoch).ok());
  auto resync = j->Freeze("nodeB");
  ASSERT_TRUE(resync.ok());
  EXPECT_EQ(resync->mode, CycleMode::kResync);
  ASSERT_TRUE(j->Commit("nodeB", resync->epoch).ok());
  JournalReport r = j->Report();
  EXPECT_FALSE(r.targets[0].resync_required)
      << "a resync cycle frozen after the request was committed: " << r.targets[0].resync_reason;
}

TEST(JournalReviewBugTest, ResyncCycleAfterACrashedCycleClearsResyncRequired) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  {
    auto j = MustOpen(fs, volume, SmallOptions());
    AddCommittedTarget(*j, "nodeB");
    auto cycle = j->Freeze("nodeB");
    ASSERT_TRUE(cycle.ok());
    ASSERT_TRUE(j->RequireResync("nodeB", "replica checksum mismatch").ok());
  }  // crash during the cycle
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  auto j = MustOpen(fs, volume, SmallOptions());
  auto resync = j->Freeze("nodeB");
  ASSERT_TRUE(resync.ok());
  EXPECT_EQ(resync->mode, CycleMode::kResync);
  ASSERT_TRUE(j->Commit("nodeB", resync->epoch).ok());
  EXPECT_FALSE(j->Report().targets[0].resync_required) << j->Report().targets[0].resync_reason;
}

// EnsureRoom() is given MaxBitsBytes(), the size of a *raw* bitmap of the
// whole range, although EncodeBits writes runs when smaller. A freeze of a
// 2 GiB volume (4 KiB blocks) with a 64 KiB cap therefore always
// "overflows", and the journal degrades to resync-required although the
// records it would append are a few hundred bytes. With the default options
// (64 KiB blocks, 64 MiB cap) the same happens to every freeze of a volume
// over 32 TiB, and to a whole-device discard (mkfs) of a volume over 16 TiB
// with one target.
TEST(JournalReviewBugTest, FreezeOfAFewBlocksDoesNotOverflowTheCap) {
  MemoryFileSystem fs;
  JournalOptions options = SmallOptions();
  options.cap_bytes = 64 * 1024;
  auto j = MustOpen(fs, MemoryVolume(2ULL << 30), options);
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  auto full = j->Freeze("nodeB");  // all blocks: one run, 48 bytes of payload
  EXPECT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_FALSE(j->degraded());
  EXPECT_FALSE(j->Report().resync_required) << j->Report().resync_reason;
}

TEST(JournalReviewBugTest, WholeVolumeDiscardDoesNotOverflowTheCap) {
  MemoryFileSystem fs;
  JournalOptions options = SmallOptions();
  options.cap_bytes = 64 * 1024;
  auto j = MustOpen(fs, MemoryVolume(1ULL << 30), options);
  AddCommittedTarget(*j, "nodeB");
  ASSERT_TRUE(j->MarkDirty(0, 1ULL << 30).ok());  // mkfs discards the device: one run per set
  EXPECT_FALSE(j->degraded());
  EXPECT_FALSE(j->Report().resync_required) << j->Report().resync_reason;
  EXPECT_LT(fs.Contents(kJournalPath).size(), 8192u);
}

// A (checksummed) journal whose highest target id is 0xFFFFFFFE makes
// next_target_id 0xFFFFFFFF, the reserved "all targets" id. AddTarget then
// writes a TARGET record that the decoder rejects ("TARGET id is reserved"),
// so the tracker turns its own journal into a corrupt one.
TEST(JournalReviewBugTest, AddTargetNeverUsesTheReservedAllTargetsId) {
  MemoryFileSystem fs;
  std::vector<std::byte> image = jf::EncodeHeader(CraftedHeader(kVolumeBytes));
  jf::AppendRecord(image, jf::RecordType::kCheckpointBegin, 1, 0,
                   jf::Encode(jf::CheckpointBegin{1, 0, ""}));
  jf::TargetRecord target;
  target.target_id = 0xFFFFFFFEU;
  target.name = "nodeA";
  jf::AppendRecord(image, jf::RecordType::kTarget, 2, 0, jf::Encode(target));
  jf::AppendRecord(image, jf::RecordType::kCheckpointEnd, 3, 0, jf::Encode(jf::CheckpointEnd{3}));
  fs.SetContents(kJournalPath, image);
  ASSERT_FALSE(MustRead(fs).resync_required) << MustRead(fs).resync_reason;

  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  j.reset();
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(fs);
  EXPECT_EQ(r.targets.size(), 2u);
  EXPECT_EQ(r.resync_reason.find("reserved"), std::string::npos) << r.resync_reason;
}

// Replay of AL_SWAP does not check that the record carries the evicted
// extent's bits for the base set and *every* target (the spec says it
// does). A checksummed AL_SWAP without a target's set is applied, and that
// target silently loses the extent's blocks instead of the record being
// reported as corruption.
TEST(JournalReviewBugTest, AlSwapMissingATargetsBitsIsCorruption) {
  MemoryFileSystem fs;
  JournalOptions options = SmallOptions();
  options.al_slots = 1;
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), options);
  AddCommittedTarget(*j, "nodeB");
  ASSERT_TRUE(j->MarkDirty(3 * 4096, 4096).ok());        // extent 0 hot, block 3
  ASSERT_TRUE(j->MarkDirty(5 * 65536, 4096).ok());       // evicts extent 0
  std::vector<std::byte> image = fs.Contents(kJournalPath);
  ASSERT_TRUE(FindTarget(MustRead(fs), "nodeB")->dirty.Test(3));
  int edited = 0;
  std::vector<std::byte> forged = Reframe(image, [&](const jf::Record& r, std::vector<std::byte>& p) {
    if (r.type != jf::RecordType::kAlSwap) return;
    auto swap = jf::DecodeAlSwap(p);
    if (!swap.ok() || swap->old_extent != 0) return;
    std::erase_if(swap->sets, [](const jf::AlSwap::SetBits& s) { return s.kind == jf::SetKind::kLive; });
    p = jf::Encode(*swap);
    ++edited;
  });
  ASSERT_EQ(edited, 1);
  fs.SetContents(kJournalPath, forged);
  JournalReport r = MustRead(fs);
  const TargetReport* t = FindTarget(r, "nodeB");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(r.resync_required || t->dirty.Test(3))
      << "an AL_SWAP without nodeB's bits was accepted and block 3 silently vanished";
}

// The header's volume size is trusted before anything is compared with the
// real volume: a (checksummed) header claiming 2^60 bytes makes Read() and
// Open() allocate 32 TiB of bitmap. Bad input must be an error, not a crash
// (invariant 7); Open() knows the real size and could refuse/resize first.
TEST(JournalReviewBugTest, HeaderClaimingAHugeVolumeIsNotACrash) {
  {
    std::ifstream overcommit("/proc/sys/vm/overcommit_memory");
    int mode = 0;
    if (overcommit >> mode && mode == 1) GTEST_SKIP() << "overcommit_memory=1 would really try";
  }
  MemoryFileSystem fs;
  std::vector<std::byte> image = jf::EncodeHeader(CraftedHeader(jf::kMaxVolumeSizeBytes));
  jf::AppendRecord(image, jf::RecordType::kCheckpointBegin, 1, 0,
                   jf::Encode(jf::CheckpointBegin{0, 0, ""}));
  jf::AppendRecord(image, jf::RecordType::kCheckpointEnd, 2, 0, jf::Encode(jf::CheckpointEnd{2}));
  fs.SetContents(kJournalPath, image);
  bool threw = false;
  try {
    auto j = Journal::Open(fs, kJournalPath, MemoryVolume(kVolumeBytes), SmallOptions());
    if (j.ok()) {
      EXPECT_TRUE((*j)->Report().resync_required);
    }
  } catch (const std::exception& e) {
    threw = true;
    ADD_FAILURE() << "Open threw " << e.what();
  }
  EXPECT_FALSE(threw);
}

// ===========================================================================
// Behaviour worth pinning down (these pass)
// ===========================================================================

// Two targets frozen at different epochs, a compaction while both are
// frozen, then a commit of the older cycle after the compaction, a write,
// and a crash: the replay accepts the checkpointed FREEZE_ENDs with their
// own epochs, the commit applies, and nothing is lost.
TEST(JournalReviewTest, CheckpointWithTargetsFrozenAtDifferentEpochsThenCommitAndCrash) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  AddCommittedTarget(*j, "a");
  AddCommittedTarget(*j, "b");
  ASSERT_TRUE(j->MarkDirty(10 * 4096, 4096).ok());
  auto ca = j->Freeze("a");
  ASSERT_TRUE(ca.ok());
  ASSERT_TRUE(j->MarkDirty(20 * 4096, 4096).ok());
  auto cb = j->Freeze("b");
  ASSERT_TRUE(cb.ok());
  ASSERT_LT(ca->epoch, cb->epoch);
  ASSERT_TRUE(j->RequireResync("b", "verify found a difference").ok());
  ASSERT_TRUE(j->Checkpoint().ok());
  ASSERT_TRUE(j->Commit("a", ca->epoch).ok());
  ASSERT_TRUE(j->MarkDirty(30 * 4096, 4096).ok());
  JournalReport before = j->Report();
  j.reset();
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(fs);
  EXPECT_EQ(r.resync_reason.find("corrupt"), std::string::npos) << r.resync_reason;
  const TargetReport* a = FindTarget(r, "a");
  const TargetReport* b = FindTarget(r, "b");
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(a->frozen_epoch.has_value());
  EXPECT_EQ(a->last_cycle, ca->epoch);
  EXPECT_FALSE(a->dirty.Test(10)) << "committed cycle came back";
  EXPECT_TRUE(a->dirty.Test(20));
  EXPECT_TRUE(a->dirty.Test(30));
  ASSERT_TRUE(b->frozen_epoch.has_value());
  EXPECT_EQ(*b->frozen_epoch, cb->epoch);
  EXPECT_TRUE(b->dirty.Test(10) && b->dirty.Test(20) && b->dirty.Test(30));
  EXPECT_TRUE(b->resync_required);
  EXPECT_FALSE(a->resync_required);
  EXPECT_TRUE(IsSubset(FindTarget(before, "a")->dirty, a->dirty));
  EXPECT_TRUE(IsSubset(FindTarget(before, "b")->dirty, b->dirty));
}

// A resync raised during a frozen resync cycle must survive that cycle's
// commit even across a compaction (the RESYNC_REQUIRED after the checkpoint).
TEST(JournalReviewTest, ResyncRaisedDuringAResyncCycleSurvivesCompactionAndCommit) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  {
    auto j = MustOpen(fs, volume, SmallOptions());
    AddCommittedTarget(*j, "nodeB");
    ASSERT_TRUE(j->RequireResync("nodeB", "first").ok());
    auto resync = j->Freeze("nodeB");
    ASSERT_TRUE(resync.ok());
    ASSERT_EQ(resync->mode, CycleMode::kResync);
    ASSERT_TRUE(j->RequireResync("", "second").ok());
    ASSERT_TRUE(j->Checkpoint().ok());
    ASSERT_TRUE(j->Commit("nodeB", resync->epoch).ok());
    EXPECT_TRUE(j->Report().targets[0].resync_required);
  }
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  EXPECT_TRUE(MustRead(fs).targets[0].resync_required);
}

// RemoveTarget then AddTarget of the same name: the new target starts full
// (all blocks), also after a crash, and does not inherit the old one's
// cycle or frozen state.
TEST(JournalReviewTest, RemovedAndReAddedTargetStartsFullAcrossCrash) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  AddCommittedTarget(*j, "nodeB");
  auto cycle = j->Freeze("nodeB");
  ASSERT_TRUE(cycle.ok());
  ASSERT_TRUE(j->RemoveTarget("nodeB").ok());
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  EXPECT_EQ(j->Commit("nodeB", cycle->epoch).code(), core::Code::kInvalidArgument);
  j.reset();
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(fs);
  ASSERT_FALSE(r.resync_required) << r.resync_reason;
  ASSERT_EQ(r.targets.size(), 1u);
  EXPECT_TRUE(r.targets[0].needs_full);
  EXPECT_EQ(r.targets[0].last_cycle, 0u);
  EXPECT_FALSE(r.targets[0].frozen_epoch.has_value());
  EXPECT_EQ(r.targets[0].dirty_blocks, 256u);
}

// The last extent is partial (volume not a multiple of the extent size, last
// block partial too): evicting it persists exactly its bits, nothing past
// the volume, and a crash keeps them.
TEST(JournalReviewTest, EvictingAPartialLastExtentKeepsItsBitsExactly) {
  MemoryFileSystem fs;
  const std::uint64_t size = 5 * 65536 + 3 * 4096 + 100;  // 5 extents + 4 blocks, last partial
  auto volume = MemoryVolume(size);
  JournalOptions options = SmallOptions();
  options.al_slots = 1;
  auto j = MustOpen(fs, volume, options);
  AddCommittedTarget(*j, "nodeB");
  ASSERT_TRUE(j->Checkpoint().ok());
  ASSERT_TRUE(j->MarkDirty(size - 1, 1).ok());           // block 83, extent 5
  ASSERT_TRUE(j->MarkDirty(5 * 65536, 1).ok());          // block 80
  ASSERT_TRUE(j->MarkDirty(0, 1).ok());                  // evicts extent 5
  ASSERT_TRUE(j->MarkDirty(65536, 1).ok());              // evicts extent 0
  j.reset();
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(fs);
  ASSERT_FALSE(r.resync_required) << r.resync_reason;
  EXPECT_EQ(r.dirty.block_count(), 84u);
  // Extent 1 is still hot (16 blocks); extents 0 and 5 are exact.
  EXPECT_EQ(r.targets[0].dirty.Runs(), (Runs{{0, 1}, {16, 16}, {80, 1}, {83, 1}}));
}

// Decoders reject values chosen to overflow first_block + run arithmetic.
TEST(JournalReviewTest, BitsDecoderRejectsOverflowingRanges) {
  auto bits = [](std::uint64_t first, std::uint64_t count, std::uint64_t start, std::uint64_t len) {
    std::vector<std::byte> p;
    core::ByteWriter w(p);
    w.U8(1);
    w.U8(1);
    w.U16(0);
    w.U32(1);
    w.U64(first);
    w.U64(count);
    w.U32(1);
    w.U32(0);
    w.U64(start);
    w.U64(len);
    return p;
  };
  EXPECT_FALSE(jf::DecodeBits(bits(0, 100, 50, ~std::uint64_t{0} - 20)).ok());
  EXPECT_FALSE(jf::DecodeBits(bits(0, 100, ~std::uint64_t{0}, 2)).ok());
  EXPECT_FALSE(jf::DecodeBits(bits(~std::uint64_t{0} - 5, 10, 0, 10)).ok());
  EXPECT_FALSE(jf::DecodeBits(bits(0, ~std::uint64_t{0}, 0, 10)).ok());
  EXPECT_TRUE(jf::DecodeBits(bits(7, 100, 90, 10)).ok());
  // A BITS record whose range passes the volume's end is corruption on replay.
  MemoryFileSystem fs;
  std::vector<std::byte> image = jf::EncodeHeader(CraftedHeader(kVolumeBytes));
  jf::AppendRecord(image, jf::RecordType::kCheckpointBegin, 1, 0, jf::Encode(jf::CheckpointBegin{0, 0, ""}));
  std::vector<std::byte> base = bits(250, 10, 0, 10);
  base[0] = std::byte{0};
  jf::AppendRecord(image, jf::RecordType::kBits, 2, 0, base);
  jf::AppendRecord(image, jf::RecordType::kCheckpointEnd, 3, 0, jf::Encode(jf::CheckpointEnd{3}));
  fs.SetContents(kJournalPath, image);
  JournalReport r = MustRead(fs);
  EXPECT_TRUE(r.resync_required);
  EXPECT_NE(r.resync_reason.find("outside the volume"), std::string::npos) << r.resync_reason;
}

// ---------------------------------------------------------------------------
// Concurrency: several threads call MarkDirty (hot, cold, and ranges wider
// than the AL) while another freezes, commits, aborts and checkpoints;
// optionally the machine dies at a random instant (every journal write from
// then on fails and nothing more reaches the disk). After joining, the
// disk is crashed (torn tail) and recovered. Every write acknowledged
// before the death must be dirty for every target whose last committed
// freeze returned before that write started.
// ---------------------------------------------------------------------------

struct WriteLog {
  std::uint64_t start, end;  // logical clock around MarkDirty
  std::uint64_t offset, length;
};

TEST(JournalReviewStressTest, ConcurrentWritersWithCyclesAndCompactionLoseNothingAcrossCrash) {
  constexpr std::uint64_t kBytes = 4 << 20;  // 1024 blocks, 64 extents
  constexpr int kWriters = 4;
  constexpr int kMaxWritesPerThread = 20000;
  constexpr int kControlOps = 200;
  for (std::uint64_t round = 0; round < 8; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const bool die = round % 2 == 1;
    MemoryFileSystem mem;
    core::FaultInjectingFileSystem fs(mem);
    fs.SetDieAtFirstFault(true);
    auto volume = MemoryVolume(kBytes);
    JournalOptions options = SmallOptions();
    options.cap_bytes = 64 * 1024;  // compactions during the run
    auto j = MustOpen(fs, volume, options);
    const std::vector<std::string> names = {"a", "b"};
    std::atomic<std::uint64_t> clock{1};
    std::map<std::string, std::uint64_t> cutoff;  // clock after the last committed freeze returned
    for (const auto& n : names) {
      AddCommittedTarget(*j, n);
      cutoff[n] = clock++;
    }
    std::vector<std::vector<WriteLog>> logs(kWriters);
    std::atomic<bool> control_done{false};
    std::vector<std::thread> threads;
    for (int w = 0; w < kWriters; ++w) {
      threads.emplace_back([&, w] {
        std::mt19937_64 rng(round * 100 + static_cast<std::uint64_t>(w));
        // Write until the control thread is done (and at least a little).
        for (int i = 0; i < kMaxWritesPerThread && (i < 200 || !control_done.load()); ++i) {
          std::uint64_t offset = rng() % kBytes;
          std::uint64_t length = rng() % 10 == 0 ? 1 + rng() % (1 << 20) : 1 + rng() % (3 * 65536);
          length = std::min(length, kBytes - offset);
          WriteLog log{clock++, 0, offset, length};
          core::Status s = j->MarkDirty(offset, length);
          log.end = clock++;
          EXPECT_TRUE(s.ok()) << s.ToString();
          logs[static_cast<std::size_t>(w)].push_back(log);
        }
      });
    }
    std::uint64_t death = ~std::uint64_t{0};
    int commits = 0;
    {
      std::mt19937_64 rng(round);
      std::map<std::string, std::uint64_t> frozen;  // name -> epoch
      std::map<std::string, std::uint64_t> frozen_at;
      int ops = 0;
      const int die_after = die ? 10 + static_cast<int>(rng() % 150) : -1;
      for (ops = 1; ops <= kControlOps; ++ops) {
        if (ops == die_after) {
          death = clock++;
          fs.FailAfter(FileOp::kWrite, 0, EIO);
        }
        const std::string& n = names[rng() % names.size()];
        int dice = static_cast<int>(rng() % 10);
        if (dice < 4 && !frozen.count(n)) {
          auto c = j->Freeze(n);
          std::uint64_t returned = clock++;
          if (c.ok()) {
            frozen[n] = c->epoch;
            frozen_at[n] = returned;
          }
        } else if (dice < 7 && frozen.count(n)) {
          // A failed commit (dead machine) leaves the cutoff where it was.
          if (j->Commit(n, frozen[n]).ok()) {
            cutoff[n] = frozen_at[n];
            ++commits;
          }
          frozen.erase(n);
        } else if (dice < 8 && frozen.count(n)) {
          EXPECT_TRUE(j->Abort(n, frozen[n]).ok());
          frozen.erase(n);
        } else if (dice < 9) {
          (void)j->Checkpoint();
        } else {
          (void)j->Report();
        }
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
      }
      control_done = true;
    }
    for (auto& t : threads) t.join();
    // The run did exercise cycles and compaction (sanity of the test itself).
    if (!die) {
      EXPECT_GT(commits, 0);
      EXPECT_GT(j->Report().generation, 5u);
    }
    if (!die) {
      EXPECT_FALSE(j->degraded());
    }
    j.reset();
    fs.ClearFaults();
    mem.SimulateCrash(MemoryFileSystem::CrashMode::kTornTail, round);
    JournalReport r = MustRead(mem);
    if (!die) {
      ASSERT_FALSE(r.resync_required) << r.resync_reason;
    }
    const std::uint64_t blocks = kBytes / 4096;
    DirtyBitmap base(blocks);
    std::map<std::string, DirtyBitmap> required;
    for (const auto& n : names) required[n] = DirtyBitmap(blocks);
    for (const auto& thread_log : logs) {
      for (const WriteLog& w : thread_log) {
        if (w.end > death) continue;  // not acknowledged before the machine died
        std::uint64_t first = w.offset / 4096, end = (w.offset + w.length - 1) / 4096 + 1;
        base.SetRange(first, end - first);
        for (const auto& n : names) {
          if (w.start > cutoff[n]) required[n].SetRange(first, end - first);
        }
      }
    }
    if (r.resync_required) {
      // Only acceptable when the machine died (a fault was seen).
      ASSERT_TRUE(die) << r.resync_reason;
      continue;
    }
    EXPECT_TRUE(IsSubset(base, r.since_tracking_began)) << "base set lost blocks";
    for (const auto& n : names) {
      const TargetReport* t = FindTarget(r, n);
      ASSERT_NE(t, nullptr);
      EXPECT_TRUE(IsSubset(required[n], t->dirty)) << "target " << n << " lost acknowledged blocks";
    }
  }
}

}  // namespace
}  // namespace blkrep::tracker
