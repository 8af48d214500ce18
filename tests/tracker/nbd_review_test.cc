// Review tests for the NBD tracker: each TEST states a behaviour the server
// must have (per doc/proto.md of NetworkBlockDevice/nbd, DESIGN.md or the
// server's own contract) and drives an in-process NbdServer over a unix
// socket with raw NBD bytes. No test can hang: every client socket has a
// receive timeout, and a test that blocks the server unblocks it (by closing
// the offending client) before it returns.
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/sockios.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "tests/core/temp_dir.h"
#include "tracker/control_socket.h"
#include "tracker/journal.h"
#include "tracker/nbd_protocol.h"
#include "tracker/nbd_server.h"

namespace blkrep::tracker {
namespace {

using core::test_support::TempDir;
using namespace std::chrono_literals;
namespace nbd = tracker::nbd;

constexpr std::uint64_t kVolumeBytes = 64ULL << 20;

// ---- raw socket helpers -------------------------------------------------

bool SendAll(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool RecvAll(int fd, void* data, std::size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// True if `fd` becomes readable within `timeout`.
bool Readable(int fd, std::chrono::milliseconds timeout) {
  pollfd pfd{fd, POLLIN, 0};
  return ::poll(&pfd, 1, static_cast<int>(timeout.count())) == 1;
}

int ConnectUnix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval timeout{10, 0};  // no test may hang on a silent server
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

struct OptionReply {
  std::uint32_t option = 0;
  std::uint32_t type = 0;
  std::vector<std::byte> data;
};

std::optional<OptionReply> ReadOptionReply(int fd) {
  std::byte head[20];
  if (!RecvAll(fd, head, sizeof(head))) return std::nullopt;
  if (nbd::LoadBe64(head) != nbd::kOptionReplyMagic) return std::nullopt;
  OptionReply r;
  r.option = nbd::LoadBe32(head + 8);
  r.type = nbd::LoadBe32(head + 12);
  r.data.resize(nbd::LoadBe32(head + 16));
  if (!r.data.empty() && !RecvAll(fd, r.data.data(), r.data.size())) return std::nullopt;
  return r;
}

bool SendOption(int fd, std::uint32_t option, const std::vector<std::byte>& payload) {
  std::vector<std::byte> out;
  nbd::PutU64(out, nbd::kOptionMagic);
  nbd::PutU32(out, option);
  nbd::PutU32(out, static_cast<std::uint32_t>(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
  return SendAll(fd, out.data(), out.size());
}

std::vector<std::byte> Str(const std::string& s) {
  std::vector<std::byte> out;
  for (char c : s) out.push_back(static_cast<std::byte>(c));
  return out;
}

// Reads option replies up to and including the final one (ACK or error);
// returns the final reply's type, 0 on a broken stream.
std::uint32_t FinalReplyType(int fd, std::vector<OptionReply>* all = nullptr) {
  for (;;) {
    auto r = ReadOptionReply(fd);
    if (!r) return 0;
    if (all) all->push_back(*r);
    if (r->type == nbd::kRepAck || (r->type & 0x80000000U)) return r->type;
  }
}

// Connects and runs the fixed-newstyle handshake up to (not including) the
// final GO. Returns the fd, or -1.
int OpenHandshake(const std::string& socket_path) {
  int fd = ConnectUnix(socket_path);
  if (fd < 0) return -1;
  std::byte hello[18];
  if (!RecvAll(fd, hello, sizeof(hello)) || nbd::LoadBe64(hello) != nbd::kNbdMagic) {
    ::close(fd);
    return -1;
  }
  std::vector<std::byte> flags;
  nbd::PutU32(flags, nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes);
  if (!SendAll(fd, flags.data(), flags.size())) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool NegotiateStructured(int fd) {
  return SendOption(fd, nbd::kOptStructuredReply, {}) && FinalReplyType(fd) == nbd::kRepAck;
}

std::vector<std::byte> MetaContextPayload(const std::string& export_name,
                                          const std::vector<std::string>& queries) {
  std::vector<std::byte> p;
  nbd::PutU32(p, static_cast<std::uint32_t>(export_name.size()));
  auto name = Str(export_name);
  p.insert(p.end(), name.begin(), name.end());
  nbd::PutU32(p, static_cast<std::uint32_t>(queries.size()));
  for (const auto& q : queries) {
    nbd::PutU32(p, static_cast<std::uint32_t>(q.size()));
    auto bytes = Str(q);
    p.insert(p.end(), bytes.begin(), bytes.end());
  }
  return p;
}

bool Go(int fd, const std::string& name) {
  std::vector<std::byte> p;
  nbd::PutU32(p, static_cast<std::uint32_t>(name.size()));
  auto bytes = Str(name);
  p.insert(p.end(), bytes.begin(), bytes.end());
  nbd::PutU16(p, 0);
  return SendOption(fd, nbd::kOptGo, p) && FinalReplyType(fd) == nbd::kRepAck;
}

std::vector<std::byte> RequestBytes(std::uint16_t flags, std::uint16_t type, std::uint64_t cookie,
                                    std::uint64_t offset, std::uint32_t length) {
  std::vector<std::byte> out;
  nbd::PutU32(out, nbd::kRequestMagic);
  nbd::PutU16(out, flags);
  nbd::PutU16(out, type);
  nbd::PutU64(out, cookie);
  nbd::PutU64(out, offset);
  nbd::PutU32(out, length);
  return out;
}

bool SendRequest(int fd, std::uint16_t flags, std::uint16_t type, std::uint64_t cookie,
                 std::uint64_t offset, std::uint32_t length) {
  auto out = RequestBytes(flags, type, cookie, offset, length);
  return SendAll(fd, out.data(), out.size());
}

struct SimpleReply {
  std::uint32_t error = 0;
  std::uint64_t cookie = 0;
};

std::optional<SimpleReply> ReadSimpleReply(int fd) {
  std::byte head[16];
  if (!RecvAll(fd, head, sizeof(head))) return std::nullopt;
  if (nbd::LoadBe32(head) != nbd::kSimpleReplyMagic) return std::nullopt;
  return SimpleReply{nbd::LoadBe32(head + 4), nbd::LoadBe64(head + 8)};
}

struct Chunk {
  std::uint16_t flags = 0;
  std::uint16_t type = 0;
  std::uint64_t cookie = 0;
  std::vector<std::byte> payload;
};

std::optional<Chunk> ReadChunk(int fd) {
  std::byte head[20];
  if (!RecvAll(fd, head, sizeof(head))) return std::nullopt;
  if (nbd::LoadBe32(head) != nbd::kStructuredReplyMagic) return std::nullopt;
  Chunk c;
  c.flags = nbd::LoadBe16(head + 4);
  c.type = nbd::LoadBe16(head + 6);
  c.cookie = nbd::LoadBe64(head + 8);
  c.payload.resize(nbd::LoadBe32(head + 16));
  if (!c.payload.empty() && !RecvAll(fd, c.payload.data(), c.payload.size())) return std::nullopt;
  return c;
}

std::uint64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size_pages = 0, resident_pages = 0;
  statm >> size_pages >> resident_pages;
  return resident_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// ---- an in-process tracker: one volume, one journal, one server ----------

struct Rig {
  TempDir dir;
  std::string volume_path;
  std::string socket_path;
  std::unique_ptr<core::FileBlockDevice> device;
  std::unique_ptr<Journal> journal;
  std::unique_ptr<NbdServer> server;
  std::string error;

  // `volume_dir` empty: the volume lives in the temp dir.
  Rig(core::IoBackendKind backend, const std::string& volume_dir = "") {
    if (dir.path().empty()) {
      error = "no temp dir";
      return;
    }
    volume_path = (volume_dir.empty() ? dir.path() : volume_dir) + "/vol-" +
                  std::to_string(::getpid()) + "-" + std::to_string(reinterpret_cast<std::uintptr_t>(this));
    socket_path = dir.File("nbd.sock");
    int fd = ::open(volume_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(kVolumeBytes)) != 0) {
      error = "cannot create the volume " + volume_path;
      if (fd >= 0) ::close(fd);
      return;
    }
    ::close(fd);
    core::FileBlockDeviceOptions device_options;
    device_options.direct_io = false;
    auto opened = core::FileBlockDevice::Open(volume_path, device_options);
    if (!opened.ok()) {
      error = opened.status().ToString();
      return;
    }
    device = std::move(opened).value();
    auto identity = device->Identity();
    if (!identity.ok()) {
      error = identity.status().ToString();
      return;
    }
    VolumeDescriptor descriptor{"guest", "vol", volume_path, *identity};
    JournalOptions journal_options;
    journal_options.on_degraded = [](const std::string&) {};
    auto j = Journal::Open(core::PosixFileSystemInstance(), dir.File("vol.journal"), descriptor,
                           journal_options);
    if (!j.ok()) {
      error = j.status().ToString();
      return;
    }
    journal = std::move(j).value();
    NbdServerOptions options;
    options.unix_socket = socket_path;
    options.backend = backend;
    server = std::make_unique<NbdServer>(std::vector<NbdExport>{{"vol", device.get(), journal.get()}},
                                         options);
    core::Status started = server->Start();
    if (!started.ok()) {
      error = started.ToString();
      server.reset();
    }
  }
  ~Rig() {
    if (server) server->Shutdown();
    server.reset();
    journal.reset();
    device.reset();
    if (!volume_path.empty()) ::unlink(volume_path.c_str());
  }

  // A client in transmission phase on "vol"; -1 on failure.
  int Client(bool structured = false) {
    int fd = OpenHandshake(socket_path);
    if (fd < 0) return -1;
    if ((structured && !NegotiateStructured(fd)) || !Go(fd, "vol")) {
      ::close(fd);
      return -1;
    }
    return fd;
  }
};

#define REQUIRE_RIG(rig)                                                          \
  do {                                                                            \
    if (!(rig).server) GTEST_SKIP() << "cannot start the server: " << (rig).error; \
  } while (0)

class NbdReviewEngineTest : public ::testing::TestWithParam<core::IoBackendKind> {};

// A client that pipelines reads and never reads the replies must not stop
// the server from answering a *different* connection: the completion
// thread(s) of the shared AsyncIo must never block on one client's socket.
TEST_P(NbdReviewEngineTest, NonReadingClientDoesNotStallOtherConnections) {
  Rig rig(GetParam());
  REQUIRE_RIG(rig);
  int greedy = rig.Client();
  ASSERT_GE(greedy, 0);
  // 64 x 1 MiB reads: well under the 96 MiB in-flight cap.
  for (std::uint64_t i = 0; i < 64; ++i) {
    ASSERT_TRUE(SendRequest(greedy, 0, nbd::kCmdRead, i, i << 20, 1U << 20));
  }
  std::this_thread::sleep_for(500ms);  // let the replies pile up

  int victim = rig.Client();
  ASSERT_GE(victim, 0);
  ASSERT_TRUE(SendRequest(victim, 0, nbd::kCmdRead, 7, 0, 4096));
  bool answered = Readable(victim, 5s);
  ::close(greedy);  // unblocks the server whatever the outcome
  EXPECT_TRUE(answered) << "a 4 KiB read on a second connection got no reply within 5 s while "
                           "another client left its replies unread";
  if (answered) {
    auto reply = ReadSimpleReply(victim);
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->error, 0U);
  }
  ::close(victim);
}

// Shutdown (SIGTERM in `blkrep track`) must return even when a client
// stopped reading: the server may give up on that client's replies.
TEST_P(NbdReviewEngineTest, ShutdownFinishesWhileAClientStopsReading) {
  Rig rig(GetParam());
  REQUIRE_RIG(rig);
  int greedy = rig.Client();
  ASSERT_GE(greedy, 0);
  for (std::uint64_t i = 0; i < 64; ++i) {
    ASSERT_TRUE(SendRequest(greedy, 0, nbd::kCmdRead, i, i << 20, 1U << 20));
  }
  std::this_thread::sleep_for(500ms);
  auto done = std::async(std::launch::async, [&] { rig.server->Shutdown(); });
  bool finished = done.wait_for(10s) == std::future_status::ready;
  ::close(greedy);  // unblocks a hung Shutdown so the test can end
  done.wait();
  EXPECT_TRUE(finished) << "Shutdown did not return within 10 s while a client left its "
                           "replies unread";
}

// The in-flight cap ("a connection holds at most kMaxInFlightBytes of
// request buffers") must bound memory for small requests too: each 1-byte
// READ costs a 4 KiB-aligned buffer plus a Pending, but reserves 1 byte.
TEST(NbdReviewTest, SmallReadsCannotGrowMemoryPastTheInFlightCap) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  int greedy = rig.Client();
  ASSERT_GE(greedy, 0);
  const std::uint64_t before = RssBytes();
  constexpr int kRequests = 60000;
  std::vector<std::byte> burst;
  for (int i = 0; i < kRequests; ++i) {
    auto r = RequestBytes(0, nbd::kCmdRead, static_cast<std::uint64_t>(i), 0, 1);
    burst.insert(burst.end(), r.begin(), r.end());
  }
  // The server may stop reading once the cap is reached (backpressure), so
  // send without blocking, as much as it takes within two seconds.
  ::fcntl(greedy, F_SETFL, ::fcntl(greedy, F_GETFL) | O_NONBLOCK);
  std::size_t sent = 0;
  auto until = std::chrono::steady_clock::now() + 2s;
  while (sent < burst.size() && std::chrono::steady_clock::now() < until) {
    ssize_t n = ::send(greedy, burst.data() + sent, burst.size() - sent, MSG_NOSIGNAL);
    if (n > 0) sent += static_cast<std::size_t>(n);
    else std::this_thread::sleep_for(10ms);
  }
  // Wait until the server consumed every request (or stopped consuming).
  for (int i = 0; i < 100; ++i) {
    int unread = 0;
    if (::ioctl(greedy, SIOCOUTQ, &unread) == 0 && unread == 0) break;
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(300ms);
  const std::uint64_t after = RssBytes();
  ::close(greedy);
  const std::uint64_t grown = after > before ? after - before : 0;
  EXPECT_LE(grown, NbdServer::kMaxInFlightBytes + (32ULL << 20))
      << "one connection of 1-byte READs grew the process by " << (grown >> 20) << " MiB";
}

// NBD_CMD_FLAG_FUA "is valid for all commands, provided NBD_FLAG_SEND_FUA
// has been negotiated, in which case the server MUST accept all commands
// with this bit set (even by ignoring the bit)".
TEST(NbdReviewTest, FuaFlagIsAcceptedOnReadAndFlush) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  int fd = rig.Client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendRequest(fd, nbd::kCmdFlagFua, nbd::kCmdRead, 1, 0, 512));
  auto read = ReadSimpleReply(fd);
  ASSERT_TRUE(read.has_value());
  EXPECT_EQ(read->error, 0U) << "READ with FUA was refused";
  if (read->error == 0) {
    std::vector<std::byte> data(512);
    ASSERT_TRUE(RecvAll(fd, data.data(), data.size()));
  }
  ASSERT_TRUE(SendRequest(fd, nbd::kCmdFlagFua, nbd::kCmdFlush, 2, 0, 0));
  auto flush = ReadSimpleReply(fd);
  ASSERT_TRUE(flush.has_value());
  EXPECT_EQ(flush->error, 0U) << "FLUSH with FUA was refused";
  ::close(fd);
}

// NBD_OPT_SET_META_CONTEXT "replaces all previously-set metadata contexts
// (including when this command fails)"; BLOCK_STATUS without a selected
// context SHOULD get NBD_EINVAL.
TEST(NbdReviewTest, FailedSetMetaContextClearsTheSelection) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  int fd = OpenHandshake(rig.socket_path);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(NegotiateStructured(fd));
  ASSERT_TRUE(SendOption(fd, nbd::kOptSetMetaContext, MetaContextPayload("vol", {"base:allocation"})));
  ASSERT_EQ(FinalReplyType(fd), nbd::kRepAck);
  ASSERT_TRUE(SendOption(fd, nbd::kOptSetMetaContext, MetaContextPayload("no-such", {"base:allocation"})));
  ASSERT_NE(FinalReplyType(fd) & 0x80000000U, 0U);  // an error
  ASSERT_TRUE(Go(fd, "vol"));
  ASSERT_TRUE(SendRequest(fd, 0, nbd::kCmdBlockStatus, 3, 0, 4096));
  auto chunk = ReadChunk(fd);
  ASSERT_TRUE(chunk.has_value());
  EXPECT_EQ(chunk->type, nbd::kReplyTypeError)
      << "BLOCK_STATUS was served although the last SET_META_CONTEXT failed";
  ::close(fd);
}

// "The server SHOULD NOT return NBD_EOVERFLOW except as documented in
// response to NBD_CMD_READ when NBD_CMD_FLAG_DF is supported"; a request
// above the advertised maximum block size SHOULD get NBD_EINVAL.
TEST(NbdReviewTest, OversizeReadWithoutDfIsEinval) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  int fd = rig.Client(/*structured=*/true);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendRequest(fd, 0, nbd::kCmdRead, 4, 0, (32U << 20) + 4096));
  auto chunk = ReadChunk(fd);
  ASSERT_TRUE(chunk.has_value());
  ASSERT_EQ(chunk->type, nbd::kReplyTypeError);
  ASSERT_GE(chunk->payload.size(), 4U);
  EXPECT_EQ(nbd::LoadBe32(chunk->payload.data()), nbd::kEinval);
  ::close(fd);
}

