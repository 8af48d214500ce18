#include "proto/transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

extern char** environ;

namespace blkrep::proto {
namespace {

using Clock = std::chrono::steady_clock;
using core::Result;
using core::Status;

std::string FormatMs(int ms) {
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
  return std::to_string(ms) + " ms";
}

// "1.2.3.4:5" or "[::1]:5".
std::string FormatSockaddr(const sockaddr* address, socklen_t length) {
  char host[NI_MAXHOST];
  char port[NI_MAXSERV];
  if (::getnameinfo(address, length, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "(unknown address)";
  }
  if (address->sa_family == AF_INET6) return std::string("[") + host + "]:" + port;
  return std::string(host) + ":" + port;
}

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Low latency for the small frames; keepalive so a vanished peer is noticed
// after about 60 + 6 * 10 seconds.
void ConfigureTcp(int fd) {
  int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int idle_s = 60, interval_s = 10, count = 6;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

Status EndOfStream(std::size_t done, std::size_t wanted) {
  if (done == 0) return Status::EndOfData("peer closed the stream");
  return Status::Aborted("stream cut off after " + std::to_string(done) + " of " +
                         std::to_string(wanted) + " bytes");
}

// ---- SocketStream ----

// A Stream over non-blocking sockets (one bidirectional socket, or one to
// read and one to write). Waits in poll(), bounded by an optional deadline
// and interrupted by an optional cancel fd becoming readable.
class SocketStream final : public Stream {
 public:
  // Takes ownership of both descriptors (they may be equal) and makes them
  // non-blocking.
  SocketStream(int read_fd, int write_fd) : read_fd_(read_fd), write_fd_(write_fd) {
    SetNonBlocking(read_fd_);
    if (write_fd_ != read_fd_) SetNonBlocking(write_fd_);
  }
  ~SocketStream() override {
    if (write_fd_ != read_fd_) CloseFd(write_fd_);
    CloseFd(read_fd_);
  }
  SocketStream(const SocketStream&) = delete;
  SocketStream& operator=(const SocketStream&) = delete;

  Status ReadFull(std::span<std::byte> out) override {
    if (read_fd_ < 0) return Status::Internal("read from a closed stream");
    std::size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::recv(read_fd_, out.data() + done, out.size() - done, 0);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n == 0) return EndOfStream(done, out.size());
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BLKREP_RETURN_IF_ERROR(Wait(read_fd_, POLLIN));
        continue;
      }
      if (errno == ECONNRESET) return Status::Aborted("connection reset by peer");
      return core::ErrnoStatus(errno, "read from peer");
    }
    return Status::Ok();
  }

  Status WriteAll(std::span<const std::byte> data) override {
    if (write_fd_ < 0) return Status::Internal("write after the end of the stream");
    std::size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::send(write_fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
      if (n >= 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BLKREP_RETURN_IF_ERROR(Wait(write_fd_, POLLOUT));
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) return Status::Aborted("peer closed the stream");
      return core::ErrnoStatus(errno, "write to peer");
    }
    return Status::Ok();
  }

  void CloseWrite() override {
    if (write_fd_ < 0) return;
    if (write_fd_ == read_fd_) {
      ::shutdown(write_fd_, SHUT_WR);
      return;
    }
    CloseFd(write_fd_);
  }

  void CloseRead() {
    if (read_fd_ == write_fd_) write_fd_ = -1;
    CloseFd(read_fd_);
  }

  // Waits until `fd` is ready for `events` (or has an error/hang-up the next
  // system call will report). kIoError/ETIMEDOUT past the deadline, kAborted
  // once the cancel fd is readable.
  // Waits until `fd` is ready for `events`; with `max_ms` >= 0, returns OK
  // after that long anyway (the caller tries again).
  Status Wait(int fd, short events, int max_ms = -1) {
    while (true) {
      int timeout_ms = max_ms;
      if (deadline_.has_value()) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline_ - Clock::now()).count();
        if (left <= 0) {
          return Status::IoError("no answer within " + FormatMs(deadline_ms_), ETIMEDOUT);
        }
        timeout_ms = max_ms >= 0 ? std::min(max_ms, static_cast<int>(left)) : static_cast<int>(left);
      }
      pollfd fds[2] = {{fd, events, 0}, {cancel_fd_, POLLIN, 0}};
      int n = ::poll(fds, cancel_fd_ >= 0 ? 2 : 1, timeout_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        return core::ErrnoStatus(errno, "poll");
      }
      if (cancel_fd_ >= 0 && fds[1].revents != 0) return Status::Aborted("cancelled");
      if (fds[0].revents != 0 || (n == 0 && max_ms >= 0)) return Status::Ok();
    }
  }

  // Bounds every wait until ClearDeadline() by `timeout_ms` from now.
  void SetDeadline(int timeout_ms) {
    deadline_ = Clock::now() + std::chrono::milliseconds(timeout_ms);
    deadline_ms_ = timeout_ms;
  }
  void ClearDeadline() { deadline_.reset(); }
  // REQUIRES: `fd` outlives its use here (clear with -1 before it closes).
  void SetCancelFd(int fd) { cancel_fd_ = fd; }

  int read_fd() const { return read_fd_; }
  int write_fd() const { return write_fd_; }

 private:
  int read_fd_;
  int write_fd_;
  int cancel_fd_ = -1;
  std::optional<Clock::time_point> deadline_;
  int deadline_ms_ = 0;
};

// ---- TLS ----

// A BIO over a non-blocking socket that writes with MSG_NOSIGNAL (OpenSSL's
// socket BIO uses write(), which would raise SIGPIPE).
int SocketFdOf(BIO* bio) {
  return static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(bio)));
}

