// The receiver's two gates for bytes it reads back from disk
// (docs/replica-format.md, "Reading"): DecodeGuestState for the guest state
// file and the staging index reader. Corruption is made by mutating the bytes
// of real files — the worked example of the document, produced by the
// receiver itself (a full cycle, then an incremental one stopped where the
// state says "apply pending") — with the checksums recomputed, so every
// check behind the checksum is reached. A state file that fails the gate
// must end the session with an ERROR frame and an error, before anything
// touches a replica or a staging; nothing may be sized by a field before it
// was checked.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/memory_file_system.h"
#include "proto/frame.h"
#include "receiver/guest_state.h"
#include "receiver/receiver.h"
#include "receiver/replica_layout.h"
#include "receiver/staging.h"
#include "tests/core/temp_dir.h"
#include "tests/receiver/worked_example.h"

namespace blkrep::receiver {
namespace {

using core::Code;
using core::Status;
using core::test_support::ReadFile;
using core::test_support::TempDir;
using core::test_support::WriteFile;
using proto::FrameType;

using namespace test_support;  // NOLINT: the worked example's constants and frames

// Offsets in the example's state file (docs/replica-format.md, "Worked
// example": job "vm100-0", one volume "disk0").
namespace off {
constexpr std::size_t kMagic = 0x00, kVersion = 0x04, kJobLength = 0x08, kJob = 0x0a, kNextStagingId = 0x11,
                      kCycleId = 0x1d, kMode = 0x25, kApplyPending = 0x26, kVolumeCount = 0x27,
                      kNameLength = 0x2b, kName = 0x2d, kSizeBytes = 0x32, kBlockSize = 0x3a, kIncomplete = 0x46,
                      kStagingId = 0x47, kInPlace = 0x4f, kBaseEpoch = 0x50, kStagingSize = 0x58,
                      kStagingBlockSize = 0x60, kInCycle = 0x64, kCycleEpoch = 0x65, kCycleBlockCount = 0x6d,
                      kDataBlocks = 0x75, kZeroBlocks = 0x7d, kKeptBlocks = 0x85, kReplicaKind = 0x8d,
                      kReplicaDev = 0x8e, kReplicaIno = 0x96, kReplicaMtime = 0x9e, kChecksum = 0xa6;
}  // namespace off

// Reads the frames a receiver wrote.
class BytesStream final : public proto::Stream {
 public:
  explicit BytesStream(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  Status ReadFull(std::span<std::byte> out) override {
    if (at_ == bytes_.size()) return Status::EndOfData("end");
    if (out.size() > bytes_.size() - at_) return Status::Aborted("cut");
    std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(at_), out.size(), out.begin());
    at_ += out.size();
    return Status::Ok();
  }
  Status WriteAll(std::span<const std::byte>) override { return Status::Internal("read-only"); }

 private:
  std::vector<std::byte> bytes_;
  std::size_t at_ = 0;
};

void Store(std::vector<std::byte>& bytes, std::size_t offset, int width, std::uint64_t value) {
  for (int i = 0; i < width; ++i) {
    bytes[offset + static_cast<std::size_t>(i)] = static_cast<std::byte>(value >> (8 * i));
  }
}

// Recomputes the trailing xxh3 of a state file or of one index record
// [start, end) (the checksum is its last 8 bytes).
void FixChecksum(std::vector<std::byte>& bytes, std::size_t start, std::size_t end) {
  Store(bytes, end - 8, 8, core::Xxh3_64(std::span(bytes).subspan(start, end - 8 - start)));
}
void FixStateChecksum(std::vector<std::byte>& state) { FixChecksum(state, 0, state.size()); }

// Address-space headroom for a child process: whatever it allocates beyond
// this fails (std::bad_alloc, which nothing catches: the child dies).
void LimitAddressSpace(std::uint64_t headroom_bytes) {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t pages = 0;
  statm >> pages;
  rlimit limit{};
  limit.rlim_cur = limit.rlim_max = pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) + headroom_bytes;
  ::setrlimit(RLIMIT_AS, &limit);
}

class ReceiverDecoderTest : public ::testing::Test, public ExampleFrames {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    options_.replica_dir = dir_.path() + "/replicas";
    RunWorkedExample(options_);  // worked_example.h
    state_ = ReadFile(StatePath());
    ASSERT_EQ(state_.size(), 174u);
    index_ = ReadFile(GuestDir() + "/.staging/disk0.index");
    ASSERT_EQ(index_.size(), 144u);
  }

