#include "tracker/nbd_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>

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
  // What one request may hold while in flight, beyond its data: the
  // Pending record, the reply header, the allocator's rounding.
  static constexpr std::uint64_t kRequestOverheadBytes = 4096 + 512;
  static constexpr std::uint64_t kMaxInFlightRequests = 1024;

  int fd = -1;
  std::thread thread;
  std::mutex mu;  // guards everything below
  std::condition_variable cv;       // in-flight accounting
  std::condition_variable send_cv;  // the send queue
  std::uint64_t in_flight_bytes = 0;
  std::uint64_t in_flight = 0;
  struct Reply {
    std::vector<std::byte> header;
    Buffer data;
    std::size_t data_bytes = 0;
    std::uint64_t cost = 0;
    std::size_t sent_bytes = 0;  // of header + data, when a send was partial
  };
  std::deque<Reply> send_queue;
  bool sending = false;  // one thread at a time writes to the socket
  bool writer_stop = false;
  bool dead = false;  // sending failed: replies are dropped
  bool closed = false;
  std::thread writer;
  std::atomic<bool> finished = false;
  // Negotiated.
  bool structured = false;
  bool no_zeroes = false;
  bool base_allocation = false;
  const NbdExport* exp = nullptr;

  static std::uint64_t Cost(std::uint64_t data_bytes) {
    return std::max<std::uint64_t>(data_bytes, 4096) + kRequestOverheadBytes;
  }
  // Waits until a request costing `cost` may be in flight; the cost is
  // held until its reply was sent (or dropped).
  void Reserve(std::uint64_t cost) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] {
      return in_flight == 0 ||
             (in_flight_bytes + cost <= kMaxInFlightBytes && in_flight < kMaxInFlightRequests);
    });
    in_flight_bytes += cost;
    ++in_flight;
  }
  void ReleaseLocked(std::uint64_t cost) {
    in_flight_bytes -= cost;
    --in_flight;
    cv.notify_all();
  }
  void Release(std::uint64_t cost) {
    std::lock_guard lock(mu);
    ReleaseLocked(cost);
  }
  void WaitIdle() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
  }
  // Sends what is left of `reply`: blocking, or (dont_wait) only what the
  // socket takes now. Returns false on a broken or stalled peer.
  static bool SendReply(int fd, Reply& reply, bool dont_wait, bool* complete) {
    for (;;) {
      std::size_t total = reply.header.size() + reply.data_bytes;
      if (reply.sent_bytes == total) {
        *complete = true;
        return true;
      }
      struct iovec iov[2];
      int count = 0;
      std::size_t at = reply.sent_bytes;
      if (at < reply.header.size()) {
        iov[count++] = {reply.header.data() + at, reply.header.size() - at};
        at = 0;
      } else {
        at -= reply.header.size();
      }
      if (reply.data_bytes > at) iov[count++] = {reply.data.get() + at, reply.data_bytes - at};
      struct msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<std::size_t>(count);
      ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | (dont_wait ? MSG_DONTWAIT : 0));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN && dont_wait) {
        *complete = false;
        return true;
      }
      if (n <= 0) return false;  // includes the send timeout (EAGAIN when blocking)
      reply.sent_bytes += static_cast<std::size_t>(n);
    }
  }
  // REQUIRES mu. The peer is gone or stopped reading: hang up, and drop what
  // is queued so the reader and shutdown can finish.
  void KillLocked() {
    if (dead) return;
    dead = true;
    ::shutdown(fd, SHUT_RDWR);
    while (!send_queue.empty()) {
      ReleaseLocked(send_queue.front().cost);
      send_queue.pop_front();
    }
  }
  // Never blocks on the socket. Called from the reader and from I/O
  // completion threads: when nothing is queued it sends what the socket
  // takes at once; the rest goes to the connection's writer thread.
  void Enqueue(Reply reply) {
    std::unique_lock lock(mu);
    if (dead) {
      ReleaseLocked(reply.cost);
      return;
    }
    if (sending || !send_queue.empty()) {
      send_queue.push_back(std::move(reply));
      send_cv.notify_one();
      return;
    }
    sending = true;
    lock.unlock();
    bool complete = false;
    bool ok = SendReply(fd, reply, /*dont_wait=*/true, &complete);
    if (complete) reply.data.reset();
    lock.lock();
    sending = false;
    if (!ok) {
      KillLocked();
      ReleaseLocked(reply.cost);
    } else if (complete) {
      ReleaseLocked(reply.cost);
    } else {
      send_queue.push_front(std::move(reply));  // first in line: order kept
    }
    // Wake the writer only when it has work (or is being stopped): a wake-up
    // per reply cost a context switch per request.
    if (!send_queue.empty() || writer_stop) send_cv.notify_one();
  }
  void Writer() {
    std::unique_lock lock(mu);
    for (;;) {
      send_cv.wait(lock, [&] { return (writer_stop && !sending) || (!send_queue.empty() && !sending); });
      if (send_queue.empty()) return;
      Reply reply = std::move(send_queue.front());
      send_queue.pop_front();
      sending = true;
      lock.unlock();
      bool complete = false;
      bool ok = SendReply(fd, reply, /*dont_wait=*/false, &complete);
      reply.data.reset();
      lock.lock();
      sending = false;
      if (!ok) KillLocked();
      ReleaseLocked(reply.cost);
      send_cv.notify_all();
    }
  }
  void StartWriter() { writer = std::thread([this] { Writer(); }); }
  void StopWriter() {
    {
      std::lock_guard lock(mu);
      writer_stop = true;
    }
    send_cv.notify_all();
    if (writer.joinable()) writer.join();
  }

  void SendError(const nbd::Request& r, std::uint32_t error, const std::string& why, std::uint64_t cost) {
    Reply reply;
    if (structured) nbd::AppendErrorChunk(reply.header, r.cookie, error, why);
    else nbd::AppendSimpleReply(reply.header, error, r.cookie);
    reply.cost = cost;
    Enqueue(std::move(reply));
  }
  // The successful reply to a READ, carrying its `r.length` bytes.
  void SendData(const nbd::Request& r, Buffer data, std::uint64_t cost) {
    Reply reply;
    if (structured) {
      nbd::AppendChunkHeader(reply.header, nbd::kReplyFlagDone, nbd::kReplyTypeOffsetData, r.cookie,
                             r.length + 8);
      nbd::PutU64(reply.header, r.offset);
    } else {
      nbd::AppendSimpleReply(reply.header, 0, r.cookie);
    }
    reply.data = std::move(data);
    reply.data_bytes = r.length;
    reply.cost = cost;
    Enqueue(std::move(reply));
  }
  void SendOk(const nbd::Request& r, std::uint64_t cost) {
    Reply reply;
    if (structured) nbd::AppendChunkHeader(reply.header, nbd::kReplyFlagDone, nbd::kReplyTypeNone, r.cookie, 0);
    else nbd::AppendSimpleReply(reply.header, 0, r.cookie);
    reply.cost = cost;
    Enqueue(std::move(reply));
  }
};

