#include "tracker/nbd_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tracker/nbd_protocol.h"

namespace blkrep::tracker {

using core::Result;
using core::Status;

namespace {

// Reads exactly n bytes; false on end of stream or error.
bool ReadFull(int fd, void* buffer, std::size_t n) {
  auto* p = static_cast<char*>(buffer);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// Reads and throws away n bytes without allocating them.
bool Drain(int fd, std::uint64_t n) {
  char scratch[64 * 1024];
  while (n > 0) {
    std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, sizeof(scratch)));
    if (!ReadFull(fd, scratch, chunk)) return false;
    n -= chunk;
  }
  return true;
}

bool WriteAll(int fd, struct iovec* iov, int count) {
  while (count > 0) {
    struct msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(count);
    ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return false;
    auto done = static_cast<std::size_t>(w);
    while (count > 0 && done >= iov->iov_len) {
      done -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + done;
      iov->iov_len -= done;
    }
  }
  return true;
}

bool WriteBytes(int fd, const std::vector<std::byte>& bytes) {
  struct iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  return WriteAll(fd, &iov, 1);
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte, FreeDeleter>;

Buffer AllocateBuffer(std::size_t n) {
  void* p = nullptr;
  if (::posix_memalign(&p, 4096, std::max<std::size_t>(n, 1)) != 0) return nullptr;
  return Buffer(static_cast<std::byte*>(p));
}

std::uint32_t ErrorOf(const Status& s) {
  if (s.ok()) return 0;
  if (s.error_number() != 0) return nbd::ErrorFromErrno(s.error_number());
  if (s.code() == core::Code::kOutOfRange) return nbd::kEinval;
  return nbd::kEio;
}

}  // namespace

struct NbdServer::Connection {
  int fd = -1;
  std::thread thread;
  std::mutex send_mu;     // one reply at a time on the socket
  std::mutex mu;          // guards the counters below and closing fd
  std::condition_variable cv;
  std::uint64_t in_flight_bytes = 0;
  std::uint64_t in_flight = 0;
  bool closed = false;
  std::atomic<bool> finished = false;
  // Negotiated.
  bool structured = false;
  bool no_zeroes = false;
  bool base_allocation = false;
  const NbdExport* exp = nullptr;

  void Send(std::vector<std::byte> header, const std::byte* data = nullptr, std::size_t n = 0) {
    struct iovec iov[2] = {{header.data(), header.size()}, {const_cast<std::byte*>(data), n}};
    std::lock_guard lock(send_mu);
    if (!WriteAll(fd, iov, data ? 2 : 1)) {
      // The client is gone: make the reader stop too.
      ::shutdown(fd, SHUT_RDWR);
    }
  }
  void SendError(const nbd::Request& r, std::uint32_t error, const std::string& why) {
    std::vector<std::byte> out;
    if (structured) nbd::AppendErrorChunk(out, r.cookie, error, why);
    else nbd::AppendSimpleReply(out, error, r.cookie);
    Send(std::move(out));
  }
  void SendOk(const nbd::Request& r) {
    std::vector<std::byte> out;
    if (structured) nbd::AppendChunkHeader(out, nbd::kReplyFlagDone, nbd::kReplyTypeNone, r.cookie, 0);
    else nbd::AppendSimpleReply(out, 0, r.cookie);
    Send(std::move(out));
  }
  // Waits until `bytes` more may be in flight.
  void Reserve(std::uint64_t bytes) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight_bytes == 0 || in_flight_bytes + bytes <= kMaxInFlightBytes; });
    in_flight_bytes += bytes;
    ++in_flight;
  }
  void Release(std::uint64_t bytes) {
    std::lock_guard lock(mu);
    in_flight_bytes -= bytes;
    --in_flight;
    cv.notify_all();
  }
  void WaitIdle() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
  }
};

