// Transports: how a shipper reaches a receiver, and how a receiver listens.
//
// Design note. A target is one of
//   --exec 'COMMAND'   /bin/sh -c COMMAND, the protocol on its stdin/stdout;
//   --ssh [USER@]HOST  ssh ... blkrep receive --stdio --replica-dir DIR;
//   --connect HOST:PORT  TCP, authenticated (proto/auth.h) before any frame.
// ConnectTarget gives a Connection, a Stream whose Finish() ends the session
// and says how the other side ended. A child's stdin and stdout are Unix
// socket pairs rather than pipes, so every write uses MSG_NOSIGNAL and a
// dead child is an error, never a SIGPIPE; its stderr goes through a pipe of
// which the last 4 KiB are kept for Finish()'s error. The child runs in its
// own process group with default signal dispositions and only fds 0-2.
// Sockets are non-blocking underneath; reads and writes wait in poll(), which
// is how the connect and handshake time limits and Listener::Stop() reach a
// blocked operation. Once authenticated, a stream has no time limit; TCP
// keepalive (about 2 minutes) notices a peer that vanished.
//
// Thread safety: a Connection or Stream is used by one thread at a time.
// Listener::Accept is called by one thread; Stop() may be called from any
// thread or a signal handler.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "proto/auth.h"
#include "proto/frame.h"

namespace blkrep::proto {

inline constexpr char kDefaultRemoteReplicaDir[] = "/var/lib/blkrep/replicas";
inline constexpr int kConnectTimeoutMs = 10000;
// How long Finish() waits for a child to exit after closing its stdin
// before it kills the child's process group.
inline constexpr int kFinishTimeoutMs = 30000;
// How much of a child's stderr is kept.
inline constexpr std::size_t kStderrTailBytes = 4096;

struct TargetSpec {
  enum class Kind { kExec, kSsh, kConnect };
  Kind kind = Kind::kExec;
  std::string exec_command;        // kExec
  std::string ssh_destination;     // kSsh: [USER@]HOST
  std::string remote_replica_dir;  // kSsh: empty means kDefaultRemoteReplicaDir
  std::string connect_address;     // kConnect: HOST:PORT or [IPV6]:PORT
  AuthOptions auth;                // kConnect
};

// A connected transport. The protocol runs over the Stream methods; a read
// or write error there often only says "peer closed the stream": Finish()
// then tells why (the child's exit status and its last stderr line).
class Connection : public Stream {
 public:
  // Ends the session: closes our side and, for a child process, waits for it
  // (draining and discarding what it still writes) up to kFinishTimeoutMs,
  // then kills its process group. OK when there is no child or it exited 0;
  // otherwise kIoError naming the target, the exit status or signal, and the
  // child's last stderr line. Idempotent: later calls return the same status.
  virtual core::Status Finish() = 0;
};

// Connects to `target`: starts the child or dials, connects (at most
// kConnectTimeoutMs) and authenticates (at most auth.handshake_timeout_ms).
// Errors name the target. The destructor of the result kills a child that is
// still running (SIGKILL to its process group) and reaps it.
core::Result<std::unique_ptr<Connection>> ConnectTarget(const TargetSpec& target);

// The argv ConnectTarget runs for kExec ({"/bin/sh", "-c", COMMAND}) and
// kSsh ({"ssh", "-o", "BatchMode=yes", "-e", "none", "-T", "--", DEST,
// "blkrep receive --stdio --replica-dir 'DIR'"}). REQUIRES: matching kind.
std::vector<std::string> ExecArgv(const TargetSpec& target);
std::vector<std::string> SshArgv(const TargetSpec& target);

// `text` as one word for a POSIX shell: unchanged when it holds only
// [A-Za-z0-9_./:=@%+,-] and is not empty, else in single quotes ('\'' for ').
std::string ShellQuote(std::string_view text);

// A short description for messages: "exec " + ShellQuote(COMMAND), "ssh DEST",
// "connect HOST:PORT".
std::string DescribeTarget(const TargetSpec& target);

// Parses `--exec 'COMMAND' | --ssh [USER@]HOST [--remote-replica-dir DIR] |
// --connect HOST:PORT [--psk-file F | --tls-ca F [--tls-cert F --tls-key F]]`
// (also --option=VALUE). kInvalidArgument with a message naming the option
// for anything else: none or two of --exec/--ssh/--connect, a missing value,
// a repeated or unknown option, an option of another kind, --connect without
// authentication, a destination starting with '-', a relative DIR...
core::Result<TargetSpec> ParseTargetArgs(const std::vector<std::string>& args);
// The arguments ParseTargetArgs turns back into `target`.
std::vector<std::string> FormatTargetArgs(const TargetSpec& target);

// "HOST:PORT" or "[IPV6]:PORT" split; the host may be empty or "*" (any
// address) only when `listening`, port 0 is allowed only when `listening`.
struct HostPort {
  std::string host;
  std::uint16_t port = 0;
};
core::Result<HostPort> ParseHostPort(std::string_view text, bool listening);

// A TCP listener that authenticates every peer before handing it out.
class Listener {
 public:
  // Binds `host_port` ("HOST:PORT", "[IPV6]:PORT", ":PORT" or "*:PORT" for
  // every address, port 0 for any free port). kInvalidArgument when `auth`
  // configures neither a PSK nor a TLS certificate and key, or both, or a
  // key or certificate file is unusable.
  static core::Result<std::unique_ptr<Listener>> Listen(const std::string& host_port,
                                                        const AuthOptions& auth);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // The bound address ("127.0.0.1:40123", "[::]:7000").
  std::string address() const { return address_; }

  // Waits for the next peer and authenticates it (at most
  // auth.handshake_timeout_ms). `peer` (may be null) receives the peer's
  // address, also when authentication fails. After Stop(): kAborted and
  // stopped() is true. Any other error concerns one peer (its message names
  // the peer and the cause) or a transient accept failure: log it and call
  // Accept again. The returned stream is independent of the listener.
  core::Result<std::unique_ptr<Stream>> Accept(std::string* peer);

  // Makes a waiting or future Accept return kAborted, also in the middle of
  // a handshake. Async-signal-safe.
  void Stop();
  bool stopped() const { return stopped_.load(); }

 private:
  Listener() = default;

  int fd_ = -1;
  int wake_fd_ = -1;  // eventfd, readable once stopped
  std::atomic<bool> stopped_{false};
  std::string address_;
  AuthOptions auth_;
  std::optional<PskKey> psk_;
  std::shared_ptr<TlsContext> tls_;
};

}  // namespace blkrep::proto
