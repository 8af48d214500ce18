// The tracker's life as a process: SIGKILL under load and restart (no lost
// acknowledged write, no resync), SIGTERM (in-flight requests answered,
// exit 0, journal sealed), journal trouble (invariant 3: the guest's I/O
// carries on, replication degrades to resync-required), a second tracker
// of the same guest (refused, naming the lock), and the TCP listener.
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/tracker/nbd_model.h"
#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

std::size_t CountLines(const std::string& path) {
  std::string s = Slurp(path);
  return static_cast<std::size_t>(std::count(s.begin(), s.end(), '\n'));
}

std::uint8_t FillByte(std::uint64_t slot, std::uint64_t salt) {  // as nbd_ack_writer.py
  return static_cast<std::uint8_t>(1 + (slot * 13 + salt * 29) % 255);
}

TEST(NbdLifecycleTest, SigkillWhileAClientWritesLosesNoAcknowledgedWriteAndNeedsNoResync) {
  BLKREP_REQUIRE_PYTHON_NBD(python);
  TempDir dir;
  constexpr int kRounds = 5;
  constexpr std::uint64_t kRegion = 16 * kMiB, kSlot = 4096, kSlots = kRegion / kSlot;
  const std::uint64_t size = kRounds * kRegion;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, size);
  Tracker tracker(dir, {{"disk0", volume}});
  ASSERT_TRUE(tracker.Start());
  std::mt19937_64 rng(20260321);
  struct Ack {
    std::uint64_t offset;
    std::uint8_t byte;
  };
  std::vector<Ack> acknowledged;
  BlockSet acknowledged_blocks;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::uint64_t start = round * kRegion;
    std::string acks = dir.File("acks" + std::to_string(round));
    Process writer;
    ASSERT_TRUE(writer.Start({python, ScriptPath("nbd_ack_writer.py"), tracker.Uri("disk0"), std::to_string(start),
                              std::to_string(kSlot), std::to_string(kSlots), std::to_string(round + 1),
                              std::to_string(round)},
                             acks, acks + ".err"));
    // Kill the tracker at a random moment once some writes were acknowledged.
    const std::size_t kill_after = 20 + rng() % 300;
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (CountLines(acks) < kill_after && writer.running() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(writer.running()) << "the writer ended before the kill: " << writer.err();
    tracker.process().Signal(SIGKILL);
    ASSERT_EQ(tracker.process().Wait(std::chrono::seconds(10)), 128 + SIGKILL);
    std::optional<int> writer_status = writer.Wait(std::chrono::seconds(10));
    ASSERT_TRUE(writer_status.has_value()) << "the writer hangs after the tracker died";
    EXPECT_EQ(*writer_status, 3) << "the writer should see its connection break: " << writer.err();

    std::istringstream lines(Slurp(acks));
    std::size_t count = 0;
    for (std::uint64_t offset; lines >> offset; ++count) {
      ASSERT_GE(offset, start);
      ASSERT_LT(offset, start + kRegion);
      acknowledged.push_back({offset, FillByte((offset - start) / kSlot, round)});
      AddRange(acknowledged_blocks, offset, kSlot);
    }
    ASSERT_GE(count, kill_after);

    ASSERT_TRUE(tracker.Start()) << "restart after SIGKILL";
    json report = Inspect(dir, tracker.state_dir());
    EXPECT_EQ(report.value("resync_required", true), false) << report.value("resync_reason", json()).dump();
    const json& v = VolumeReport(report, "disk0");
    EXPECT_EQ(v.value("resync_required", true), false);
    BlockSet dirty = DirtyBlocks(report, "disk0");
    std::size_t lost = 0;
    for (auto b : acknowledged_blocks) {
      if (!dirty.count(b) && lost++ < 10) ADD_FAILURE() << "acknowledged block " << b << " is not dirty";
    }
    EXPECT_EQ(lost, 0u) << lost << " acknowledged blocks are missing from the dirty set";
    // Recovery adds whole activity-log extents, never the whole volume:
    // nothing beyond the regions written so far is dirty.
    ASSERT_FALSE(dirty.empty()) << "nothing is dirty after the restart";
    EXPECT_LT(*dirty.rbegin(), (round + 1) * kRegion / kBlockBytes) << "recovery dirtied untouched regions";
    // Every acknowledged write is on the volume.
    std::vector<std::uint8_t> image = ReadAll(volume);
    ASSERT_EQ(image.size(), size);
    std::size_t wrong = 0;
    for (const Ack& a : acknowledged) {
      std::vector<std::uint8_t> want(kSlot, a.byte);
      if (std::memcmp(image.data() + a.offset, want.data(), kSlot) != 0 && wrong++ < 5) {
        ADD_FAILURE() << "acknowledged write at " << a.offset << " is not on the volume";
      }
    }
    ASSERT_EQ(wrong, 0u);
  }
  // A clean stop at the end seals the journal with all of it.
  ASSERT_EQ(tracker.Stop(SIGTERM), 0) << tracker.process().err();
  json report = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(report.value("clean_close", false), true);
  EXPECT_EQ(report.value("resync_required", true), false);
  BlockSet dirty = DirtyBlocks(report, "disk0");
  for (auto b : acknowledged_blocks) ASSERT_TRUE(dirty.count(b)) << "block " << b << " lost at the clean stop";
}

