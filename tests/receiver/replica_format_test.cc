// The worked example of docs/replica-format.md, produced by the receiver
// itself: two scripted sessions (a full cycle, then an incremental one that
// stops where the state file says "apply pending") leave a real guest state
// file, staging index and staging data file under a TempDir. Their bytes must
// be exactly the dumps printed in the document, and the document must print
// exactly these dumps, so the two cannot drift apart.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
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

using core::Status;
using core::test_support::ReadFile;
using core::test_support::TempDir;
using proto::FrameType;

using namespace test_support;  // NOLINT: the worked example's constants and frames


std::vector<std::byte> Filled(std::size_t n, char c) { return std::vector<std::byte>(n, std::byte(c)); }

// The doc's dump format: `xxd` (16 bytes a line, 2-byte groups, ASCII).
std::string Xxd(std::span<const std::byte> bytes) {
  std::string out;
  char buf[32];
  for (std::size_t line = 0; line < bytes.size(); line += 16) {
    std::snprintf(buf, sizeof(buf), "%08zx:", line);
    out += buf;
    std::string ascii;
    for (std::size_t i = 0; i < 16; ++i) {
      if (i % 2 == 0) out += ' ';
      if (line + i < bytes.size()) {
        auto b = static_cast<unsigned char>(bytes[line + i]);
        std::snprintf(buf, sizeof(buf), "%02x", b);
        out += buf;
        ascii += (b >= 0x20 && b < 0x7f) ? static_cast<char>(b) : '.';
      } else {
        out += "  ";
      }
    }
    out += "  " + ascii + "\n";
  }
  return out;
}

// The bytes of a dump in the document's format (the inverse of Xxd).
std::vector<std::byte> FromXxd(const std::string& dump) {
  std::vector<std::byte> out;
  std::istringstream lines(dump);
  std::string line;
  while (std::getline(lines, line)) {
    // "OFFSET: " then 8 groups of up to 4 hex digits, then the ASCII column.
    std::string hex = line.substr(10, 40);
    for (std::size_t i = 0; i + 1 < hex.size(); ++i) {
      if (hex[i] == ' ' || hex[i + 1] == ' ') continue;
      out.push_back(static_cast<std::byte>(std::stoi(hex.substr(i, 2), nullptr, 16)));
      ++i;
    }
  }
  return out;
}

