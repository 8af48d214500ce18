// Untrusted bytes on the NBD socket: a raw client sends what no real client
// would (bad magic, a write that stops mid-payload, an oversize write,
// garbage while haggling options, unknown commands and flags). Each case
// gets an NBD error reply or a clean disconnect — never a crash, never a
// byte written or a block dirtied that should not be — and the tracker
// keeps serving other and new connections.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tracker::nbd_test {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
constexpr auto kCloseTimeout = std::chrono::seconds(5);

class NbdRobustnessTest : public ::testing::Test {
 protected:
  void StartTracker(std::uint64_t size_bytes) {
    volume_ = dir_.File("disk0.img");
    MakeVolume(volume_, size_bytes);
    tracker_ = std::make_unique<Tracker>(dir_, std::vector<VolumeSpec>{{"disk0", volume_}});
    ASSERT_TRUE(tracker_->Start());
  }

  // A connected client in transmission phase on disk0.
  std::unique_ptr<RawNbdClient> Connected() {
    auto c = std::make_unique<RawNbdClient>();
    EXPECT_TRUE(c->Connect(tracker_->socket())) << "cannot connect to " << tracker_->socket();
    EXPECT_TRUE(c->Handshake("disk0")) << "handshake failed";
    return c;
  }

  // WRITE with payload; the reply's error (or -1 if the connection ended).
  static long long Write(RawNbdClient& c, std::uint64_t cookie, std::uint64_t offset,
                         const std::vector<std::uint8_t>& data, std::uint16_t flags = 0) {
    if (!c.SendRequest(flags, kCmdWrite, cookie, offset, static_cast<std::uint32_t>(data.size()))) return -1;
    if (!c.SendAll(data.data(), data.size())) return -1;
    auto reply = c.ReadSimpleReply();
    if (!reply || reply->cookie != cookie) return -1;
    return reply->error;
  }

  // READ; the reply's error (or -1), the data in `out` on success.
  static long long Read(RawNbdClient& c, std::uint64_t cookie, std::uint64_t offset, std::uint32_t length,
                        std::vector<std::uint8_t>& out, std::uint16_t flags = 0) {
    if (!c.SendRequest(flags, kCmdRead, cookie, offset, length)) return -1;
    auto reply = c.ReadSimpleReply();
    if (!reply || reply->cookie != cookie) return -1;
    if (reply->error == 0 && !c.ReadPayload(out, length)) return -1;
    return reply->error;
  }

  // The tracker is alive and a brand-new connection can write and read.
  void ExpectStillServing(std::uint64_t probe_offset) {
    ASSERT_TRUE(tracker_->process().running())
        << "the tracker died: exit " << tracker_->process().exit_status().value_or(-1) << "\n"
        << tracker_->process().err();
    auto c = Connected();
    std::vector<std::uint8_t> data(512, 0x5C), back;
    EXPECT_EQ(Write(*c, 900, probe_offset, data), 0);
    EXPECT_EQ(Read(*c, 901, probe_offset, 512, back), 0);
    EXPECT_EQ(back, data);
    AddRange(expected_dirty_, probe_offset, 512);
  }

  void ExpectDirtyExactly() {
    json report = Inspect(dir_, tracker_->state_dir());
    BlockSet dirty = DirtyBlocks(report, "disk0");
    EXPECT_EQ(dirty, expected_dirty_) << Difference(expected_dirty_, dirty);
  }

  TempDir dir_;
  std::string volume_;
  BlockSet expected_dirty_;
  std::unique_ptr<Tracker> tracker_;
};