namespace {

// One request handed to the I/O engine.
struct Pending {
  core::AsyncOp op;
  std::shared_ptr<NbdServer::Connection> conn;
  nbd::Request request;
  Buffer buffer;
  std::uint64_t cost = 0;
  WriteGate* gate = nullptr;  // a write that entered it: Exit when done
};

// Holds a write, trim or write-zeroes inside the export's gate.
class GateScope {
 public:
  GateScope(WriteGate* gate, std::uint64_t offset, std::uint64_t length) : gate_(gate) {
    if (gate_) gate_->Enter(offset, length);
  }
  ~GateScope() {
    if (gate_) gate_->Exit();
  }
  GateScope(const GateScope&) = delete;
  GateScope& operator=(const GateScope&) = delete;

 private:
  WriteGate* gate_;
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
      // EXPORT_NAME has no error reply; a huge option is not worth draining.
      if (option == nbd::kOptExportName || length > (1U << 20) || !Drain(c.fd, length)) return nullptr;
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
        nbd::PutU64(info, e->SizeBytes());
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
        nbd::PutU64(info, e->SizeBytes());
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
        // SET replaces the selection, even when it fails.
        if (option == nbd::kOptSetMetaContext) c.base_allocation = false;
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
          // LIST answers with id 0 (the spec's SHOULD); SET with the real id.
          nbd::PutU32(data, option == nbd::kOptSetMetaContext ? nbd::kBaseAllocationContextId : 0);
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

// TRIM: punch a hole in a file, BLKDISCARD on a device; storage that cannot
// discard ignores the hint.
Status Discard(int fd, bool is_block_device, std::uint64_t offset, std::uint64_t length) {
  int rc;
  if (is_block_device) {
    std::uint64_t range[2] = {offset, length};
    rc = ::ioctl(fd, BLKDISCARD, range);
  } else {
    rc = ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                     static_cast<off_t>(length));
  }
  if (rc == 0 || errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL) return Status::Ok();
  return core::ErrnoStatus(errno, "discard");
}

// FAST_ZERO: zero with the file system's range operations only; kUnsupported
// (nothing written) where that would mean writing zeroes.
Status FastZero(int fd, bool is_block_device, std::uint64_t offset, std::uint64_t length, bool may_unmap) {
  if (is_block_device) return Status::Unsupported("a block device may zero by writing");
  off_t at = static_cast<off_t>(offset), n = static_cast<off_t>(length);
  if (may_unmap && ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, n) == 0) return Status::Ok();
  if (::fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, at, n) == 0) return Status::Ok();
  if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
    return Status::Unsupported("the volume's file system cannot zero ranges quickly");
  }
  return core::ErrnoStatus(errno, "zero range");
}

