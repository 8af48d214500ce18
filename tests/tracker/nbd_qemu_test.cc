// `blkrep track` served to the clients people actually attach: qemu-io and
// qemu-img (QEMU's NBD driver, URI nbd+unix:///NAME?socket=PATH), nbdinfo and
// nbdcopy (libnbd). Each scenario checks the data with the client itself and
// against a local copy, and that `journal inspect --json`, asked while the
// tracker runs, holds exactly the 4 KiB blocks the test computed.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/tracker/nbd_model.h"
#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

void ExpectDirtyExactly(const json& report, const std::string& volume, const BlockSet& expected) {
  BlockSet dirty = DirtyBlocks(report, volume);
  EXPECT_EQ(dirty, expected) << volume << ": " << Difference(expected, dirty);
}

void WriteFile(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  MakeVolume(path, bytes.size());
  WriteAt(path, 0, bytes);
}

TEST(NbdQemuTest, QemuIoWritesReadBackAndDirtyExactlyTheWrittenBlocks) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PROGRAM(qemu_img, "qemu-img");
  TempDir dir;
  const std::uint64_t size0 = 8 * kMiB, size1 = 3 * kMiB;
  std::string disk0 = dir.File("disk0.img"), disk1 = dir.File("disk1.img");
  MakeVolume(disk0, size0);
  MakeVolume(disk1, size1);
  Tracker tracker(dir, {{"disk0", disk0}, {"disk1", disk1}});
  ASSERT_TRUE(tracker.Start());

  struct W {
    std::uint64_t offset, length;
    int byte;  // -1: write zeroes (qemu-io write -z), -2: discard
  };
  const std::vector<W> writes = {{0, 1, 0x11},
                                 {4095, 2, 0x22},
                                 {12289, 5000, 0x33},
                                 {kMiB, 65536, -1},
                                 {3 * kMiB + 100, 70000, 0x44},
                                 {4 * kMiB + 512, 512, 0x55},
                                 {6 * kMiB, 65536, -2},
                                 {size0 - 3, 3, 0x66}};
  VolumeModel model(size0);
  std::vector<std::string> argv = {qemu_io, "-f", "raw"};
  auto command = [&](const std::string& c) {
    argv.push_back("-c");
    argv.push_back(c);
  };
  for (const W& w : writes) {
    std::string range = std::to_string(w.offset) + " " + std::to_string(w.length);
    if (w.byte == -1) {
      command("write -z " + range);
      model.Zero(w.offset, w.length);
    } else if (w.byte == -2) {
      command("discard " + range);
      model.Trim(w.offset, w.length);
    } else {
      command("write -P " + std::to_string(w.byte) + " " + range);
      model.Write(w.offset, w.length, static_cast<std::uint8_t>(w.byte));
    }
  }
  argv.push_back(tracker.Uri("disk0"));
  RunResult wrote = RunProgram(dir, argv);
  ASSERT_EQ(wrote.exit_status, 0) << Describe(wrote);

  // Read back on a new connection; qemu-io exits 1 on a pattern mismatch.
  argv = {qemu_io, "-f", "raw"};
  for (const W& w : writes) {
    if (w.byte == -2) continue;
    command("read -P " + std::to_string(w.byte < 0 ? 0 : w.byte) + " " + std::to_string(w.offset) + " " +
            std::to_string(w.length));
  }
  command("read -P 0 " + std::to_string(2 * kMiB) + " 65536");  // never written
  argv.push_back(tracker.Uri("disk0"));
  RunResult read = RunProgram(dir, argv);
  EXPECT_EQ(read.exit_status, 0) << Describe(read);
  EXPECT_EQ(read.out.find("Pattern verification failed"), std::string::npos) << read.out;

  json report = Inspect(dir, tracker.state_dir());
  ExpectDirtyExactly(report, "disk0", model.dirty());
  ExpectDirtyExactly(report, "disk1", {});
  EXPECT_EQ(report.value("resync_required", true), false);
  model.ExpectFileMatches(disk0);

  // qemu-img sees the real sizes and the same bytes as a local copy; the
  // discarded range is read back first so the copy holds what the volume
  // holds there.
  for (auto [name, size] : {std::pair{std::string("disk0"), size0}, std::pair{std::string("disk1"), size1}}) {
    RunResult info = RunProgram(dir, {qemu_img, "info", "--output=json", tracker.Uri(name)});
    ASSERT_EQ(info.exit_status, 0) << Describe(info);
    json j = json::parse(info.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << info.out;
    EXPECT_EQ(j.value("virtual-size", std::uint64_t{0}), size) << name;
  }
  std::string local = dir.File("local-copy.img");
  WriteFile(local, ReadAll(disk0));
  RunResult same = RunProgram(dir, {qemu_img, "compare", "-f", "raw", "-F", "raw", local, tracker.Uri("disk0")});
  EXPECT_EQ(same.exit_status, 0) << Describe(same);
  // ... and compare really reads through the export: one byte off is seen.
  std::uint8_t flipped = static_cast<std::uint8_t>(ReadAt(local, 12289 + 4000, 1)[0] ^ 0xFF);
  WriteAt(local, 12289 + 4000, std::vector<std::uint8_t>{flipped});
  RunResult differ = RunProgram(dir, {qemu_img, "compare", "-f", "raw", "-F", "raw", local, tracker.Uri("disk0")});
  EXPECT_EQ(differ.exit_status, 1) << Describe(differ);
  // Reads and compares dirtied nothing.
  ExpectDirtyExactly(Inspect(dir, tracker.state_dir()), "disk0", model.dirty());
}

