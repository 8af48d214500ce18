// NbdServer: serves a guest's volumes as NBD exports, every write tracked.
//
// Design note. One process per guest. Listeners (a unix socket, and TCP if
// asked) accept connections; each connection gets a thread that runs the
// fixed-newstyle handshake and then reads requests. Every request passes
// nbd::ValidateRequest before anything else; a WRITE, TRIM or WRITE_ZEROES
// is marked dirty in its volume's journal — which returns once that is
// durable — before it is issued to the volume (invariant 1). Reads, writes
// and flushes go to the AsyncIo engine (io_uring, or a thread pool) so many
// are in flight per connection; the engine's completion thread hands the
// replies to the connection's writer thread, so a peer that stops reading
// stalls only itself (and is hung up on after a send timeout). A connection
// holds at most kMaxInFlightBytes of requests and unsent replies.
//
// FLUSH is an fdatasync of the volume, which covers writes completed on any
// connection, so CAN_MULTI_CONN is advertised. FUA writes use RWF_DSYNC.
//
// An export may instead be a view (NbdExport::view: any core::BlockDevice,
// e.g. the copy-on-write view of a test failover): nothing is tracked, and
// every request, after the same ValidateRequest, is served synchronously on
// the connection's thread through the BlockDevice interface (FUA = a Flush
// after the write, FAST_ZERO refused with ENOTSUP, block status reports all
// data); the replies go through the same writer machinery. A view's Flush
// must cover writes completed on every connection (CAN_MULTI_CONN).
//
// With NbdExport::trace set, each write, trim and write-zeroes is also
// recorded in the trace (tracker/trace.h) right after it is marked; without
// it the cost is one null check.
//
// Thread safety: Start and Shutdown from one thread; everything else is
// internal.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/async_io.h"
#include "core/block_device.h"
#include "core/file_block_device.h"
#include "core/status.h"
#include "tracker/cycle_control.h"
#include "tracker/journal.h"
#include "tracker/trace.h"

namespace blkrep::tracker {

// Either a tracked file export (device and journal set, view null) or an
// untracked view (view set, device, journal and gate null).
struct NbdExport {
  std::string name;
  core::FileBlockDevice* device = nullptr;  // not owned
  Journal* journal = nullptr;               // not owned
  // Every write, trim and write-zeroes passes it (freezes, copy-on-write).
  // Optional; not owned.
  WriteGate* gate = nullptr;
  // Served through the BlockDevice interface, untracked. Not owned; must be
  // safe for concurrent calls (block_device.h) and outlive the server.
  core::BlockDevice* view = nullptr;
  // Optional (file exports only; not owned, must outlive the server): every
  // accepted WRITE, TRIM and WRITE_ZEROES is recorded as volume
  // `trace_volume` of it, where it is marked in the journal.
  TraceWriter* trace = nullptr;
  std::uint16_t trace_volume = 0;

  std::uint64_t SizeBytes() const { return view != nullptr ? view->SizeBytes() : device->SizeBytes(); }
};

struct NbdServerOptions {
  std::string unix_socket;   // required
  std::string tcp_listen;    // "HOST:PORT", ":PORT" or "PORT"; empty: none
  core::IoBackendKind backend = core::IoBackendKind::kAuto;
  unsigned queue_depth = 64;
};

class NbdServer {
 public:
  // Per connection: request buffers and queued replies together.
  static constexpr std::uint64_t kMaxInFlightBytes = 96ULL << 20;
  static constexpr std::size_t kMaxConnections = 256;

  NbdServer(std::vector<NbdExport> exports, NbdServerOptions options);
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Binds the listeners and starts accepting.
  core::Status Start();
  // Stops accepting, lets every connection finish its in-flight requests,
  // closes them and joins every thread.
  void Shutdown();

  std::string_view io_engine() const;
  std::string tcp_address() const { return tcp_address_; }

  struct Connection;  // defined in the .cc

 private:
  void AcceptLoop(int listen_fd);

  std::vector<NbdExport> exports_;
  NbdServerOptions options_;
  std::unique_ptr<core::AsyncIo> io_;
  std::vector<int> listen_fds_;
  std::vector<std::thread> acceptors_;
  std::atomic<bool> stopping_ = false;
  std::mutex connections_mu_;
  std::vector<std::shared_ptr<Connection>> connections_;  // GUARDED_BY(connections_mu_)
  std::string tcp_address_;
  bool socket_bound_ = false;
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
};

}  // namespace blkrep::tracker
