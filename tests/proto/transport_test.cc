// Tests of the transports (proto/transport.h) and of TCP authentication
// (proto/auth.h), with real child processes and real loopback sockets. TLS
// certificates are made at test time with the openssl command line; the TLS
// tests skip when it is missing.
#include "proto/transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "proto/auth.h"
#include "tests/core/temp_dir.h"

namespace blkrep::proto {
namespace {

using core::Code;
using core::Status;
using core::test_support::Pattern;
using core::test_support::TempDir;
using core::test_support::WriteFile;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

TargetSpec ExecTarget(const std::string& command) {
  TargetSpec target;
  target.kind = TargetSpec::Kind::kExec;
  target.exec_command = command;
  return target;
}

std::unique_ptr<Connection> MustConnect(const TargetSpec& target) {
  auto connection = ConnectTarget(target);
  EXPECT_TRUE(connection.ok()) << connection.status().ToString();
  return connection.ok() ? std::move(connection).value() : nullptr;
}

// Everything the stream yields until its end (1 byte at a time: small outputs).
std::string ReadToEnd(Stream& stream, Status* end) {
  std::string text;
  while (true) {
    std::byte b;
    Status s = stream.ReadFull(std::span(&b, 1));
    if (!s.ok()) {
      *end = s;
      return text;
    }
    text += static_cast<char>(b);
  }
}

// ---- exec ----

TEST(ExecTransport, CatEchoesBytes) {
  auto connection = MustConnect(ExecTarget("cat"));
  ASSERT_NE(connection, nullptr);
  const std::vector<std::byte> data = Pattern(4 << 20, 1);
  // cat echoes as it reads, so write from another thread while reading here.
  std::thread writer([&] {
    EXPECT_TRUE(connection->WriteAll(data).ok());
    connection->CloseWrite();
  });
  std::vector<std::byte> echoed(data.size());
  Status read = connection->ReadFull(echoed);
  writer.join();
  ASSERT_TRUE(read.ok()) << read.ToString();
  EXPECT_TRUE(echoed == data);
  std::byte extra;
  EXPECT_EQ(connection->ReadFull(std::span(&extra, 1)).code(), Code::kEndOfData);
  Status finished = connection->Finish();
  EXPECT_TRUE(finished.ok()) << finished.ToString();
}

TEST(ExecTransport, FailingCommandReportsExitStatusAndLastStderrLine) {
  auto connection =
      MustConnect(ExecTarget("echo first line >&2; echo 'blkrep: error: replica dir unwritable' >&2; exit 3"));
  ASSERT_NE(connection, nullptr);
  std::byte b;
  Status read = connection->ReadFull(std::span(&b, 1));
  EXPECT_EQ(read.code(), Code::kEndOfData) << read.ToString();
  Status finished = connection->Finish();
  ASSERT_FALSE(finished.ok());
  EXPECT_EQ(finished.message(),
            "exec 'echo first line >&2; echo '\\''blkrep: error: replica dir unwritable'\\'' >&2; exit 3': "
            "exited with status 3: blkrep: error: replica dir unwritable");
  // Idempotent.
  EXPECT_EQ(connection->Finish().message(), finished.message());
}

TEST(ExecTransport, CommandThatExitsAtOnceGivesEndOfDataAndAbortedWritesWithoutSigpipe) {
  auto connection = MustConnect(ExecTarget("exit 7"));
  ASSERT_NE(connection, nullptr);
  std::array<std::byte, 24> header;
  EXPECT_EQ(connection->ReadFull(header).code(), Code::kEndOfData);
  // The child is gone: writing far more than a socket buffer must fail
  // with kAborted, not kill the test with SIGPIPE.
  const std::vector<std::byte> data = Pattern(8 << 20, 2);
  Status wrote = connection->WriteAll(data);
  EXPECT_EQ(wrote.code(), Code::kAborted) << wrote.ToString();
  Status finished = connection->Finish();
  EXPECT_EQ(finished.code(), Code::kIoError);
  EXPECT_EQ(finished.message(), "exec 'exit 7': exited with status 7 (no error output)");
}

TEST(ExecTransport, StreamCutInTheMiddleIsAborted) {
  auto connection = MustConnect(ExecTarget("printf abc"));
  ASSERT_NE(connection, nullptr);
  std::array<std::byte, 24> header;
  Status read = connection->ReadFull(header);
  EXPECT_EQ(read.code(), Code::kAborted) << read.ToString();
  EXPECT_TRUE(connection->Finish().ok());
}

TEST(ExecTransport, MissingProgramIsReportedByTheShell) {
  auto connection = MustConnect(ExecTarget("blkrep-no-such-program-xyz --stdio"));
  ASSERT_NE(connection, nullptr);
  Status finished = connection->Finish();
  ASSERT_FALSE(finished.ok());
  EXPECT_NE(finished.message().find("exited with status 127"), std::string::npos) << finished.message();
  EXPECT_NE(finished.message().find("not found"), std::string::npos) << finished.message();
}

TEST(ExecTransport, ChildKilledBySignalIsNamed) {
  auto connection = MustConnect(ExecTarget("kill -TERM $$"));
  ASSERT_NE(connection, nullptr);
  Status finished = connection->Finish();
  ASSERT_FALSE(finished.ok());
  EXPECT_NE(finished.message().find("was killed by signal 15 (SIGTERM)"), std::string::npos)
      << finished.message();
}

TEST(ExecTransport, ChildGetsOnlyStandardDescriptors) {
  // A descriptor of ours without O_CLOEXEC must not reach the child either.
  int leaky = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  auto connection = MustConnect(ExecTarget("exec ls /proc/self/fd"));
  ::close(leaky);
  ASSERT_NE(connection, nullptr);
  Status end;
  std::string listing = ReadToEnd(*connection, &end);
  EXPECT_EQ(end.code(), Code::kEndOfData);
  EXPECT_EQ(listing, "0\n1\n2\n3\n");  // 3 is ls's own directory handle
  EXPECT_TRUE(connection->Finish().ok());
}

TEST(ExecTransport, DestructionKillsAndReapsARunningChild) {
  auto connection = MustConnect(ExecTarget("printf '%010d' $$; exec sleep 30"));
  ASSERT_NE(connection, nullptr);
  std::array<std::byte, 10> pid_text;
  ASSERT_TRUE(connection->ReadFull(pid_text).ok());
  pid_t pid = std::atoi(std::string(reinterpret_cast<const char*>(pid_text.data()), 10).c_str());
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, 0), 0);
  auto start = Clock::now();
  connection.reset();
  EXPECT_LT(SecondsSince(start), 2.0);
  errno = 0;
  EXPECT_EQ(::kill(pid, 0), -1);  // killed and reaped: no zombie left
  EXPECT_EQ(errno, ESRCH);
}