namespace {

// One request handed to the I/O engine.
struct Pending {
  core::AsyncOp op;
  std::shared_ptr<NbdServer::Connection> conn;
  nbd::Request request;
  Buffer buffer;
  std::uint64_t reserved = 0;
};

std::uint16_t TransmissionFlags(const NbdServer::Connection& c) {
  std::uint16_t flags = nbd::kTxHasFlags | nbd::kTxSendFlush | nbd::kTxSendFua | nbd::kTxSendTrim |
                        nbd::kTxSendWriteZeroes | nbd::kTxSendFastZero | nbd::kTxCanMultiConn;
  if (c.structured) flags |= nbd::kTxSendDf;
  return flags;
}

const NbdExport* FindExport(const std::vector<NbdExport>& exports, const std::string& name) {
  if (name.empty() && !exports.empty()) return &exports.front();  // the default export
  for (const auto& e : exports) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

// Option haggling. Returns the export chosen by GO or EXPORT_NAME, or
// nullptr when the client left (ABORT, EOF, protocol error).
const NbdExport* Handshake(NbdServer::Connection& c, const std::vector<NbdExport>& exports) {
  std::vector<std::byte> hello;
  nbd::PutU64(hello, nbd::kNbdMagic);
  nbd::PutU64(hello, nbd::kOptionMagic);
  nbd::PutU16(hello, nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes);
  if (!WriteBytes(c.fd, hello)) return nullptr;
  std::byte flags_bytes[4];
  if (!ReadFull(c.fd, flags_bytes, 4)) return nullptr;
  std::uint32_t client_flags = nbd::LoadBe32(flags_bytes);
  if ((client_flags & ~(nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes)) != 0) return nullptr;
  c.no_zeroes = client_flags & nbd::kClientFlagNoZeroes;
  for (;;) {
    std::byte header[16];
    if (!ReadFull(c.fd, header, 16)) return nullptr;
    if (nbd::LoadBe64(header) != nbd::kOptionMagic) return nullptr;
    std::uint32_t option = nbd::LoadBe32(header + 8);
    std::uint32_t length = nbd::LoadBe32(header + 12);
    std::vector<std::byte> out;
    auto reply = [&](std::uint32_t type, std::span<const std::byte> data = {}) {
      nbd::AppendOptionReply(out, option, type, data);
    };
    if (length > nbd::kMaxOptionBytes) {
      if (length > (1U << 20) || !Drain(c.fd, length)) return nullptr;
      reply(nbd::kRepErrTooBig);
      if (!WriteBytes(c.fd, out)) return nullptr;
      continue;
    }
    std::vector<std::byte> payload(length);
    if (length > 0 && !ReadFull(c.fd, payload.data(), length)) return nullptr;
    switch (option) {
      case nbd::kOptExportName: {
        const NbdExport* e = FindExport(exports, std::string(reinterpret_cast<const char*>(payload.data()),
                                                             payload.size()));
        if (!e) return nullptr;  // no way to refuse but to hang up
        std::vector<std::byte> info;
        nbd::PutU64(info, e->device->SizeBytes());
        nbd::PutU16(info, TransmissionFlags(c));
        if (!c.no_zeroes) info.resize(info.size() + 124, std::byte{0});
        if (!WriteBytes(c.fd, info)) return nullptr;
        return e;
      }
      case nbd::kOptAbort:
        reply(nbd::kRepAck);
        (void)WriteBytes(c.fd, out);
        return nullptr;
      case nbd::kOptList:
        if (length != 0) {
          reply(nbd::kRepErrInvalid);
          break;
        }
        for (const auto& e : exports) {
          std::vector<std::byte> data;
          nbd::PutU32(data, static_cast<std::uint32_t>(e.name.size()));
          for (char ch : e.name) data.push_back(static_cast<std::byte>(ch));
          reply(nbd::kRepServer, data);
        }
        reply(nbd::kRepAck);
        break;
      case nbd::kOptStartTls:
        reply(nbd::kRepErrPolicy);  // TLS is for the replication transport, not this socket
        break;
      case nbd::kOptInfo:
      case nbd::kOptGo: {
        auto request = nbd::ParseInfoRequest(payload);
        if (!request.ok()) {
          reply(nbd::kRepErrInvalid);
          break;
        }
        const NbdExport* e = FindExport(exports, request->name);
        if (!e) {
          reply(nbd::kRepErrUnknown);
          break;
        }
        std::vector<std::byte> info;
        nbd::PutU16(info, nbd::kInfoExport);
        nbd::PutU64(info, e->device->SizeBytes());
        nbd::PutU16(info, TransmissionFlags(c));
        reply(nbd::kRepInfo, info);
        for (std::uint16_t type : request->info_types) {
          std::vector<std::byte> extra;
          if (type == nbd::kInfoBlockSize) {
            nbd::PutU16(extra, nbd::kInfoBlockSize);
            nbd::PutU32(extra, 1);
            nbd::PutU32(extra, 4096);
            nbd::PutU32(extra, nbd::kMaxRequestBytes);
          } else if (type == nbd::kInfoName) {
            nbd::PutU16(extra, nbd::kInfoName);
            for (char ch : e->name) extra.push_back(static_cast<std::byte>(ch));
          } else {
            continue;
          }
          reply(nbd::kRepInfo, extra);
        }
        reply(nbd::kRepAck);
        if (option == nbd::kOptGo) {
          if (!WriteBytes(c.fd, out)) return nullptr;
          return e;
        }
        break;
      }
      case nbd::kOptStructuredReply:
        if (length != 0) {
          reply(nbd::kRepErrInvalid);
          break;
        }
        c.structured = true;
        reply(nbd::kRepAck);
        break;
      case nbd::kOptListMetaContext:
      case nbd::kOptSetMetaContext: {
        auto request = nbd::ParseMetaContextRequest(payload);
        if (!request.ok() || (option == nbd::kOptSetMetaContext && !c.structured)) {
          reply(nbd::kRepErrInvalid);
          break;
        }
        if (!FindExport(exports, request->export_name)) {
          reply(nbd::kRepErrUnknown);
          break;
        }
        bool matched = false;
        for (const auto& q : request->queries) {
          bool list_all = option == nbd::kOptListMetaContext && (q == "base:" || q.empty());
          if (q == nbd::kBaseAllocation || list_all) matched = true;
        }
        if (option == nbd::kOptListMetaContext && request->queries.empty()) matched = true;
        if (option == nbd::kOptSetMetaContext) c.base_allocation = matched;
        if (matched) {
          std::vector<std::byte> data;
          nbd::PutU32(data, nbd::kBaseAllocationContextId);
          for (const char* p = nbd::kBaseAllocation; *p; ++p) data.push_back(static_cast<std::byte>(*p));
          reply(nbd::kRepMetaContext, data);
        }
        reply(nbd::kRepAck);
        break;
      }
      default:
        reply(nbd::kRepErrUnsup);
        break;
    }
    if (!WriteBytes(c.fd, out)) return nullptr;
  }
}

// base:allocation from SEEK_DATA/SEEK_HOLE; a device that cannot tell gets
// one descriptor of status 0 ("data, maybe not zero"), which is always true.
std::vector<std::pair<std::uint32_t, std::uint32_t>> BlockStatus(int fd, std::uint64_t offset,
                                                                 std::uint32_t length, bool one) {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  std::uint64_t pos = offset, end = offset + length;
  while (pos < end && out.size() < (one ? 1U : 16U)) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    std::uint64_t next;
    std::uint32_t flags;
    if (data < 0 && errno == ENXIO) {
      next = end;
      flags = nbd::kStateHole | nbd::kStateZero;
    } else if (data < 0) {
      if (out.empty()) out.emplace_back(length, 0);
      return out;
    } else if (static_cast<std::uint64_t>(data) > pos) {
      next = std::min<std::uint64_t>(end, static_cast<std::uint64_t>(data));
      flags = nbd::kStateHole | nbd::kStateZero;
    } else {
      off_t hole = ::lseek(fd, static_cast<off_t>(pos), SEEK_HOLE);
      next = hole < 0 ? end : std::min<std::uint64_t>(end, static_cast<std::uint64_t>(hole));
      if (next <= pos) next = end;
      flags = 0;
    }
    out.emplace_back(static_cast<std::uint32_t>(next - pos), flags);
    pos = next;
  }
  return out;
}

void Transmission(const std::shared_ptr<NbdServer::Connection>& conn, core::AsyncIo& io) {
  NbdServer::Connection& c = *conn;
  const NbdExport& e = *c.exp;
  nbd::ExportLimits limits{e.device->SizeBytes(), false, c.structured, c.base_allocation};
  int volume_fd = e.device->fd();
  bool is_block_device = e.device->is_block_device();
  for (;;) {
    std::byte header[nbd::kRequestHeaderBytes];
    if (!ReadFull(c.fd, header, sizeof(header))) return;  // client gone
    nbd::Request r = nbd::DecodeRequest(header);
    nbd::Verdict v = nbd::ValidateRequest(r, limits);
    if (v.kind == nbd::Verdict::Kind::kDisconnect) return;
    if (v.kind == nbd::Verdict::Kind::kError) {
      if (v.payload_bytes > 0 && !Drain(c.fd, v.payload_bytes)) return;
      c.SendError(r, v.error, v.why);
      continue;
    }
    switch (r.type) {
      case nbd::kCmdDisc:
        return;
      case nbd::kCmdRead:
      case nbd::kCmdWrite:
      case nbd::kCmdFlush: {
        auto p = std::make_unique<Pending>();
        p->conn = conn;
        p->request = r;
        p->reserved = r.length;
        c.Reserve(p->reserved);
        if (r.type != nbd::kCmdFlush) {
          p->buffer = AllocateBuffer(r.length);
          if (!p->buffer) {
            if (r.type == nbd::kCmdWrite && !Drain(c.fd, r.length)) return;
            c.Release(p->reserved);
            c.SendError(r, nbd::kEnomem, "out of memory");
            continue;
          }
        }
        p->op.fd = volume_fd;
        p->op.offset_bytes = r.offset;
        p->op.buffer = p->buffer.get();
        p->op.length_bytes = r.length;
        if (r.type == nbd::kCmdWrite) {
          if (!ReadFull(c.fd, p->buffer.get(), r.length)) {
            c.Release(p->reserved);
            return;  // the client vanished mid-request: nothing was written
          }
          // Invariant 1: durable in the journal before it reaches the volume.
          (void)e.journal->MarkDirty(r.offset, r.length);
          p->op.kind = core::AsyncOp::Kind::kWrite;
          p->op.dsync = r.flags & nbd::kCmdFlagFua;
        } else if (r.type == nbd::kCmdRead) {
          p->op.kind = core::AsyncOp::Kind::kRead;
        } else {
          p->op.kind = core::AsyncOp::Kind::kDataSync;
        }
        Pending* raw = p.release();
        raw->op.done = [raw](Status s) {
          std::unique_ptr<Pending> owned(raw);
          NbdServer::Connection& cc = *owned->conn;
          const nbd::Request& rq = owned->request;
          if (!s.ok()) {
            cc.SendError(rq, ErrorOf(s), s.ToString());
          } else if (rq.type == nbd::kCmdRead) {
            std::vector<std::byte> head;
            if (cc.structured) {
              nbd::AppendChunkHeader(head, nbd::kReplyFlagDone, nbd::kReplyTypeOffsetData, rq.cookie,
                                     rq.length + 8);
              nbd::PutU64(head, rq.offset);
            } else {
              nbd::AppendSimpleReply(head, 0, rq.cookie);
            }
            cc.Send(std::move(head), owned->buffer.get(), rq.length);
          } else {
            cc.SendOk(rq);
          }
          owned->buffer.reset();
          auto keep = owned->conn;  // the connection outlives this reply
          std::uint64_t reserved = owned->reserved;
          owned.reset();
          keep->Release(reserved);
        };
        io.Submit(&raw->op);
        break;
      }
      case nbd::kCmdTrim:
      case nbd::kCmdWriteZeroes: {
        bool zero = r.type == nbd::kCmdWriteZeroes;
        if (zero && (r.flags & nbd::kCmdFlagFastZero) && is_block_device) {
          // Zeroing a block device may fall back to writing zeroes: not fast.
          c.SendError(r, nbd::kEnotsup, "fast zero is not available on this device");
          continue;
        }
        (void)e.journal->MarkDirty(r.offset, r.length);
        Status s = zero ? e.device->WriteZeroes(r.offset, r.length, !(r.flags & nbd::kCmdFlagNoHole))
                        : e.device->Trim(r.offset, r.length);
        if (s.ok() && (r.flags & nbd::kCmdFlagFua)) s = e.device->Flush();
        if (s.ok()) c.SendOk(r);
        else c.SendError(r, ErrorOf(s), s.ToString());
        break;
      }
      case nbd::kCmdBlockStatus: {
        auto descriptors = BlockStatus(volume_fd, r.offset, r.length, r.flags & nbd::kCmdFlagReqOne);
        std::vector<std::byte> out;
        nbd::AppendChunkHeader(out, nbd::kReplyFlagDone, nbd::kReplyTypeBlockStatus, r.cookie,
                               static_cast<std::uint32_t>(4 + 8 * descriptors.size()));
        nbd::PutU32(out, nbd::kBaseAllocationContextId);
        for (auto [len, flags] : descriptors) {
          nbd::PutU32(out, len);
          nbd::PutU32(out, flags);
        }
        c.Send(std::move(out));
        break;
      }
    }
  }
}

Status ListenUnix(const std::string& path, int* fd_out) {
  struct sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path is too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core::ErrnoStatus(errno, "socket");
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int saved = errno;
    if (saved == EADDRINUSE) {
      // A stale socket from a dead process, or a live server?
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
      ::close(probe);
      if (live) {
        ::close(fd);
        return Status::Aborted("socket " + path + " is in use by a running server");
      }
      ::unlink(path.c_str());
      if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) saved = 0;
    }
    if (saved != 0) {
      ::close(fd);
      return core::ErrnoStatus(saved, "bind " + path);
    }
  }
  if (::listen(fd, 64) != 0) {
    int saved = errno;
    ::close(fd);
    return core::ErrnoStatus(saved, "listen " + path);
  }
  *fd_out = fd;
  return Status::Ok();
}