std::string ReadDoc() {
  std::ifstream in(std::string(BLKREP_SOURCE_DIR) + "/docs/replica-format.md");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The dumps of the document's "Worked example".
const char* const kIndexDump =
    "00000000: 424b 5258 0100 0000 0200 0000 0000 0000  BKRX............\n"
    "00000010: 0010 0000 0000 0000 d108 859e 4fab 14ae  ............O...\n"
    "00000020: 424b 5252 0100 0000 0200 0000 0000 0000  BKRR............\n"
    "00000030: 0200 0000 0000 0000 0200 0000 0000 0000  ................\n"
    "00000040: 0000 0000 0000 0000 1e70 19e9 7006 a388  .........p..p...\n"
    "00000050: 094e 6c06 f804 f70d 80aa cfab 3d5c 4397  .Nl.........=\\C.\n"
    "00000060: 424b 5252 0200 0000 0200 0000 0000 0000  BKRR............\n"
    "00000070: 0a00 0000 0000 0000 0a00 0000 0000 0000  ................\n"
    "00000080: ffff ffff ffff ffff d955 0f47 9a3c 6445  .........U.G.<dE\n";
// The example's state file with the replica identity of the machine the
// document shows (st_dev 0xfd01, st_ino 0xc0013, st_mtim 2024-06-10
// 06:13:20.123456789 UTC) in place of this machine's.
const char* const kStateDump =
    "00000000: 424b 5247 0200 0000 0700 766d 3130 302d  BKRG......vm100-\n"
    "00000010: 3003 0000 0000 0000 0002 0000 0002 0000  0...............\n"
    "00000020: 0000 0000 0002 0101 0000 0005 0064 6973  .............dis\n"
    "00000030: 6b30 0000 1000 0000 0000 0010 0000 0100  k0..............\n"
    "00000040: 0000 0000 0000 0002 0000 0000 0000 0000  ................\n"
    "00000050: 0100 0000 0000 0000 0000 1000 0000 0000  ................\n"
    "00000060: 0010 0000 0102 0000 0000 0000 000c 0000  ................\n"
    "00000070: 0000 0000 0002 0000 0000 0000 000a 0000  ................\n"
    "00000080: 0000 0000 0000 0000 0000 0000 0001 01fd  ................\n"
    "00000090: 0000 0000 0000 1300 0c00 0000 0000 15cd  ................\n"
    "000000a0: 7ad3 e58f d717 182c 3e4a 7c8c 180d       z......,>J|...\n";
// The example's state file as version 1 wrote it (no replica identity),
// shown in the document's "Versions".
const char* const kVersion1StateDump =
    "00000000: 424b 5247 0100 0000 0700 766d 3130 302d  BKRG......vm100-\n"
    "00000010: 3003 0000 0000 0000 0002 0000 0002 0000  0...............\n"
    "00000020: 0000 0000 0002 0101 0000 0005 0064 6973  .............dis\n"
    "00000030: 6b30 0000 1000 0000 0000 0010 0000 0100  k0..............\n"
    "00000040: 0000 0000 0000 0002 0000 0000 0000 0000  ................\n"
    "00000050: 0100 0000 0000 0000 0000 1000 0000 0000  ................\n"
    "00000060: 0010 0000 0102 0000 0000 0000 000c 0000  ................\n"
    "00000070: 0000 0000 0002 0000 0000 0000 000a 0000  ................\n"
    "00000080: 0000 0000 0000 0000 0000 0000 0093 514b  ..............QK\n"
    "00000090: d5e8 8f20 4b                             ... K\n";

class ReplicaFormatExampleTest : public ::testing::Test, public ExampleFrames {
 protected:
  void SetUp() override {
    options_.replica_dir = dir_.path() + "/replicas";
    RunWorkedExample(options_);  // worked_example.h: the document's two sessions
  }

  std::string GuestDir() const { return options_.replica_dir + "/" + kGuest; }

  TempDir dir_;
  ReceiverOptions options_;
};

TEST_F(ReplicaFormatExampleTest, StagingIndexOfTheSpecificationIsExactlyTheseBytes) {
  std::vector<std::byte> index = ReadFile(GuestDir() + "/.staging/disk0.index");
  EXPECT_EQ(Xxd(index), kIndexDump);
  // Each checksum covers what the document says it covers.
  ASSERT_EQ(index.size(), 144u);
  auto le64 = [&](std::size_t offset) { return core::LoadLe64(index.data() + offset); };
  EXPECT_EQ(core::Xxh3_64(std::span(index).first(24)), le64(24));
  EXPECT_EQ(core::Xxh3_64(std::span(index).subspan(32, 56)), le64(88));
  EXPECT_EQ(core::Xxh3_64(std::span(index).subspan(96, 40)), le64(136));
  EXPECT_EQ(core::Xxh3_64(Filled(kBlockBytes, 'a')), le64(72));
  EXPECT_EQ(core::Xxh3_64(Filled(kBlockBytes, 'b')), le64(80));
  // The values as the document quotes them.
  EXPECT_EQ(le64(24), 0xae14ab4f9e8508d1ULL);
  EXPECT_EQ(le64(72), 0x88a30670e919701eULL);
  EXPECT_EQ(le64(80), 0x0df704f8066c4e09ULL);
  EXPECT_EQ(le64(88), 0x97435c3dabcfaa80ULL);
  EXPECT_EQ(le64(136), 0x45643c9a470f55d9ULL);
  EXPECT_NE(ReadDoc().find(kIndexDump), std::string::npos) << "docs/replica-format.md does not show the index";
}

TEST_F(ReplicaFormatExampleTest, StagingDataFileHoldsTheBlocksInSlotOrder) {
  std::vector<std::byte> expected = Filled(kBlockBytes, 'a');
  std::vector<std::byte> b = Filled(kBlockBytes, 'b');
  expected.insert(expected.end(), b.begin(), b.end());
  EXPECT_EQ(ReadFile(GuestDir() + "/.staging/disk0.data"), expected);
}

// Offsets in the example's state file of the volume's replica identity and
// of the checksum, and the identity the document shows.
constexpr std::size_t kReplicaKindAt = 0x8d, kReplicaDevAt = 0x8e, kReplicaInoAt = 0x96, kReplicaMtimeAt = 0x9e,
                      kStateChecksumAt = 0xa6;
constexpr std::uint64_t kDocReplicaDev = 0xfd01, kDocReplicaIno = 0xc0013, kDocReplicaMtimeNs = 0x17d78fe5d37acd15;

std::uint64_t MtimeNs(const struct stat& st) {
  return static_cast<std::uint64_t>(st.st_mtim.tv_sec) * 1000000000U + static_cast<std::uint64_t>(st.st_mtim.tv_nsec);
}

TEST_F(ReplicaFormatExampleTest, GuestStateFileOfTheSpecificationIsExactlyTheseBytes) {
  std::vector<std::byte> state = ReadFile(GuestDir() + "/state");
  ASSERT_EQ(state.size(), 174u);
  EXPECT_EQ(core::Xxh3_64(std::span(state).first(kStateChecksumAt)), core::LoadLe64(state.data() + kStateChecksumAt));
  // The replica identity is this machine's: the replica file as stat(2)
  // sees it (the incremental cycle has not touched it since the full one
  // committed).
  struct stat st{};
  ASSERT_EQ(::stat(ReplicaPath(options_.replica_dir, kGuest, kVolume)->c_str(), &st), 0);
  EXPECT_EQ(state[kReplicaKindAt], std::byte{1});
  EXPECT_EQ(core::LoadLe64(state.data() + kReplicaDevAt), static_cast<std::uint64_t>(st.st_dev));
  EXPECT_EQ(core::LoadLe64(state.data() + kReplicaInoAt), static_cast<std::uint64_t>(st.st_ino));
  EXPECT_EQ(core::LoadLe64(state.data() + kReplicaMtimeAt), MtimeNs(st));
  // With the document's machine in its place, every byte is the document's.
  core::StoreLe64(state.data() + kReplicaDevAt, kDocReplicaDev);
  core::StoreLe64(state.data() + kReplicaInoAt, kDocReplicaIno);
  core::StoreLe64(state.data() + kReplicaMtimeAt, kDocReplicaMtimeNs);
  core::StoreLe64(state.data() + kStateChecksumAt, core::Xxh3_64(std::span(state).first(kStateChecksumAt)));
  EXPECT_EQ(Xxd(state), kStateDump);
  EXPECT_EQ(core::LoadLe64(state.data() + kStateChecksumAt), 0x0d188c7c4a3e2c18ULL);
  EXPECT_NE(ReadDoc().find(kStateDump), std::string::npos) << "docs/replica-format.md does not show the state";
  EXPECT_FALSE(std::filesystem::exists(GuestDir() + "/state.tmp"));
}

// docs/replica-format.md, "Versions": a version 1 state file (the example's
// as version 1 wrote it) decodes to the same state with no replica
// identity, and the session that reads it writes version 2, with the
// identity of the replica it applied the pending cycle to.
TEST_F(ReplicaFormatExampleTest, Version1StateFileStillDecodesAndTheNextWriteIsVersion2) {
  EXPECT_NE(ReadDoc().find(kVersion1StateDump), std::string::npos)
      << "docs/replica-format.md does not show the version 1 state";
  std::vector<std::byte> v1 = FromXxd(kVersion1StateDump);
  ASSERT_EQ(v1.size(), 149u);
  EXPECT_EQ(core::LoadLe32(v1.data() + 4), 1u);
  core::Result<GuestState> old = DecodeGuestState(v1);
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_FALSE(old->volumes[0].replica.known());
  EXPECT_EQ(old->volumes[0].replica, ReplicaIdentity{});
  // Everything else is what version 2 holds for the same moment.
  core::Result<GuestState> now = DecodeGuestState(ReadFile(GuestDir() + "/state"));
  ASSERT_TRUE(now.ok()) << now.status().ToString();
  ASSERT_TRUE(now->volumes[0].replica.known());
  GuestState expected = *now;
  expected.volumes[0].replica = ReplicaIdentity{};
  std::vector<std::byte> reencoded = EncodeGuestState(*old);
  EXPECT_EQ(reencoded, EncodeGuestState(expected));
  EXPECT_EQ(core::LoadLe32(reencoded.data() + 4), 2u);
  EXPECT_EQ(reencoded.size(), v1.size() + 25);
  // A version 1 file cut inside its last field is refused as version 1 (93
  // bytes per entry at least), not read as a short version 2 one.
  std::vector<std::byte> cut(v1.begin(), v1.end() - 9);
  cut.resize(cut.size() + 8);
  core::StoreLe64(cut.data() + cut.size() - 8, core::Xxh3_64(std::span(cut).first(cut.size() - 8)));
  core::Result<GuestState> short_v1 = DecodeGuestState(cut);
  ASSERT_FALSE(short_v1.ok());
  EXPECT_NE(short_v1.status().message().find("kept_blocks is missing"), std::string::npos)
      << short_v1.status().message();

  // The receiver finds it "apply pending", redoes the apply and writes
  // version 2.
  ASSERT_TRUE(core::test_support::WriteFile(GuestDir() + "/state", v1));
  ScriptStream s;
  proto::FrameWriter w(s);
  ASSERT_TRUE(w.Send(FrameType::kHello, Hello()).ok());
  s.set_writing_script(false);
  Status st = ServeSession(s, options_, nullptr);
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::vector<std::byte> written = ReadFile(GuestDir() + "/state");
  EXPECT_EQ(core::LoadLe32(written.data() + 4), 2u);
  core::Result<GuestState> after = DecodeGuestState(written);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->volumes[0].committed_epoch, 2u);
  struct stat replica{};
  ASSERT_EQ(::stat(ReplicaPath(options_.replica_dir, kGuest, kVolume)->c_str(), &replica), 0);
  const ReplicaIdentity& id = after->volumes[0].replica;
  EXPECT_EQ(id.kind, ReplicaKind::kRegularFile);
  EXPECT_EQ(id.dev, static_cast<std::uint64_t>(replica.st_dev));
  EXPECT_EQ(id.ino, static_cast<std::uint64_t>(replica.st_ino));
  EXPECT_EQ(id.mtime_ns, MtimeNs(replica));
}