int BioWrite(BIO* bio, const char* data, int length) {
  BIO_clear_retry_flags(bio);
  ssize_t n = ::send(SocketFdOf(bio), data, static_cast<std::size_t>(length), MSG_NOSIGNAL);
  if (n >= 0) return static_cast<int>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(bio);
  return -1;
}

int BioRead(BIO* bio, char* data, int length) {
  BIO_clear_retry_flags(bio);
  ssize_t n = ::recv(SocketFdOf(bio), data, static_cast<std::size_t>(length), 0);
  if (n >= 0) return static_cast<int>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_read(bio);
  return -1;
}

long BioCtrl(BIO*, int command, long, void*) { return command == BIO_CTRL_FLUSH ? 1 : 0; }

BIO_METHOD* SocketBioMethod() {
  // Created once, never freed (OpenSSL keeps no per-process state in it).
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "blkrep socket");
    if (m != nullptr) {
      BIO_meth_set_write(m, BioWrite);
      BIO_meth_set_read(m, BioRead);
      BIO_meth_set_ctrl(m, BioCtrl);
    }
    return m;
  }();
  return method;
}

bool IsIpAddress(const std::string& host) {
  in6_addr address6;
  in_addr address4;
  return ::inet_pton(AF_INET6, host.c_str(), &address6) == 1 ||
         ::inet_pton(AF_INET, host.c_str(), &address4) == 1;
}

class TlsStream final : public Stream {
 public:
  // Runs the TLS handshake over `socket` (its deadline and cancel fd apply).
  // A client verifies that the server's certificate names `server_host`.
  static Result<std::unique_ptr<TlsStream>> Handshake(std::unique_ptr<SocketStream> socket,
                                                       const TlsContext& context,
                                                       const std::string& server_host) {
    ERR_clear_error();
    SSL* ssl = SSL_new(context.native());
    BIO* bio = SocketBioMethod() != nullptr ? BIO_new(SocketBioMethod()) : nullptr;
    if (ssl == nullptr || bio == nullptr) {
      SSL_free(ssl);
      BIO_free(bio);
      return Status::Internal("cannot set up TLS: " + TakeOpenSslErrors());
    }
    BIO_set_data(bio, reinterpret_cast<void*>(static_cast<std::intptr_t>(socket->read_fd())));
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio);
    std::unique_ptr<TlsStream> stream(new TlsStream(std::move(socket), ssl));
    if (context.role() == TlsContext::Role::kClient) {
      SSL_set_connect_state(ssl);
      bool ok = IsIpAddress(server_host)
                    ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_host.c_str()) == 1
                    : SSL_set1_host(ssl, server_host.c_str()) == 1 &&
                          SSL_set_tlsext_host_name(ssl, server_host.c_str()) == 1;
      if (!ok) return Status::Internal("cannot set the TLS peer name: " + TakeOpenSslErrors());
    } else {
      SSL_set_accept_state(ssl);
    }
    std::unique_lock lock(stream->ssl_mu_);
    while (true) {
      ERR_clear_error();
      int rc = SSL_do_handshake(ssl);
      if (rc == 1) break;
      Status s = stream->WaitOrFail(rc, "handshake", lock);
      if (s.code() == core::Code::kEndOfData || s.code() == core::Code::kAborted) {
        return Status::Aborted("closed the connection during the TLS handshake (does it use TLS?)");
      }
      BLKREP_RETURN_IF_ERROR(s);
    }
    return stream;
  }

  ~TlsStream() override { SSL_free(ssl_); }

  // One thread may read while another writes (a comparing cycle's hashes
  // flow one way while blocks flow the other), but OpenSSL allows one call
  // on an SSL at a time: every SSL call holds ssl_mu_, which is released
  // while waiting for the socket.
  Status ReadFull(std::span<std::byte> out) override {
    std::size_t done = 0;
    std::unique_lock lock(ssl_mu_);
    while (done < out.size()) {
      ERR_clear_error();
      std::size_t n = 0;
      int rc = SSL_read_ex(ssl_, out.data() + done, out.size() - done, &n);
      if (rc == 1) {
        done += n;
        continue;
      }
      Status s = WaitOrFail(rc, "read", lock);
      if (s.code() == core::Code::kEndOfData) return done == 0 ? s : EndOfStream(done, out.size());
      BLKREP_RETURN_IF_ERROR(s);
    }
    return Status::Ok();
  }

  Status WriteAll(std::span<const std::byte> data) override {
    std::unique_lock lock(ssl_mu_);
    if (write_closed_) return Status::Internal("write after the end of the stream");
    std::size_t done = 0;
    while (done < data.size()) {
      ERR_clear_error();
      std::size_t n = 0;
      int rc = SSL_write_ex(ssl_, data.data() + done, data.size() - done, &n);
      if (rc == 1) {
        done += n;
        continue;
      }
      Status s = WaitOrFail(rc, "write", lock);
      if (s.code() == core::Code::kEndOfData) return Status::Aborted("peer closed the stream");
      BLKREP_RETURN_IF_ERROR(s);
    }
    return Status::Ok();
  }

  // Sends TLS close_notify; reading stays possible.
  void CloseWrite() override {
    std::unique_lock lock(ssl_mu_);
    if (write_closed_) return;
    write_closed_ = true;
    for (int attempt = 0; attempt < 100; ++attempt) {
      ERR_clear_error();
      int rc = SSL_shutdown(ssl_);
      if (rc >= 0) return;  // 0: sent, peer's not yet received; 1: both done
      if (!WaitOrFail(rc, "shutdown", lock).ok()) return;
    }
  }

  SocketStream& socket() { return *socket_; }

 private:
  TlsStream(std::unique_ptr<SocketStream> socket, SSL* ssl) : socket_(std::move(socket)), ssl_(ssl) {}

  // After an SSL call returned `rc` (failure): OK after waiting for the I/O
  // OpenSSL wants (call again); kEndOfData when the peer closed; otherwise
  // the error.
  // REQUIRES: `lock` holds ssl_mu_; it is released while waiting, briefly:
  // another thread's SSL call may take the bytes this one waits for.
  Status WaitOrFail(int rc, const char* what, std::unique_lock<std::mutex>& lock) {
    int saved_errno = errno;
    switch (SSL_get_error(ssl_, rc)) {
      case SSL_ERROR_WANT_READ:
      case SSL_ERROR_WANT_WRITE: {
        const short events = SSL_get_error(ssl_, rc) == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        lock.unlock();
        Status s = socket_->Wait(socket_->read_fd(), events, /*max_ms=*/50);
        lock.lock();
        return s;
      }
      case SSL_ERROR_ZERO_RETURN:
        return Status::EndOfData("peer closed the stream");
      case SSL_ERROR_SYSCALL: {
        std::string queued = TakeOpenSslErrors();
        if (saved_errno == 0 || saved_errno == EAGAIN) {
          return Status::EndOfData("peer closed the connection without ending TLS");
        }
        if (saved_errno == EPIPE || saved_errno == ECONNRESET) {
          return Status::Aborted("peer closed the connection");
        }
        return core::ErrnoStatus(saved_errno, std::string("TLS ") + what);
      }
      default: {
        if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
          (void)TakeOpenSslErrors();
          return Status::EndOfData("peer closed the connection without ending TLS");
        }
        std::string text = TakeOpenSslErrors();
        long verify = SSL_get_verify_result(ssl_);
        if (verify != X509_V_OK) {
          text += std::string(": ") + X509_verify_cert_error_string(verify);
        }
        if (text.find("alert") != std::string::npos) text = "the peer refused: " + text;
        if (text.find("certificate required") != std::string::npos) {
          text += " (the server requires a client certificate: --tls-cert/--tls-key)";
        }
        return Status::Corruption(std::string("TLS ") + what + " failed: " + text);
      }
    }
  }

  std::unique_ptr<SocketStream> socket_;
  SSL* ssl_;
  std::mutex ssl_mu_;  // one SSL call at a time (see ReadFull)
  bool write_closed_ = false;
};