TEST_F(NbdRobustnessTest, BadRequestMagicClosesOnlyThatConnectionAndOthersAreStillServed) {
  StartTracker(8 * kMiB);
  auto bystander = Connected();
  auto bad = Connected();
  ASSERT_TRUE(bad->SendRequest(0, kCmdWrite, 1, 0, 4096, /*magic=*/0xdeadbeef));
  EXPECT_TRUE(bad->ClosedByServer(kCloseTimeout)) << "a request with a bad magic did not end the connection";
  // The connection that was open all along still works.
  std::vector<std::uint8_t> data(4096, 0x17), back;
  EXPECT_EQ(Write(*bystander, 2, 65536, data), 0);
  EXPECT_EQ(Read(*bystander, 3, 65536, 4096, back), 0);
  EXPECT_EQ(back, data);
  AddRange(expected_dirty_, 65536, 4096);
  EXPECT_EQ(ReadAt(volume_, 0, 4096), std::vector<std::uint8_t>(4096, 0)) << "the bad request wrote";
  ExpectStillServing(2 * kMiB);
  ExpectDirtyExactly();
}

TEST_F(NbdRobustnessTest, ClientVanishingMidWriteWritesAndDirtiesNothingAndTheServerCarriesOn) {
  StartTracker(8 * kMiB);
  {
    // Header and a third of the payload, then gone.
    auto c = Connected();
    ASSERT_TRUE(c->SendRequest(0, kCmdWrite, 1, kMiB, 65536));
    std::vector<std::uint8_t> part(20000, 0xCC);
    ASSERT_TRUE(c->SendAll(part.data(), part.size()));
  }
  {
    // Half a request header, then gone.
    auto c = Connected();
    std::vector<std::uint8_t> header;
    RawNbdClient::Put32(header, RawNbdClient::kRequestMagic);
    RawNbdClient::Put16(header, 0);
    RawNbdClient::Put16(header, kCmdWrite);
    ASSERT_TRUE(c->SendAll(header.data(), header.size()));
  }
  {
    // Gone in the middle of the handshake.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(ReadAt(volume_, kMiB, 65536), std::vector<std::uint8_t>(65536, 0))
      << "part of an incomplete write reached the volume";
  ExpectStillServing(3 * kMiB);
  ExpectDirtyExactly();
}

TEST_F(NbdRobustnessTest, OversizeWriteGetsEinvalAfterItsPayloadIsDrainedAndTheConnectionLivesOn) {
  // Large enough that a 64 MiB write is inside the volume: only its size is
  // wrong.
  StartTracker(96 * kMiB);
  auto c = Connected();
  constexpr std::uint32_t kOversize = 64U << 20;
  ASSERT_TRUE(c->SendRequest(0, kCmdWrite, 77, 0, kOversize));
  std::vector<std::uint8_t> chunk(kMiB, 0xDD);
  for (std::uint32_t sent = 0; sent < kOversize; sent += kMiB) {
    ASSERT_TRUE(c->SendAll(chunk.data(), chunk.size())) << "the server stopped reading the payload at " << sent;
  }
  auto reply = c->ReadSimpleReply();
  ASSERT_TRUE(reply.has_value()) << "no reply to the oversize write (connection closed?)";
  EXPECT_EQ(reply->cookie, 77u);
  EXPECT_EQ(reply->error, kNbdEinval);
  // Just over the 32 MiB maximum: the same.
  std::vector<std::uint8_t> over((32U << 20) + 1, 0xDE);
  EXPECT_EQ(Write(*c, 78, 0, over), kNbdEinval);
  // The connection lives on and nothing was written.
  std::vector<std::uint8_t> back;
  EXPECT_EQ(Read(*c, 79, 0, 65536, back), 0);
  EXPECT_EQ(back, std::vector<std::uint8_t>(65536, 0)) << "a rejected write reached the volume";
  // The payload was drained in bounded pieces, never held whole.
  std::ifstream status("/proc/" + std::to_string(tracker_->process().pid()) + "/status");
  bool seen = false;
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) {
      seen = true;
      long long kib = std::stoll(line.substr(6));
      EXPECT_LT(kib, 48 * 1024) << "the tracker's peak RSS suggests it buffered the oversize payload: " << line;
    }
  }
  EXPECT_TRUE(seen) << "no VmHWM in /proc/PID/status";
  // Exactly the maximum is fine.
  std::vector<std::uint8_t> max(32U << 20, 0x3C);
  EXPECT_EQ(Write(*c, 80, 16 * kMiB, max), 0);
  AddRange(expected_dirty_, 16 * kMiB, max.size());
  EXPECT_EQ(ReadAt(volume_, 16 * kMiB + (32U << 20) - 1, 1)[0], 0x3C);
  ExpectStillServing(90 * kMiB);
  ExpectDirtyExactly();
}

