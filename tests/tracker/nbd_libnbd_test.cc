// Edge cases of the NBD protocol driven by libnbd (a real client; its
// client-side checks switched off where the test must send what a careful
// client never would), through tests/tracker/nbd_ops.py. The test decides
// every request and computes, on its own, what the volume must hold and
// which 4 KiB blocks `journal inspect --json` must report dirty — exactly.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/tracker/nbd_model.h"
#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

template <typename... Parts>
std::string Op(const Parts&... parts) {
  std::string out;
  auto add = [&](const auto& part) {
    if (!out.empty()) out += ':';
    if constexpr (std::is_arithmetic_v<std::decay_t<decltype(part)>>) {
      out += std::to_string(part);
    } else {
      out += part;
    }
  };
  (add(parts), ...);
  return out;
}

class NbdLibnbdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    python_ = PythonWithNbd();
    if (python_.empty()) GTEST_SKIP() << "no python3 with libnbd's nbd module (Debian: python3-libnbd)";
    volume_ = dir_.File("disk0.img");
  }

  void StartTracker(std::vector<std::string> extra_args = {}) {
    tracker_ = std::make_unique<Tracker>(dir_, std::vector<VolumeSpec>{{"disk0", volume_}}, std::move(extra_args));
    ASSERT_TRUE(tracker_->Start());
  }

  RunResult Ops(const std::vector<std::string>& ops) {
    std::vector<std::string> argv = {python_, ScriptPath("nbd_ops.py"), tracker_->Uri("disk0")};
    argv.insert(argv.end(), ops.begin(), ops.end());
    return RunProgram(dir_, argv);
  }

  // The tracker (still running) reports exactly `expected` dirty and no
  // resync.
  void ExpectDirtyExactly(const BlockSet& expected) {
    json report = Inspect(dir_, tracker_->state_dir());
    BlockSet dirty = DirtyBlocks(report, "disk0");
    EXPECT_EQ(dirty, expected) << Difference(expected, dirty);
    EXPECT_EQ(report.value("resync_required", true), false) << report.dump();
  }

  TempDir dir_;
  std::string python_;
  std::string volume_;
  std::unique_ptr<Tracker> tracker_;
};

TEST_F(NbdLibnbdTest, UnalignedAndOneByteWritesLandExactlyAndDirtyExactlyTheirBlocks) {
  const std::uint64_t size = 8 * kMiB;
  MakeVolume(volume_, size);
  StartTracker();
  struct W {
    std::uint64_t offset, length;
    int byte;
  };
  const std::vector<W> writes = {{0, 1, 0x11},
                                 {4095, 2, 0x22},  // straddles blocks 0 and 1
                                 {9000, 1, 0x33},
                                 {2 * kMiB - 1, 1, 0x99},  // the last byte of a block
                                 {12289, 5000, 0x44},
                                 {kMiB - 1, 1, 0x55},
                                 {3 * kMiB + 100, 70000, 0x66},
                                 {5 * kMiB + 4096, 3 * 4096, 0x88},  // aligned, for contrast
                                 {size - 1, 1, 0x77}};
  VolumeModel model(size);
  std::vector<std::string> ops;
  for (const W& w : writes) {
    ops.push_back(Op("write", w.offset, w.length, w.byte));
    model.Write(w.offset, w.length, static_cast<std::uint8_t>(w.byte));
  }
  for (const W& w : writes) ops.push_back(Op("read", w.offset, w.length, w.byte));
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}

TEST_F(NbdLibnbdTest, ZeroLengthRequestsGetEinvalChangeNothingAndTheConnectionLivesOn) {
  const std::uint64_t size = 4 * kMiB;
  MakeVolume(volume_, size);
  StartTracker();
  VolumeModel model(size);
  std::vector<std::string> ops = {Op("fail", "EINVAL", "write", 4096, 0),
                                  Op("fail", "EINVAL", "read", 4096, 0),
                                  Op("fail", "EINVAL", "trim", 4096, 0),
                                  Op("fail", "EINVAL", "zero", 4096, 0),
                                  Op("fail", "EINVAL", "blockstatus", 4096, 0),
                                  // The same connection still works.
                                  Op("write", 8192, 1, 0xAB),
                                  Op("read", 8192, 1, 0xAB)};
  model.Write(8192, 1, 0xAB);
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}