// ---- child processes ----

// Collects the last kStderrTailBytes a child writes on its stderr, on a
// thread of its own so a chatty child never blocks on a full pipe.
class StderrTail {
 public:
  // Takes ownership of `fd` and `stop_fd` (an eventfd).
  StderrTail(int fd, int stop_fd) : fd_(fd), stop_fd_(stop_fd), thread_([this] { Run(); }) {}
  ~StderrTail() {
    Stop(0);
    CloseFd(fd_);
    CloseFd(stop_fd_);
  }

  // Waits up to `grace_ms` for the end of the child's stderr (a grandchild
  // may keep it open), then stops collecting. Idempotent.
  void Stop(int grace_ms) {
    if (!thread_.joinable()) return;
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(grace_ms), [this] { return eof_; });
    }
    std::uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof(one));
    thread_.join();
  }

  // The last non-empty line, control characters replaced by '?'.
  std::string LastLine() const {
    std::string text;
    {
      std::lock_guard lock(mu_);
      text = tail_;
    }
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
      text.pop_back();
    }
    std::size_t start = text.rfind('\n');
    std::string line = start == std::string::npos ? text : text.substr(start + 1);
    for (char& c : line) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    }
    return line;
  }

 private:
  void Run() {
    char chunk[4096];
    while (true) {
      pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[1].revents != 0) return;
      ssize_t n = ::read(fd_, chunk, sizeof(chunk));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) break;
      std::lock_guard lock(mu_);
      tail_.append(chunk, static_cast<std::size_t>(n));
      if (tail_.size() > kStderrTailBytes) tail_.erase(0, tail_.size() - kStderrTailBytes);
    }
    std::lock_guard lock(mu_);
    eof_ = true;
    cv_.notify_all();
  }

  int fd_;
  int stop_fd_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string tail_;   // GUARDED_BY(mu_)
  bool eof_ = false;   // GUARDED_BY(mu_)
  std::thread thread_;  // last: starts after the members it uses
};

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = ::sigabbrev_np(WTERMSIG(status));
    return "was killed by signal " + std::to_string(WTERMSIG(status)) +
           (name != nullptr ? std::string(" (SIG") + name + ")" : std::string());
  }
  return "ended with wait status " + std::to_string(status);
}

class ProcessConnection final : public Connection {
 public:
  ProcessConnection(pid_t pid, std::unique_ptr<SocketStream> io, std::unique_ptr<StderrTail> stderr_tail,
                    std::string description)
      : pid_(pid), io_(std::move(io)), stderr_(std::move(stderr_tail)), description_(std::move(description)) {}