TEST(NbdQemuTest, QemuImgConvertIntoTheExportDirtiesOnlyTheDataBlocksAndComparesEqual) {
  BLKREP_REQUIRE_PROGRAM(qemu_img, "qemu-img");
  TempDir dir;
  const std::uint64_t size = 8 * kMiB;
  std::string disk0 = dir.File("disk0.img"), source = dir.File("source.img");
  MakeVolume(disk0, size);
  MakeVolume(source, size);
  // A sparse source: three data extents (4 KiB aligned, no zero block in
  // them), holes elsewhere.
  struct Extent {
    std::uint64_t offset, length;
  };
  const std::vector<Extent> extents = {{0, 65536}, {kMiB + 4096, 200 * 1024}, {5 * kMiB, kMiB + 12288}};
  BlockSet data_blocks;
  for (std::size_t i = 0; i < extents.size(); ++i) {
    WriteAt(source, extents[i].offset, RandomBytes(extents[i].length, static_cast<std::uint32_t>(100 + i)));
    AddRange(data_blocks, extents[i].offset, extents[i].length);
  }
  Tracker tracker(dir, {{"disk0", disk0}});
  ASSERT_TRUE(tracker.Start());
  // The fresh volume is all zeroes, so --target-is-zero holds and only data
  // is written.
  RunResult convert = RunProgram(dir, {qemu_img, "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "raw",
                                       source, tracker.Uri("disk0")});
  ASSERT_EQ(convert.exit_status, 0) << Describe(convert);
  RunResult compare = RunProgram(dir, {qemu_img, "compare", "-f", "raw", "-F", "raw", source, tracker.Uri("disk0")});
  EXPECT_EQ(compare.exit_status, 0) << Describe(compare);
  EXPECT_EQ(ReadAll(disk0), ReadAll(source));
  json report = Inspect(dir, tracker.state_dir());
  ExpectDirtyExactly(report, "disk0", data_blocks);
  EXPECT_EQ(report.value("resync_required", true), false);
}