TEST(ExecTransport, FinishDoesNotWaitForAGrandchildHoldingStderr) {
  auto connection = MustConnect(ExecTarget("sleep 4 & echo 'it broke' >&2; exit 2"));
  ASSERT_NE(connection, nullptr);
  auto start = Clock::now();
  Status finished = connection->Finish();
  EXPECT_LT(SecondsSince(start), 3.0);
  EXPECT_EQ(finished.message(), "exec 'sleep 4 & echo '\\''it broke'\\'' >&2; exit 2': exited with status 2: it broke");
}

TEST(ExecTransport, FinishDrainsAChildThatKeepsWriting) {
  // The child writes more than a socket buffer holds after we stop reading;
  // Finish must drain it rather than deadlock, and it exits 0.
  auto connection = MustConnect(ExecTarget("head -c 4000000 /dev/zero; exit 0"));
  ASSERT_NE(connection, nullptr);
  auto start = Clock::now();
  EXPECT_TRUE(connection->Finish().ok());
  EXPECT_LT(SecondsSince(start), 5.0);
}

int OpenDescriptorCount() {
  int count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++count;
  return count;
}

TEST(ExecTransport, LeavesNoDescriptorsBehind) {
  const int before = OpenDescriptorCount();
  for (const char* command : {"cat", "exit 3", "sleep 30"}) {
    auto connection = MustConnect(ExecTarget(command));
    ASSERT_NE(connection, nullptr);
    EXPECT_GT(OpenDescriptorCount(), before);
    if (std::string(command) != "sleep 30") (void)connection->Finish();
  }
  EXPECT_EQ(OpenDescriptorCount(), before);
}

// ---- ssh (argument building only) ----

TEST(SshTransport, ArgvUsesBatchModeAndTheDefaultReplicaDir) {
  TargetSpec target;
  target.kind = TargetSpec::Kind::kSsh;
  target.ssh_destination = "root@backup1";
  EXPECT_EQ(SshArgv(target),
            (std::vector<std::string>{"ssh", "-o", "BatchMode=yes", "-e", "none", "-T", "--", "root@backup1",
                                      "blkrep receive --stdio --replica-dir /var/lib/blkrep/replicas"}));
  EXPECT_EQ(DescribeTarget(target), "ssh root@backup1");
}

TEST(SshTransport, ReplicaDirIsQuotedForTheRemoteShell) {
  TargetSpec target;
  target.kind = TargetSpec::Kind::kSsh;
  target.ssh_destination = "backup1";
  target.remote_replica_dir = "/srv/my replicas/it's $HOME;`x`";
  std::vector<std::string> argv = SshArgv(target);
  ASSERT_EQ(argv.size(), 9u);
  EXPECT_EQ(argv[8], "blkrep receive --stdio --replica-dir '/srv/my replicas/it'\\''s $HOME;`x`'");
  // A POSIX shell turns the remote command back into exactly these words.
  std::string words = argv[8].substr(std::string("blkrep ").size());
  auto connection = MustConnect(ExecTarget("printf '%s\\n' " + words));
  ASSERT_NE(connection, nullptr);
  Status end;
  EXPECT_EQ(ReadToEnd(*connection, &end), "receive\n--stdio\n--replica-dir\n/srv/my replicas/it's $HOME;`x`\n");
  EXPECT_TRUE(connection->Finish().ok());
}