  ~ProcessConnection() override {
    if (!reaped_) {
      ::kill(-pid_, SIGKILL);
      int status;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
    io_.reset();
    stderr_.reset();
  }

  Status ReadFull(std::span<std::byte> out) override {
    if (finished_) return Status::Internal("read after Finish");
    return io_->ReadFull(out);
  }
  Status WriteAll(std::span<const std::byte> data) override {
    if (finished_) return Status::Internal("write after Finish");
    return io_->WriteAll(data);
  }
  void CloseWrite() override {
    if (!finished_) io_->CloseWrite();
  }

  Status Finish() override {
    if (finished_) return finish_status_;
    finished_ = true;
    io_->CloseWrite();
    int status = 0;
    bool killed = false;
    bool lost = false;
    auto deadline = Clock::now() + std::chrono::milliseconds(kFinishTimeoutMs);
    while (true) {
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (r < 0 && errno != EINTR) {
        lost = true;  // ECHILD: reaped elsewhere (SIGCHLD ignored?)
        break;
      }
      if (Clock::now() >= deadline) {
        ::kill(-pid_, SIGKILL);
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        killed = true;
        break;
      }
      // Drain what the child still writes so it never blocks on us.
      if (io_->read_fd() >= 0) {
        pollfd fd = {io_->read_fd(), POLLIN, 0};
        if (::poll(&fd, 1, 50) > 0) {
          char discard[65536];
          ssize_t n = ::recv(io_->read_fd(), discard, sizeof(discard), 0);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) io_->CloseRead();
        }
      } else {
        ::poll(nullptr, 0, 5);
      }
    }
    reaped_ = true;
    io_->CloseRead();
    stderr_->Stop(/*grace_ms=*/1000);
    if (lost || (!killed && WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      finish_status_ = Status::Ok();
      return finish_status_;
    }
    std::string what = killed ? "did not exit within " + FormatMs(kFinishTimeoutMs) +
                                     " after the end of the session and was killed"
                               : DescribeWaitStatus(status);
    std::string line = stderr_->LastLine();
    finish_status_ = Status::IoError(description_ + ": " + what +
                                     (line.empty() ? " (no error output)" : ": " + line));
    return finish_status_;
  }

 private:
  pid_t pid_;
  std::unique_ptr<SocketStream> io_;
  std::unique_ptr<StderrTail> stderr_;
  std::string description_;
  bool finished_ = false;
  bool reaped_ = false;
  Status finish_status_;
};

// Moves `fd` to a number above 2 so that the dup2 to 0, 1, 2 in the child
// cannot clobber another of the child's descriptors.
Status MoveAboveStdio(int& fd) {
  if (fd > 2) return Status::Ok();
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (moved < 0) return core::ErrnoStatus(errno, "fcntl(F_DUPFD_CLOEXEC)");
  ::close(fd);
  fd = moved;
  return Status::Ok();
}

// RAII for the descriptors of a spawn in progress.
struct SpawnFds {
  int ours_write = -1, child_stdin = -1;
  int ours_read = -1, child_stdout = -1;
  int stderr_read = -1, child_stderr = -1;
  int stop_fd = -1;
  ~SpawnFds() {
    for (int* fd : {&ours_write, &child_stdin, &ours_read, &child_stdout, &stderr_read,
                    &child_stderr, &stop_fd}) {
      CloseFd(*fd);
    }
  }
};

Result<std::unique_ptr<Connection>> Spawn(const std::vector<std::string>& argv, bool search_path,
                                          const std::string& description) {
  SpawnFds fds;
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return core::ErrnoStatus(errno, description + ": socketpair");
  }
  fds.ours_write = pair[0];
  fds.child_stdin = pair[1];
  // A few batches in flight towards the child, so the shipper's sending
  // and the receiver's work overlap instead of taking turns through the
  // default ~200 KiB buffer. Best effort: FORCE needs CAP_NET_ADMIN, the
  // plain option is capped by net.core.wmem_max.
  int send_buffer_bytes = 16 << 20;
  if (::setsockopt(fds.ours_write, SOL_SOCKET, SO_SNDBUFFORCE, &send_buffer_bytes, sizeof(send_buffer_bytes)) != 0) {
    (void)::setsockopt(fds.ours_write, SOL_SOCKET, SO_SNDBUF, &send_buffer_bytes, sizeof(send_buffer_bytes));
  }
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return core::ErrnoStatus(errno, description + ": socketpair");
  }
  fds.ours_read = pair[0];
  fds.child_stdout = pair[1];
  if (::pipe2(pair, O_CLOEXEC) != 0) return core::ErrnoStatus(errno, description + ": pipe");
  fds.stderr_read = pair[0];
  fds.child_stderr = pair[1];
  fds.stop_fd = ::eventfd(0, EFD_CLOEXEC);
  if (fds.stop_fd < 0) return core::ErrnoStatus(errno, description + ": eventfd");
  // Half-close the unused directions so each socket behaves like a pipe.
  ::shutdown(fds.ours_write, SHUT_RD);
  ::shutdown(fds.ours_read, SHUT_WR);
  BLKREP_RETURN_IF_ERROR(MoveAboveStdio(fds.child_stdin));
  BLKREP_RETURN_IF_ERROR(MoveAboveStdio(fds.child_stdout));
  BLKREP_RETURN_IF_ERROR(MoveAboveStdio(fds.child_stderr));

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attributes;
  if (int rc = ::posix_spawn_file_actions_init(&actions); rc != 0) {
    return core::ErrnoStatus(rc, description + ": posix_spawn_file_actions_init");
  }
  if (int rc = ::posix_spawnattr_init(&attributes); rc != 0) {
    ::posix_spawn_file_actions_destroy(&actions);
    return core::ErrnoStatus(rc, description + ": posix_spawnattr_init");
  }
  int rc = ::posix_spawn_file_actions_adddup2(&actions, fds.child_stdin, 0);
  if (rc == 0) rc = ::posix_spawn_file_actions_adddup2(&actions, fds.child_stdout, 1);
  if (rc == 0) rc = ::posix_spawn_file_actions_adddup2(&actions, fds.child_stderr, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  // Also closes descriptors some library opened without O_CLOEXEC.
  if (rc == 0) rc = ::posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#endif
  sigset_t empty;
  sigset_t defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  for (int signal : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM,
                     SIGTSTP, SIGTTIN, SIGTTOU, SIGXFSZ}) {
    sigaddset(&defaults, signal);
  }
  if (rc == 0) {
    rc = ::posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                     POSIX_SPAWN_SETSIGDEF);
  }
  if (rc == 0) rc = ::posix_spawnattr_setpgroup(&attributes, 0);
  if (rc == 0) rc = ::posix_spawnattr_setsigmask(&attributes, &empty);
  if (rc == 0) rc = ::posix_spawnattr_setsigdefault(&attributes, &defaults);
  pid_t pid = -1;
  if (rc == 0) {
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    rc = search_path ? ::posix_spawnp(&pid, args[0], &actions, &attributes, args.data(), environ)
                     : ::posix_spawn(&pid, args[0], &actions, &attributes, args.data(), environ);
  }
  ::posix_spawn_file_actions_destroy(&actions);
  ::posix_spawnattr_destroy(&attributes);
  if (rc != 0) return core::ErrnoStatus(rc, description + ": cannot run " + argv[0]);

  auto io = std::make_unique<SocketStream>(fds.ours_read, fds.ours_write);
  fds.ours_read = fds.ours_write = -1;
  auto tail = std::make_unique<StderrTail>(fds.stderr_read, fds.stop_fd);
  fds.stderr_read = fds.stop_fd = -1;
  return std::unique_ptr<Connection>(
      new ProcessConnection(pid, std::move(io), std::move(tail), description));
  // SpawnFds closes the child's ends here.
}

