// Journal tests: recovery after crashes at every point of the write
// sequence, torn tails against corruption, a model-based property test, and
// the memory bound. Crashes are simulated by MemoryFileSystem (unsynced data
// lost or torn) and by FaultInjectingFileSystem (a failing write or sync is
// the instant of the crash).
#include "tracker/journal.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cerrno>

#include "core/fault_injecting_file_system.h"
#include "core/memory_block_device.h"
#include "core/memory_file_system.h"
#include "tests/tracker/journal_model.h"
#include "tests/tracker/journal_test_util.h"
#include "tracker/journal_format.h"
#include "tracker/tracked_device.h"

namespace blkrep::tracker {
namespace {

using namespace testing;
using core::FileOp;
using core::MemoryFileSystem;
using Runs = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

constexpr std::uint64_t kVolumeBytes = 1 << 20;  // 256 blocks, 16 extents

TEST(JournalTest, FreshJournalTracksWritesSinceTrackingBegan) {
  MemoryFileSystem fs;
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  ASSERT_TRUE(j->MarkDirty(4096, 8192).ok());
  ASSERT_TRUE(j->MarkDirty(100 * 4096 + 17, 1).ok());
  ASSERT_TRUE(j->MarkDirty(0, 0).ok());
  JournalReport r = j->Report();
  EXPECT_EQ(r.dirty.Runs(), (Runs{{1, 2}, {100, 1}}));
  EXPECT_FALSE(r.resync_required);
}

TEST(JournalTest, RangeOutsideTheVolumeIsRejected) {
  MemoryFileSystem fs;
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  EXPECT_EQ(j->MarkDirty(kVolumeBytes - 1, 2).code(), core::Code::kOutOfRange);
  EXPECT_EQ(j->MarkDirty(~std::uint64_t{0} - 10, 100).code(), core::Code::kOutOfRange);
  EXPECT_EQ(j->Report().dirty.Count(), 0u);
}

TEST(JournalTest, CleanCloseSealsAndReopenKeepsTheDirtySet) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  ASSERT_TRUE(j->MarkDirty(10 * 4096, 3 * 4096).ok());
  ASSERT_TRUE(j->Close(volume.identity).ok());
  j.reset();
  JournalReport sealed = MustRead(fs);
  EXPECT_TRUE(sealed.clean_close);
  EXPECT_FALSE(sealed.resync_required);
  EXPECT_EQ(sealed.dirty.Runs(), (Runs{{10, 3}}));
  EXPECT_TRUE(sealed.hot_extents.empty());

  auto reopened = MustOpen(fs, volume, SmallOptions());
  JournalReport r = reopened->Report();
  EXPECT_FALSE(r.clean_close);  // open again: no longer sealed
  EXPECT_FALSE(r.resync_required);
  EXPECT_EQ(r.dirty.Runs(), (Runs{{10, 3}}));
}

TEST(JournalTest, HotExtentWritesNeedNoJournalIo) {
  MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  ASSERT_TRUE(j->MarkDirty(0, 4096).ok());
  std::uint64_t syncs = fs.calls(FileOp::kSync);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(j->MarkDirty((i % 16) * 4096, 4096).ok());
  EXPECT_EQ(fs.calls(FileOp::kSync), syncs) << "writes into a hot extent must not touch the journal";
  ASSERT_TRUE(j->MarkDirty(20 * 4096, 4096).ok());  // a cold extent: one durable AL record
  EXPECT_EQ(fs.calls(FileOp::kSync), syncs + 1);
}

TEST(JournalTest, ColdExtentIsDurableBeforeMarkDirtyReturns) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  // More distinct extents than AL slots: evictions persist bits.
  for (std::uint64_t e = 0; e < 16; ++e) ASSERT_TRUE(j->MarkDirty(e * 65536 + 4096 * (e % 16), 4096).ok());
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport r = MustRead(fs);
  EXPECT_FALSE(r.resync_required);
  for (std::uint64_t e = 0; e < 16; ++e) EXPECT_TRUE(r.dirty.Test(e * 16 + e % 16)) << "extent " << e;
  // Only the 4 extents still in the AL are wholly dirty; evicted ones are exact.
  EXPECT_LE(r.dirty.Count(), 12u + 4u * 16u);
}