enum class NextRequest { kStop, kAnswered, kServe };

// Reads the next request and validates it (nbd::ValidateRequest) before
// anything else; an invalid one is answered here. kStop: the client is gone
// or disconnected. A request to serve has its cost reserved: every reply
// is accounted for until it is sent, so a client that does not read its
// replies runs into the in-flight cap, not our memory.
NextRequest ReadRequest(NbdServer::Connection& c, const nbd::ExportLimits& limits, nbd::Request& r,
                        std::uint64_t& cost) {
  std::byte header[nbd::kRequestHeaderBytes];
  if (!ReadFull(c.fd, header, sizeof(header))) return NextRequest::kStop;  // client gone
  r = nbd::DecodeRequest(header);
  nbd::Verdict v = nbd::ValidateRequest(r, limits);
  if (v.kind == nbd::Verdict::Kind::kDisconnect) return NextRequest::kStop;
  if (r.type == nbd::kCmdDisc && v.kind == nbd::Verdict::Kind::kOk) return NextRequest::kStop;
  cost = NbdServer::Connection::Cost(v.kind == nbd::Verdict::Kind::kOk && r.type != nbd::kCmdBlockStatus ? r.length
                                                                                                        : 0);
  c.Reserve(cost);
  if (v.kind == nbd::Verdict::Kind::kError) {
    if (v.payload_bytes > 0 && !Drain(c.fd, v.payload_bytes)) {
      c.Release(cost);
      return NextRequest::kStop;
    }
    c.SendError(r, v.error, v.why, cost);
    return NextRequest::kAnswered;
  }
  return NextRequest::kServe;
}