// ---- TCP ----

class NetConnection final : public Connection {
 public:
  explicit NetConnection(std::unique_ptr<Stream> inner) : inner_(std::move(inner)) {}
  Status ReadFull(std::span<std::byte> out) override {
    if (!inner_) return Status::Internal("read after Finish");
    return inner_->ReadFull(out);
  }
  Status WriteAll(std::span<const std::byte> data) override {
    if (!inner_) return Status::Internal("write after Finish");
    return inner_->WriteAll(data);
  }
  void CloseWrite() override {
    if (inner_) inner_->CloseWrite();
  }
  Status Finish() override {
    if (inner_) {
      inner_->CloseWrite();
      inner_.reset();
    }
    return Status::Ok();
  }

 private:
  std::unique_ptr<Stream> inner_;
};

struct AddrInfoDeleter {
  void operator()(addrinfo* info) const { ::freeaddrinfo(info); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

Result<AddrInfoPtr> Resolve(const HostPort& where, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* result = nullptr;
  std::string port = std::to_string(where.port);
  int rc = ::getaddrinfo(where.host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) {
    if (rc == EAI_SYSTEM) return core::ErrnoStatus(errno, "cannot resolve " + where.host);
    return Status::NotFound("cannot resolve " + where.host + ": " + ::gai_strerror(rc));
  }
  return AddrInfoPtr(result);
}

// Connects to the first address of `where` that answers, all within
// `timeout_ms`. `connected_to` receives the address.
Result<std::unique_ptr<SocketStream>> Dial(const HostPort& where, int timeout_ms,
                                           std::string* connected_to) {
  BLKREP_ASSIGN_OR_RETURN(AddrInfoPtr addresses, Resolve(where, /*passive=*/false));
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string failures;
  for (addrinfo* a = addresses.get(); a != nullptr; a = a->ai_next) {
    std::string name = FormatSockaddr(a->ai_addr, a->ai_addrlen);
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      failures += (failures.empty() ? "" : "; ") + name + ": " + std::strerror(errno);
      continue;
    }
    auto stream = std::make_unique<SocketStream>(fd, fd);
    int error = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      error = errno;
      if (error == EINPROGRESS) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
        stream->SetDeadline(static_cast<int>(std::max<long long>(left, 1)));
        Status waited = stream->Wait(fd, POLLOUT);
        stream->ClearDeadline();
        if (!waited.ok()) {
          failures += (failures.empty() ? "" : "; ") + name + ": no answer within " + FormatMs(timeout_ms);
          continue;
        }
        socklen_t length = sizeof(error);
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
      }
    }
    if (error != 0) {
      failures += (failures.empty() ? "" : "; ") + name + ": " + std::strerror(error);
      continue;
    }
    ConfigureTcp(fd);
    *connected_to = name;
    return stream;
  }
  // The message names each address tried and why it failed.
  Status failed = Status::IoError("cannot connect: " + failures);
  return failed;
}

Result<std::unique_ptr<Connection>> ConnectTcp(const TargetSpec& target) {
  const std::string description = DescribeTarget(target);
  auto fail = [&](const Status& s) { return s.WithContext(description); };
  auto where = ParseHostPort(target.connect_address, /*listening=*/false);
  if (!where.ok()) return fail(where.status());
  const AuthOptions& auth = target.auth;
  if (auth.uses_psk() == auth.uses_tls()) {
    return fail(Status::InvalidArgument(
        auth.uses_psk() ? "--psk-file and --tls-* cannot be combined"
                        : "--connect needs --psk-file or --tls-ca (an unauthenticated connection is refused)"));
  }
  std::optional<PskKey> key;
  std::shared_ptr<TlsContext> tls;
  if (auth.uses_psk()) {
    auto loaded = PskKey::Load(auth.psk_file);
    if (!loaded.ok()) return fail(loaded.status());
    key.emplace(std::move(loaded).value());
  } else {
    auto created = TlsContext::Create(TlsContext::Role::kClient, auth);
    if (!created.ok()) return fail(created.status());
    tls = std::move(created).value();
  }
  std::string peer;
  auto dialed = Dial(*where, kConnectTimeoutMs, &peer);
  if (!dialed.ok()) return fail(dialed.status());
  std::unique_ptr<SocketStream> socket = std::move(dialed).value();
  socket->SetDeadline(auth.handshake_timeout_ms);
  const std::string auth_context = description + ": authentication with " + peer + " failed";
  if (key.has_value()) {
    Status s = PskHandshakeClient(*socket, *key);
    if (!s.ok()) return s.WithContext(auth_context);
    socket->ClearDeadline();
    return std::unique_ptr<Connection>(new NetConnection(std::move(socket)));
  }
  auto handshake = TlsStream::Handshake(std::move(socket), *tls, where->host);
  if (!handshake.ok()) return handshake.status().WithContext(auth_context);
  std::unique_ptr<TlsStream> stream = std::move(handshake).value();
  Status accepted = ReadTlsAccepted(*stream);
  if (!accepted.ok()) return accepted.WithContext(auth_context);
  stream->socket().ClearDeadline();
  return std::unique_ptr<Connection>(new NetConnection(std::move(stream)));
}