TEST(JournalTest, FreezeSplitsTheDirtySetAndCommitClearsIt) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  auto full = j->Freeze("nodeB");
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->mode, CycleMode::kFull);
  EXPECT_EQ(full->blocks.Count(), 256u);
  ASSERT_TRUE(j->MarkDirty(5 * 4096, 4096).ok());  // during the cycle
  ASSERT_TRUE(j->Commit("nodeB", full->epoch).ok());
  auto incremental = j->Freeze("nodeB");
  ASSERT_TRUE(incremental.ok());
  EXPECT_EQ(incremental->mode, CycleMode::kIncremental);
  EXPECT_EQ(incremental->blocks.Runs(), (Runs{{5, 1}}));
  EXPECT_EQ(incremental->epoch, full->epoch + 1);
  ASSERT_TRUE(j->Commit("nodeB", incremental->epoch).ok());
  JournalReport r = j->Report();
  ASSERT_EQ(r.targets.size(), 1u);
  EXPECT_EQ(r.targets[0].dirty_blocks, 0u);
  EXPECT_EQ(r.targets[0].last_cycle, incremental->epoch);
  EXPECT_EQ(j->Commit("nodeB", incremental->epoch).code(), core::Code::kInvalidArgument);
}

TEST(JournalTest, AbortReturnsTheFrozenBlocks) {
  MemoryFileSystem fs;
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  auto full = j->Freeze("nodeB");
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(j->Commit("nodeB", full->epoch).ok());
  ASSERT_TRUE(j->MarkDirty(7 * 4096, 4096).ok());
  auto cycle = j->Freeze("nodeB");
  ASSERT_TRUE(cycle.ok());
  ASSERT_TRUE(j->MarkDirty(9 * 4096, 4096).ok());
  ASSERT_TRUE(j->Abort("nodeB", cycle->epoch).ok());
  EXPECT_EQ(j->Report().targets[0].dirty.Runs(), (Runs{{7, 1}, {9, 1}}));
}

TEST(JournalTest, CrashDuringCycleKeepsFrozenBlocksDirty) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  {
    auto j = MustOpen(fs, volume, SmallOptions());
    ASSERT_TRUE(j->AddTarget("nodeB").ok());
    auto full = j->Freeze("nodeB");
    ASSERT_TRUE(j->Commit("nodeB", full->epoch).ok());
    ASSERT_TRUE(j->Checkpoint().ok());  // empties the AL: exact sets from here
    ASSERT_TRUE(j->MarkDirty(3 * 4096, 4096).ok());
    auto cycle = j->Freeze("nodeB");
    ASSERT_TRUE(cycle.ok());
    ASSERT_TRUE(j->MarkDirty(200 * 4096, 4096).ok());
  }  // the tracker dies without closing
  fs.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  auto j = MustOpen(fs, volume, SmallOptions());
  JournalReport r = j->Report();
  EXPECT_FALSE(r.resync_required);
  ASSERT_EQ(r.targets.size(), 1u);
  EXPECT_TRUE(r.targets[0].dirty.Test(3));
  EXPECT_TRUE(r.targets[0].dirty.Test(200));
  EXPECT_FALSE(r.targets[0].frozen_epoch.has_value());
}