TEST_F(NbdLibnbdTest, OutOfRangeRequestsFailAndNothingIsWrittenBeyondTheVolume) {
  // Not a multiple of the 4 KiB tracking block: the last block is partial.
  const std::uint64_t size = 8 * kMiB + 512;
  MakeVolume(volume_, size);
  StartTracker();
  VolumeModel model(size);
  std::vector<std::string> ops = {
      Op("size", size),
      Op("fail", "EINVAL", "read", size - 1, 2),
      Op("fail", "EINVAL", "read", size, 1),
      Op("fail", "ENOSPC", "write", size - 1, 2),
      Op("fail", "ENOSPC", "write", size, 4096),
      Op("fail", "ENOSPC", "write", "0x8000000000000000", 1),
      Op("fail", "ENOSPC", "write", "0xfffffffffffff000", 8192),  // offset + length wraps
      Op("fail", "EINVAL|ENOSPC", "trim", size - 4096, 8192),
      Op("fail", "ENOSPC", "zero", size, 1),
      Op("fail", "ENOSPC", "zero", size - 100, 4096),
      Op("fail", "EINVAL", "blockstatus", size, 4096),
      // The last byte is inside, and the connection still works.
      Op("write", size - 1, 1, 0x5A),
      Op("read", size - 1, 1, 0x5A),
      Op("read", size - 4097, 4096, 0),
  };
  model.Write(size - 1, 1, 0x5A);
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  EXPECT_EQ(FileSize(volume_), size) << "a request beyond the end changed the volume's size";
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}

TEST_F(NbdLibnbdTest, TrimDirtiesExactlyItsBlocksAndLeavesNeighbouringBytesIntact) {
  const std::uint64_t size = 8 * kMiB;
  std::vector<std::uint8_t> initial = RandomBytes(size, 7);
  MakeVolume(volume_, size);
  WriteAt(volume_, 0, initial);
  StartTracker();
  VolumeModel model(initial);
  struct T {
    std::uint64_t offset, length;
    const char* flags;
  };
  const std::vector<T> trims = {{5000, 10000, ""},
                                {kMiB, 64 * 1024, "fua"},
                                {3 * kMiB + 1, 1, ""},
                                {7 * kMiB, kMiB, ""}};  // to the end
  std::vector<std::string> ops;
  for (const T& t : trims) {
    ops.push_back(*t.flags ? Op("trim", t.offset, t.length, t.flags) : Op("trim", t.offset, t.length));
    model.Trim(t.offset, t.length);
  }
  ops.push_back("flush");
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);  // every byte outside the trims is unchanged
}

TEST_F(NbdLibnbdTest, WriteZeroesReadBackZeroWithAndWithoutNoHoleAndNoHoleKeepsTheRangeAllocated) {
  const std::uint64_t size = 8 * kMiB;
  std::vector<std::uint8_t> initial = RandomBytes(size, 11);
  MakeVolume(volume_, size);
  WriteAt(volume_, 0, initial);
  struct stat before {};
  ASSERT_EQ(::stat(volume_.c_str(), &before), 0);
  StartTracker();
  VolumeModel model(initial);
  struct Z {
    std::uint64_t offset, length;
    std::vector<std::string> flags;
  };
  const std::vector<Z> zeroes = {{4097, 9000, {}},
                                 {kMiB, kMiB, {"nohole"}},
                                 {2 * kMiB + 3, 65536, {"fastzero"}},
                                 {5 * kMiB, 128 * 1024, {"nohole", "fua"}},
                                 {6 * kMiB + 100, 1, {}},
                                 {7 * kMiB, 256 * 1024, {"nohole", "fastzero"}}};
  std::vector<std::string> ops;
  std::uint64_t may_unmap_bytes = 0;
  for (const Z& z : zeroes) {
    std::string op = Op("zero", z.offset, z.length);
    for (const auto& f : z.flags) op += ":" + f;
    ops.push_back(op);
    model.Zero(z.offset, z.length);
    bool no_hole = false;
    for (const auto& f : z.flags) no_hole = no_hole || f == "nohole";
    if (!no_hole) may_unmap_bytes += z.length + 2 * 4096;
  }
  for (const Z& z : zeroes) ops.push_back(Op("read", z.offset, z.length, 0));
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
  // NO_HOLE: "the area MUST be fully provisioned". Only the zeroes without
  // it may have given space back.
  struct stat after {};
  ASSERT_EQ(::stat(volume_.c_str(), &after), 0);
  std::uint64_t before_bytes = static_cast<std::uint64_t>(before.st_blocks) * 512;
  std::uint64_t after_bytes = static_cast<std::uint64_t>(after.st_blocks) * 512;
  EXPECT_GE(after_bytes + may_unmap_bytes, before_bytes)
      << "allocated bytes went from " << before_bytes << " to " << after_bytes
      << ": a NO_HOLE write-zeroes deallocated its range";
}