// ---- argument checks ----

bool ValidSshDestination(const std::string& destination) {
  if (destination.empty() || destination.size() > 255 || destination[0] == '-') return false;
  std::size_t at = destination.find('@');
  if (at != std::string::npos) {
    if (at == 0 || at + 1 == destination.size() || destination.find('@', at + 1) != std::string::npos) {
      return false;
    }
    if (destination[at + 1] == '-') return false;
  }
  for (char c : destination) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::strchr("._@:%[]-", c) != nullptr;
    if (!ok || c == '\0') return false;
  }
  return true;
}

bool HasControlCharacter(std::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  }
  return false;
}

}  // namespace

// ---- public functions ----

std::string ShellQuote(std::string_view text) {
  bool plain = !text.empty();
  for (char c : text) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c != '\0' && std::strchr("_./:=@%+,-", c) != nullptr);
    if (!ok) plain = false;
  }
  if (plain) return std::string(text);
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  quoted += "'";
  return quoted;
}

std::vector<std::string> ExecArgv(const TargetSpec& target) {
  return {"/bin/sh", "-c", target.exec_command};
}

std::vector<std::string> SshArgv(const TargetSpec& target) {
  std::string dir = target.remote_replica_dir.empty() ? kDefaultRemoteReplicaDir : target.remote_replica_dir;
  return {"ssh", "-o", "BatchMode=yes", "-e", "none", "-T", "--", target.ssh_destination,
          "blkrep receive --stdio --replica-dir " + ShellQuote(dir)};
}

std::string DescribeTarget(const TargetSpec& target) {
  switch (target.kind) {
    case TargetSpec::Kind::kExec:
      return "exec " + ShellQuote(target.exec_command);
    case TargetSpec::Kind::kSsh:
      return "ssh " + target.ssh_destination;
    case TargetSpec::Kind::kConnect:
      return "connect " + target.connect_address;
  }
  return "unknown target";
}

Result<HostPort> ParseHostPort(std::string_view text, bool listening) {
  const std::string shown(text);
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text[0] == '[') {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return Status::InvalidArgument("bad address '" + shown + "': expected [IPV6]:PORT");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    if (host.empty()) return Status::InvalidArgument("bad address '" + shown + "': empty [] host");
  } else {
    std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return Status::InvalidArgument("bad address '" + shown + "': expected HOST:PORT");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return Status::InvalidArgument("bad address '" + shown + "': write an IPv6 address as [ADDR]:PORT");
    }
  }
  if (HasControlCharacter(host) || host.find(' ') != std::string_view::npos) {
    return Status::InvalidArgument("bad address '" + shown + "': bad host");
  }
  if (host == "*") host = "";
  if (host.empty() && !listening) {
    return Status::InvalidArgument("bad address '" + shown + "': the host is missing");
  }
  unsigned value = 0;
  bool digits = !port.empty() && port.size() <= 5;
  for (char c : port) {
    if (c < '0' || c > '9') {
      digits = false;
      break;
    }
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (!digits || value > 65535 || (value == 0 && !listening)) {
    return Status::InvalidArgument("bad address '" + shown + "': the port must be a number 1..65535");
  }
  return HostPort{std::string(host), static_cast<std::uint16_t>(value)};
}