TEST(NbdLifecycleTest, SigtermAnswersEveryRequestItTookThenSealsTheJournalAndExitsZero) {
  TempDir dir;
  // Far more than any disk syncs before the shutdown starts: the writer is
  // always still going when the server stops taking requests.
  constexpr int kSlots = 4096;
  constexpr std::uint32_t kLength = 256 * 1024;
  const std::uint64_t size = std::uint64_t{kSlots} * kLength + kMiB;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, size);
  Tracker tracker(dir, {{"disk0", volume}});
  ASSERT_TRUE(tracker.Start());
  // An idle connection and one stuck in the handshake must not hold up the
  // shutdown.
  RawNbdClient idle, handshaking;
  ASSERT_TRUE(idle.Connect(tracker.socket()) && idle.Handshake("disk0"));
  ASSERT_TRUE(handshaking.Connect(tracker.socket()) && handshaking.ReadGreeting());

  // A client streams FUA writes (each synced to disk, so many are in flight)
  // to distinct unaligned slots, before, during and after the SIGTERM,
  // until the server stops taking them; a second thread reads the replies.
  RawNbdClient client;
  ASSERT_TRUE(client.Connect(tracker.socket()) && client.Handshake("disk0"));
  auto slot_offset = [](int i) { return std::uint64_t{static_cast<std::uint64_t>(i)} * kLength + 12345; };
  auto slot_byte = [](int i) { return static_cast<std::uint8_t>(1 + i % 251); };
  std::atomic<int> fully_sent = 0;
  std::thread sender([&] {
    std::vector<std::uint8_t> data(kLength);
    for (int i = 0; i < kSlots; ++i) {
      std::fill(data.begin(), data.end(), slot_byte(i));
      if (!client.SendRequest(kCmdFlagFua, kCmdWrite, static_cast<std::uint64_t>(i), slot_offset(i), kLength) ||
          !client.SendAll(data.data(), data.size())) {
        return;  // the server stopped reading: this request is incomplete
      }
      fully_sent = i + 1;
    }
  });
  std::map<std::uint64_t, std::uint32_t> replies;  // cookie -> error
  std::atomic<int> answered = 0;
  std::thread receiver([&] {
    while (auto reply = client.ReadSimpleReply()) {
      replies[reply->cookie] = reply->error;
      ++answered;
    }
  });
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (answered < 40 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  tracker.process().Signal(SIGTERM);
  std::optional<int> status = tracker.process().Wait(std::chrono::seconds(30));
  ::shutdown(client.fd(), SHUT_RDWR);  // unblocks the threads if the server hangs on
  sender.join();
  receiver.join();
  ASSERT_TRUE(status.has_value()) << "the tracker did not exit after SIGTERM";
  EXPECT_EQ(*status, 0) << tracker.process().err();
  ASSERT_GE(answered.load(), 40) << "too few writes before the SIGTERM to test anything";
  ASSERT_LT(fully_sent.load(), kSlots) << "the writer finished before the SIGTERM took effect";
  EXPECT_FALSE(UnixSocketAccepts(tracker.socket())) << "the socket still accepts after exit";

  // Every request the server took in full was answered: success, or the
  // protocol's ESHUTDOWN.
  BlockSet sent_blocks, acknowledged_blocks;
  int unanswered = 0;
  for (int i = 0; i < fully_sent; ++i) {
    AddRange(sent_blocks, slot_offset(i), kLength);
    auto it = replies.find(static_cast<std::uint64_t>(i));
    if (it == replies.end()) {
      if (unanswered++ < 5) ADD_FAILURE() << "write " << i << " was sent in full but never answered";
      continue;
    }
    EXPECT_TRUE(it->second == 0 || it->second == 108) << "write " << i << " failed with " << it->second;
    if (it->second != 0) continue;
    AddRange(acknowledged_blocks, slot_offset(i), kLength);
    EXPECT_EQ(ReadAt(volume, slot_offset(i), kLength), std::vector<std::uint8_t>(kLength, slot_byte(i)))
        << "acknowledged write " << i << " is not on the volume";
  }
  EXPECT_EQ(unanswered, 0) << "of " << fully_sent << " requests sent in full, " << unanswered
                           << " were dropped at shutdown";

  json report = Inspect(dir, tracker.state_dir());  // from the files now
  EXPECT_EQ(report.value("clean_close", false), true) << report.dump();
  EXPECT_EQ(report.value("resync_required", true), false);
  BlockSet dirty = DirtyBlocks(report, "disk0");
  for (auto b : acknowledged_blocks) ASSERT_TRUE(dirty.count(b)) << "acknowledged block " << b << " is not dirty";
  for (auto b : dirty) ASSERT_TRUE(sent_blocks.count(b)) << "block " << b << " is dirty but was never written";
}

