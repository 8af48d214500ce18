#include "tracker/control_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/file_system.h"

namespace blkrep::tracker {

using core::Result;
using core::Status;

namespace {

Result<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("control socket path is too long (" + std::to_string(path.size()) +
                                   " bytes, at most 107): " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

Status ControlServer::Start(const std::string& path) {
  BLKREP_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  BLKREP_RETURN_IF_ERROR(core::PosixFileSystemInstance().CreateDirectories(core::DirName(path)));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core::ErrnoStatus(errno, "socket");
  // The journal lock is held by now, so a socket left here is stale.
  ::unlink(path.c_str());
  mode_t old_mask = ::umask(077);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old_mask);
  if (rc != 0 || ::listen(fd, 16) != 0) {
    int saved = errno;
    ::close(fd);
    return core::ErrnoStatus(saved, "control socket " + path);
  }
  path_ = path;
  fd_ = fd;
  thread_ = std::thread([this] { Serve(); });
  return Status::Ok();
}

void ControlServer::Stop() {
  if (fd_ < 0 || stopping_.exchange(true)) return;
  thread_.join();
  ::close(fd_);
  ::unlink(path_.c_str());
  fd_ = -1;
}

void ControlServer::Serve() {
  while (!stopping_) {
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 200) <= 0) continue;
    int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    // A client gets 5 s to send its line and 30 s to take the reply, and a
    // reply in progress is abandoned when the tracker stops.
    timeval timeout{5, 0};
    ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::string line;
    char c;
    while (line.size() < 1024 && std::chrono::steady_clock::now() < deadline &&
           ::recv(client, &c, 1, 0) == 1 && c != '\n') {
      line.push_back(c);
    }
    std::string reply = handler_(line);
    timeval send_step{1, 0};
    ::setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &send_step, sizeof(send_step));
    std::size_t sent = 0;
    auto reply_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (sent < reply.size() && !stopping_ && std::chrono::steady_clock::now() < reply_deadline) {
      ssize_t n = ::send(client, reply.data() + sent, reply.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;  // re-check stop and deadline
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    ::close(client);
  }
}

Result<std::string> AskControl(const std::string& path, const std::string& request) {
  BLKREP_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core::ErrnoStatus(errno, "socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int saved = errno;
    ::close(fd);
    if (saved == ENOENT || saved == ECONNREFUSED) return Status::NotFound("no tracker at " + path);
    return core::ErrnoStatus(saved, "connect " + path);
  }
  std::string line = request + "\n";
  if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    int saved = errno;
    ::close(fd);
    return core::ErrnoStatus(saved, "send to " + path);
  }
  std::string reply;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return reply;
}

}  // namespace blkrep::tracker