Result<TargetSpec> ParseTargetArgs(const std::vector<std::string>& args) {
  static const std::set<std::string> kOptions = {"exec",     "ssh",    "connect",  "remote-replica-dir",
                                                 "psk-file", "tls-ca", "tls-cert", "tls-key"};
  const char* kUsage =
      "a target is --exec 'COMMAND', --ssh [USER@]HOST [--remote-replica-dir DIR] or "
      "--connect HOST:PORT with --psk-file FILE or --tls-ca FILE [--tls-cert FILE --tls-key FILE]";
  std::map<std::string, std::string> values;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return Status::InvalidArgument("unexpected argument '" + arg + "'; " + kUsage);
    }
    std::string name = arg.substr(2);
    std::string value;
    std::size_t equals = name.find('=');
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name.resize(equals);
    }
    if (kOptions.count(name) == 0) return Status::InvalidArgument("unknown target option --" + name);
    if (equals == std::string::npos) {
      if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) {
        return Status::InvalidArgument("--" + name + " needs a value");
      }
      value = args[++i];
    }
    if (values.count(name) != 0) return Status::InvalidArgument("--" + name + " given twice");
    values[name] = value;
  }
  int kinds = static_cast<int>(values.count("exec") + values.count("ssh") + values.count("connect"));
  if (kinds == 0) return Status::InvalidArgument(std::string("no target given; ") + kUsage);
  if (kinds > 1) {
    return Status::InvalidArgument("--exec, --ssh and --connect exclude each other; give exactly one");
  }
  auto only_for = [&](const char* option, const char* kind) -> Status {
    if (values.count(option) != 0) {
      return Status::InvalidArgument(std::string("--") + option + " only applies to --" + kind);
    }
    return Status::Ok();
  };
  TargetSpec target;
  if (values.count("exec") != 0) {
    target.kind = TargetSpec::Kind::kExec;
    target.exec_command = values["exec"];
    if (target.exec_command.find_first_not_of(" \t\n") == std::string::npos) {
      return Status::InvalidArgument("--exec needs a command");
    }
  } else if (values.count("ssh") != 0) {
    target.kind = TargetSpec::Kind::kSsh;
    target.ssh_destination = values["ssh"];
    if (!ValidSshDestination(target.ssh_destination)) {
      return Status::InvalidArgument("bad --ssh destination '" + target.ssh_destination +
                                     "': expected [USER@]HOST of letters, digits and ._:%[]- "
                                     "not starting with '-'");
    }
    if (values.count("remote-replica-dir") != 0) {
      target.remote_replica_dir = values["remote-replica-dir"];
      if (target.remote_replica_dir.empty() || target.remote_replica_dir[0] != '/' ||
          HasControlCharacter(target.remote_replica_dir)) {
        return Status::InvalidArgument("--remote-replica-dir must be an absolute path, got '" +
                                       target.remote_replica_dir + "'");
      }
    }
  } else {
    target.kind = TargetSpec::Kind::kConnect;
    target.connect_address = values["connect"];
    auto where = ParseHostPort(target.connect_address, /*listening=*/false);
    if (!where.ok()) return where.status().WithContext("--connect");
    target.auth.psk_file = values.count("psk-file") ? values["psk-file"] : "";
    target.auth.tls_ca = values.count("tls-ca") ? values["tls-ca"] : "";
    target.auth.tls_cert = values.count("tls-cert") ? values["tls-cert"] : "";
    target.auth.tls_key = values.count("tls-key") ? values["tls-key"] : "";
    if (target.auth.uses_psk() && target.auth.uses_tls()) {
      return Status::InvalidArgument("--psk-file and --tls-* exclude each other; choose one");
    }
    if (!target.auth.uses_psk() && !target.auth.uses_tls()) {
      return Status::InvalidArgument(
          "--connect needs --psk-file FILE or --tls-ca FILE (an unauthenticated connection is refused)");
    }
    if (target.auth.uses_tls() && target.auth.tls_ca.empty()) {
      return Status::InvalidArgument("--connect with TLS needs --tls-ca FILE to verify the server");
    }
    if (target.auth.tls_cert.empty() != target.auth.tls_key.empty()) {
      return Status::InvalidArgument("--tls-cert and --tls-key go together");
    }
    for (const char* option : {"psk-file", "tls-ca", "tls-cert", "tls-key"}) {
      if (values.count(option) != 0 && values[option].empty()) {
        return Status::InvalidArgument(std::string("--") + option + " needs a file name");
      }
    }
  }
  if (target.kind != TargetSpec::Kind::kSsh) BLKREP_RETURN_IF_ERROR(only_for("remote-replica-dir", "ssh"));
  if (target.kind != TargetSpec::Kind::kConnect) {
    for (const char* option : {"psk-file", "tls-ca", "tls-cert", "tls-key"}) {
      BLKREP_RETURN_IF_ERROR(only_for(option, "connect"));
    }
  }
  return target;
}

std::vector<std::string> FormatTargetArgs(const TargetSpec& target) {
  std::vector<std::string> args;
  switch (target.kind) {
    case TargetSpec::Kind::kExec:
      args = {"--exec", target.exec_command};
      break;
    case TargetSpec::Kind::kSsh:
      args = {"--ssh", target.ssh_destination};
      if (!target.remote_replica_dir.empty()) {
        args.insert(args.end(), {"--remote-replica-dir", target.remote_replica_dir});
      }
      break;
    case TargetSpec::Kind::kConnect:
      args = {"--connect", target.connect_address};
      if (!target.auth.psk_file.empty()) args.insert(args.end(), {"--psk-file", target.auth.psk_file});
      if (!target.auth.tls_ca.empty()) args.insert(args.end(), {"--tls-ca", target.auth.tls_ca});
      if (!target.auth.tls_cert.empty()) args.insert(args.end(), {"--tls-cert", target.auth.tls_cert});
      if (!target.auth.tls_key.empty()) args.insert(args.end(), {"--tls-key", target.auth.tls_key});
      break;
  }
  return args;
}

Result<std::unique_ptr<Connection>> ConnectTarget(const TargetSpec& target) {
  switch (target.kind) {
    case TargetSpec::Kind::kExec:
      if (target.exec_command.empty()) return Status::InvalidArgument("--exec needs a command");
      return Spawn(ExecArgv(target), /*search_path=*/false, DescribeTarget(target));
    case TargetSpec::Kind::kSsh:
      if (!ValidSshDestination(target.ssh_destination)) {
        return Status::InvalidArgument("bad --ssh destination '" + target.ssh_destination + "'");
      }
      return Spawn(SshArgv(target), /*search_path=*/true, DescribeTarget(target));
    case TargetSpec::Kind::kConnect:
      return ConnectTcp(target);
  }
  return Status::Internal("unknown target kind");
}

// ---- Listener ----