Status ListenTcp(const std::string& spec, int* fd_out, std::string* address) {
  std::string host = "127.0.0.1", port = spec;
  if (auto colon = spec.rfind(':'); colon != std::string::npos) {
    if (colon > 0) host = spec.substr(0, colon);
    port = spec.substr(colon + 1);
  }
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument("--nbd-listen: expected HOST:PORT, got '" + spec + "'");
  }
  struct addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) return Status::InvalidArgument("--nbd-listen " + spec + ": " + gai_strerror(rc));
  Status last = Status::IoError("no address for " + spec);
  for (auto* ai = found; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
      struct sockaddr_storage bound{};
      socklen_t len = sizeof(bound);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      char text[INET6_ADDRSTRLEN] = "";
      unsigned bound_port = 0;
      if (bound.ss_family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&bound);
        ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
        bound_port = ntohs(in->sin_port);
      } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&bound);
        ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
        bound_port = ntohs(in6->sin6_port);
      }
      *address = std::string(text) + ":" + std::to_string(bound_port);
      *fd_out = fd;
      ::freeaddrinfo(found);
      return Status::Ok();
    }
    last = core::ErrnoStatus(errno, "bind " + spec);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return last;
}

}  // namespace

NbdServer::NbdServer(std::vector<NbdExport> exports, NbdServerOptions options)
    : exports_(std::move(exports)), options_(std::move(options)) {}