  std::string GuestDir() const { return options_.replica_dir + "/" + kGuest; }
  std::string StatePath() const { return GuestDir() + "/" + kStateFileName; }
  std::string ReplicaFile() const { return *ReplicaPath(options_.replica_dir, kGuest, kVolume); }

  // The example state with one field set to `value` and the checksum fixed.
  std::vector<std::byte> StateWith(std::size_t offset, int width, std::uint64_t value) const {
    std::vector<std::byte> bytes = state_;
    Store(bytes, offset, width, value);
    FixStateChecksum(bytes);
    return bytes;
  }

  // Every file under the guest directory, with its bytes; not .lock (it
  // holds the pid of the last session, and is never read as state).
  std::map<std::string, std::vector<std::byte>> Snapshot() const {
    std::map<std::string, std::vector<std::byte>> files;
    for (const auto& e : std::filesystem::recursive_directory_iterator(GuestDir())) {
      if (e.is_regular_file() && e.path().filename() != kLockFileName) {
        files[e.path().string()] = ReadFile(e.path().string());
      }
    }
    return files;
  }

  // Runs a session whose shipper sends HELLO and then waits for the reply.
  Status HelloOnly(std::vector<std::byte>* output) {
    ScriptStream s;
    proto::FrameWriter w(s);
    EXPECT_TRUE(w.Send(FrameType::kHello, Hello()).ok());
    s.set_writing_script(false);
    Status st = ServeSession(s, options_, nullptr);
    if (output != nullptr) *output = s.output();
    return st;
  }

  TempDir dir_;
  ReceiverOptions options_;
  std::vector<std::byte> state_;  // the example's state file
  std::vector<std::byte> index_;  // the example's staging index
};

// ---- the guest state file ----