// Crash at every write, sync, rename and directory sync the journal makes:
// the failing call is the instant of the crash, what was not durable is
// lost or torn, and no block whose MarkDirty returned before it is missing.
TEST(JournalCrashTest, CrashAtEveryJournalWriteLosesNoAcknowledgedChange) {
  struct Point {
    FileOp op;
    int count;
  };
  int crashes = 0;
  for (Point point : {Point{FileOp::kWrite, 120}, Point{FileOp::kSync, 120}, Point{FileOp::kRename, 12},
                      Point{FileOp::kSyncDir, 12}}) {
    for (int k = 0; k < point.count; ++k) {
      SCOPED_TRACE("crash at call " + std::to_string(k) + " of op " + std::to_string(int(point.op)));
      MemoryFileSystem mem;
      core::FaultInjectingFileSystem fs(mem);
      fs.FailAfter(point.op, static_cast<std::uint64_t>(k), EIO);
      fs.SetTornWriteBytes(static_cast<std::size_t>(k % 7) * 13);
      fs.SetDieAtFirstFault(true);
      auto volume = MemoryVolume(kVolumeBytes);
      JournalOptions options = SmallOptions();
      options.cap_bytes = 64 * 1024;  // compactions happen too
      Model model(256, 4096);
      auto opened = Journal::Open(fs, kJournalPath, volume, options);
      bool crashed = !opened.ok();
      if (opened.ok()) {
        Workload workload(static_cast<std::uint64_t>(k) * 7919 + static_cast<int>(point.op), model, kVolumeBytes);
        for (int step = 0; step < 400 && !crashed; ++step) crashed = !workload.Step(**opened);
      }
      if (crashed) ++crashes;
      fs.ClearFaults();
      mem.SimulateCrash(MemoryFileSystem::CrashMode::kTornTail, static_cast<std::uint64_t>(k));
      auto recovered = Journal::Read(mem, kJournalPath);
      if (!recovered.ok()) {
        ASSERT_EQ(recovered.status().code(), core::Code::kNotFound) << recovered.status().ToString();
        ASSERT_TRUE(model.base.Empty() && model.targets.empty());
        continue;
      }
      ASSERT_TRUE(HoldsAtLeast(*recovered, model));
      // And the tracker can start on it (the old one is dead).
      if (opened.ok()) opened = core::Status::Aborted("dead");
      auto reopened = Journal::Open(mem, kJournalPath, volume, options);
      ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
      ASSERT_TRUE(HoldsAtLeast((*reopened)->Report(), model));
    }
  }
  EXPECT_GT(crashes, 150) << "the fault points should mostly be reached";
}

// Builds a journal with a workload, remembering after each acknowledged
// operation the file's size and the model at that moment.
struct History {
  std::vector<std::byte> file;
  std::vector<std::uint64_t> record_ends;
  std::vector<std::pair<std::uint64_t, Model>> snapshots;  // (file size, model)
  std::uint64_t checkpoint_end = 0;
};

History BuildHistory(std::uint64_t seed, int steps) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  JournalOptions options = SmallOptions();
  Model model(256, 4096);
  History h;
  auto j = MustOpen(fs, volume, options);
  h.checkpoint_end = fs.Contents(kJournalPath).size();
  Workload workload(seed, model, kVolumeBytes);
  for (int i = 0; i < steps; ++i) {
    int dice = i % 10;
    bool ok = dice < 7 ? workload.Mark(*j) : dice == 7 ? workload.AddTarget(*j)
                                         : dice == 8 ? workload.Freeze(*j)
                                                     : workload.Commit(*j);
    EXPECT_TRUE(ok);
    h.snapshots.emplace_back(fs.Contents(kJournalPath).size(), model);
  }
  h.file = fs.Contents(kJournalPath);
  journal_format::RecordScanner scanner(h.file, journal_format::kHeaderBytes,
                                        journal_format::DecodeHeader(h.file)->first_sequence);
  journal_format::Record record;
  while (scanner.Next(&record) == journal_format::RecordScanner::Outcome::kRecord) {
    h.record_ends.push_back(record.offset_bytes + record.size_bytes);
  }
  return h;
}

JournalReport ReadImage(const std::vector<std::byte>& image) {
  MemoryFileSystem fs;
  fs.SetContents(kJournalPath, image);
  return MustRead(fs);
}