// The transmission phase of a view export (NbdExport::view): every request
// served synchronously through the BlockDevice interface, in order.
void ViewTransmission(NbdServer::Connection& c) {
  const NbdExport& e = *c.exp;
  core::BlockDevice& view = *e.view;
  nbd::ExportLimits limits{view.SizeBytes(), false, c.structured, c.base_allocation};
  for (;;) {
    nbd::Request r;
    std::uint64_t cost = 0;
    const NextRequest next = ReadRequest(c, limits, r, cost);
    if (next == NextRequest::kStop) return;
    if (next == NextRequest::kAnswered) continue;
    const bool fua = r.flags & nbd::kCmdFlagFua;
    Status s;
    switch (r.type) {
      case nbd::kCmdRead: {
        Buffer buffer = AllocateBuffer(r.length);
        if (!buffer) {
          c.SendError(r, nbd::kEnomem, "out of memory", cost);
          continue;
        }
        s = view.Read(r.offset, {buffer.get(), r.length});
        if (s.ok()) {
          c.SendData(r, std::move(buffer), cost);
          continue;
        }
        break;
      }
      case nbd::kCmdWrite: {
        Buffer buffer = AllocateBuffer(r.length);
        if (!buffer) {
          if (!Drain(c.fd, r.length)) {
            c.Release(cost);
            return;
          }
          c.SendError(r, nbd::kEnomem, "out of memory", cost);
          continue;
        }
        if (!ReadFull(c.fd, buffer.get(), r.length)) {
          c.Release(cost);
          return;  // the client vanished mid-request: nothing was written
        }
        s = view.Write(r.offset, {buffer.get(), r.length});
        if (s.ok() && fua) s = view.Flush();
        break;
      }
      case nbd::kCmdFlush:
        s = view.Flush();
        break;
      case nbd::kCmdTrim:
        s = view.Trim(r.offset, r.length);
        if (s.ok() && fua) s = view.Flush();
        break;
      case nbd::kCmdWriteZeroes:
        if (r.flags & nbd::kCmdFlagFastZero) {
          c.SendError(r, nbd::kEnotsup, "this export cannot zero ranges quickly", cost);
          continue;
        }
        s = view.WriteZeroes(r.offset, r.length, !(r.flags & nbd::kCmdFlagNoHole));
        if (s.ok() && fua) s = view.Flush();
        break;
      case nbd::kCmdBlockStatus: {
        // A view does not know its holes: one descriptor, "data", always true.
        NbdServer::Connection::Reply reply;
        nbd::AppendChunkHeader(reply.header, nbd::kReplyFlagDone, nbd::kReplyTypeBlockStatus, r.cookie, 4 + 8);
        nbd::PutU32(reply.header, nbd::kBaseAllocationContextId);
        nbd::PutU32(reply.header, r.length);
        nbd::PutU32(reply.header, 0);
        reply.cost = cost;
        c.Enqueue(std::move(reply));
        continue;
      }
      default:
        s = Status::Internal("request type " + std::to_string(r.type) + " passed validation unhandled");
        break;
    }
    if (s.ok()) c.SendOk(r, cost);
    else c.SendError(r, ErrorOf(s), s.ToString(), cost);
  }
}

