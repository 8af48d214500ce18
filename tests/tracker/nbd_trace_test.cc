// `blkrep track --trace FILE` end to end: qemu-io writes, write-zeroes and
// discards known ranges on two volumes; after SIGTERM the tracker says how
// many records it wrote, and `blkrep trace inspect FILE --json` lists exactly
// those requests (volume, op, offset, length) in order, with times that never
// decrease, and the distinct blocks they touched. A damaged trace is exit 1
// with a one-line error; bad arguments are exit 2.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

struct Request {
  std::string volume;
  std::string op;  // as trace inspect names it
  std::uint64_t offset, length;
};

std::string QemuIoCommand(const Request& r) {
  std::string range = std::to_string(r.offset) + " " + std::to_string(r.length);
  if (r.op == "write") return "write -P 0x5a " + range;
  if (r.op == "write-zeroes") return "write -z " + range;
  return "discard " + range;
}

json InspectTrace(const TempDir& dir, const std::string& trace, std::vector<std::string> more = {}) {
  std::vector<std::string> argv = {BlkrepBinary(), "trace", "inspect", trace, "--json"};
  for (auto& a : more) argv.push_back(a);
  RunResult run = RunProgram(dir, argv);
  EXPECT_EQ(run.exit_status, 0) << Describe(run);
  json j = json::parse(run.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << "trace inspect --json is not JSON: " << run.out;
  return j.is_discarded() ? json::object() : j;
}

TEST(NbdTraceTest, TrackTraceRecordsExactlyTheRequestsQemuIoSent) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  TempDir dir;
  const std::string disk0 = dir.File("disk0.img"), disk1 = dir.File("disk1.img");
  MakeVolume(disk0, 8 * kMiB);
  MakeVolume(disk1, 3 * kMiB);
  const std::string trace = dir.File("guest.trace");
  Tracker tracker(dir, {{"disk0", disk0}, {"disk1", disk1}}, {"--trace", trace});
  ASSERT_TRUE(tracker.Start());

  // One qemu-io per volume, run one after the other: the requests reach the
  // tracker in this order. Lengths stay below qemu's request limits so none
  // is split.
  const std::vector<Request> requests = {
      {"disk0", "write", 0, 4096},
      {"disk0", "write", 12288, 5 * 4096},
      {"disk0", "write-zeroes", kMiB, 65536},
      {"disk0", "discard", 6 * kMiB, 2 * 65536},
      {"disk0", "write", 8 * kMiB - 4096, 4096},
      {"disk1", "write", 65536, 65536},
      {"disk1", "discard", 2 * kMiB, 65536},
      {"disk1", "write-zeroes", 0, 8192},
  };
  for (const std::string volume : {"disk0", "disk1"}) {
    std::vector<std::string> argv = {qemu_io, "-f", "raw"};
    for (const auto& r : requests) {
      if (r.volume != volume) continue;
      argv.push_back("-c");
      argv.push_back(QemuIoCommand(r));
    }
    argv.push_back(tracker.Uri(volume));
    RunResult wrote = RunProgram(dir, argv);
    ASSERT_EQ(wrote.exit_status, 0) << Describe(wrote);
  }
  ASSERT_EQ(tracker.Stop(SIGTERM), 0) << tracker.process().err();
  EXPECT_NE(tracker.process().err().find("trace " + trace + ": 8 records written"), std::string::npos)
      << tracker.process().err();

  json j = InspectTrace(dir, trace);
  EXPECT_EQ(j.value("record_count", 0), 8);
  EXPECT_TRUE(j["torn_tail"].is_null()) << j.dump();
  ASSERT_TRUE(j["records"].is_array()) << j.dump();
  ASSERT_EQ(j["records"].size(), requests.size()) << j.dump(1);
  std::uint64_t previous_time = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const json& r = j["records"][i];
    const std::string want_op = requests[i].op == "discard" ? "trim" : requests[i].op;
    EXPECT_EQ(r.value("volume", ""), requests[i].volume) << i << ": " << r.dump();
    EXPECT_EQ(r.value("op", ""), want_op) << i << ": " << r.dump();
    EXPECT_EQ(r.value("offset_bytes", std::uint64_t{1}), requests[i].offset) << i << ": " << r.dump();
    EXPECT_EQ(r.value("length_bytes", std::uint64_t{0}), requests[i].length) << i << ": " << r.dump();
    const std::uint64_t time = r.value("time_ns", std::uint64_t{0});
    EXPECT_GE(time, previous_time) << i;
    previous_time = time;
  }
  EXPECT_EQ(j.value("duration_ns", std::uint64_t{0}), previous_time);

  // Per volume: sizes, counts, bytes, and distinct blocks at the block size
  // asked for (64 KiB by default).
  ASSERT_EQ(j["volumes"].size(), 2u);
  const json& v0 = j["volumes"][0];
  EXPECT_EQ(v0.value("name", ""), "disk0");
  EXPECT_EQ(v0.value("size_bytes", std::uint64_t{0}), 8 * kMiB);
  EXPECT_EQ(v0.value("writes", 0), 3);
  EXPECT_EQ(v0.value("trims", 0), 1);
  EXPECT_EQ(v0.value("write_zeroes", 0), 1);
  EXPECT_EQ(v0.value("bytes_written", std::uint64_t{0}), 4096u + 5 * 4096u + 4096u);
  EXPECT_EQ(v0.value("bytes_trimmed", std::uint64_t{0}), 2 * 65536u);
  EXPECT_EQ(v0.value("bytes_zeroed", std::uint64_t{0}), 65536u);
  EXPECT_EQ(v0.value("blocks_touched", 0), 1 + 1 + 2 + 1);  // 0-32K share block 0
  const json& v1 = j["volumes"][1];
  EXPECT_EQ(v1.value("name", ""), "disk1");
  EXPECT_EQ(v1.value("blocks_touched", 0), 3);
  json at4k = InspectTrace(dir, trace, {"--block-size", "4K", "--no-records"});
  EXPECT_FALSE(at4k.contains("records"));
  EXPECT_EQ(at4k["volumes"][0].value("blocks_touched", 0), 1 + 5 + 16 + 32 + 1);
  EXPECT_EQ(at4k["volumes"][1].value("blocks_touched", 0), 16 + 16 + 2);

  // Text report.
  RunResult text = RunProgram(dir, {BlkrepBinary(), "trace", "inspect", trace, "--records"});
  EXPECT_EQ(text.exit_status, 0) << Describe(text);
  EXPECT_NE(text.out.find("8 records"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("write-zeroes"), std::string::npos) << text.out;

  // A start that fails once the trace is made (its TCP port taken) leaves
  // FILE as it was, and no half-made file beside it.
  {
    int busy = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(busy, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(busy, 1), 0);
    socklen_t len = sizeof addr;
    ASSERT_EQ(::getsockname(busy, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    RunResult failed = RunProgram(dir, {BlkrepBinary(), "track", "vm2", "disk0=" + disk0, "--nbd-socket",
                                        dir.File("other.sock"), "--nbd-listen",
                                        "127.0.0.1:" + std::to_string(ntohs(addr.sin_port)), "--state-dir",
                                        dir.File("other-state"), "--trace", trace});
    ::close(busy);
    EXPECT_EQ(failed.exit_status, 1) << Describe(failed);
    EXPECT_NE(failed.err.find("Address already in use"), std::string::npos) << failed.err;
  }
  EXPECT_EQ(InspectTrace(dir, trace).value("record_count", -1), 8);
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(entry.path().filename().string().find("guest.trace."), std::string::npos) << entry.path();
  }

  // A restarted tracker with the same --trace starts a new trace and keeps
  // the one it recorded before as FILE.1; an empty trace (no record) is
  // replaced, not kept.
  ASSERT_TRUE(tracker.Start());
  ASSERT_EQ(tracker.Stop(SIGINT), 0) << tracker.process().err();
  EXPECT_NE(tracker.process().err().find("kept it as " + trace + ".1"), std::string::npos) << tracker.process().err();
  EXPECT_EQ(InspectTrace(dir, trace).value("record_count", -1), 0);
  EXPECT_EQ(InspectTrace(dir, trace + ".1").value("record_count", -1), 8);
  ASSERT_TRUE(tracker.Start());
  ASSERT_EQ(tracker.Stop(SIGINT), 0) << tracker.process().err();
  EXPECT_EQ(InspectTrace(dir, trace + ".1").value("record_count", -1), 8);
  EXPECT_FALSE(std::filesystem::exists(trace + ".2"));
  // The next kept trace follows the highest number, even with a gap.
  std::filesystem::rename(trace + ".1", trace + ".7");
  ASSERT_TRUE(core::test_support::WriteFile(trace, std::vector<std::byte>(100, std::byte{'x'})));  // not a trace
  ASSERT_TRUE(tracker.Start());
  ASSERT_EQ(tracker.Stop(SIGINT), 0) << tracker.process().err();
  EXPECT_EQ(std::filesystem::file_size(trace + ".8"), 100u);
  EXPECT_EQ(InspectTrace(dir, trace + ".7").value("record_count", -1), 8);

  // Something other than a file at FILE is refused before serving.
  const std::string not_a_file = dir.File("a-directory");
  std::filesystem::create_directory(not_a_file);
  RunResult refused = RunProgram(dir, {BlkrepBinary(), "track", "vm3", "disk0=" + disk0, "--nbd-socket",
                                       dir.File("third.sock"), "--state-dir", dir.File("third-state"), "--trace",
                                       not_a_file});
  EXPECT_EQ(refused.exit_status, 2) << Describe(refused);
  EXPECT_EQ(refused.err, "blkrep: error: --trace " + not_a_file + ": exists and is not a regular file\n");
  EXPECT_TRUE(std::filesystem::is_directory(not_a_file));
}

// Two trackers given the same --trace (one unit template for two guests):
// the second does not take the running one's trace, even an empty one; it
// traces beside it and says where.
TEST(NbdTraceTest, ASecondTrackerDoesNotTakeARunningTrackersTrace) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  TempDir dir, other;
  const std::string disk0 = dir.File("disk0.img"), disk1 = other.File("disk0.img");
  MakeVolume(disk0, 4 * kMiB);
  MakeVolume(disk1, 4 * kMiB);
  const std::string trace = dir.File("shared.trace");
  Tracker first(dir, {{"disk0", disk0}}, {"--trace", trace});
  ASSERT_TRUE(first.Start());
  Tracker second(other, {{"disk0", disk1}}, {"--trace", trace});
  ASSERT_TRUE(second.Start());
  RunResult wrote = RunProgram(dir, {qemu_io, "-f", "raw", "-c", "write -P 1 0 4k", "-c", "write -P 2 1M 4k",
                                     first.Uri("disk0")});
  ASSERT_EQ(wrote.exit_status, 0) << Describe(wrote);
  ASSERT_EQ(second.Stop(SIGTERM), 0) << second.process().err();
  ASSERT_EQ(first.Stop(SIGTERM), 0) << first.process().err();
  EXPECT_NE(first.process().err().find("trace " + trace + ": 2 records written"), std::string::npos)
      << first.process().err();
  EXPECT_EQ(InspectTrace(dir, trace).value("record_count", -1), 2);
  const std::string err = second.process().err();
  EXPECT_NE(err.find("--trace " + trace + ": in use by a running tracker; tracing to " + trace + ".starting-"),
            std::string::npos)
      << err;
  const std::size_t at = err.find("blkrep: trace " + trace + ".starting-");
  ASSERT_NE(at, std::string::npos) << err;
  const std::string second_trace = err.substr(at + 14, err.find(':', at + 14) - (at + 14));
  EXPECT_EQ(InspectTrace(dir, second_trace).value("record_count", -1), 0);
  EXPECT_FALSE(std::filesystem::exists(trace + ".1"));

  // A dangling symbolic link at FILE is kept (as a link), not replaced.
  const std::string link = dir.File("link.trace");
  std::filesystem::create_symlink(dir.File("nowhere/target.trace"), link);
  Tracker third(other, {{"disk0", disk1}}, {"--trace", link});
  ASSERT_TRUE(third.Start());
  ASSERT_EQ(third.Stop(SIGTERM), 0) << third.process().err();
  EXPECT_TRUE(std::filesystem::is_symlink(link + ".1"));
  EXPECT_EQ(std::filesystem::read_symlink(link + ".1"), dir.File("nowhere/target.trace"));
  EXPECT_FALSE(std::filesystem::is_symlink(link));
  EXPECT_EQ(InspectTrace(dir, link).value("record_count", -1), 0);
}