TEST(JournalCrashTest, TruncatedTrailingRecordIsIgnored) {
  History h = BuildHistory(42, 120);
  ASSERT_GT(h.file.size(), h.checkpoint_end + 2000);
  for (std::uint64_t length = journal_format::kHeaderBytes; length <= h.file.size(); ++length) {
    JournalReport r = ReadImage(std::vector<std::byte>(h.file.begin(), h.file.begin() + length));
    if (length < h.checkpoint_end) {
      // The checkpoint itself is cut: never trusted.
      ASSERT_TRUE(r.resync_required) << "length " << length;
      continue;
    }
    // The newest operation whose records fit in `length` must be held.
    const Model* expected = nullptr;
    for (const auto& [size, model] : h.snapshots) {
      if (size <= length) expected = &model;
    }
    ASSERT_FALSE(r.resync_required) << "length " << length << ": " << r.resync_reason;
    if (expected) {
      ASSERT_TRUE(HoldsAtLeast(r, *expected)) << "length " << length;
    }
    bool at_record_boundary =
        std::find(h.record_ends.begin(), h.record_ends.end(), length) != h.record_ends.end();
    if (!at_record_boundary) {
      EXPECT_FALSE(r.torn_tail.empty()) << "length " << length;
    }
  }
}

TEST(JournalCrashTest, ChecksumMismatchBeforeTheTailRequiresResync) {
  History h = BuildHistory(7, 60);
  // The last record starts where the previous operation's records ended.
  std::uint64_t last_record = 0;
  {
    MemoryFileSystem fs;
    fs.SetContents(kJournalPath, h.file);
    // Find the last record's offset by scanning.
    journal_format::RecordScanner scanner(h.file, journal_format::kHeaderBytes,
                                          journal_format::DecodeHeader(h.file)->first_sequence);
    journal_format::Record record;
    while (scanner.Next(&record) == journal_format::RecordScanner::Outcome::kRecord) {
      last_record = record.offset_bytes;
    }
  }
  ASSERT_GT(last_record, h.checkpoint_end);
  for (std::uint64_t offset = 0; offset < h.file.size(); ++offset) {
    for (std::uint8_t flip : {std::uint8_t{0x01}, std::uint8_t{0x80}}) {
      std::vector<std::byte> image = h.file;
      image[offset] ^= static_cast<std::byte>(flip);
      JournalReport r = ReadImage(image);
      if (offset < last_record) {
        ASSERT_TRUE(r.resync_required) << "mutation at offset " << offset << " went unnoticed";
        ASSERT_NE(r.resync_reason.find("corrupt"), std::string::npos) << r.resync_reason;
      } else {
        // The last record is the tail: a torn write, dropped, not corruption.
        ASSERT_FALSE(r.resync_required) << "offset " << offset << ": " << r.resync_reason;
        ASSERT_FALSE(r.torn_tail.empty());
        ASSERT_TRUE(HoldsAtLeast(r, h.snapshots[h.snapshots.size() - 2].second));
      }
    }
  }
}

TEST(JournalCrashTest, CorruptJournalStillOpensAndRequiresResync) {
  History h = BuildHistory(3, 40);
  MemoryFileSystem fs;
  std::vector<std::byte> image = h.file;
  image[h.checkpoint_end + 60] ^= std::byte{0x10};
  fs.SetContents(kJournalPath, image);
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  JournalReport r = j->Report();
  EXPECT_TRUE(r.resync_required);
  EXPECT_NE(r.resync_reason.find("is corrupt"), std::string::npos) << r.resync_reason;
  // Tracking carries on, and the reason survives a clean restart.
  ASSERT_TRUE(j->MarkDirty(0, 4096).ok());
  ASSERT_TRUE(j->Close(MemoryVolume(kVolumeBytes).identity).ok());
  JournalReport after = MustRead(fs);
  EXPECT_TRUE(after.resync_required);
  EXPECT_TRUE(after.dirty.Test(0));
}