TEST_F(NbdRobustnessTest, UnknownCommandsAndFlagsGetEinvalAndTheConnectionLivesOn) {
  StartTracker(8 * kMiB);
  auto c = Connected();
  for (std::uint16_t type : {std::uint16_t{5} /* CACHE, not advertised */, std::uint16_t{8}, std::uint16_t{99},
                             std::uint16_t{0xFFFF}}) {
    ASSERT_TRUE(c->SendRequest(0, type, 100 + type, 4096, 4096)) << "type " << type;
    auto reply = c->ReadSimpleReply();
    ASSERT_TRUE(reply.has_value()) << "no reply to unknown command " << type;
    EXPECT_EQ(reply->cookie, 100u + type);
    EXPECT_EQ(reply->error, kNbdEinval) << "command " << type;
  }
  // An unknown flag on a WRITE: rejected, its payload drained, not written.
  std::vector<std::uint8_t> data(4096, 0x99);
  EXPECT_EQ(Write(*c, 200, 8192, data, /*flags=*/1U << 9), kNbdEinval);
  std::vector<std::uint8_t> back;
  EXPECT_EQ(Read(*c, 201, 8192, 4096, back), 0);
  EXPECT_EQ(back, std::vector<std::uint8_t>(4096, 0));
  // DISC ends the connection cleanly.
  ASSERT_TRUE(c->SendRequest(0, kCmdDisc, 202, 0, 0));
  EXPECT_TRUE(c->ClosedByServer(kCloseTimeout));
  ExpectStillServing(kMiB);
  ExpectDirtyExactly();
}

// NBD protocol, "Command flags": NBD_CMD_FLAG_FUA "is valid for all
// commands, provided NBD_FLAG_SEND_FUA has been negotiated, in which case
// the server MUST accept all commands with this bit set (even by ignoring
// the bit) ... existing clients are known to set this bit on other
// commands" (old QEMU sends FLUSH with FUA).
TEST_F(NbdRobustnessTest, FuaFlagOnReadAndFlushIsAcceptedAsTheProtocolRequires) {
  StartTracker(8 * kMiB);
  auto c = Connected();
  std::vector<std::uint8_t> data(4096, 0x61), back;
  EXPECT_EQ(Write(*c, 1, 0, data, kCmdFlagFua), 0) << "FUA write";
  ASSERT_TRUE(c->SendRequest(kCmdFlagFua, kCmdFlush, 2, 0, 0));
  auto flush = c->ReadSimpleReply();
  ASSERT_TRUE(flush.has_value()) << "no reply to FLUSH with FUA";
  EXPECT_EQ(flush->error, 0u) << "FLUSH with NBD_CMD_FLAG_FUA was rejected";
  EXPECT_EQ(Read(*c, 3, 0, 4096, back, kCmdFlagFua), 0) << "READ with NBD_CMD_FLAG_FUA was rejected";
  if (!back.empty()) {
    EXPECT_EQ(back, data);
  }
  AddRange(expected_dirty_, 0, 4096);
  ExpectStillServing(kMiB);
  ExpectDirtyExactly();
}