TEST(ShellQuote, QuotesOnlyWhenNeeded) {
  EXPECT_EQ(ShellQuote("/var/lib/blkrep"), "/var/lib/blkrep");
  EXPECT_EQ(ShellQuote(""), "''");
  EXPECT_EQ(ShellQuote("a b"), "'a b'");
  EXPECT_EQ(ShellQuote("it's"), "'it'\\''s'");
  EXPECT_EQ(ShellQuote("$(rm -rf /)"), "'$(rm -rf /)'");
}

// ---- argument parsing ----

TEST(ParseTargetArgs, AcceptsEachKind) {
  auto exec = ParseTargetArgs({"--exec", "blkrep receive --stdio --replica-dir /r"});
  ASSERT_TRUE(exec.ok()) << exec.status().ToString();
  EXPECT_EQ(exec->kind, TargetSpec::Kind::kExec);
  EXPECT_EQ(exec->exec_command, "blkrep receive --stdio --replica-dir /r");

  auto ssh = ParseTargetArgs({"--ssh", "root@10.0.0.2", "--remote-replica-dir=/srv/replicas"});
  ASSERT_TRUE(ssh.ok()) << ssh.status().ToString();
  EXPECT_EQ(ssh->kind, TargetSpec::Kind::kSsh);
  EXPECT_EQ(ssh->ssh_destination, "root@10.0.0.2");
  EXPECT_EQ(ssh->remote_replica_dir, "/srv/replicas");

  auto psk = ParseTargetArgs({"--connect", "[fd00::2]:7000", "--psk-file", "/etc/blkrep/psk"});
  ASSERT_TRUE(psk.ok()) << psk.status().ToString();
  EXPECT_EQ(psk->kind, TargetSpec::Kind::kConnect);
  EXPECT_EQ(psk->connect_address, "[fd00::2]:7000");
  EXPECT_EQ(psk->auth.psk_file, "/etc/blkrep/psk");

  auto tls = ParseTargetArgs(
      {"--connect", "backup:7000", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "c.key"});
  ASSERT_TRUE(tls.ok()) << tls.status().ToString();
  EXPECT_EQ(tls->auth.tls_ca, "ca.pem");
  EXPECT_EQ(tls->auth.tls_cert, "c.pem");
  EXPECT_EQ(tls->auth.tls_key, "c.key");

  for (const auto& target : {*exec, *ssh, *psk, *tls}) {
    auto again = ParseTargetArgs(FormatTargetArgs(target));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(FormatTargetArgs(*again), FormatTargetArgs(target));
  }
}

TEST(ParseTargetArgs, RejectsBadCombinationsWithAClearMessage) {
  struct Case {
    std::vector<std::string> args;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {{}, "no target given"},
      {{"--exec", "cat", "--ssh", "h"}, "exclude each other"},
      {{"--exec"}, "--exec needs a value"},
      {{"--exec", ""}, "--exec needs a command"},
      {{"--ssh", "h", "--ssh", "g"}, "--ssh given twice"},
      {{"--frobnicate", "x"}, "unknown target option --frobnicate"},
      {{"cat"}, "unexpected argument 'cat'"},
      {{"--ssh", "-oProxyCommand=evil"}, "bad --ssh destination"},
      {{"--ssh=-oProxyCommand=evil"}, "bad --ssh destination"},
      {{"--ssh", "root@host;reboot"}, "bad --ssh destination"},
      {{"--ssh", "h", "--remote-replica-dir", "replicas"}, "must be an absolute path"},
      {{"--exec", "cat", "--remote-replica-dir", "/r"}, "--remote-replica-dir only applies to --ssh"},
      {{"--exec", "cat", "--psk-file", "/k"}, "--psk-file only applies to --connect"},
      {{"--connect", "h:7000"}, "unauthenticated connection is refused"},
      {{"--connect", "h:7000", "--psk-file", "k", "--tls-ca", "c"}, "exclude each other"},
      {{"--connect", "h:7000", "--tls-cert", "c", "--tls-key", "k"}, "needs --tls-ca"},
      {{"--connect", "h:7000", "--tls-ca", "a", "--tls-cert", "c"}, "go together"},
      {{"--connect", "h", "--psk-file", "k"}, "expected HOST:PORT"},
      {{"--connect", "h:0", "--psk-file", "k"}, "port must be a number"},
      {{"--connect", "h:99999", "--psk-file", "k"}, "port must be a number"},
      {{"--connect", "fd00::1:7000", "--psk-file", "k"}, "[ADDR]:PORT"},
  };
  for (const Case& c : cases) {
    auto parsed = ParseTargetArgs(c.args);
    ASSERT_FALSE(parsed.ok()) << c.message_part;
    EXPECT_EQ(parsed.status().code(), Code::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.message_part), std::string::npos)
        << parsed.status().message() << " lacks " << c.message_part;
  }
}