TEST(JournalCrashTest, GarbageHeaderRequiresResyncButServes) {
  MemoryFileSystem fs;
  fs.SetContents(kJournalPath, std::vector<std::byte>(10000, std::byte{0x5a}));
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  EXPECT_TRUE(j->Report().resync_required);
  EXPECT_TRUE(j->MarkDirty(0, 1).ok());
}

// Random operations, clean reopenings and crashes against the model. Without
// a crash the journal's sets equal the model's exactly; after a crash they
// are a superset whose extra blocks lie in extents the AL held.
TEST(JournalPropertyTest, RandomOperationsMatchTheReferenceModel) {
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    MemoryFileSystem fs;
    auto volume = MemoryVolume(kVolumeBytes);
    JournalOptions options = SmallOptions();
    options.cap_bytes = 64 * 1024;
    Model model(256, 4096);
    auto j = MustOpen(fs, volume, options);
    Workload workload(seed, model, kVolumeBytes);
    std::mt19937_64 rng(seed);
    for (int step = 0; step < 1500; ++step) {
      int dice = static_cast<int>(rng() % 100);
      if (dice < 3) {
        ASSERT_TRUE(j->Close(volume.identity).ok());
        j.reset();
        j = MustOpen(fs, volume, options);
        model.AbandonFrozen();
      } else if (dice < 5) {
        JournalReport before = j->Report();
        j.reset();
        fs.SimulateCrash(rng() % 2 ? MemoryFileSystem::CrashMode::kDropUnsynced
                                   : MemoryFileSystem::CrashMode::kTornTail,
                         rng());
        j = MustOpen(fs, volume, options);
        model.AbandonFrozen();
        JournalReport after = j->Report();
        ASSERT_TRUE(HoldsAtLeast(after, model)) << "step " << step;
        // Extra blocks only inside extents that were hot.
        DirtyBitmap allowed = model.VolumeDirty();
        for (auto extent : before.hot_extents) allowed.SetRange(extent * 16, 16);
        ASSERT_TRUE(IsSubset(after.dirty, allowed)) << "step " << step;
        // Adopt what recovery says as the new truth.
        model.base = after.since_tracking_began;
        for (auto& [name, t] : model.targets) t.live = FindTarget(after, name)->dirty;
      } else {
        ASSERT_TRUE(workload.Step(*j)) << "step " << step;
      }
      ASSERT_TRUE(HoldsExactly(j->Report(), model)) << "step " << step;
    }
  }
}

TEST(JournalTest, CompactionKeepsTheJournalUnderItsCap) {
  MemoryFileSystem fs;
  JournalOptions options = SmallOptions();
  options.cap_bytes = 64 * 1024;
  options.al_slots = 1;  // every extent change is an AL record
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), options);
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(j->MarkDirty((i % 16) * 65536, 4096).ok());
  JournalReport r = j->Report();
  EXPECT_FALSE(r.resync_required);
  EXPECT_LE(fs.Contents(kJournalPath).size(), options.cap_bytes);
  EXPECT_GT(r.generation, 3u) << "compaction should have rewritten the journal";
}

TEST(JournalTest, CheckpointLargerThanTheCapOverflowsToResync) {
  MemoryFileSystem fs;
  JournalOptions options = SmallOptions();
  options.cap_bytes = 64 * 1024;
  // 1 GiB in 4 KiB blocks: every other block dirty makes raw bitmaps of 32
  // KiB per set; with two targets a checkpoint passes the 64 KiB cap.
  auto volume = MemoryVolume(1ULL << 30);
  auto j = MustOpen(fs, volume, options);
  for (const char* name : {"a", "b"}) {  // first full cycles done
    ASSERT_TRUE(j->AddTarget(name).ok());
    auto full = j->Freeze(name);
    ASSERT_TRUE(full.ok());
    ASSERT_TRUE(j->Commit(name, full->epoch).ok());
  }
  for (std::uint64_t b = 0; b < 262144 && !j->degraded(); b += 2) ASSERT_TRUE(j->MarkDirty(b * 4096, 1).ok());
  EXPECT_TRUE(j->degraded());
  JournalReport r = j->Report();
  EXPECT_TRUE(r.resync_required);
  EXPECT_NE(r.resync_reason.find("overflowed"), std::string::npos) << r.resync_reason;
  // The guest's writes keep being accepted.
  EXPECT_TRUE(j->MarkDirty(4096, 4096).ok());
}