TEST_F(NbdRobustnessTest, OversizeReadGetsAnErrorWithoutPayloadAndTheConnectionLivesOn) {
  StartTracker(96 * kMiB);
  auto c = Connected();
  ASSERT_TRUE(c->SendRequest(0, kCmdRead, 5, 0, (32U << 20) + 1));
  auto reply = c->ReadSimpleReply();
  ASSERT_TRUE(reply.has_value()) << "no reply to an oversize read";
  EXPECT_EQ(reply->cookie, 5u);
  EXPECT_EQ(reply->error, kNbdEinval) << "simple replies: EINVAL (EOVERFLOW needs structured replies)";
  // No payload followed: the next reply parses.
  std::vector<std::uint8_t> back;
  EXPECT_EQ(Read(*c, 6, 0, 4096, back), 0);
  EXPECT_EQ(back.size(), 4096u);
  // Exactly the maximum is served.
  EXPECT_EQ(Read(*c, 7, kMiB, 32U << 20, back), 0);
  EXPECT_EQ(back.size(), std::size_t{32U << 20});
  ExpectStillServing(80 * kMiB);
  ExpectDirtyExactly();
}

// NBD_CMD_DISC: "The server MUST handle all outstanding requests".
TEST_F(NbdRobustnessTest, DiscAfterWritesAnswersThemAllBeforeClosing) {
  StartTracker(32 * kMiB);
  auto c = Connected();
  constexpr int kWrites = 16;
  std::vector<std::uint8_t> data(512 * 1024, 0x7E);
  for (int i = 0; i < kWrites; ++i) {
    ASSERT_TRUE(c->SendRequest(kCmdFlagFua, kCmdWrite, 10 + i, i * kMiB + 1, static_cast<std::uint32_t>(data.size())));
    ASSERT_TRUE(c->SendAll(data.data(), data.size()));
    AddRange(expected_dirty_, i * kMiB + 1, data.size());
  }
  ASSERT_TRUE(c->SendRequest(0, kCmdDisc, 99, 0, 0));
  std::set<std::uint64_t> answered;
  for (int i = 0; i < kWrites; ++i) {
    auto reply = c->ReadSimpleReply();
    ASSERT_TRUE(reply.has_value()) << "closed with " << kWrites - i << " writes unanswered after DISC";
    EXPECT_EQ(reply->error, 0u);
    answered.insert(reply->cookie);
  }
  EXPECT_EQ(answered.size(), static_cast<std::size_t>(kWrites));
  EXPECT_TRUE(c->ClosedByServer(kCloseTimeout)) << "DISC did not end the connection";
  for (int i = 0; i < kWrites; ++i) {
    EXPECT_EQ(ReadAt(volume_, i * kMiB + 1, data.size()), std::vector<std::uint8_t>(data.begin(), data.end()));
  }
  ExpectStillServing(20 * kMiB);
  ExpectDirtyExactly();
}