TEST_F(NbdLibnbdTest, FuaWritesAndFlushSucceedAndLand) {
  const std::uint64_t size = 4 * kMiB;
  MakeVolume(volume_, size);
  StartTracker();
  VolumeModel model(size);
  std::vector<std::string> ops = {Op("write", 100, 5000, 0x21, "fua"), Op("write", kMiB, 65536, 0x22),
                                  "flush",                             Op("write", 2 * kMiB + 7, 1, 0x23, "fua"),
                                  "flush",                             Op("read", 100, 5000, 0x21),
                                  Op("read", kMiB, 65536, 0x22),       Op("read", 2 * kMiB + 7, 1, 0x23)};
  model.Write(100, 5000, 0x21);
  model.Write(kMiB, 65536, 0x22);
  model.Write(2 * kMiB + 7, 1, 0x23);
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}

TEST_F(NbdLibnbdTest, BlockStatusReportsTheHolesAndDataOfASparseVolume) {
  const std::uint64_t size = 8 * kMiB;
  MakeVolume(volume_, size);
  // Data at [1 MiB, 2 MiB) and [5 MiB, 5 MiB + 64 KiB); the rest is holes.
  WriteAt(volume_, kMiB, RandomBytes(kMiB, 3));
  WriteAt(volume_, 5 * kMiB, RandomBytes(65536, 4));
  StartTracker();
  VolumeModel model(ReadAll(volume_));
  // A write through NBD into a hole turns it into data at once.
  model.Write(3 * kMiB, 4096, 0x42);
  RunResult run = Ops({Op("write", 3 * kMiB, 4096, 0x42), Op("blockstatus", 0, size),
                       Op("blockstatus", 0, size, "reqone"), Op("blockstatus", 5 * kMiB + 4096, 8192)});
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  std::vector<json> replies;
  std::size_t start = 0;
  while (start < run.out.size()) {
    std::size_t end = run.out.find('\n', start);
    if (end == std::string::npos) end = run.out.size();
    if (end > start) replies.push_back(json::parse(run.out.substr(start, end - start)));
    start = end + 1;
  }
  ASSERT_EQ(replies.size(), 3u) << run.out;

  // Whole volume: per 4 KiB block, hole|zero (3) exactly where nothing was
  // written, 0 (data) where something was.
  auto is_data = [&](std::uint64_t offset) {
    return (offset >= kMiB && offset < 2 * kMiB) || (offset >= 5 * kMiB && offset < 5 * kMiB + 65536) ||
           (offset >= 3 * kMiB && offset < 3 * kMiB + 4096);
  };
  std::uint64_t covered = 0;
  for (const auto& e : replies[0]["extents"]) {
    std::uint64_t offset = e[0], length = e[1], flags = e[2];
    ASSERT_EQ(offset, covered) << "extents are not contiguous: " << replies[0].dump();
    ASSERT_GT(length, 0u);
    for (std::uint64_t at = offset; at < offset + length; at += 4096) {
      EXPECT_EQ(flags & 3, is_data(at) ? 0u : 3u) << "block at " << at << " in " << e.dump();
    }
    covered += length;
  }
  EXPECT_EQ(covered, size);
  // REQ_ONE: one descriptor, the leading hole.
  ASSERT_EQ(replies[1]["extents"].size(), 1u) << replies[1].dump();
  EXPECT_EQ(replies[1]["extents"][0][1], kMiB);
  EXPECT_EQ(replies[1]["extents"][0][2], 3);
  // A range inside the data stays inside the request.
  std::uint64_t total = 0;
  for (const auto& e : replies[2]["extents"]) {
    EXPECT_EQ(e[2], 0) << replies[2].dump();
    total += e[1].get<std::uint64_t>();
  }
  EXPECT_EQ(total, 8192u) << replies[2].dump();
  // Block status reads; it dirties nothing.
  ExpectDirtyExactly(model.dirty());
}