TEST(JournalFaultTest, FailedJournalWriteDegradesButNeverFailsTheGuest) {
  MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  core::MemoryBlockDevice disk(kVolumeBytes);
  TrackedDevice tracked(disk, *j);
  fs.FailExtendingWrites(ENOSPC);  // the journal's file system is full
  std::vector<std::byte> data(8192, std::byte{0x42});
  ASSERT_TRUE(tracked.Write(9 * 65536, data).ok());
  EXPECT_EQ(disk.contents()[9 * 65536], std::byte{0x42});
  EXPECT_TRUE(j->degraded());
  JournalReport r = j->Report();
  EXPECT_TRUE(r.resync_required);
  EXPECT_NE(r.resync_reason.find("could not be written"), std::string::npos) << r.resync_reason;
  ASSERT_TRUE(tracked.Write(12 * 65536, data).ok());
  // A crash now: the in-place header flag says tracking is incomplete.
  j.reset();
  fs.ClearFaults();
  mem.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  JournalReport after = MustRead(mem);
  EXPECT_TRUE(after.resync_required) << "a failed journal write must survive a crash as resync-required";
}

TEST(JournalFaultTest, VolumeWritesFollowTheirJournalRecord) {
  MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  auto j = MustOpen(fs, MemoryVolume(kVolumeBytes), SmallOptions());
  core::MemoryBlockDevice disk(kVolumeBytes);
  TrackedDevice tracked(disk, *j);
  std::vector<std::byte> data(4096, std::byte{1});
  std::uint64_t syncs_before = fs.calls(FileOp::kSync);
  ASSERT_TRUE(tracked.Write(300 * 4096 % kVolumeBytes, data).ok());
  EXPECT_EQ(fs.calls(FileOp::kSync), syncs_before + 1);
  // The record is durable: a crash right after the write keeps the block.
  mem.SimulateCrash(MemoryFileSystem::CrashMode::kDropUnsynced);
  EXPECT_TRUE(MustRead(mem).dirty.Test(300 % 256));
  EXPECT_EQ(tracked.Write(kVolumeBytes, data).code(), core::Code::kOutOfRange);
}

TEST(JournalIdentityTest, SizeChangeWhileUntrackedRequiresResync) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  auto j = MustOpen(fs, volume, SmallOptions());
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  ASSERT_TRUE(j->Close(volume.identity).ok());
  j.reset();
  volume.identity.size_bytes = 2 * kVolumeBytes;
  auto grown = MustOpen(fs, volume, SmallOptions());
  JournalReport r = grown->Report();
  EXPECT_TRUE(r.resync_required);
  EXPECT_NE(r.resync_reason.find("changed size"), std::string::npos) << r.resync_reason;
  EXPECT_EQ(r.volume_size_bytes, 2 * kVolumeBytes);
  EXPECT_TRUE(grown->MarkDirty(2 * kVolumeBytes - 4096, 4096).ok());
}

TEST(JournalIdentityTest, FileModifiedAfterTheSealRequiresResync) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  volume.identity.kind = core::VolumeIdentity::Kind::kRegularFile;
  volume.identity.dev = 8;
  volume.identity.ino = 1234;
  volume.identity.mtime_ns = 1000;
  auto j = MustOpen(fs, volume, SmallOptions());
  ASSERT_TRUE(j->Close(volume.identity).ok());
  j.reset();
  {  // unchanged: no resync
    auto again = MustOpen(fs, volume, SmallOptions());
    EXPECT_FALSE(again->Report().resync_required);
    ASSERT_TRUE(again->Close(volume.identity).ok());
  }
  volume.identity.mtime_ns = 2000;  // someone wrote it while untracked
  auto touched = MustOpen(fs, volume, SmallOptions());
  EXPECT_TRUE(touched->Report().resync_required);
  EXPECT_NE(touched->Report().resync_reason.find("modified while untracked"), std::string::npos);
}