TEST(ParseHostPort, HandlesIpv6BracketsWildcardsAndPortZero) {
  auto v6 = ParseHostPort("[::1]:7000", false);
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 7000);
  auto any = ParseHostPort("*:0", true);
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->host, "");
  EXPECT_EQ(any->port, 0);
  EXPECT_TRUE(ParseHostPort(":7000", true).ok());
  EXPECT_FALSE(ParseHostPort(":7000", false).ok());
  EXPECT_FALSE(ParseHostPort("[::1]7000", false).ok());
  EXPECT_FALSE(ParseHostPort("host:7x", false).ok());
}

// ---- PSK ----

class PskTest : public ::testing::Test {
 protected:
  void SetUp() override { descriptors_before_ = OpenDescriptorCount(); }
  // Every socket, pipe and eventfd of the test's objects is closed again.
  void TearDown() override { EXPECT_EQ(OpenDescriptorCount(), descriptors_before_); }

  // Writes a key file of `size_bytes` bytes with `mode`; returns its path.
  std::string KeyFile(const std::string& name, std::uint32_t seed, std::size_t size_bytes = 32,
                      mode_t mode = 0600) {
    std::string path = dir_.File(name);
    EXPECT_TRUE(WriteFile(path, Pattern(size_bytes, seed)));
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }

  std::unique_ptr<Listener> ListenPsk(const std::string& key_path, int timeout_ms = kDefaultHandshakeTimeoutMs) {
    AuthOptions auth;
    auth.psk_file = key_path;
    auth.handshake_timeout_ms = timeout_ms;
    auto listener = Listener::Listen("127.0.0.1:0", auth);
    EXPECT_TRUE(listener.ok()) << listener.status().ToString();
    return listener.ok() ? std::move(listener).value() : nullptr;
  }

  static TargetSpec PskTarget(const std::string& address, const std::string& key_path) {
    TargetSpec target;
    target.kind = TargetSpec::Kind::kConnect;
    target.connect_address = address;
    target.auth.psk_file = key_path;
    return target;
  }

  struct Accepted {
    core::Result<std::unique_ptr<Stream>> stream = Status::Internal("not run");
    std::string peer;
  };
  static std::future<Accepted> AcceptAsync(Listener& listener) {
    return std::async(std::launch::async, [&listener] {
      Accepted accepted;
      accepted.stream = listener.Accept(&accepted.peer);
      return accepted;
    });
  }

  // A raw TCP socket connected to `listener` (no handshake).
  static int RawConnect(const Listener& listener) {
    std::string address = listener.address();
    int port = std::atoi(address.substr(address.rfind(':') + 1).c_str());
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
    return fd;
  }

  TempDir dir_;
  int descriptors_before_ = 0;
};

