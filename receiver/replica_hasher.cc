#include "receiver/replica_hasher.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>

#include "core/async_io.h"
#include "core/bytes.h"
#include "core/file_block_device.h"
#include "core/hash.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::size_t kChunkBytes = 8U << 20;  // a multiple of every block size
constexpr unsigned kChunksInFlight = 4;

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

struct Chunk {
  std::unique_ptr<std::byte, FreeDeleter> buffer;
  core::AsyncOp op;
  std::uint64_t first_block = 0;
  std::size_t length = 0;
  bool done = false;
  Status status;
};

}  // namespace

ReplicaHasher::ReplicaHasher(proto::FrameWriter& writer, std::vector<Volume> volumes, std::uint32_t window_blocks,
                             core::IoBackendKind backend)
    : writer_(writer), volumes_(std::move(volumes)), window_blocks_(window_blocks), backend_(backend) {
  for (const Volume& v : volumes_) total_blocks_ += (v.size_bytes + v.block_size_bytes - 1) / v.block_size_bytes;
}

ReplicaHasher::~ReplicaHasher() { Stop(); }

void ReplicaHasher::Start() { thread_ = std::thread([this] { Run(); }); }

void ReplicaHasher::Credit(std::uint64_t consumed) {
  {
    std::lock_guard lock(mu_);
    consumed_ = consumed;
  }
  cv_.notify_all();
}

std::uint64_t ReplicaHasher::credited() const {
  std::lock_guard lock(mu_);
  return consumed_;
}

Status ReplicaHasher::Finish() {
  if (thread_.joinable()) thread_.join();
  return status_;
}

void ReplicaHasher::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::uint64_t ReplicaHasher::WaitForCredit(std::uint64_t count) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return stop_ || sent_ < consumed_ + window_blocks_; });
  if (stop_) return 0;
  return std::min(count, consumed_ + window_blocks_ - sent_);
}

void ReplicaHasher::Run() {
  for (const Volume& v : volumes_) {
    status_ = HashVolume(v);
    if (!status_.ok()) break;
  }
  if (!status_.ok() && status_.code() != core::Code::kAborted) {
    // The shipper waits for hashes: tell it why none come.
    sent_error_ = writer_.Send(proto::FrameType::kError, proto::MakeError(status_)).ok();
  }
}

Status ReplicaHasher::HashVolume(const Volume& v) {
  core::FileBlockDeviceOptions o;
  o.read_only = true;
  o.direct_io = true;
  BLKREP_ASSIGN_OR_RETURN(auto device, core::FileBlockDevice::Open(v.path, o));
  if (device->SizeBytes() < v.size_bytes) {
    return Status::OutOfRange("replica " + v.path + " has " + std::to_string(device->SizeBytes()) +
                              " bytes, the volume " + std::to_string(v.size_bytes));
  }
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::AsyncIo> io, core::MakeAsyncIo(backend_, kChunksInFlight));
  const std::uint32_t bs = v.block_size_bytes;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Chunk>> chunks;
  for (unsigned i = 0; i < kChunksInFlight; ++i) {
    auto c = std::make_unique<Chunk>();
    void* p = std::aligned_alloc(4096, kChunkBytes);
    if (p == nullptr) return Status::ResourceExhausted("cannot allocate hashing buffers");
    c->buffer.reset(static_cast<std::byte*>(p));
    chunks.push_back(std::move(c));
  }
  std::uint64_t next_offset = 0;
  std::deque<Chunk*> in_order;
  std::vector<Chunk*> free_chunks;
  for (auto& c : chunks) free_chunks.push_back(c.get());
  auto submit = [&](Chunk* c) {
    c->first_block = next_offset / bs;
    c->length = static_cast<std::size_t>(std::min<std::uint64_t>(kChunkBytes, v.size_bytes - next_offset));
    c->done = false;
    c->op = core::AsyncOp{};
    c->op.kind = core::AsyncOp::Kind::kRead;
    c->op.fd = c->length % 4096 == 0 && device->direct_fd() >= 0 ? device->direct_fd() : device->fd();
    c->op.offset_bytes = next_offset;
    c->op.buffer = c->buffer.get();
    c->op.length_bytes = c->length;
    c->op.done = [&, c](Status s) {
      {
        std::lock_guard lock(mu);
        c->status = s;
        c->done = true;
      }
      cv.notify_all();
    };
    next_offset += c->length;
    in_order.push_back(c);
    io->Submit(&c->op);
  };
  Status result;
  std::vector<core::Hash128> hashes;
  std::string payload;
  while (true) {
    while (result.ok() && !free_chunks.empty() && next_offset < v.size_bytes) {
      Chunk* c = free_chunks.back();
      free_chunks.pop_back();
      submit(c);
    }
    if (in_order.empty()) break;
    Chunk* c = in_order.front();
    in_order.pop_front();
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return c->done; });
    }
    free_chunks.push_back(c);
    if (!result.ok()) continue;  // draining
    if (!c->status.ok()) {
      result = c->status.WithContext("read replica " + v.path);
      continue;
    }
    bytes_read_ += c->length;
    const std::size_t count = (c->length + bs - 1) / bs;
    hashes.resize(count);
    core::HashBlocks(std::span<const std::byte>(c->buffer.get(), c->length), bs, hashes);
    for (std::size_t first = 0; first < count && result.ok();) {
      // As many as the credit allows now, at least one.
      std::size_t n = static_cast<std::size_t>(
          WaitForCredit(std::min<std::size_t>(count - first, proto::kMaxReplicaHashesPerFrame)));
      if (n == 0) {
        result = Status::Aborted("stopped");
        break;
      }
      payload.resize(n * proto::kReplicaHashBytes);
      for (std::size_t i = 0; i < n; ++i) {
        auto* out = reinterpret_cast<std::byte*>(payload.data()) + i * proto::kReplicaHashBytes;
        core::StoreLe64(out, hashes[first + i].low);
        core::StoreLe64(out + 8, hashes[first + i].high);
      }
      proto::ReplicaHashes m;
      m.set_volume(v.index);
      m.set_first_block(c->first_block + first);
      m.set_hashes(payload);
      result = writer_.Send(proto::FrameType::kReplicaHashes, m);
      sent_ += n;
      first += n;
    }
  }
  return result;
}

}  // namespace blkrep::receiver