// The old way into transmission (NBD_OPT_EXPORT_NAME), as older clients and
// the kernel's nbd-client use it: size, flags and, unless the client asked
// for NO_ZEROES, 124 zero bytes.
TEST_F(NbdRobustnessTest, ExportNameOptionServesTheNamedExportWithAndWithoutNoZeroes) {
  StartTracker(8 * kMiB + 4096);
  for (std::uint32_t client_flags : {1U, 3U}) {  // FIXED_NEWSTYLE, + NO_ZEROES
    SCOPED_TRACE("client flags " + std::to_string(client_flags));
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
    std::vector<std::uint8_t> bytes;
    RawNbdClient::Put32(bytes, client_flags);
    RawNbdClient::Put64(bytes, RawNbdClient::kOptMagic);
    RawNbdClient::Put32(bytes, 1);  // NBD_OPT_EXPORT_NAME
    RawNbdClient::Put32(bytes, 5);
    bytes.insert(bytes.end(), {'d', 'i', 's', 'k', '0'});
    ASSERT_TRUE(c.SendAll(bytes.data(), bytes.size()));
    std::vector<std::uint8_t> info;
    ASSERT_TRUE(c.ReadPayload(info, 10));
    EXPECT_EQ(RawNbdClient::Be64(info.data()), 8 * kMiB + 4096);
    std::uint16_t flags = RawNbdClient::Be16(info.data() + 8);
    EXPECT_TRUE(flags & 1) << "NBD_FLAG_HAS_FLAGS";
    EXPECT_FALSE(flags & 2) << "read-only";
    if (client_flags == 1) {
      std::vector<std::uint8_t> zeroes;
      ASSERT_TRUE(c.ReadPayload(zeroes, 124));
      EXPECT_EQ(zeroes, std::vector<std::uint8_t>(124, 0));
    }
    std::vector<std::uint8_t> data(100, 0x44), back;
    EXPECT_EQ(Write(c, 1, 8 * kMiB + 3900, data), 0);
    EXPECT_EQ(Read(c, 2, 8 * kMiB + 3900, 100, back), 0);
    EXPECT_EQ(back, data);
  }
  AddRange(expected_dirty_, 8 * kMiB + 3900, 100);
  {
    // An export that does not exist: the only refusal EXPORT_NAME has is
    // hanging up.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
    std::vector<std::uint8_t> bytes;
    RawNbdClient::Put32(bytes, 3);
    RawNbdClient::Put64(bytes, RawNbdClient::kOptMagic);
    RawNbdClient::Put32(bytes, 1);
    RawNbdClient::Put32(bytes, 4);
    bytes.insert(bytes.end(), {'n', 'o', 'p', 'e'});
    ASSERT_TRUE(c.SendAll(bytes.data(), bytes.size()));
    EXPECT_TRUE(c.ClosedByServer(kCloseTimeout));
  }
  ExpectStillServing(kMiB);
  ExpectDirtyExactly();
}

TEST_F(NbdRobustnessTest, ClientThatNeverReadsItsRepliesDoesNotStallOtherClients) {
  StartTracker(32 * kMiB);
  // 200 reads of 1 MiB whose replies are never read: far more than the
  // socket buffers hold.
  auto stalled = Connected();
  for (std::uint64_t i = 0; i < 200; ++i) {
    ASSERT_TRUE(stalled->SendRequest(0, kCmdRead, i, (i % 32) * kMiB, kMiB));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto begin = Clock::now();
  ExpectStillServing(5 * kMiB);
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - begin);
  EXPECT_LT(elapsed.count(), 3000) << "another client waited " << elapsed.count() << " ms behind the stalled one";
  ExpectDirtyExactly();
}