TEST(JournalIdentityTest, ReplacedFileRequiresResyncEvenAfterACrash) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(kVolumeBytes);
  volume.identity.kind = core::VolumeIdentity::Kind::kRegularFile;
  volume.identity.ino = 1234;
  { auto j = MustOpen(fs, volume, SmallOptions()); }  // crash: no seal
  {
    auto same = MustOpen(fs, volume, SmallOptions());
    EXPECT_FALSE(same->Report().resync_required) << "a crash alone needs no resync";
  }
  volume.identity.ino = 999;
  auto replaced = MustOpen(fs, volume, SmallOptions());
  EXPECT_TRUE(replaced->Report().resync_required);
}

TEST(JournalMemoryTest, OneTebibyteWithTwoTargetsStaysUnder40MiB) {
  MemoryFileSystem fs;
  auto volume = MemoryVolume(1ULL << 40);
  JournalOptions options;  // 64 KiB blocks, 4 MiB extents, 1024 slots
  options.cap_bytes = 256ULL << 20;
  struct mallinfo2 before = mallinfo2();
  auto j = MustOpen(fs, volume, options);
  ASSERT_TRUE(j->AddTarget("nodeB").ok());
  ASSERT_TRUE(j->AddTarget("nodeC").ok());
  for (std::uint64_t i = 0; i < 5000; ++i) ASSERT_TRUE(j->MarkDirty((i * 7919 % 262144) << 22, 65536).ok());
  auto cycle = j->Freeze("nodeB");  // a cycle in flight holds a frozen copy
  ASSERT_TRUE(cycle.ok());
  cycle->blocks = DirtyBitmap();     // the caller's copy is the caller's
  struct mallinfo2 after = mallinfo2();
  std::uint64_t heap = after.uordblks + after.hblkhd - before.uordblks - before.hblkhd;
  EXPECT_LT(j->MemoryBytes(), 40ULL << 20);
  // The in-memory journal file counts too here (MemoryFileSystem); the
  // tracking state alone is what the bound is about.
  std::uint64_t file = fs.Contents(kJournalPath).size();
  EXPECT_LT(heap - std::min(heap, 3 * file), 40ULL << 20) << "heap " << heap << " file " << file;
}

}  // namespace
}  // namespace blkrep::tracker

namespace blkrep::tracker {
namespace {

TEST(JournalTest, SecondOpenOfTheSameJournalIsRefusedWhileTheFirstLives) {
  core::MemoryFileSystem fs;
  auto volume = testing::MemoryVolume(1 << 20);
  auto first = testing::MustOpen(fs, volume, testing::SmallOptions());
  auto second = Journal::Open(fs, testing::kJournalPath, volume, testing::SmallOptions());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), core::Code::kAborted);
  EXPECT_NE(second.status().message().find("locked"), std::string::npos);
  first.reset();
  EXPECT_TRUE(Journal::Open(fs, testing::kJournalPath, volume, testing::SmallOptions()).ok());
}

TEST(JournalFaultTest, DegradationIsReportedOnce) {
  core::MemoryFileSystem mem;
  core::FaultInjectingFileSystem fs(mem);
  JournalOptions options = testing::SmallOptions();
  std::vector<std::string> warnings;
  options.on_degraded = [&](const std::string& reason) { warnings.push_back(reason); };
  auto j = testing::MustOpen(fs, testing::MemoryVolume(1 << 20), options);
  fs.FailAfter(core::FileOp::kSync, 0, EIO);
  ASSERT_TRUE(j->MarkDirty(0, 4096).ok());
  ASSERT_TRUE(j->MarkDirty(10 * 65536, 4096).ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("could not be written"), std::string::npos) << warnings[0];
}

}  // namespace
}  // namespace blkrep::tracker