TEST(NbdQemuTest, NbdinfoListsTheRealExportNamesAndSizesAndTheirCapabilities) {
  BLKREP_REQUIRE_PROGRAM(nbdinfo, "nbdinfo");
  TempDir dir;
  std::string disk0 = dir.File("disk0.img"), data = dir.File("data.img");
  MakeVolume(disk0, 8 * kMiB);
  MakeVolume(data, 3 * kMiB + 512);
  Tracker tracker(dir, {{"disk0", disk0}, {"data", data}});
  ASSERT_TRUE(tracker.Start());

  RunResult list =
      RunProgram(dir, {nbdinfo, "--list", "--json", "nbd+unix:///?socket=" + tracker.socket()});
  ASSERT_EQ(list.exit_status, 0) << Describe(list);
  json j = json::parse(list.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << list.out;
  std::map<std::string, std::uint64_t> listed;
  for (const auto& e : j["exports"]) listed[e.value("export-name", "?")] = e.value("export-size", std::uint64_t{0});
  EXPECT_EQ(listed, (std::map<std::string, std::uint64_t>{{"disk0", 8 * kMiB}, {"data", 3 * kMiB + 512}}))
      << list.out;

  RunResult info = RunProgram(dir, {nbdinfo, "--json", tracker.Uri("data")});
  ASSERT_EQ(info.exit_status, 0) << Describe(info);
  json one = json::parse(info.out, nullptr, false);
  ASSERT_FALSE(one.is_discarded()) << info.out;
  ASSERT_EQ(one["exports"].size(), 1u) << info.out;
  const json& e = one["exports"][0];
  EXPECT_EQ(e.value("export-name", ""), "data");
  EXPECT_EQ(e.value("export-size", std::uint64_t{0}), 3 * kMiB + 512);
  EXPECT_EQ(e.value("is_read_only", true), false);
  EXPECT_EQ(e.value("can_multi_conn", false), true) << "FLUSH covers every connection (fdatasync)";
  EXPECT_EQ(e.value("can_flush", false), true);
  EXPECT_EQ(e.value("can_fua", false), true);
  EXPECT_EQ(e.value("can_trim", false), true);
  EXPECT_EQ(e.value("can_zero", false), true);
  EXPECT_EQ(e.value("can_fast_zero", false), true);
  EXPECT_EQ(e.value("block_size_maximum", std::uint64_t{0}), 32 * kMiB);
  bool base_allocation = false;
  for (const auto& c : e.value("contexts", json::array())) base_allocation |= c == "base:allocation";
  EXPECT_TRUE(base_allocation) << info.out;

  RunResult size = RunProgram(dir, {nbdinfo, "--size", tracker.Uri("disk0")});
  EXPECT_EQ(size.exit_status, 0) << Describe(size);
  EXPECT_EQ(size.out, std::to_string(8 * kMiB) + "\n");
  RunResult missing = RunProgram(dir, {nbdinfo, "--size", tracker.Uri("no-such-export")});
  EXPECT_NE(missing.exit_status, 0) << "an export that does not exist was served: " << Describe(missing);
  // Listing and probing dirtied nothing.
  json report = Inspect(dir, tracker.state_dir());
  ExpectDirtyExactly(report, "disk0", {});
  ExpectDirtyExactly(report, "data", {});
}

TEST(NbdQemuTest, NbdcopyOfARandomFileReadsBackIdenticalAndDirtiesExactlyTheCopiedRange) {
  BLKREP_REQUIRE_PROGRAM(nbdcopy, "nbdcopy");
  TempDir dir;
  const std::uint64_t size = 8 * kMiB, length = 5 * kMiB + 1234;  // ends mid-block
  std::string disk0 = dir.File("disk0.img"), source = dir.File("random.bin"), back = dir.File("back.bin");
  MakeVolume(disk0, size);
  std::vector<std::uint8_t> random = RandomBytes(length, 42);
  WriteFile(source, random);
  Tracker tracker(dir, {{"disk0", disk0}});
  ASSERT_TRUE(tracker.Start());

  RunResult in = RunProgram(dir, {nbdcopy, source, tracker.Uri("disk0")});
  ASSERT_EQ(in.exit_status, 0) << Describe(in);
  RunResult out = RunProgram(dir, {nbdcopy, tracker.Uri("disk0"), back});
  ASSERT_EQ(out.exit_status, 0) << Describe(out);
  std::vector<std::uint8_t> expected = random;
  expected.resize(size, 0);
  std::vector<std::uint8_t> read_back = ReadAll(back);
  EXPECT_EQ(read_back.size(), size);
  EXPECT_TRUE(read_back == expected) << "nbdcopy read back other bytes than it wrote";
  EXPECT_TRUE(ReadAll(disk0) == expected) << "the volume does not hold the copied file";

  BlockSet copied;
  AddRange(copied, 0, length);
  json report = Inspect(dir, tracker.state_dir());
  ExpectDirtyExactly(report, "disk0", copied);
  EXPECT_EQ(report.value("resync_required", true), false);
}

}  // namespace
}  // namespace blkrep::tracker::nbd_test