TEST_F(NbdRobustnessTest, GarbageDuringOptionHagglingDisconnectsAndTheServerCarriesOn) {
  StartTracker(8 * kMiB);
  {
    // Client flags the server does not know: it MUST close.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
    std::vector<std::uint8_t> flags;
    RawNbdClient::Put32(flags, 0xFFFFFFFFU);
    ASSERT_TRUE(c.SendAll(flags.data(), flags.size()));
    EXPECT_TRUE(c.ClosedByServer(kCloseTimeout)) << "unknown client flags were accepted";
  }
  {
    // An option header without the IHAVEOPT magic.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
    std::vector<std::uint8_t> bytes;
    RawNbdClient::Put32(bytes, 3);
    for (int i = 0; i < 16; ++i) bytes.push_back(static_cast<std::uint8_t>(0xA5 ^ i));
    ASSERT_TRUE(c.SendAll(bytes.data(), bytes.size()));
    EXPECT_TRUE(c.ClosedByServer(kCloseTimeout)) << "an option without its magic was accepted";
  }
  {
    // An option that claims 4 GiB of payload: hang up rather than read it.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
    std::vector<std::uint8_t> bytes;
    RawNbdClient::Put32(bytes, 3);
    RawNbdClient::Put64(bytes, RawNbdClient::kOptMagic);
    RawNbdClient::Put32(bytes, RawNbdClient::kOptGo);
    RawNbdClient::Put32(bytes, 0xFFFFFFFFU);
    ASSERT_TRUE(c.SendAll(bytes.data(), bytes.size()));
    EXPECT_TRUE(c.ClosedByServer(kCloseTimeout)) << "the server waits for a 4 GiB option payload";
  }
  {
    // A malformed GO (name length past the payload) is refused with an
    // error reply; an unknown option gets NBD_REP_ERR_UNSUP; the same
    // connection then negotiates normally.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
    ASSERT_TRUE(c.ReadGreeting());
    std::vector<std::uint8_t> bytes;
    RawNbdClient::Put32(bytes, 3);
    RawNbdClient::Put64(bytes, RawNbdClient::kOptMagic);
    RawNbdClient::Put32(bytes, RawNbdClient::kOptGo);
    RawNbdClient::Put32(bytes, 6);
    RawNbdClient::Put32(bytes, 1000);  // name length 1000 in a 6-byte payload
    RawNbdClient::Put16(bytes, 0);
    RawNbdClient::Put64(bytes, RawNbdClient::kOptMagic);
    RawNbdClient::Put32(bytes, 4242);  // no such option
    RawNbdClient::Put32(bytes, 3);
    bytes.insert(bytes.end(), {1, 2, 3});
    ASSERT_TRUE(c.SendAll(bytes.data(), bytes.size()));
    for (std::uint32_t option : {RawNbdClient::kOptGo, 4242U}) {
      std::uint8_t header[20];
      ASSERT_TRUE(c.ReadExact(header, sizeof(header))) << "no reply to option " << option;
      EXPECT_EQ(RawNbdClient::Be64(header), RawNbdClient::kOptReplyMagic);
      EXPECT_EQ(RawNbdClient::Be32(header + 8), option);
      std::uint32_t type = RawNbdClient::Be32(header + 12);
      EXPECT_NE(type & 0x80000000U, 0u) << "option " << option << " got a non-error reply " << type;
      if (option == 4242U) {
        EXPECT_EQ(type, 0x80000001U) << "unknown option: expected NBD_REP_ERR_UNSUP";
      }
      std::vector<std::uint8_t> payload;
      ASSERT_TRUE(c.ReadPayload(payload, RawNbdClient::Be32(header + 16)));
    }
    // Now a proper GO on the same connection (greeting already read).
    std::vector<std::uint8_t> go;
    RawNbdClient::Put64(go, RawNbdClient::kOptMagic);
    RawNbdClient::Put32(go, RawNbdClient::kOptGo);
    RawNbdClient::Put32(go, 4 + 5 + 2);
    RawNbdClient::Put32(go, 5);
    go.insert(go.end(), {'d', 'i', 's', 'k', '0'});
    RawNbdClient::Put16(go, 0);
    ASSERT_TRUE(c.SendAll(go.data(), go.size()));
    bool acked = false;
    for (int i = 0; i < 8 && !acked; ++i) {
      std::uint8_t header[20];
      ASSERT_TRUE(c.ReadExact(header, sizeof(header)));
      std::vector<std::uint8_t> payload;
      ASSERT_TRUE(c.ReadPayload(payload, RawNbdClient::Be32(header + 16)));
      ASSERT_EQ(RawNbdClient::Be32(header + 12) & 0x80000000U, 0u) << "GO failed after the bad options";
      acked = RawNbdClient::Be32(header + 12) == RawNbdClient::kRepAck;
    }
    ASSERT_TRUE(acked);
    std::vector<std::uint8_t> back;
    EXPECT_EQ(Read(c, 1, 0, 512, back), 0);
  }
  {
    // Connect and say nothing at all, then leave.
    RawNbdClient c;
    ASSERT_TRUE(c.Connect(tracker_->socket()));
  }
  ExpectStillServing(kMiB);
  ExpectDirtyExactly();
}

}  // namespace
}  // namespace blkrep::tracker::nbd_test