void Transmission(const std::shared_ptr<NbdServer::Connection>& conn, core::AsyncIo& io) {
  NbdServer::Connection& c = *conn;
  const NbdExport& e = *c.exp;
  if (e.view != nullptr) {
    ViewTransmission(c);
    return;
  }
  nbd::ExportLimits limits{e.device->SizeBytes(), false, c.structured, c.base_allocation};
  int volume_fd = e.device->fd();
  bool is_block_device = e.device->is_block_device();
  bool fast_zero_unsupported = false;
  for (;;) {
    nbd::Request r;
    std::uint64_t cost = 0;
    const NextRequest next = ReadRequest(c, limits, r, cost);
    if (next == NextRequest::kStop) return;
    if (next == NextRequest::kAnswered) continue;
    switch (r.type) {
      case nbd::kCmdRead:
      case nbd::kCmdWrite:
      case nbd::kCmdFlush: {
        auto p = std::make_unique<Pending>();
        p->conn = conn;
        p->request = r;
        p->cost = cost;
        if (r.type != nbd::kCmdFlush) {
          p->buffer = AllocateBuffer(r.length);
          if (!p->buffer) {
            if (r.type == nbd::kCmdWrite && !Drain(c.fd, r.length)) {
              c.Release(cost);
              return;
            }
            c.SendError(r, nbd::kEnomem, "out of memory", cost);
            continue;
          }
        }
        p->op.fd = volume_fd;
        p->op.offset_bytes = r.offset;
        p->op.buffer = p->buffer.get();
        p->op.length_bytes = r.length;
        if (r.type == nbd::kCmdWrite) {
          if (!ReadFull(c.fd, p->buffer.get(), r.length)) {
            c.Release(cost);
            return;  // the client vanished mid-request: nothing was written
          }
          // Inside the gate before it is marked: a freeze waits for it.
          if (e.gate) {
            e.gate->Enter(r.offset, r.length);
            p->gate = e.gate;
          }
          // Invariant 1: durable in the journal before it reaches the volume.
          (void)e.journal->MarkDirty(r.offset, r.length);
          if (e.trace != nullptr) e.trace->Record(e.trace_volume, TraceOp::kWrite, r.offset, r.length);
          p->op.kind = core::AsyncOp::Kind::kWrite;
          p->op.dsync = r.flags & nbd::kCmdFlagFua;
        } else if (r.type == nbd::kCmdRead) {
          // Cached data is served inline: RWF_NOWAIT reads only from the
          // page cache and fails with EAGAIN instead of waiting for the
          // disk; then the read goes to the engine.
          struct iovec iov{p->buffer.get(), r.length};
          ssize_t got = ::preadv2(volume_fd, &iov, 1, static_cast<off_t>(r.offset), RWF_NOWAIT);
          if (got == static_cast<ssize_t>(r.length)) {
            c.SendData(r, std::move(p->buffer), cost);
            break;
          }
          p->op.kind = core::AsyncOp::Kind::kRead;
        } else {
          p->op.kind = core::AsyncOp::Kind::kDataSync;
        }
        Pending* raw = p.release();
        raw->op.done = [raw](Status s) {
          std::unique_ptr<Pending> owned(raw);
          if (owned->gate) owned->gate->Exit();
          auto conn_ref = owned->conn;  // keeps the connection alive for the reply
          NbdServer::Connection& cc = *conn_ref;
          const nbd::Request rq = owned->request;
          if (!s.ok()) {
            cc.SendError(rq, ErrorOf(s), s.ToString(), owned->cost);
          } else if (rq.type == nbd::kCmdRead) {
            cc.SendData(rq, std::move(owned->buffer), owned->cost);
          } else {
            cc.SendOk(rq, owned->cost);
          }
        };
        io.Submit(&raw->op);
        break;
      }
      case nbd::kCmdTrim: {
        // A hint: discard what the storage can discard cheaply, never write
        // zeroes for it. Tracked like a write all the same.
        GateScope gated(e.gate, r.offset, r.length);
        (void)e.journal->MarkDirty(r.offset, r.length);
        if (e.trace != nullptr) e.trace->Record(e.trace_volume, TraceOp::kTrim, r.offset, r.length);
        Status s = Discard(volume_fd, is_block_device, r.offset, r.length);
        if (s.ok() && (r.flags & nbd::kCmdFlagFua)) s = e.device->Flush();
        if (s.ok()) c.SendOk(r, cost);
        else c.SendError(r, ErrorOf(s), s.ToString(), cost);
        break;
      }
      case nbd::kCmdWriteZeroes: {
        bool fast = r.flags & nbd::kCmdFlagFastZero;
        bool may_unmap = !(r.flags & nbd::kCmdFlagNoHole);
        if (fast && (is_block_device || fast_zero_unsupported)) {
          // Known to be refused: refuse before anything is marked.
          c.SendError(r, nbd::kEnotsup, "the volume cannot zero ranges quickly", cost);
          continue;
        }
        GateScope gated(e.gate, r.offset, r.length);
        (void)e.journal->MarkDirty(r.offset, r.length);
        if (e.trace != nullptr) e.trace->Record(e.trace_volume, TraceOp::kWriteZeroes, r.offset, r.length);
        Status s = fast ? FastZero(volume_fd, is_block_device, r.offset, r.length, may_unmap)
                        : e.device->WriteZeroes(r.offset, r.length, may_unmap);
        if (fast && s.code() == core::Code::kUnsupported) {
          fast_zero_unsupported = true;  // later ones are refused before marking
          c.SendError(r, nbd::kEnotsup, s.message(), cost);  // nothing was written
          continue;
        }
        if (s.ok() && (r.flags & nbd::kCmdFlagFua)) s = e.device->Flush();
        if (s.ok()) c.SendOk(r, cost);
        else c.SendError(r, ErrorOf(s), s.ToString(), cost);
        break;
      }
      case nbd::kCmdBlockStatus: {
        auto descriptors = BlockStatus(volume_fd, r.offset, r.length, r.flags & nbd::kCmdFlagReqOne);
        NbdServer::Connection::Reply reply;
        nbd::AppendChunkHeader(reply.header, nbd::kReplyFlagDone, nbd::kReplyTypeBlockStatus, r.cookie,
                               static_cast<std::uint32_t>(4 + 8 * descriptors.size()));
        nbd::PutU32(reply.header, nbd::kBaseAllocationContextId);
        for (auto [len, flags] : descriptors) {
          nbd::PutU32(reply.header, len);
          nbd::PutU32(reply.header, flags);
        }
        reply.cost = cost;
        c.Enqueue(std::move(reply));
        break;
      }
    }
  }
}