TEST_F(ReceiverDecoderTest, RealStateFileDecodesAndReencodesToTheSameBytes) {
  core::Result<GuestState> s = DecodeGuestState(state_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(ValidateGuestState(*s).ok());
  EXPECT_EQ(EncodeGuestState(*s), state_);
  EXPECT_TRUE(s->apply_pending);
  ASSERT_EQ(s->volumes.size(), 1u);
  EXPECT_EQ(s->volumes[0].staging.volume_size_bytes, kVolumeBytes);
}

struct FieldCase {
  const char* field;  // what the error must name
  std::size_t offset;
  int width;
  std::uint64_t value;
};

// Each field of the state set to a value the receiver never writes, the
// checksum recomputed: the gate refuses it, naming the field.
TEST_F(ReceiverDecoderTest, EveryFieldOutOfRangeIsCorruptionNamingTheField) {
  const std::uint64_t kAllOnes = ~std::uint64_t{0};
  const std::uint64_t kPastMaxVolume = (std::uint64_t{1} << 60) + 1;
  const FieldCase cases[] = {
      {"magic", off::kMagic, 4, 0x47524B43},
      {"version", off::kVersion, 4, 3},
      {"version", off::kVersion, 4, 0},
      {"job", off::kJobLength, 2, 65},
      {"job", off::kJob + 2, 1, '/'},
      {"job", off::kJob, 1, '.'},
      {"next_staging_id", off::kNextStagingId, 8, 0},
      {"next_staging_id", off::kNextStagingId, 8, 2},  // the volume's staging 2 was never allocated
      {"cycle_id", off::kCycleId, 8, 0},
      {"mode", off::kMode, 1, 4},
      {"mode", off::kMode, 1, 255},
      {"mode", off::kMode, 1, 1},  // a full cycle cannot have a staged (not in-place) staging
      {"apply_pending", off::kApplyPending, 1, 2},
      {"volume_count", off::kVolumeCount, 4, 4097},
      {"volume_count", off::kVolumeCount, 4, 0xFFFFFFFF},
      {"volume_count", off::kVolumeCount, 4, 2},
      {"name", off::kNameLength, 2, 65},
      {"name", off::kNameLength, 2, 0xFFFF},
      {"name", off::kName, 1, '.'},
      {"name", off::kName, 1, '-'},
      {"name", off::kName + 2, 1, '/'},
      {"name", off::kName + 4, 1, 0},
      {"size_bytes", off::kSizeBytes, 8, 0},
      {"size_bytes", off::kSizeBytes, 8, kPastMaxVolume},
      {"size_bytes", off::kSizeBytes, 8, kAllOnes},
      {"block_size_bytes", off::kBlockSize, 4, 0},
      {"block_size_bytes", off::kBlockSize, 4, 2048},
      {"block_size_bytes", off::kBlockSize, 4, 4097},
      {"block_size_bytes", off::kBlockSize, 4, 2U << 20},
      {"block_size_bytes", off::kBlockSize, 4, 0xFFFFFFFF},
      {"incomplete", off::kIncomplete, 1, 2},
      {"incomplete", off::kIncomplete, 1, 0x80},
      {"staging_id", off::kStagingId, 8, 0},  // a volume in a cycle has a staging
      {"staging_id", off::kStagingId, 8, 3},  // not below next_staging_id
      {"staging_id", off::kStagingId, 8, kAllOnes},
      {"staging_in_place", off::kInPlace, 1, 2},
      {"staging_in_place", off::kInPlace, 1, 1},  // an incremental cycle stages
      {"staging_base_epoch", off::kBaseEpoch, 8, 2},
      {"staging_base_epoch", off::kBaseEpoch, 8, kAllOnes},
      {"staging_volume_size_bytes", off::kStagingSize, 8, 0},
      {"staging_volume_size_bytes", off::kStagingSize, 8, kPastMaxVolume},
      {"staging_volume_size_bytes", off::kStagingSize, 8, kAllOnes},
      {"staging_volume_size_bytes", off::kStagingSize, 8, 2 * kVolumeBytes},  // not the validated cycle's
      {"staging_block_size_bytes", off::kStagingBlockSize, 4, 0},
      {"staging_block_size_bytes", off::kStagingBlockSize, 4, 3},
      {"staging_block_size_bytes", off::kStagingBlockSize, 4, 1U << 31},
      {"staging_block_size_bytes", off::kStagingBlockSize, 4, 8192},  // not the validated cycle's
      {"in_cycle", off::kInCycle, 1, 2},
      {"cycle_epoch", off::kCycleEpoch, 8, 0},
      {"cycle_epoch", off::kCycleEpoch, 8, 1},  // not after the base epoch
      {"cycle_block_count", off::kCycleBlockCount, 8, 257},
      {"cycle_block_count", off::kCycleBlockCount, 8, kAllOnes},
      {"cycle_block_count", off::kCycleBlockCount, 8, 13},  // the counts add up to 12
      {"data_blocks", off::kDataBlocks, 8, 3},
      {"data_blocks", off::kDataBlocks, 8, kAllOnes},
      {"zero_blocks", off::kZeroBlocks, 8, kAllOnes - 1},
      {"kept_blocks", off::kKeptBlocks, 8, 1},
      {"kept_blocks", off::kKeptBlocks, 8, kAllOnes},
      {"replica_kind", off::kReplicaKind, 1, 3},
      {"replica_kind", off::kReplicaKind, 1, 255},
      {"replica_dev", off::kReplicaKind, 1, 0},  // unknown, but the file's device and inode are there
      {"replica_ino", off::kReplicaKind, 1, 2},  // a block device has no inode recorded
  };
  for (const FieldCase& c : cases) {
    SCOPED_TRACE(std::string(c.field) + " = " + std::to_string(c.value));
    core::Result<GuestState> s = DecodeGuestState(StateWith(c.offset, c.width, c.value));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Code::kCorruption);
    EXPECT_EQ(s.status().message().rfind("guest state file: ", 0), 0u) << s.status().message();
    EXPECT_NE(s.status().message().find(c.field), std::string::npos) << s.status().message();
    EXPECT_EQ(s.status().message().find('\n'), std::string::npos);
  }
}

TEST_F(ReceiverDecoderTest, CountsOutsideAnApplyPendingCycleAreCorruption) {
  std::vector<std::byte> bytes = StateWith(off::kApplyPending, 1, 0);
  core::Result<GuestState> s = DecodeGuestState(bytes);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("data_blocks, zero_blocks and kept_blocks must be 0"), std::string::npos)
      << s.status().message();
  // The same state without the counts is one the receiver writes (after CYCLE_BEGIN).
  Store(bytes, off::kDataBlocks, 8, 0);
  Store(bytes, off::kZeroBlocks, 8, 0);
  FixStateChecksum(bytes);
  EXPECT_TRUE(DecodeGuestState(bytes).ok());
}