NbdServer::~NbdServer() { Shutdown(); }

std::string_view NbdServer::io_engine() const { return io_ ? io_->name() : "none"; }

Status NbdServer::Start() {
  BLKREP_ASSIGN_OR_RETURN(io_, core::MakeAsyncIo(options_.backend, options_.queue_depth));
  int fd = -1;
  BLKREP_RETURN_IF_ERROR(ListenUnix(options_.unix_socket, &fd));
  listen_fds_.push_back(fd);
  if (!options_.tcp_listen.empty()) {
    Status tcp = ListenTcp(options_.tcp_listen, &fd, &tcp_address_);
    if (!tcp.ok()) {
      Shutdown();
      return tcp;
    }
    listen_fds_.push_back(fd);
  }
  for (int listen_fd : listen_fds_) acceptors_.emplace_back([this, listen_fd] { AcceptLoop(listen_fd); });
  return Status::Ok();
}

void NbdServer::AcceptLoop(int listen_fd) {
  while (!stopping_) {
    struct pollfd pfd{listen_fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, 200);
    if (ready <= 0) continue;
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // fails harmlessly on unix sockets
    auto conn = std::make_shared<Connection>();
    conn->fd = fd;
    std::lock_guard lock(connections_mu_);
    // Reap connections that ended.
    for (auto it = connections_.begin(); it != connections_.end();) {
      if ((*it)->finished) {
        (*it)->thread.join();
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    if (stopping_) {
      ::close(fd);
      return;
    }
    conn->thread = std::thread([this, conn] {
      conn->exp = Handshake(*conn, exports_);
      if (conn->exp) Transmission(conn, *io_);
      conn->WaitIdle();  // in-flight requests finish and reply first
      {
        std::lock_guard close_lock(conn->mu);
        ::close(conn->fd);
        conn->closed = true;
      }
      conn->finished = true;
    });
    connections_.push_back(std::move(conn));
  }
}

void NbdServer::Shutdown() {
  if (stopping_.exchange(true)) {
    return;
  }
  for (auto& t : acceptors_) t.join();
  acceptors_.clear();
  for (int fd : listen_fds_) ::close(fd);
  listen_fds_.clear();
  if (!options_.unix_socket.empty()) ::unlink(options_.unix_socket.c_str());
  std::vector<std::shared_ptr<Connection>> connections;
  {
    std::lock_guard lock(connections_mu_);
    connections.swap(connections_);
  }
  // Readers see end of stream; requests already read still complete.
  for (auto& c : connections) {
    std::lock_guard lock(c->mu);
    if (!c->closed) ::shutdown(c->fd, SHUT_RD);
  }
  for (auto& c : connections) c->thread.join();
  io_.reset();  // waits for every submitted operation
}

}  // namespace blkrep::tracker