TEST(NbdTraceTest, InspectRefusesADamagedTraceAndBadArguments) {
  TempDir dir;
  const std::string trace = dir.File("bad.trace");
  ASSERT_TRUE(core::test_support::WriteFile(trace, std::vector<std::byte>(64, std::byte{'x'})));
  RunResult bad = RunProgram(dir, {BlkrepBinary(), "trace", "inspect", trace, "--json"});
  EXPECT_EQ(bad.exit_status, 1) << Describe(bad);
  EXPECT_EQ(bad.err, "blkrep: error: " + trace + ": trace: header: bad magic (not a blkrep trace)\n");
  EXPECT_TRUE(bad.out.empty()) << bad.out;

  RunResult missing = RunProgram(dir, {BlkrepBinary(), "trace", "inspect", dir.File("none.trace")});
  EXPECT_EQ(missing.exit_status, 1) << Describe(missing);
  EXPECT_NE(missing.err.find("none.trace"), std::string::npos) << missing.err;

  for (std::vector<std::string> args : {std::vector<std::string>{"trace"}, {"trace", "show", trace},
                                         {"trace", "inspect"}, {"trace", "inspect", trace, "--block-size", "3K"}}) {
    args.insert(args.begin(), BlkrepBinary());
    RunResult usage = RunProgram(dir, args);
    EXPECT_EQ(usage.exit_status, 2) << Describe(usage);
  }
  RunResult track = RunProgram(dir, {BlkrepBinary(), "track", "vm1", "d=" + dir.File("no-such.img"), "--nbd-socket",
                                     dir.File("s"), "--state-dir", dir.File("state"), "--trace", ""});
  EXPECT_NE(track.exit_status, 0) << Describe(track);
}

}  // namespace
}  // namespace blkrep::tracker::nbd_test