// Counts whose 64-bit sum wraps around to cycle_block_count: 2^64 - 8 data,
// 10 zero and 10 kept blocks "add up" to 12.
TEST_F(ReceiverDecoderTest, CountsWhoseSumWrapsAroundAreCorruption) {
  std::vector<std::byte> bytes = state_;
  Store(bytes, off::kDataBlocks, 8, ~std::uint64_t{0} - 7);
  Store(bytes, off::kKeptBlocks, 8, 10);
  FixStateChecksum(bytes);
  core::Result<GuestState> s = DecodeGuestState(bytes);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("do not add up to cycle_block_count 12"), std::string::npos)
      << s.status().message();
}

TEST_F(ReceiverDecoderTest, ChecksumMismatch) {
  std::vector<std::byte> bytes = state_;
  bytes[off::kSizeBytes] ^= std::byte{1};
  core::Result<GuestState> s = DecodeGuestState(bytes);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kCorruption);
  EXPECT_NE(s.status().message().find("checksum mismatch"), std::string::npos);
}

TEST_F(ReceiverDecoderTest, TruncatedStateNamesTheMissingField) {
  // The body cut `at`, with a checksum of what is left.
  auto cut = [&](std::size_t at) {
    std::vector<std::byte> bytes(state_.begin(), state_.begin() + static_cast<std::ptrdiff_t>(at));
    bytes.resize(bytes.size() + 8);
    FixStateChecksum(bytes);
    return DecodeGuestState(bytes).status();
  };
  // Inside the last field: every volume entry takes at least 118 bytes, and
  // 118 are there.
  Status s = cut(off::kReplicaMtime + 3);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("volume 0: replica_mtime_ns is missing"), std::string::npos) << s.message();
  // Fewer: the count is refused before any entry is read.
  s = cut(off::kReplicaIno + 3);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("volume_count 1 does not fit in the file"), std::string::npos) << s.message();
  // In the head.
  s = cut(off::kCycleId + 1);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("cycle_id is missing"), std::string::npos) << s.message();
}

TEST_F(ReceiverDecoderTest, TrailingBytesAreCorruption) {
  std::vector<std::byte> bytes(state_.begin(), state_.begin() + off::kChecksum);
  bytes.push_back(std::byte{0});
  bytes.resize(bytes.size() + 8);
  FixStateChecksum(bytes);
  core::Result<GuestState> s = DecodeGuestState(bytes);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("1 bytes follow the last volume"), std::string::npos) << s.status().message();
}

TEST_F(ReceiverDecoderTest, VolumeNamedTwiceIsCorruption) {
  GuestState s = *DecodeGuestState(state_);
  s.volumes.push_back(s.volumes[0]);
  s.volumes[1].in_cycle = false;
  s.volumes[1].staging = StagingInfo{};
  s.volumes[1].data_blocks = s.volumes[1].zero_blocks = 0;
  core::Result<GuestState> decoded = DecodeGuestState(EncodeGuestState(s));
  ASSERT_FALSE(decoded.ok());
  EXPECT_NE(decoded.status().message().find("volume 1 (disk0): name appears twice"), std::string::npos)
      << decoded.status().message();
  s.volumes[1].name = "disk1";
  EXPECT_TRUE(DecodeGuestState(EncodeGuestState(s)).ok());
}

// A staging of 2^63 bytes: refused by the gate, so the apply never sizes a
// bitmap of 2^51 blocks from it.
TEST_F(ReceiverDecoderTest, HugeStagingVolumeSizeIsRefused) {
  for (std::uint64_t size : {std::uint64_t{1} << 63, (std::uint64_t{1} << 60) + 4096}) {
    core::Result<GuestState> s = DecodeGuestState(StateWith(off::kStagingSize, 8, size));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Code::kCorruption);
    EXPECT_NE(s.status().message().find("volume 0 (disk0): staging_volume_size_bytes " + std::to_string(size)),
              std::string::npos)
        << s.status().message();
  }
}