// "It SHOULD return NBD_EINVAL if it receives a read or trim request
// including one or more sectors beyond the size of the device."
TEST(NbdReviewTest, TrimBeyondTheEndIsEinval) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  int fd = rig.Client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendRequest(fd, 0, nbd::kCmdTrim, 5, kVolumeBytes - 4096, 8192));
  auto reply = ReadSimpleReply(fd);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->error, nbd::kEinval);
  ::close(fd);
}

// NBD_CMD_FLAG_FAST_ZERO: "the server MUST fail quickly with NBD_ENOTSUP
// unless the request can be serviced in less time than a corresponding
// NBD_CMD_WRITE". On a filesystem without FALLOC_FL_ZERO_RANGE (tmpfs), a
// NO_HOLE write-zeroes can only be done by writing zeroes.
TEST(NbdReviewTest, FastZeroIsRefusedWhereOnlyWritingZeroesWouldWork) {
  const std::string shm = "/dev/shm";
  std::string probe = shm + "/blkrep-review-probe-" + std::to_string(::getpid());
  int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) GTEST_SKIP() << "no " << shm;
  bool zero_range = ::ftruncate(fd, 1 << 20) == 0 &&
                    ::fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 65536) == 0;
  ::close(fd);
  ::unlink(probe.c_str());
  if (zero_range) GTEST_SKIP() << shm << " supports FALLOC_FL_ZERO_RANGE";

  Rig rig(core::IoBackendKind::kSync, shm);
  REQUIRE_RIG(rig);
  int client = rig.Client();
  ASSERT_GE(client, 0);
  ASSERT_TRUE(SendRequest(client, nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero, nbd::kCmdWriteZeroes, 6, 0,
                          16U << 20));
  auto reply = ReadSimpleReply(client);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->error, nbd::kEnotsup)
      << "FAST_ZERO write-zeroes succeeded by writing 16 MiB of zeroes";
  ::close(client);
}