TEST_F(PskTest, KeyFileMustBePrivateAndOfSensibleSize) {
  EXPECT_TRUE(PskKey::Load(KeyFile("good", 1)).ok());
  EXPECT_TRUE(PskKey::Load(KeyFile("long", 1, 1024)).ok());

  auto readable = PskKey::Load(KeyFile("readable", 1, 32, 0644));
  EXPECT_EQ(readable.status().code(), Code::kInvalidArgument);
  EXPECT_NE(readable.status().message().find("accessible by other users (mode 0644); run chmod 600"),
            std::string::npos)
      << readable.status().message();

  auto short_key = PskKey::Load(KeyFile("short", 1, 31));
  EXPECT_EQ(short_key.status().code(), Code::kInvalidArgument);
  EXPECT_NE(short_key.status().message().find("holds 31 bytes; a key is 32..1024 bytes"), std::string::npos);
  EXPECT_EQ(PskKey::Load(KeyFile("huge", 1, 1025)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(PskKey::Load(dir_.path()).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(PskKey::Load(dir_.File("missing")).status().code(), Code::kNotFound);
}

TEST_F(PskTest, ListenWithoutAuthenticationIsRefused) {
  auto listener = Listener::Listen("127.0.0.1:0", AuthOptions{});
  ASSERT_FALSE(listener.ok());
  EXPECT_EQ(listener.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(listener.status().message(), "--listen needs --psk-file or --tls-cert/--tls-key");
  AuthOptions ca_only;
  ca_only.tls_ca = "/nonexistent";
  EXPECT_EQ(Listener::Listen("127.0.0.1:0", ca_only).status().message(),
            "--listen needs --psk-file or --tls-cert/--tls-key");
}

TEST_F(PskTest, ConnectWithoutAuthenticationIsRefused) {
  TargetSpec target;
  target.kind = TargetSpec::Kind::kConnect;
  target.connect_address = "127.0.0.1:9";
  auto connection = ConnectTarget(target);
  ASSERT_FALSE(connection.ok());
  EXPECT_EQ(connection.status().code(), Code::kInvalidArgument);
  EXPECT_NE(connection.status().message().find("unauthenticated connection is refused"), std::string::npos);
}

TEST_F(PskTest, CorrectKeyCarries10MiBEachWay) {
  std::string key = KeyFile("key", 7);
  auto listener = ListenPsk(key);
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  auto client = MustConnect(PskTarget(listener->address(), key));
  ASSERT_NE(client, nullptr);
  Accepted accepted = server.get();
  ASSERT_TRUE(accepted.stream.ok()) << accepted.stream.status().ToString();
  EXPECT_EQ(accepted.peer.rfind("127.0.0.1:", 0), 0u) << accepted.peer;
  Stream& stream = **accepted.stream;

  const std::vector<std::byte> up = Pattern(10 << 20, 1);
  const std::vector<std::byte> down = Pattern(10 << 20, 2);
  std::thread uploader([&] { EXPECT_TRUE(client->WriteAll(up).ok()); });
  std::thread downloader([&] { EXPECT_TRUE(stream.WriteAll(down).ok()); });
  std::vector<std::byte> got_up(up.size());
  std::vector<std::byte> got_down(down.size());
  Status server_read = stream.ReadFull(got_up);
  Status client_read = client->ReadFull(got_down);
  uploader.join();
  downloader.join();
  ASSERT_TRUE(server_read.ok()) << server_read.ToString();
  ASSERT_TRUE(client_read.ok()) << client_read.ToString();
  EXPECT_TRUE(got_up == up);
  EXPECT_TRUE(got_down == down);

  EXPECT_TRUE(client->Finish().ok());
  std::byte b;
  EXPECT_EQ(stream.ReadFull(std::span(&b, 1)).code(), Code::kEndOfData);
}

TEST_F(PskTest, WrongKeyIsRefusedOnBothSidesAndTheListenerGoesOn) {
  std::string server_key = KeyFile("server", 1);
  std::string client_key = KeyFile("client", 2);
  auto listener = ListenPsk(server_key);
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  auto client = ConnectTarget(PskTarget(listener->address(), client_key));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().message(),
            "connect " + listener->address() + ": authentication with " + listener->address() +
                " failed: the server's proof does not match our pre-shared key (the two sides have "
                "different keys)");
  Accepted accepted = server.get();
  ASSERT_FALSE(accepted.stream.ok());
  EXPECT_FALSE(listener->stopped());
  EXPECT_EQ(accepted.stream.status().message(),
            "peer " + accepted.peer +
                ": authentication failed: the client rejected our proof of the pre-shared key (the two "
                "sides have different keys)");

  // The next, rightly keyed, peer is served.
  server = AcceptAsync(*listener);
  auto good = MustConnect(PskTarget(listener->address(), server_key));
  EXPECT_TRUE(server.get().stream.ok());
}

TEST_F(PskTest, GarbageFromThePeerIsRefused) {
  auto listener = ListenPsk(KeyFile("key", 1));
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  int fd = RawConnect(*listener);
  std::string garbage(40, 'x');
  ASSERT_EQ(::write(fd, garbage.data(), garbage.size()), 40);
  Accepted accepted = server.get();
  ASSERT_FALSE(accepted.stream.ok());
  EXPECT_EQ(accepted.stream.status().code(), Code::kCorruption);
  EXPECT_EQ(accepted.stream.status().message(),
            "peer " + accepted.peer +
                ": authentication failed: not a blkrep authentication handshake: the client's hello "
                "starts with 78 78 78 78 78 78 78 78");
  // Refused without an answer: the connection is simply closed.
  char reply;
  EXPECT_EQ(::read(fd, &reply, 1), 0);
  ::close(fd);
}

TEST_F(PskTest, SilentPeerTimesOut) {
  auto listener = ListenPsk(KeyFile("key", 1), /*timeout_ms=*/300);
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  int fd = RawConnect(*listener);
  ASSERT_EQ(::write(fd, "BKRA", 4), 4);  // a start, then nothing
  auto start = Clock::now();
  Accepted accepted = server.get();
  EXPECT_LT(SecondsSince(start), 2.0);
  ASSERT_FALSE(accepted.stream.ok());
  EXPECT_EQ(accepted.stream.status().error_number(), ETIMEDOUT);
  EXPECT_EQ(accepted.stream.status().ToString(),
            "peer " + accepted.peer + ": authentication failed: no answer within 300 ms: Connection timed out");
  ::close(fd);
}

TEST_F(PskTest, SilentServerTimesOut) {
  // A socket that listens (the kernel completes connections) but never speaks.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  TargetSpec target = PskTarget("127.0.0.1:" + std::to_string(ntohs(address.sin_port)), KeyFile("key", 1));
  target.auth.handshake_timeout_ms = 300;
  auto start = Clock::now();
  auto connection = ConnectTarget(target);
  EXPECT_LT(SecondsSince(start), 2.0);
  ASSERT_FALSE(connection.ok());
  EXPECT_NE(connection.status().ToString().find("failed: no answer within 300 ms"), std::string::npos)
      << connection.status().ToString();
  ::close(fd);
}

TEST_F(PskTest, ConnectionRefusedNamesTheAddress) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  std::string where = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  ::close(fd);  // nobody listens there now
  auto connection = ConnectTarget(PskTarget(where, KeyFile("key", 1)));
  ASSERT_FALSE(connection.ok());
  EXPECT_EQ(connection.status().ToString(),
            "connect " + where + ": cannot connect: " + where + ": Connection refused");
}

TEST_F(PskTest, TamperedClientProofIsRefused) {
  std::string key_path = KeyFile("key", 3);
  auto listener = ListenPsk(key_path);
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  int fd = RawConnect(*listener);
  // Speak the handshake by hand, byte for byte as documented.
  std::array<std::byte, kAuthClientHelloBytes> hello{};
  const unsigned char header[8] = {'B', 'K', 'R', 'A', 1, 1, 0, 0};
  std::memcpy(hello.data(), header, 8);
  for (std::size_t i = 8; i < hello.size(); ++i) hello[i] = static_cast<std::byte>(i * 7);
  ASSERT_EQ(::write(fd, hello.data(), hello.size()), 40);
  std::array<std::byte, kAuthServerProofBytes> reply;
  ASSERT_EQ(::recv(fd, reply.data(), reply.size(), MSG_WAITALL), 72);
  EXPECT_EQ(std::memcmp(reply.data(), header, 8), 0);
  auto key = PskKey::Load(key_path);
  ASSERT_TRUE(key.ok());
  // The server's proof is what the document says it is.
  auto server_proof = PskProof(*key, true, hello, std::span(reply).first<40>());
  EXPECT_EQ(std::memcmp(server_proof.data(), reply.data() + 40, 32), 0);
  auto proof = PskProof(*key, false, hello, std::span(reply).first<40>());
  proof[5] ^= std::byte{1};  // one flipped bit
  std::array<std::byte, kAuthClientProofBytes> answer;
  std::memcpy(answer.data(), header, 8);
  std::memcpy(answer.data() + 8, proof.data(), 32);
  ASSERT_EQ(::write(fd, answer.data(), answer.size()), 40);
  std::array<unsigned char, 8> verdict;
  ASSERT_EQ(::recv(fd, verdict.data(), verdict.size(), MSG_WAITALL), 8);
  EXPECT_EQ(verdict[6], 1);  // refused
  Accepted accepted = server.get();
  ASSERT_FALSE(accepted.stream.ok());
  EXPECT_EQ(accepted.stream.status().message(),
            "peer " + accepted.peer + ": authentication failed: the client's proof does not match our pre-shared key");
  ::close(fd);
}

TEST_F(PskTest, OtherHandshakeVersionIsAnsweredAsUnsupported) {
  auto listener = ListenPsk(KeyFile("key", 1));
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  int fd = RawConnect(*listener);
  std::array<unsigned char, 40> hello{'B', 'K', 'R', 'A', 2, 1, 0, 0};
  ASSERT_EQ(::write(fd, hello.data(), hello.size()), 40);
  std::array<unsigned char, 72> reply;
  ASSERT_EQ(::recv(fd, reply.data(), reply.size(), MSG_WAITALL), 72);
  EXPECT_EQ(reply[4], 1);  // our version
  EXPECT_EQ(reply[6], 2);  // unsupported
  Accepted accepted = server.get();
  EXPECT_EQ(accepted.stream.status().code(), Code::kUnsupported);
  ::close(fd);
}

TEST_F(PskTest, ListensOnIpv6AndOnEveryAddress) {
  std::string key = KeyFile("key", 5);
  AuthOptions auth;
  auth.psk_file = key;
  auto v6 = Listener::Listen("[::1]:0", auth);
  if (!v6.ok()) GTEST_SKIP() << "no IPv6 loopback: " << v6.status().ToString();
  EXPECT_EQ((*v6)->address().rfind("[::1]:", 0), 0u) << (*v6)->address();
  auto server = AcceptAsync(**v6);
  EXPECT_NE(MustConnect(PskTarget((*v6)->address(), key)), nullptr);
  Accepted accepted = server.get();
  EXPECT_TRUE(accepted.stream.ok());
  EXPECT_EQ(accepted.peer.rfind("[::1]:", 0), 0u) << accepted.peer;

  // ":0" is every address, IPv4 included.
  auto any = Listener::Listen(":0", auth);
  ASSERT_TRUE(any.ok()) << any.status().ToString();
  std::string port = (*any)->address().substr((*any)->address().rfind(':') + 1);
  server = AcceptAsync(**any);
  EXPECT_NE(MustConnect(PskTarget("127.0.0.1:" + port, key)), nullptr);
  EXPECT_TRUE(server.get().stream.ok());
}

TEST_F(PskTest, StopEndsAcceptAndAHandshakeInProgress) {
  auto listener = ListenPsk(KeyFile("key", 1));  // default 10 s handshake limit
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  int fd = RawConnect(*listener);  // a peer that never speaks
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto start = Clock::now();
  listener->Stop();
  Accepted accepted = server.get();
  EXPECT_LT(SecondsSince(start), 2.0);
  EXPECT_EQ(accepted.stream.status().code(), Code::kAborted);
  EXPECT_TRUE(listener->stopped());
  std::string peer;
  EXPECT_EQ(listener->Accept(&peer).status().code(), Code::kAborted);
  ::close(fd);
}

// ---- TLS ----

// Throwaway certificates, made once for the suite with the openssl CLI.
class TlsTest : public PskTest {
 protected:
  static void SetUpTestSuite() {
    if (::access("/usr/bin/openssl", X_OK) != 0) return;
    certs_ = new TempDir();
    const std::string d = certs_->path();
    const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    auto ca = [&](const std::string& name) {
      return "/usr/bin/openssl req -x509" + ec + " -keyout " + d + "/" + name + ".key -out " + d + "/" + name +
             ".crt -days 2 -subj /CN=" + name;
    };
    auto leaf = [&](const std::string& name, const std::string& issuer, const std::string& san) {
      std::string ext = d + "/" + name + ".ext";
      return "printf '%s\\n' 'subjectAltName=" + san + "' > " + ext + " && /usr/bin/openssl req" + ec + " -keyout " +
             d + "/" + name + ".key -out " + d + "/" + name + ".csr -subj /CN=" + name +
             " && /usr/bin/openssl x509 -req -in " + d + "/" + name + ".csr -CA " + d + "/" + issuer + ".crt -CAkey " +
             d + "/" + issuer + ".key -CAcreateserial -days 2 -extfile " + ext + " -out " + d + "/" + name +
             ".crt";
    };
    const std::string script = ca("ca") + " && " + ca("otherca") + " && " +
                               leaf("server", "ca", "IP:127.0.0.1,DNS:localhost") + " && " +
                               leaf("client", "ca", "DNS:client") + " && " +
                               leaf("rogue", "otherca", "IP:127.0.0.1,DNS:localhost") + " && " +
                               leaf("elsewhere", "ca", "DNS:elsewhere.example");
    made_ = std::system(("(" + script + ") > " + d + "/openssl.log 2>&1").c_str()) == 0;
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }
  void SetUp() override {
    PskTest::SetUp();
    if (certs_ == nullptr) GTEST_SKIP() << "/usr/bin/openssl is missing: cannot make test certificates";
    ASSERT_TRUE(made_) << "openssl failed, see " << certs_->File("openssl.log");
  }
  static std::string Cert(const std::string& name) { return certs_->File(name + ".crt"); }
  static std::string Key(const std::string& name) { return certs_->File(name + ".key"); }

  std::unique_ptr<Listener> ListenTls(const std::string& cert, const std::string& client_ca = "") {
    AuthOptions auth;
    auth.tls_cert = Cert(cert);
    auth.tls_key = Key(cert);
    auth.tls_ca = client_ca;
    auth.handshake_timeout_ms = 3000;
    auto listener = Listener::Listen("127.0.0.1:0", auth);
    EXPECT_TRUE(listener.ok()) << listener.status().ToString();
    return listener.ok() ? std::move(listener).value() : nullptr;
  }
  static TargetSpec TlsTarget(const std::string& address, const std::string& client = "") {
    TargetSpec target;
    target.kind = TargetSpec::Kind::kConnect;
    target.connect_address = address;
    target.auth.tls_ca = Cert("ca");
    if (!client.empty()) {
      target.auth.tls_cert = Cert(client);
      target.auth.tls_key = Key(client);
    }
    target.auth.handshake_timeout_ms = 3000;
    return target;
  }

  static TempDir* certs_;
  static bool made_;
};
TempDir* TlsTest::certs_ = nullptr;
bool TlsTest::made_ = false;

TEST_F(TlsTest, GoodCertificateCarriesDataBothWays) {
  auto listener = ListenTls("server");
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  auto client = MustConnect(TlsTarget(listener->address()));
  ASSERT_NE(client, nullptr);
  Accepted accepted = server.get();
  ASSERT_TRUE(accepted.stream.ok()) << accepted.stream.status().ToString();
  Stream& stream = **accepted.stream;
  const std::vector<std::byte> up = Pattern(10 << 20, 3);
  const std::vector<std::byte> down = Pattern(1 << 20, 4);
  std::thread uploader([&] { EXPECT_TRUE(client->WriteAll(up).ok()); });
  std::vector<std::byte> got_up(up.size());
  ASSERT_TRUE(stream.ReadFull(got_up).ok());
  uploader.join();
  EXPECT_TRUE(got_up == up);
  std::thread downloader([&] { EXPECT_TRUE(stream.WriteAll(down).ok()); });
  std::vector<std::byte> got_down(down.size());
  ASSERT_TRUE(client->ReadFull(got_down).ok());
  downloader.join();
  EXPECT_TRUE(got_down == down);
  EXPECT_TRUE(client->Finish().ok());
  std::byte b;
  EXPECT_EQ(stream.ReadFull(std::span(&b, 1)).code(), Code::kEndOfData);
}

TEST_F(TlsTest, ServerIsVerifiedByDnsNameToo) {
  auto listener = ListenTls("server");
  ASSERT_NE(listener, nullptr);
  std::string port = listener->address().substr(listener->address().rfind(':') + 1);
  auto server = AcceptAsync(*listener);
  // "localhost" may resolve to ::1 first, where nobody listens: the next
  // address is tried.
  auto client = MustConnect(TlsTarget("localhost:" + port));
  EXPECT_NE(client, nullptr);
  EXPECT_TRUE(server.get().stream.ok());
}

TEST_F(TlsTest, ServerCertificateFromAnotherCaIsRefused) {
  auto listener = ListenTls("rogue");
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  auto client = ConnectTarget(TlsTarget(listener->address()));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::kCorruption);
  EXPECT_EQ(client.status().message(),
            "connect " + listener->address() + ": authentication with " + listener->address() +
                " failed: TLS handshake failed: certificate verify failed: unable to get local issuer "
                "certificate");
  Accepted accepted = server.get();
  ASSERT_FALSE(accepted.stream.ok());
  EXPECT_NE(accepted.stream.status().message().find("peer " + accepted.peer + ": authentication failed: "),
            std::string::npos);
  EXPECT_NE(accepted.stream.status().message().find("alert unknown ca"), std::string::npos)
      << accepted.stream.status().message();
}

TEST_F(TlsTest, ServerCertificateForAnotherNameIsRefused) {
  auto listener = ListenTls("elsewhere");
  ASSERT_NE(listener, nullptr);
  auto server = AcceptAsync(*listener);
  auto client = ConnectTarget(TlsTarget(listener->address()));
  ASSERT_FALSE(client.ok());
  EXPECT_NE(client.status().message().find("IP address mismatch"), std::string::npos)
      << client.status().message();
  EXPECT_FALSE(server.get().stream.ok());
}

TEST_F(TlsTest, MutualTlsAcceptsOnlyClientsTheCaSigned) {
  auto listener = ListenTls("server", Cert("ca"));
  ASSERT_NE(listener, nullptr);

  auto server = AcceptAsync(*listener);
  auto good = ConnectTarget(TlsTarget(listener->address(), "client"));
  EXPECT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_TRUE(server.get().stream.ok());

  server = AcceptAsync(*listener);
  auto anonymous = ConnectTarget(TlsTarget(listener->address()));
  ASSERT_FALSE(anonymous.ok());
  EXPECT_NE(anonymous.status().message().find("the peer refused: tlsv13 alert certificate required"),
            std::string::npos)
      << anonymous.status().message();
  Accepted refused = server.get();
  EXPECT_NE(refused.stream.status().message().find("peer did not return a certificate"), std::string::npos)
      << refused.stream.status().message();

  server = AcceptAsync(*listener);
  TargetSpec rogue = TlsTarget(listener->address());
  rogue.auth.tls_cert = Cert("rogue");
  rogue.auth.tls_key = Key("rogue");
  auto impostor = ConnectTarget(rogue);
  ASSERT_FALSE(impostor.ok());
  EXPECT_NE(impostor.status().message().find("the peer refused"), std::string::npos)
      << impostor.status().message();
  Accepted refused_rogue = server.get();
  EXPECT_NE(refused_rogue.stream.status().message().find("certificate verify failed"), std::string::npos)
      << refused_rogue.stream.status().message();
}

TEST_F(TlsTest, MismatchedMethodsAreNamed) {
  auto tls_listener = ListenTls("server");
  ASSERT_NE(tls_listener, nullptr);
  auto server = AcceptAsync(*tls_listener);
  auto psk_client = ConnectTarget(PskTarget(tls_listener->address(), KeyFile("key", 1)));
  ASSERT_FALSE(psk_client.ok());
  EXPECT_NE(psk_client.status().message().find("does it use the same authentication method?"),
            std::string::npos)
      << psk_client.status().message();
  EXPECT_NE(server.get().stream.status().message().find(
                "the peer uses a pre-shared key, but this listener expects TLS"),
            std::string::npos);

  auto psk_listener = ListenPsk(KeyFile("key2", 1));
  ASSERT_NE(psk_listener, nullptr);
  server = AcceptAsync(*psk_listener);
  auto tls_client = ConnectTarget(TlsTarget(psk_listener->address()));
  ASSERT_FALSE(tls_client.ok());
  EXPECT_NE(tls_client.status().message().find("does it use TLS?"), std::string::npos)
      << tls_client.status().message();
  EXPECT_NE(server.get().stream.status().message().find("the peer uses TLS, not a pre-shared key"),
            std::string::npos);
}

TEST_F(TlsTest, BadCertificateFilesAreReportedAtListen) {
  AuthOptions auth;
  auth.tls_cert = Cert("server");
  auth.tls_key = Key("client");
  auto listener = Listener::Listen("127.0.0.1:0", auth);
  ASSERT_FALSE(listener.ok());
  EXPECT_EQ(listener.status().code(), Code::kInvalidArgument);
  EXPECT_NE(listener.status().message().find("cannot load --tls-key " + Key("client") + ": key values mismatch"),
            std::string::npos)
      << listener.status().message();
}

}  // namespace
}  // namespace blkrep::proto