TEST(NbdLifecycleTest, SigintStopsCleanlyAndARestartResumesTrackingWithTheSameDirtySet) {
  TempDir dir;
  const std::uint64_t size = 8 * kMiB;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, size);
  Tracker tracker(dir, {{"disk0", volume}});
  ASSERT_TRUE(tracker.Start());
  VolumeModel model(size);
  auto write = [&](std::uint64_t offset, std::uint32_t length, std::uint8_t byte) {
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker.socket()) && c.Handshake("disk0"));
    std::vector<std::uint8_t> data(length, byte);
    ASSERT_TRUE(c.SendRequest(0, kCmdWrite, 1, offset, length) && c.SendAll(data.data(), data.size()));
    auto reply = c.ReadSimpleReply();
    ASSERT_TRUE(reply.has_value());
    ASSERT_EQ(reply->error, 0u);
    model.Write(offset, length, byte);
  };
  write(5000, 3000, 0x51);
  write(6 * kMiB + 1, 1, 0x52);
  ASSERT_EQ(tracker.Stop(SIGINT), 0) << tracker.process().err();
  json stopped = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(stopped.value("clean_close", false), true);
  BlockSet dirty = DirtyBlocks(stopped, "disk0");
  EXPECT_EQ(dirty, model.dirty()) << "after SIGINT: " << Difference(model.dirty(), dirty);

  ASSERT_TRUE(tracker.Start());
  json resumed = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(resumed.value("resync_required", true), false);
  dirty = DirtyBlocks(resumed, "disk0");
  EXPECT_EQ(dirty, model.dirty()) << "after a clean restart: " << Difference(model.dirty(), dirty);
  write(3 * kMiB, 8192, 0x53);
  dirty = DirtyBlocks(Inspect(dir, tracker.state_dir()), "disk0");
  EXPECT_EQ(dirty, model.dirty()) << "tracking after the restart: " << Difference(model.dirty(), dirty);
  model.ExpectFileMatches(volume);
}

class NbdJournalFaultTest : public ::testing::TestWithParam<const char*> {};

TEST_P(NbdJournalFaultTest, GuestWritesCarryOnAndTheVolumeGoesResyncRequired) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  TempDir dir;
  const std::uint64_t size = 32 * kMiB;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, size);
  Tracker tracker(dir, {{"disk0", volume}}, {"--journal-faults", GetParam()});
  ASSERT_TRUE(tracker.Start());
  VolumeModel model(size);
  // Writes into several activity-log extents (4 MiB each), so the journal
  // must be written.
  const std::string uri = tracker.Uri("disk0");
  RunResult wrote = RunProgram(dir, {qemu_io, "-f", "raw", "-c", "write -P 0x41 0 4096", "-c",
                                     "write -P 0x42 9437184 65536", "-c", "write -z 20971520 8192", "-c",
                                     "write -P 0x43 30000000 1000", "-c", "flush", uri});
  ASSERT_EQ(wrote.exit_status, 0) << "the guest's writes failed because of the journal: " << Describe(wrote);
  model.Write(0, 4096, 0x41);
  model.Write(9437184, 65536, 0x42);
  model.Zero(20971520, 8192);
  model.Write(30000000, 1000, 0x43);
  model.ExpectFileMatches(volume);

  json report = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(report.value("resync_required", false), true) << report.dump();
  EXPECT_TRUE(report["resync_reason"].is_string() && !report["resync_reason"].get<std::string>().empty())
      << "resync_required without a reason: " << report.dump();
  EXPECT_EQ(VolumeReport(report, "disk0").value("resync_required", false), true);
  // Tracking carries on in memory.
  BlockSet dirty = DirtyBlocks(report, "disk0");
  for (auto b : model.dirty()) EXPECT_TRUE(dirty.count(b)) << "written block " << b << " is not dirty";

  // And the tracker keeps serving, reads and writes alike.
  RunResult again = RunProgram(dir, {qemu_io, "-f", "raw", "-c", "write -P 0x44 16777216 4096", "-c",
                                     "read -P 0x42 9437184 65536", "-c", "read -P 0x44 16777216 4096", uri});
  EXPECT_EQ(again.exit_status, 0) << Describe(again);
  EXPECT_TRUE(tracker.process().running()) << tracker.process().err();
  EXPECT_EQ(Inspect(dir, tracker.state_dir()).value("resync_required", false), true);
}