INSTANTIATE_TEST_SUITE_P(Engines, NbdReviewEngineTest,
                         ::testing::Values(core::IoBackendKind::kIoUring, core::IoBackendKind::kSync),
                         [](const auto& info) {
                           return info.param == core::IoBackendKind::kIoUring ? std::string("IoUring")
                                                                              : std::string("Threads");
                         });

// A second server refused because the socket is live must leave the first
// server's socket in place when it is destroyed.
TEST(NbdReviewTest, RefusedSecondServerDoesNotUnlinkTheLiveSocket) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  {
    NbdServerOptions options;
    options.unix_socket = rig.socket_path;
    options.backend = core::IoBackendKind::kSync;
    NbdServer second(std::vector<NbdExport>{{"vol", rig.device.get(), rig.journal.get()}}, options);
    ASSERT_FALSE(second.Start().ok());
  }
  struct stat st {};
  EXPECT_EQ(::stat(rig.socket_path.c_str(), &st), 0)
      << "the running server's socket was unlinked by the refused second server";
  int fd = ConnectUnix(rig.socket_path);
  EXPECT_GE(fd, 0) << "clients can no longer reach the running server";
  if (fd >= 0) ::close(fd);
}

// --nbd-socket naming an existing regular file must be an error, never a
// silent unlink of that file.
TEST(NbdReviewTest, StartDoesNotDeleteAFileThatIsNotASocket) {
  Rig rig(core::IoBackendKind::kSync);
  REQUIRE_RIG(rig);
  std::string precious = rig.dir.File("precious.raw");
  {
    std::ofstream out(precious);
    out << "guest data";
  }
  NbdServerOptions options;
  options.unix_socket = precious;
  options.backend = core::IoBackendKind::kSync;
  NbdServer second(std::vector<NbdExport>{{"vol", rig.device.get(), rig.journal.get()}}, options);
  EXPECT_FALSE(second.Start().ok()) << "the server bound over a regular file";
  second.Shutdown();
  struct stat st {};
  ASSERT_EQ(::stat(precious.c_str(), &st), 0) << "the regular file was deleted";
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

// ControlServer::Stop (run on SIGTERM) must return even if a control client
// sent a request and never reads the (large) reply.
TEST(NbdReviewTest, ControlServerStopsWhileAClientDoesNotReadItsReply) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = dir.File("control/g.sock");
  ControlServer control([](const std::string&) { return std::string(16U << 20, 'x'); });
  ASSERT_TRUE(control.Start(path).ok());
  int fd = ConnectUnix(path);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "inspect json\n", 13));
  std::this_thread::sleep_for(300ms);
  auto done = std::async(std::launch::async, [&] { control.Stop(); });
  bool finished = done.wait_for(10s) == std::future_status::ready;
  ::close(fd);
  done.wait();
  EXPECT_TRUE(finished) << "ControlServer::Stop did not return within 10 s";
}

}  // namespace
}  // namespace blkrep::tracker