Status ListenUnix(const std::string& path, int* fd_out, dev_t* dev, ino_t* ino) {
  struct sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path is too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::InvalidArgument("--nbd-socket " + path + " exists and is not a socket");
    }
    // A stale socket of a dead process, or a live server?
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    int saved = errno;
    ::close(probe);
    if (rc == 0) return Status::Aborted("socket " + path + " is in use by a running server");
    if (saved != ECONNREFUSED) return core::ErrnoStatus(saved, "probe socket " + path);
    ::unlink(path.c_str());
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core::ErrnoStatus(errno, "socket");
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 64) != 0 ||
      ::lstat(path.c_str(), &st) != 0) {
    int saved = errno;
    ::close(fd);
    return core::ErrnoStatus(saved, "listen on " + path);
  }
  *dev = st.st_dev;
  *ino = st.st_ino;
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
  BLKREP_RETURN_IF_ERROR(ListenUnix(options_.unix_socket, &fd, &socket_dev_, &socket_ino_));
  socket_bound_ = true;
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
    // A peer that stops reading for this long is hung up on.
    timeval send_timeout{30, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
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
    if (stopping_ || connections_.size() >= kMaxConnections) {
      ::close(fd);
      if (stopping_) return;
      continue;
    }
    conn->thread = std::thread([this, conn] {
      conn->exp = Handshake(*conn, exports_);
      if (conn->exp) {
        conn->StartWriter();
        Transmission(conn, *io_);
        conn->WaitIdle();  // in-flight requests finish and their replies go out
        conn->StopWriter();
      }
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
  // Only the socket this server bound, if it is still the one at the path.
  struct stat st{};
  if (socket_bound_ && ::lstat(options_.unix_socket.c_str(), &st) == 0 &&
      st.st_dev == socket_dev_ && st.st_ino == socket_ino_) {
    ::unlink(options_.unix_socket.c_str());
  }
  std::vector<std::shared_ptr<Connection>> connections;
  {
    std::lock_guard lock(connections_mu_);
    connections.swap(connections_);
  }
  // Readers see end of stream; requests already read still complete and
  // are answered.
  for (auto& c : connections) {
    std::lock_guard lock(c->mu);
    if (!c->closed) ::shutdown(c->fd, SHUT_RD);
  }
  // A peer that does not take its replies must not hold the shutdown: after
  // a grace period its connection is cut both ways.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (auto& c : connections) {
    while (!c->finished && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  for (auto& c : connections) {
    std::lock_guard lock(c->mu);
    if (!c->closed) ::shutdown(c->fd, SHUT_RDWR);
  }
  for (auto& c : connections) c->thread.join();
  io_.reset();  // waits for every submitted operation
}

}  // namespace blkrep::tracker