TEST_F(NbdLibnbdTest, TwoClientsWritingDisjointRangesAtOnceBothLandAndOnlyTheirBlocksAreDirty) {
  const std::uint64_t size = 16 * kMiB;
  MakeVolume(volume_, size);
  StartTracker();
  VolumeModel model(size);
  // Per 64 KiB slot: client A writes [0, 16K), client B [32K, 48K); the
  // other two quarters stay untouched and must stay clean.
  constexpr std::uint64_t kSlot = 65536, kLength = 16384, kCount = 200;
  Process a, b;
  auto client = [&](Process& p, const std::string& name, std::uint64_t first, int byte) {
    std::vector<std::string> argv = {python_, ScriptPath("nbd_ops.py"), tracker_->Uri("disk0"),
                                     Op("writes", first, kLength, kCount, kSlot, byte), "flush"};
    return p.Start(argv, dir_.File(name + ".out"), dir_.File(name + ".err"));
  };
  ASSERT_TRUE(client(a, "a", 0, 0xA1));
  ASSERT_TRUE(client(b, "b", 32768, 0xB2));
  for (std::uint64_t i = 0; i < kCount; ++i) {
    model.Write(i * kSlot, kLength, 0xA1);
    model.Write(i * kSlot + 32768, kLength, 0xB2);
  }
  EXPECT_EQ(a.Wait(std::chrono::seconds(30)), 0) << a.err();
  EXPECT_EQ(b.Wait(std::chrono::seconds(30)), 0) << b.err();
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}

TEST_F(NbdLibnbdTest, UnknownCommandFlagIsRejectedWithEinvalAndNothingIsWritten) {
  const std::uint64_t size = 4 * kMiB;
  MakeVolume(volume_, size);
  StartTracker();
  VolumeModel model(size);
  std::vector<std::string> ops = {
      Op("fail", "EINVAL", "write", 4096, 4096, "flags=0x100"),   // bit 8: no such flag
      Op("fail", "EINVAL", "write", 65536, 100, "flags=0x8000"),  // bit 15
      Op("fail", "EINVAL", "zero", kMiB, 4096, "flags=0x40"),
      Op("fail", "EINVAL", "trim", 2 * kMiB, 4096, "flags=0x2"),  // NO_HOLE means nothing on trim
      Op("write", 8192, 10, 0x31),
      Op("read", 8192, 10, 0x31),
      Op("read", 4096, 4096, 0),
  };
  model.Write(8192, 10, 0x31);
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}


// The pread/pwrite thread pool (where io_uring is missing) serves the same
// requests with the same results.
TEST_F(NbdLibnbdTest, ThreadPoolEngineServesWritesReadsZeroesAndErrorsAlike) {
  const std::uint64_t size = 8 * kMiB + 512;
  MakeVolume(volume_, size);
  StartTracker({"--io-engine", "threads"});
  VolumeModel model(size);
  std::vector<std::string> ops = {Op("write", 4095, 2, 0x12),
                                  Op("write", kMiB + 1, 100000, 0x13, "fua"),
                                  Op("writes", 3 * kMiB, 4096, 64, 8192, 0x14),
                                  Op("zero", 2 * kMiB + 5, 5000),
                                  Op("fail", "EINVAL", "write", 0, 0),
                                  Op("fail", "ENOSPC", "write", size - 1, 2),
                                  Op("fail", "EINVAL", "read", size, 1),
                                  "flush",
                                  Op("read", 4095, 2, 0x12),
                                  Op("read", kMiB + 1, 100000, 0x13),
                                  Op("read", 3 * kMiB + 8192 * 63, 4096, 0x14),
                                  Op("read", 2 * kMiB + 5, 5000, 0)};
  model.Write(4095, 2, 0x12);
  model.Write(kMiB + 1, 100000, 0x13);
  for (int i = 0; i < 64; ++i) model.Write(3 * kMiB + 8192 * i, 4096, 0x14);
  model.Zero(2 * kMiB + 5, 5000);
  RunResult run = Ops(ops);
  ASSERT_EQ(run.exit_status, 0) << Describe(run);
  EXPECT_NE(tracker_->process().err().find("I/O on threads"), std::string::npos) << tracker_->process().err();
  ExpectDirtyExactly(model.dirty());
  model.ExpectFileMatches(volume_);
}

}  // namespace
}  // namespace blkrep::tracker::nbd_test