INSTANTIATE_TEST_SUITE_P(Faults, NbdJournalFaultTest, ::testing::Values("enospc", "eio-after:0"),
                         [](const auto& info) {
                           return std::string(info.param) == "enospc" ? std::string("Enospc")
                                                                      : std::string("EioAfterZero");
                         });

// With ENOSPC the journal's header can still be rewritten in place: the
// resync-required state must survive a stop and a restart (the journal
// misses the changes made meanwhile; forgetting that would be silently
// wrong, invariant 2).
TEST(NbdLifecycleTest, ResyncRequiredAfterJournalEnospcSurvivesARestart) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  TempDir dir;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, 16 * kMiB);
  Tracker tracker(dir, {{"disk0", volume}});
  ASSERT_TRUE(tracker.Start({"--journal-faults", "enospc"}));
  RunResult wrote =
      RunProgram(dir, {qemu_io, "-f", "raw", "-c", "write -P 0x41 8388608 4096", tracker.Uri("disk0")});
  ASSERT_EQ(wrote.exit_status, 0) << Describe(wrote);
  ASSERT_EQ(Inspect(dir, tracker.state_dir()).value("resync_required", false), true);
  ASSERT_TRUE(tracker.Stop(SIGTERM).has_value()) << "no exit after SIGTERM";
  json offline = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(offline.value("resync_required", false), true) << "after stop: " << offline.dump();
  ASSERT_TRUE(tracker.Start());  // no faults now
  json restarted = Inspect(dir, tracker.state_dir());
  EXPECT_EQ(restarted.value("resync_required", false), true) << "after restart: " << restarted.dump();
}

TEST(NbdLifecycleTest, SecondTrackerOfTheSameGuestFailsNamingTheLockAndTheFirstKeepsServing) {
  TempDir dir;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, 4 * kMiB);
  Tracker first(dir, {{"disk0", volume}});
  ASSERT_TRUE(first.Start());
  for (const std::string& socket : {dir.File("other.sock"), first.socket()}) {
    SCOPED_TRACE("second tracker on " + socket);
    RunResult second = RunProgram(dir, {BlkrepBinary(), "track", kGuest, "disk0=" + volume, "--nbd-socket", socket,
                                        "--block-size", "4K", "--state-dir", first.state_dir()},
                                  std::chrono::seconds(10));
    EXPECT_EQ(second.exit_status, 1) << Describe(second);
    EXPECT_EQ(second.err.rfind("blkrep: error: ", 0), 0u) << second.err;
    EXPECT_EQ(std::count(second.err.begin(), second.err.end(), '\n'), 1) << "not one line: " << second.err;
    EXPECT_NE(second.err.find("lock"), std::string::npos) << "the error does not name the lock: " << second.err;
  }
  // The first tracker is untouched: alive, its socket still answers.
  EXPECT_TRUE(first.process().running());
  RawNbdClient c;
  ASSERT_TRUE(c.Connect(first.socket())) << "the second tracker took the first one's socket";
  ASSERT_TRUE(c.Handshake("disk0"));
  ASSERT_TRUE(c.SendRequest(0, kCmdRead, 1, 0, 512));
  auto reply = c.ReadSimpleReply();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->error, 0u);
}

TEST(NbdLifecycleTest, TcpListenerBindsLoopbackByDefaultAndServesTheExports) {
  BLKREP_REQUIRE_PROGRAM(nbdinfo, "nbdinfo");
  TempDir dir;
  std::string volume = dir.File("disk0.img");
  MakeVolume(volume, 4 * kMiB);
  Tracker tracker(dir, {{"disk0", volume}});
  ASSERT_TRUE(tracker.Start({"--nbd-listen", "0"}));  // port 0: any free port
  std::smatch m;
  std::string err;
  std::regex address(R"(tcp (\S+):(\d+))");
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!std::regex_search(err = tracker.process().err(), m, address) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(std::regex_search(err, m, address)) << "no TCP address announced: " << err;
  EXPECT_EQ(m[1].str(), "127.0.0.1") << "TCP is not bound to loopback by default";
  RunResult size = RunProgram(dir, {nbdinfo, "--size", "nbd://127.0.0.1:" + m[2].str() + "/disk0"});
  EXPECT_EQ(size.exit_status, 0) << Describe(size);
  EXPECT_EQ(size.out, std::to_string(4 * kMiB) + "\n");
}

}  // namespace
}  // namespace blkrep::tracker::nbd_test