Result<std::unique_ptr<Listener>> Listener::Listen(const std::string& host_port, const AuthOptions& auth) {
  const bool tls = !auth.tls_cert.empty() || !auth.tls_key.empty();
  if (!auth.uses_psk() && !tls) {
    return Status::InvalidArgument("--listen needs --psk-file or --tls-cert/--tls-key");
  }
  if (auth.uses_psk() && auth.uses_tls()) {
    return Status::InvalidArgument("--psk-file and --tls-* exclude each other; choose one");
  }
  BLKREP_ASSIGN_OR_RETURN(HostPort where, ParseHostPort(host_port, /*listening=*/true));
  std::unique_ptr<Listener> listener(new Listener());
  listener->auth_ = auth;
  if (auth.uses_psk()) {
    BLKREP_ASSIGN_OR_RETURN(PskKey key, PskKey::Load(auth.psk_file));
    listener->psk_.emplace(std::move(key));
  } else {
    BLKREP_ASSIGN_OR_RETURN(listener->tls_, TlsContext::Create(TlsContext::Role::kServer, auth));
  }

  // Every address: the IPv6 wildcard accepting IPv4 too, else IPv4's.
  std::vector<HostPort> candidates;
  if (where.host.empty()) {
    candidates = {{"::", where.port}, {"0.0.0.0", where.port}};
  } else {
    candidates = {where};
  }
  std::string failures;
  for (const HostPort& candidate : candidates) {
    auto resolved = Resolve(candidate, /*passive=*/true);
    if (!resolved.ok()) {
      failures += (failures.empty() ? "" : "; ") + resolved.status().ToString();
      continue;
    }
    for (addrinfo* a = resolved->get(); a != nullptr; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) {
        failures += (failures.empty() ? "" : "; ") + std::string(std::strerror(errno));
        continue;
      }
      int one = 1;
      int zero = 0;
      (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (a->ai_family == AF_INET6 && where.host.empty()) {
        (void)::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
      }
      if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
        failures += (failures.empty() ? "" : "; ") + FormatSockaddr(a->ai_addr, a->ai_addrlen) + ": " +
                    std::strerror(errno);
        ::close(fd);
        continue;
      }
      listener->fd_ = fd;
      break;
    }
    if (listener->fd_ >= 0) break;
  }
  if (listener->fd_ < 0) {
    return Status::IoError("cannot listen on " + host_port + ": " + failures);
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  if (::getsockname(listener->fd_, reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    return core::ErrnoStatus(errno, "getsockname on " + host_port);
  }
  listener->address_ = FormatSockaddr(reinterpret_cast<sockaddr*>(&bound), length);
  listener->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (listener->wake_fd_ < 0) return core::ErrnoStatus(errno, "eventfd");
  return listener;
}

Listener::~Listener() {
  CloseFd(fd_);
  CloseFd(wake_fd_);
}

void Listener::Stop() {
  stopped_.store(true);
  std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
}

Result<std::unique_ptr<Stream>> Listener::Accept(std::string* peer) {
  const auto stopped = [this] { return Status::Aborted("listener on " + address_ + " stopped"); };
  while (true) {
    if (stopped_.load()) return stopped();
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return core::ErrnoStatus(errno, "poll on listener " + address_);
    }
    if (fds[1].revents != 0) return stopped();
    sockaddr_storage from{};
    socklen_t length = sizeof(from);
    int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&from), &length, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      int error = errno;
      if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR || error == ECONNABORTED ||
          error == EPROTO || error == ENETDOWN || error == ENOPROTOOPT || error == EHOSTDOWN ||
          error == ENONET || error == EHOSTUNREACH || error == EOPNOTSUPP || error == ENETUNREACH) {
        continue;
      }
      if (error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM) {
        pollfd wake = {wake_fd_, POLLIN, 0};
        (void)::poll(&wake, 1, 100);  // back off before the caller retries
      }
      return core::ErrnoStatus(error, "accept on " + address_);
    }
    std::string name = FormatSockaddr(reinterpret_cast<sockaddr*>(&from), length);
    if (peer != nullptr) *peer = name;
    ConfigureTcp(fd);
    auto socket = std::make_unique<SocketStream>(fd, fd);
    socket->SetDeadline(auth_.handshake_timeout_ms);
    socket->SetCancelFd(wake_fd_);
    const std::string context = "peer " + name + ": authentication failed";
    auto failed = [&](const Status& s) -> Status {
      if (stopped_.load()) return stopped();
      return s.WithContext(context);
    };
    if (psk_.has_value()) {
      Status s = PskHandshakeServer(*socket, *psk_);
      if (!s.ok()) return failed(s);
      socket->ClearDeadline();
      socket->SetCancelFd(-1);
      return std::unique_ptr<Stream>(std::move(socket));
    }
    // A pre-shared-key client would make OpenSSL report a bare "wrong version
    // number"; look at its first bytes to say so plainly.
    Status readable = socket->Wait(fd, POLLIN);
    if (!readable.ok()) return failed(readable);
    unsigned char first[4];
    ssize_t n = ::recv(fd, first, sizeof(first), MSG_PEEK);
    if (n == 4 && std::memcmp(first, "BKRA", 4) == 0) {
      return failed(Status::Corruption("the peer uses a pre-shared key, but this listener expects TLS"));
    }
    auto handshake = TlsStream::Handshake(std::move(socket), *tls_, "");
    if (!handshake.ok()) return failed(handshake.status());
    std::unique_ptr<TlsStream> stream = std::move(handshake).value();
    Status sent = SendTlsAccepted(*stream);
    if (!sent.ok()) return failed(sent);
    stream->socket().ClearDeadline();
    stream->socket().SetCancelFd(-1);
    return std::unique_ptr<Stream>(std::move(stream));
  }
}

}  // namespace blkrep::proto