// A (sparse) state file of 1 TiB is refused by its size, before any of it
// is read into memory.
TEST_F(ReceiverDecoderTest, StateFileLargerThanAnyStateIsRefusedWithoutReadingIt) {
  std::error_code error;
  std::filesystem::resize_file(StatePath(), std::uint64_t{1} << 40, error);
  if (error) GTEST_SKIP() << "cannot make a sparse file of 1 TiB here: " << error.message();
  core::Result<GuestState> s = ReadGuestStateFile(core::PosixFileSystemInstance(), GuestDir());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kCorruption);
  EXPECT_NE(s.status().message().find("more than any state file has"), std::string::npos) << s.status().message();
  EXPECT_EQ(s.status().message().rfind(StatePath(), 0), 0u) << s.status().message();
}

// ---- a corrupt state file at session start ----

// Absurd geometry behind a valid checksum: the session fails with an ERROR
// frame naming the field, before the apply it would otherwise redo; the
// replica, the state and the staging keep every byte.
TEST_F(ReceiverDecoderTest, CorruptStateFileFailsTheSessionWithAnErrorFrameAndTouchesNothing) {
  const std::uint64_t kAbsurd = ~std::uint64_t{0};
  ASSERT_TRUE(WriteFile(StatePath(), StateWith(off::kStagingSize, 8, kAbsurd)));
  std::map<std::string, std::vector<std::byte>> before = Snapshot();
  ASSERT_TRUE(before.count(ReplicaFile()));
  ASSERT_TRUE(before.count(GuestDir() + "/.staging/disk0.data"));

  std::vector<std::byte> output;
  Status st = HelloOnly(&output);
  EXPECT_EQ(st.code(), Code::kCorruption);
  EXPECT_NE(st.message().find(StatePath() + ": guest state file: volume 0 (disk0): staging_volume_size_bytes " +
                              std::to_string(kAbsurd)),
            std::string::npos)
      << st.ToString();

  // The shipper got exactly one frame: ERROR, with that one line.
  BytesStream wire(output);
  proto::FrameReader reader(wire);
  core::Result<proto::RawFrame> frame = reader.Next();
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  ASSERT_EQ(frame->type, FrameType::kError);
  core::Result<proto::Message> m = proto::DecodeFrame(*frame, proto::SessionContext{});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const proto::Error& error = std::get<proto::Error>(*m);
  EXPECT_EQ(error.code(), static_cast<std::uint32_t>(Code::kCorruption));
  EXPECT_NE(error.message().find("staging_volume_size_bytes"), std::string::npos) << error.message();
  EXPECT_EQ(reader.Next().status().code(), Code::kEndOfData);

  // Nothing changed: the replica is still at epoch 1 (the apply of the
  // pending cycle did not run), the staging is still there for the operator.
  std::map<std::string, std::vector<std::byte>> after = Snapshot();
  EXPECT_EQ(after, before);
  std::vector<std::byte> replica = ReadFile(ReplicaFile());
  ASSERT_EQ(replica.size(), kVolumeBytes);
  EXPECT_TRUE(std::all_of(replica.begin(), replica.end(), [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_FALSE(std::filesystem::exists(StatePath() + ".tmp"));

  // And every later session, until the operator acts.
  EXPECT_EQ(HelloOnly(nullptr).code(), Code::kCorruption);
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(ReceiverDecoderTest, EveryAbsurdGeometryFailsTheSessionBeforeTheApply) {
  const FieldCase cases[] = {
      {"block_size_bytes", off::kBlockSize, 4, 3},
      {"size_bytes", off::kSizeBytes, 8, ~std::uint64_t{0}},
      {"staging_block_size_bytes", off::kStagingBlockSize, 4, 0},
      {"staging_block_size_bytes", off::kStagingBlockSize, 4, 1U << 31},
      {"cycle_block_count", off::kCycleBlockCount, 8, ~std::uint64_t{0}},
  };
  std::map<std::string, std::vector<std::byte>> clean = Snapshot();
  for (const FieldCase& c : cases) {
    SCOPED_TRACE(c.field);
    ASSERT_TRUE(WriteFile(StatePath(), StateWith(c.offset, c.width, c.value)));
    std::map<std::string, std::vector<std::byte>> before = Snapshot();
    Status st = HelloOnly(nullptr);
    EXPECT_EQ(st.code(), Code::kCorruption);
    EXPECT_NE(st.message().find(c.field), std::string::npos) << st.ToString();
    EXPECT_EQ(Snapshot(), before);
  }
  // With the example's state back, the next session redoes the apply.
  ASSERT_TRUE(WriteFile(StatePath(), state_));
  Status st = HelloOnly(nullptr);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_NE(Snapshot(), clean);
  EXPECT_EQ(ReadFile(ReplicaFile())[2 * kBlockBytes], std::byte('a'));
}

// Geometry inside the wire's caps but far beyond the replica (2^60 bytes in
// 4 KiB blocks: a bitmap of it would take 32 TiB). The gate lets it through;
// the apply refuses it without sizing anything by it — run with little
// address space to spare — and marks the volume incomplete, as for any apply
// that finds corruption. The replica keeps its bytes.
TEST_F(ReceiverDecoderTest, HugeButValidGeometryFailsTheApplyWithoutAllocating) {
  const std::uint64_t kHuge = std::uint64_t{1} << 60;
  std::vector<std::byte> bytes = state_;
  Store(bytes, off::kSizeBytes, 8, kHuge);
  Store(bytes, off::kStagingSize, 8, kHuge);
  FixStateChecksum(bytes);
  ASSERT_TRUE(DecodeGuestState(bytes).ok());
  ASSERT_TRUE(WriteFile(StatePath(), bytes));
  std::vector<std::byte> replica = ReadFile(ReplicaFile());

  EXPECT_EXIT(
      {
        LimitAddressSpace(std::uint64_t{256} << 20);
        Status st = HelloOnly(nullptr);
        bool ok = st.code() == Code::kCorruption && st.message().find("cannot apply cycle") != std::string::npos;
        if (!ok) std::fprintf(stderr, "unexpected: %s\n", st.ToString().c_str());
        std::fflush(stderr);
        ::_exit(ok ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EQ(ReadFile(ReplicaFile()), replica);
  core::Result<GuestReplicaState> after = ReadGuestState(options_.replica_dir, kGuest);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_FALSE(after->apply_pending);
  EXPECT_TRUE(after->volumes[0].incomplete);
  EXPECT_EQ(after->volumes[0].committed_epoch, 1u);
}

// ---- the staging index ----

class StagingIndexDecoderTest : public ReceiverDecoderTest {
 protected:
  // Opens `index` as staging 2 of disk0 with `block_size` (the state's).
  core::Result<std::unique_ptr<StagingFiles>> Open(std::vector<std::byte> index,
                                                   std::uint32_t block_size = kBlockBytes) {
    fs_.SetContents("/s/disk0.index", std::move(index));
    fs_.SetContents("/s/disk0.data", ReadFile(GuestDir() + "/.staging/disk0.data"));
    return StagingFiles::Open(fs_, "/s", kVolume, 2, block_size);
  }
  // The example index with a field of the record at `record` ([start, end))
  // set, that record's checksum recomputed.
  std::vector<std::byte> IndexWith(std::size_t start, std::size_t end, std::size_t field, int width,
                                   std::uint64_t value) const {
    std::vector<std::byte> bytes = index_;
    Store(bytes, start + field, width, value);
    FixChecksum(bytes, start, end);
    return bytes;
  }
  core::MemoryFileSystem fs_;
};

// The records of the example: data at [0x20, 0x60), zero at [0x60, 0x90).
constexpr std::size_t kDataRecord = 0x20, kZeroRecord = 0x60, kIndexEnd = 0x90;

TEST_F(StagingIndexDecoderTest, EveryRecordFieldOutOfRangeEndsTheLogThere) {
  struct RecordCase {
    const char* what;
    std::size_t start, end, field;
    int width;
    std::uint64_t value;
  };
  const RecordCase cases[] = {
      {"magic", kZeroRecord, kIndexEnd, 0, 4, 0x52524B43},
      {"kind 0", kZeroRecord, kIndexEnd, 4, 1, 0},
      {"kind 5", kZeroRecord, kIndexEnd, 4, 1, 5},
      {"reserved u8", kZeroRecord, kIndexEnd, 5, 1, 1},
      {"reserved u16", kZeroRecord, kIndexEnd, 6, 2, 0x100},
      {"reserved u32", kZeroRecord, kIndexEnd, 12, 4, 1},
      {"block_count 0", kZeroRecord, kIndexEnd, 24, 8, 0},
      {"slot of a zero record", kZeroRecord, kIndexEnd, 32, 8, 0},
      {"data record of 65537 blocks", kDataRecord, kZeroRecord, 24, 8, kMaxHashesPerRecord + 1},
      {"data record of 2^64 - 1 blocks", kDataRecord, kZeroRecord, 24, 8, ~std::uint64_t{0}},
      {"data record slot 2^43", kDataRecord, kZeroRecord, 32, 8, kSlotLimit},
      {"data record slot 2^64 - 2", kDataRecord, kZeroRecord, 32, 8, ~std::uint64_t{0} - 1},
  };
  for (const RecordCase& c : cases) {
    SCOPED_TRACE(c.what);
    core::Result<std::unique_ptr<StagingFiles>> files = Open(IndexWith(c.start, c.end, c.field, c.width, c.value));
    ASSERT_TRUE(files.ok()) << files.status().ToString();
    EXPECT_EQ((*files)->valid_bytes(), c.start);
    EXPECT_TRUE((*files)->has_torn_tail());
    std::size_t records = 0;
    ASSERT_TRUE((*files)->ForEachRecord([&](const IndexRecord&) {
                          ++records;
                          return Status::Ok();
                        }).ok());
    EXPECT_EQ(records, c.start == kDataRecord ? 0u : 1u);
  }
  // Unchanged, both records are valid and the slots they name are counted.
  core::Result<std::unique_ptr<StagingFiles>> files = Open(index_);
  ASSERT_TRUE(files.ok());
  EXPECT_EQ((*files)->valid_bytes(), kIndexEnd);
  EXPECT_EQ((*files)->next_slot(), 2u);
}

TEST_F(StagingIndexDecoderTest, RecordOutsideTheVolumeMakesTheCandidatesCorrupt) {
  for (std::uint64_t first : {std::uint64_t{256}, std::uint64_t{250}, ~std::uint64_t{0} - 5}) {
    SCOPED_TRACE(first);
    core::Result<std::unique_ptr<StagingFiles>> files = Open(IndexWith(kZeroRecord, kIndexEnd, 16, 8, first));
    ASSERT_TRUE(files.ok());
    EXPECT_EQ((*files)->valid_bytes(), kIndexEnd);  // valid as a record: users check the volume
    core::Result<StagedBlocks> candidates = (*files)->LoadCandidates(3, 256);
    EXPECT_EQ(candidates.status().code(), Code::kCorruption);
    EXPECT_NE(candidates.status().message().find("lies past the end of the volume"), std::string::npos);
  }
}

TEST_F(StagingIndexDecoderTest, BlockSizeOutsideTheCapsIsRefusedBeforeReading) {
  for (std::uint32_t bs : {0U, 3U, 2048U, 4097U, 2U << 20, 0xFFFFFFFFU}) {
    SCOPED_TRACE(bs);
    core::Result<std::unique_ptr<StagingFiles>> files = Open(index_, bs);
    ASSERT_FALSE(files.ok());
    EXPECT_EQ(files.status().code(), Code::kCorruption);
    EXPECT_NE(files.status().message().find("staging block size " + std::to_string(bs)), std::string::npos)
        << files.status().message();
  }
}

// The block count comes from the state file (or a HELLO): loading the
// candidates sizes nothing by it. With 256 MiB of address space to spare, a
// volume of 2^48 blocks (a 32 TiB bitmap) or 2^64 - 1 blocks is fine, and a
// zero record covering almost all of it too.
TEST_F(StagingIndexDecoderTest, CandidatesOfAHugeVolumeSizeNothingByIt) {
  std::vector<std::byte> covering = IndexWith(kZeroRecord, kIndexEnd, 24, 8, (std::uint64_t{1} << 48) - 10);
  EXPECT_EXIT(
      {
        LimitAddressSpace(std::uint64_t{256} << 20);
        bool ok = true;
        for (std::uint64_t blocks : {std::uint64_t{1} << 48, ~std::uint64_t{0}}) {
          core::Result<std::unique_ptr<StagingFiles>> files = Open(index_);
          core::Result<StagedBlocks> staged = (*files)->LoadCandidates(3, blocks);
          ok = ok && staged.ok() && staged->size() == 2 && staged->blocks()[0].block == 2 &&
               staged->blocks()[1].block == 3 && staged->blocks()[1].slot == 1;
          // With the zero record grown to blocks 10 .. 2^48 - 1, blocks 2
          // and 3 stay staged.
          files = Open(covering);
          staged = (*files)->LoadCandidates(3, blocks);
          ok = ok && staged.ok() && staged->size() == 2;
        }
        ::_exit(ok ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace blkrep::receiver