TEST_F(ReplicaFormatExampleTest, NextSessionRedoesTheApplyAndCommits) {
  ScriptStream s;
  proto::FrameWriter w(s);
  ASSERT_TRUE(w.Send(FrameType::kHello, Hello()).ok());
  s.set_writing_script(false);
  Status st = ServeSession(s, options_, nullptr);
  ASSERT_TRUE(st.ok()) << st.ToString();
  core::Result<GuestReplicaState> state = ReadGuestState(options_.replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_FALSE(state->apply_pending);
  EXPECT_EQ(state->volumes[0].committed_epoch, 2u);
  std::vector<std::byte> replica = ReadFile(*ReplicaPath(options_.replica_dir, kGuest, kVolume));
  ASSERT_EQ(replica.size(), kVolumeBytes);
  EXPECT_EQ(replica[2 * kBlockBytes], std::byte('a'));
  EXPECT_EQ(replica[3 * kBlockBytes + 4095], std::byte('b'));
  EXPECT_FALSE(std::filesystem::exists(GuestDir() + "/.staging/disk0.index"));
}

// The torn-tail and checksum rules of the document, on the example's index.
class ExampleIndexTest : public ReplicaFormatExampleTest {
 protected:
  // Opens `bytes` as staging 2 of disk0 (4 KiB blocks).
  std::unique_ptr<StagingFiles> OpenIndex(std::vector<std::byte> bytes) {
    fs_.SetContents("/s/disk0.index", std::move(bytes));
    fs_.SetContents("/s/disk0.data", ReadFile(GuestDir() + "/.staging/disk0.data"));
    auto files = StagingFiles::Open(fs_, "/s", kVolume, 2, kBlockBytes);
    EXPECT_TRUE(files.ok()) << files.status().ToString();
    return files.ok() ? std::move(*files) : nullptr;
  }
  std::vector<std::byte> Index() const { return ReadFile(GuestDir() + "/.staging/disk0.index"); }
  core::MemoryFileSystem fs_;
};

TEST_F(ExampleIndexTest, TruncatedTrailingRecordIsIgnored) {
  std::vector<std::byte> bytes = Index();
  bytes.resize(bytes.size() - 5);
  std::unique_ptr<StagingFiles> files = OpenIndex(bytes);
  ASSERT_NE(files, nullptr);
  EXPECT_EQ(files->valid_bytes(), 96u);
  EXPECT_TRUE(files->has_torn_tail());
  ASSERT_TRUE(files->TruncateToValid().ok());
  EXPECT_EQ(fs_.Contents("/s/disk0.index").size(), 96u);
}

TEST_F(ExampleIndexTest, ChecksumMismatchEndsTheLogEvenBeforeAValidRecord) {
  std::vector<std::byte> bytes = Index();
  bytes[0x48] ^= std::byte{1};  // the hash of block 2
  std::unique_ptr<StagingFiles> files = OpenIndex(bytes);
  ASSERT_NE(files, nullptr);
  EXPECT_EQ(files->valid_bytes(), 32u);
}

TEST_F(ExampleIndexTest, StagedBlocksAreTheDataRecordsOfEarlierAttempts) {
  std::unique_ptr<StagingFiles> files = OpenIndex(Index());
  ASSERT_NE(files, nullptr);
  // For attempt 3 the records of attempt 2 are staged: blocks 2 and 3 in
  // slots 0 and 1; the zero record stages nothing.
  core::Result<StagedBlocks> staged = files->LoadCandidates(3, 256);
  ASSERT_TRUE(staged.ok());
  ASSERT_EQ(staged->size(), 2u);
  EXPECT_EQ(staged->blocks()[0].block, 2u);
  EXPECT_EQ(staged->blocks()[0].slot, 0u);
  EXPECT_EQ(staged->blocks()[1].block, 3u);
  EXPECT_EQ(staged->blocks()[1].slot, 1u);
  // For attempt 2 itself nothing is staged yet.
  EXPECT_EQ(files->LoadCandidates(2, 256)->size(), 0u);
  // A header naming another staging is not this staging's index.
  fs_.SetContents("/t/disk0.index", Index());
  fs_.SetContents("/t/disk0.data", {});
  EXPECT_EQ(StagingFiles::Open(fs_, "/t", kVolume, 3, kBlockBytes).status().code(), core::Code::kCorruption);
}

}  // namespace
}  // namespace blkrep::receiver
