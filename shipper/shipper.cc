#include "shipper/shipper.h"

#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <variant>

#include "core/async_io.h"
#include "core/bytes.h"
#include "core/file_block_device.h"
#include "core/hash.h"
#include "shipper/zero_block.h"

namespace blkrep::shipper {

using core::Result;
using core::Status;
using proto::FrameType;
using Clock = std::chrono::steady_clock;

namespace {

// Batches between two decisions of adaptive compression.
constexpr unsigned kAdaptWindowBatches = 8;

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

struct OutFrame {
  FrameType type;
  std::variant<proto::Blocks, proto::Zeroes, proto::Keep> message;
  // BLOCKS: the payload, in the batch's read buffer or its compression
  // buffer (sent from there by FrameWriter::SendBlocks, not copied).
  std::span<const std::byte> payload;
};

struct Batch {
  std::uint32_t volume = 0;
  std::uint64_t first_block = 0;
  std::uint32_t block_count = 0;
  std::size_t raw_length = 0;
  std::unique_ptr<std::byte, FreeDeleter> buffer;
  core::AsyncOp op;
  Status status;
  std::vector<OutFrame> frames;
  std::vector<std::byte> compressed;  // the batch's zstd frames, back to back
  std::uint32_t matched = 0;                // resync, verify: blocks equal to the replica's
  std::vector<std::uint64_t> mismatches;    // verify: blocks that differ
};

// Walks the frozen blocks of every volume as batches: runs of set bits, cut
// at the batch size.
class BatchCursor {
 public:
  BatchCursor(const std::vector<VolumeSource>& volumes, std::uint32_t batch_bytes)
      : volumes_(volumes), batch_bytes_(batch_bytes) {}

  // Fills `b`'s position; false when every block was handed out.
  bool Next(Batch& b) {
    while (volume_ < volumes_.size()) {
      const VolumeSource& v = volumes_[volume_];
      const tracker::DirtyBitmap& bits = v.blocks;
      std::uint64_t n = bits.block_count();
      // Skip clear words quickly.
      while (block_ < n) {
        std::uint64_t w = bits.Word(block_);
        if (w == 0) {
          block_ += 64;
          continue;
        }
        block_ += static_cast<std::uint64_t>(__builtin_ctzll(w));
        break;
      }
      if (block_ >= n) {
        ++volume_;
        block_ = 0;
        continue;
      }
      std::uint64_t max_blocks = std::max<std::uint64_t>(1, batch_bytes_ / v.block_size_bytes);
      std::uint64_t end = block_;
      while (end < n && end - block_ < max_blocks && bits.Test(end)) ++end;
      b.volume = static_cast<std::uint32_t>(volume_);
      b.first_block = block_;
      b.block_count = static_cast<std::uint32_t>(end - block_);
      b.raw_length = RawLength(v, block_, end - block_);
      block_ = end;
      return true;
    }
    return false;
  }

  static std::size_t RawLength(const VolumeSource& v, std::uint64_t first, std::uint64_t count) {
    std::uint64_t start = first * v.block_size_bytes;
    std::uint64_t end = std::min<std::uint64_t>((first + count) * v.block_size_bytes, v.size_bytes);
    return static_cast<std::size_t>(end - start);
  }

 private:
  const std::vector<VolumeSource>& volumes_;
  const std::uint32_t batch_bytes_;
  std::size_t volume_ = 0;
  std::uint64_t block_ = 0;
};

// The replica's block hashes of a resync or verify cycle, as they arrive:
// a ring of `window` entries indexed by the block's position in the cycle
// (volumes in HELLO order, one after another). The receiver may only send
// positions below granted + window (HASH_CREDIT), and the shipper grants
// only positions no batch needs any more, so an entry is never overwritten
// while in use.
class HashWindow {
 public:
  HashWindow(const std::vector<VolumeSource>& volumes, std::uint32_t window) : ring_(window) {
    for (const VolumeSource& v : volumes) {
      offsets_.push_back(total_);
      total_ += v.blocks.block_count();
    }
  }
  std::uint64_t total() const { return total_; }
  std::uint64_t Position(std::uint32_t volume, std::uint64_t block) const { return offsets_[volume] + block; }

  // Reader thread: takes one REPLICA_HASHES frame, which must continue the
  // sequence and respect the credit.
  Status Put(const proto::ReplicaHashes& m) {
    const std::uint64_t count = m.hashes().size() / proto::kReplicaHashBytes;
    std::unique_lock lock(mu_);
    const std::uint64_t pos = received_;
    std::uint32_t volume = 0;
    while (volume + 1 < offsets_.size() && pos >= offsets_[volume + 1]) ++volume;
    const std::uint64_t block = pos - offsets_[volume];
    if (m.volume() != volume || m.first_block() != block) {
      return Status::Corruption("REPLICA_HASHES frame: volume " + std::to_string(m.volume()) + " block " +
                                std::to_string(m.first_block()) + ", expected volume " + std::to_string(volume) +
                                " block " + std::to_string(block));
    }
    const std::uint64_t volume_end = volume + 1 < offsets_.size() ? offsets_[volume + 1] : total_;
    if (count > volume_end - pos || pos + count > granted_ + ring_.size()) {
      return Status::Corruption("REPLICA_HASHES frame: blocks [" + std::to_string(block) + ", +" +
                                std::to_string(count) + ") go past the volume or the hash window");
    }
    const auto* bytes = reinterpret_cast<const std::byte*>(m.hashes().data());
    for (std::uint64_t i = 0; i < count; ++i) {
      core::Hash128& h = ring_[(pos + i) % ring_.size()];
      h.low = core::LoadLe64(bytes + i * proto::kReplicaHashBytes);
      h.high = core::LoadLe64(bytes + i * proto::kReplicaHashBytes + 8);
    }
    received_ = pos + count;
    lock.unlock();
    cv_.notify_all();
    return Status::Ok();
  }
  bool complete() const {
    std::lock_guard lock(mu_);
    return received_ == total_;
  }
  void Fail(const Status& s) {
    {
      std::lock_guard lock(mu_);
      if (status_.ok()) status_ = s;
    }
    cv_.notify_all();
  }
  // Workers: waits until positions below `end` arrived, or a failure.
  // Waits until positions below `end` arrived, a failure, or `cancel`.
  Status Wait(std::uint64_t end, const std::atomic<bool>* cancel = nullptr) {
    std::unique_lock lock(mu_);
    while (received_ < end && status_.ok()) {
      if (cancel != nullptr && cancel->load()) return Status::Aborted("cancelled");
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
    return received_ >= end ? Status::Ok() : status_;
  }
  // REQUIRES: Wait covered `pos` and it was not granted away.
  core::Hash128 Get(std::uint64_t pos) const { return ring_[pos % ring_.size()]; }
  // Sending thread: positions below `consumed` are no longer needed.
  void Grant(std::uint64_t consumed) {
    std::lock_guard lock(mu_);
    granted_ = consumed;
  }

 private:
  std::vector<std::uint64_t> offsets_;
  std::uint64_t total_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<core::Hash128> ring_;  // GUARDED_BY(mu_) for writes; see Get
  std::uint64_t received_ = 0;       // GUARDED_BY(mu_)
  std::uint64_t granted_ = 0;        // GUARDED_BY(mu_)
  Status status_;                    // GUARDED_BY(mu_)
};

enum class Kind { kZero, kKeep, kData, kMatch };

// What a worker needs to compare a batch with the replica.
struct Compare {
  proto::CycleMode mode = proto::CYCLE_MODE_UNSPECIFIED;
  HashWindow* window = nullptr;  // null: the cycle does not compare
  const std::atomic<bool>* cancel = nullptr;
};

// Turns one read batch into frames. Runs on a worker thread.
void ProcessBatch(Batch& b, const VolumeSource& v, const std::unordered_map<std::uint64_t, std::uint64_t>& staged,
                  int zstd_level, ZSTD_CCtx* cctx, const Compare& compare) {
  const std::size_t bs = v.block_size_bytes;
  std::byte* data = b.buffer.get();
  auto block_span = [&](std::uint32_t i) {
    std::size_t begin = std::size_t{i} * bs;
    return std::span<std::byte>(data + begin, std::min(bs, b.raw_length - begin));
  };
  // The frozen image: a block the guest overwrote since the freeze comes
  // from its preserved copy (see tracker/cow_store.h for why checking after
  // the read is enough).
  if (v.cow) {
    for (std::uint32_t i = 0; i < b.block_count; ++i) {
      Result<bool> preserved = v.cow->ReadPreserved(b.first_block + i, block_span(i));
      if (!preserved.ok()) {
        b.status = preserved.status();
        return;
      }
    }
  }
  std::vector<Kind> kinds(b.block_count);
  std::vector<std::uint64_t> hashes(b.block_count);
  std::uint64_t position = 0;
  if (compare.window != nullptr) {
    position = compare.window->Position(b.volume, b.first_block);
    Status arrived = compare.window->Wait(position + b.block_count, compare.cancel);
    if (!arrived.ok()) {
      b.status = arrived;
      return;
    }
  }
  for (std::uint32_t i = 0; i < b.block_count; ++i) {
    std::span<std::byte> blk = block_span(i);
    if (compare.window != nullptr) {
      const bool same = core::Xxh3_128(blk) == compare.window->Get(position + i);
      if (compare.mode == proto::CYCLE_MODE_VERIFY) {
        kinds[i] = Kind::kMatch;
        if (!same) b.mismatches.push_back(b.first_block + i);
        continue;
      }
      if (same) {
        kinds[i] = Kind::kMatch;
        continue;
      }
    }
    if (IsZeroBlock(blk)) {
      kinds[i] = Kind::kZero;
      continue;
    }
    hashes[i] = core::Xxh3_64(blk);
    auto it = staged.find(b.first_block + i);
    kinds[i] = it != staged.end() && it->second == hashes[i] ? Kind::kKeep : Kind::kData;
  }
  // Room for every run's zstd frame, sized before any payload span points
  // into it: the runs' ZSTD_compressBound add up to at most the batch's
  // plus 64 bytes per run.
  std::size_t compressed_used = 0;
  if (zstd_level != 0) b.compressed.resize(ZSTD_compressBound(b.raw_length) + std::size_t{b.block_count} * 64);
  for (std::uint32_t i = 0; i < b.block_count;) {
    std::uint32_t j = i;
    while (j < b.block_count && kinds[j] == kinds[i]) ++j;
    std::uint64_t first = b.first_block + i;
    if (kinds[i] == Kind::kMatch) {
      b.matched += j - i;
    } else if (kinds[i] == Kind::kZero) {
      proto::Zeroes z;
      z.set_volume(b.volume);
      z.set_first_block(first);
      z.set_block_count(j - i);
      b.frames.push_back({FrameType::kZeroes, std::move(z), {}});
    } else if (kinds[i] == Kind::kKeep) {
      proto::Keep k;
      k.set_volume(b.volume);
      k.set_first_block(first);
      for (std::uint32_t x = i; x < j; ++x) k.add_hashes(hashes[x]);
      b.frames.push_back({FrameType::kKeep, std::move(k), {}});
    } else {
      proto::Blocks m;
      m.set_volume(b.volume);
      m.set_first_block(first);
      m.set_block_count(j - i);
      std::size_t begin = std::size_t{i} * bs;
      std::size_t length = std::min(std::size_t{j} * bs, b.raw_length) - begin;
      m.set_raw_length(static_cast<std::uint32_t>(length));
      for (std::uint32_t x = i; x < j; ++x) m.add_hashes(hashes[x]);
      std::span<const std::byte> payload(data + begin, length);
      m.set_compression(proto::COMPRESSION_NONE);
      if (zstd_level != 0) {
        std::size_t bound = ZSTD_compressBound(length);
        std::byte* out = b.compressed.data() + compressed_used;
        std::size_t n = ZSTD_compressCCtx(cctx, out, bound, data + begin, length, zstd_level);
        // Keep it only if it saves something worth the receiver's time.
        if (!ZSTD_isError(n) && n < length - length / 32) {
          payload = std::span<const std::byte>(out, n);
          compressed_used += n;
          m.set_compression(proto::COMPRESSION_ZSTD);
        }
      }
      b.frames.push_back({FrameType::kBlocks, std::move(m), payload});
    }
    i = j;
  }
  if (v.cow) v.cow->MarkShipped(b.first_block, b.block_count);
}

}  // namespace

Result<ReceiverState> ShipperSession::Hello(const std::string& guest, const std::string& job,
                                            const std::vector<proto::VolumeInfo>& volumes) {
  proto::Hello hello;
  hello.set_protocol_version(proto::kProtocolVersion);
  hello.set_min_protocol_version(proto::kProtocolVersion);
  hello.set_feature_flags(proto::kKnownFeatures);
  hello.set_guest(guest);
  hello.set_job(job);
  for (const proto::VolumeInfo& v : volumes) *hello.add_volumes() = v;
  Status sent = writer_.Send(FrameType::kHello, hello);
  if (!sent.ok()) return PeerError(sent);
  session_.volumes = volumes;
  BLKREP_ASSIGN_OR_RETURN(proto::Message reply, proto::ReadMessage(reader_, session_, {FrameType::kHelloReply}));
  ReceiverState state;
  const proto::HelloReply& r = std::get<proto::HelloReply>(reply);
  features_ = r.feature_flags();
  state.volumes.assign(r.volumes().begin(), r.volumes().end());
  state.staged.resize(volumes.size());
  // What the receiver announced bounds what it may send (invariant 8).
  std::uint64_t announced = 0;
  for (const proto::ReplicaState& v : state.volumes) announced += v.staged_blocks();
  std::uint64_t total = 0;
  for (;;) {
    BLKREP_ASSIGN_OR_RETURN(proto::Message m, proto::ReadMessage(reader_, session_, {FrameType::kStagedHashes,
                                                                                     FrameType::kStagedEnd}));
    if (auto* end = std::get_if<proto::StagedEnd>(&m)) {
      if (end->total_blocks() != total) {
        return Status::Corruption("STAGED_END frame: " + std::to_string(end->total_blocks()) + " blocks announced, " +
                                  std::to_string(total) + " received");
      }
      break;
    }
    const proto::StagedHashes& h = std::get<proto::StagedHashes>(m);
    auto& map = state.staged[h.volume()];
    for (int i = 0; i < h.hashes_size(); ++i) map[h.first_block() + static_cast<std::uint64_t>(i)] = h.hashes(i);
    total += static_cast<std::uint64_t>(h.hashes_size());
    if (total > announced) {
      return Status::Corruption("STAGED_HASHES frames: more staged blocks than the " + std::to_string(announced) +
                                " HELLO_REPLY announced");
    }
  }
  return state;
}

Status ShipperSession::RemoveGuest(const std::string& job) {
  if ((features_ & proto::kFeatureRemoveGuest) == 0) {
    return Status::Unsupported("the receiver cannot remove a replica (an older blkrep?)");
  }
  proto::RemoveGuest m;
  m.set_job(job);
  Status sent = writer_.Send(FrameType::kRemoveGuest, m);
  if (!sent.ok()) return PeerError(sent);
  BLKREP_ASSIGN_OR_RETURN(proto::Message ack, proto::ReadMessage(reader_, session_, {FrameType::kAck}));
  if (std::get<proto::Ack>(ack).cycle_id() != 0) {
    return Status::Corruption("ACK frame: cycle " + std::to_string(std::get<proto::Ack>(ack).cycle_id()) +
                              " in answer to REMOVE_GUEST, expected 0");
  }
  return Status::Ok();
}

Status ShipperSession::PeerError(const Status& write_error) {
  if (write_error.code() != core::Code::kAborted && write_error.code() != core::Code::kIoError) return write_error;
  // The receiver may have said why before it closed.
  Result<proto::Message> m = proto::ReadMessage(reader_, session_, {});
  if (!m.ok() && m.status().message().rfind("peer: ", 0) == 0) return m.status();
  return write_error;
}

Status ShipperSession::ShipCycle(std::uint64_t cycle_id, proto::CycleMode mode, std::vector<VolumeSource>& volumes,
                                 const ReceiverState& receiver, const ShipOptions& options, ShipStats* stats) {
  ShipStats local;
  ShipStats& st = stats ? *stats : local;
  const bool compares = mode == proto::CYCLE_MODE_RESYNC || mode == proto::CYCLE_MODE_VERIFY;
  if (compares && (features_ & proto::kFeatureChecksumResync) == 0) {
    return Status::Unsupported("the receiver does not compare block hashes (an older blkrep?)");
  }
  // The hash window must cover every batch in the pipeline with room to
  // spare (a worker waits for its batch's hashes, and the credit only
  // moves past the oldest batch not yet sent): at least twice the
  // pipeline's blocks, and the pipeline shrinks if that passes the cap.
  std::uint32_t batch_bytes =
      std::min(options.batch_bytes != 0 ? options.batch_bytes : compares ? 8U << 20 : 4U << 20, proto::kMaxBatchBytes);
  unsigned in_flight = std::max(1U, options.batches_in_flight);
  const unsigned workers = std::max(1U, options.workers);
  std::uint32_t min_block = proto::kMaxBlockSizeBytes;
  for (const VolumeSource& v : volumes) min_block = std::min(min_block, v.block_size_bytes);
  const std::uint64_t batch_blocks = std::max<std::uint64_t>(1, batch_bytes / std::max<std::uint32_t>(min_block, 1));
  if (compares) {
    while (in_flight > 1 && 2 * (in_flight + workers + 2) * batch_blocks > proto::kMaxHashWindowBlocks) --in_flight;
  }
  const std::uint64_t wanted_window =
      options.hash_window_blocks != 0 ? options.hash_window_blocks : (256ULL << 20) / std::max<std::uint32_t>(min_block, 1);
  const std::uint32_t window_blocks = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(
      std::max<std::uint64_t>(wanted_window, 2 * (in_flight + workers + 2) * batch_blocks), 64,
      proto::kMaxHashWindowBlocks));
  proto::CycleBegin begin;
  begin.set_cycle_id(cycle_id);
  begin.set_mode(mode);
  if (compares) begin.set_hash_window_blocks(window_blocks);
  if ((features_ & proto::kFeatureRecoveryPoints) != 0 && mode != proto::CYCLE_MODE_VERIFY) {
    begin.set_recovery_points(std::min(options.recovery_points, proto::kMaxRecoveryPoints));
  }
  std::uint64_t total_bytes = 0;
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    proto::VolumeCycle* vc = begin.add_volumes();
    vc->set_volume(static_cast<std::uint32_t>(i));
    vc->set_epoch(volumes[i].epoch);
    vc->set_base_epoch(volumes[i].base_epoch);
    vc->set_block_count(volumes[i].blocks.Count());
    total_bytes += vc->block_count() * volumes[i].block_size_bytes;
  }
  Status sent = writer_.Send(FrameType::kCycleBegin, begin);
  if (!sent.ok()) return PeerError(sent);

  // Open every volume for reading: O_DIRECT where possible.
  std::vector<std::unique_ptr<core::FileBlockDevice>> devices;
  for (const VolumeSource& v : volumes) {
    core::FileBlockDeviceOptions o;
    o.read_only = true;
    o.direct_io = true;
    BLKREP_ASSIGN_OR_RETURN(auto device, core::FileBlockDevice::Open(v.path, o));
    if (device->SizeBytes() < v.size_bytes) {
      return Status::Aborted("volume " + v.path + " shrank to " + std::to_string(device->SizeBytes()) + " bytes");
    }
    devices.push_back(std::move(device));
  }
  // A resync the receiver writes in place (a replica missing, incomplete or
  // of another size: the receiver's rule) has its staged blocks in the
  // replica itself, where the hash comparison sees them: KEEP would trust
  // a staged hash over the replica's bytes.
  bool keep_staged = mode != proto::CYCLE_MODE_VERIFY;
  if (mode == proto::CYCLE_MODE_RESYNC) {
    for (std::size_t i = 0; i < volumes.size(); ++i) {
      const proto::ReplicaState& r = receiver.volumes[i];
      if (!r.exists() || r.incomplete() || r.size_bytes() != volumes[i].size_bytes) keep_staged = false;
    }
  }
  const std::unordered_map<std::uint64_t, std::uint64_t> no_staged;
  // Resync and verify: the replica's hashes arrive on a thread of their own
  // (the receiver sends them while we send blocks).
  std::unique_ptr<HashWindow> window;
  std::thread hash_reader;
  if (compares) {
    window = std::make_unique<HashWindow>(volumes, window_blocks);
    hash_reader = std::thread([&] {
      while (!window->complete()) {
        Result<proto::Message> m = proto::ReadMessage(reader_, session_, {FrameType::kReplicaHashes});
        Status s = m.ok() ? window->Put(std::get<proto::ReplicaHashes>(*m)) : m.status();
        if (!s.ok()) {
          if (s.code() == core::Code::kEndOfData) s = Status::Aborted("the receiver closed the stream");
          window->Fail(s);
          return;
        }
      }
    });
  }
  // Stops the hash reader on every path out: closing our side makes the
  // receiver end the session, which ends the reader's stream.
  struct ReaderJoin {
    std::thread& t;
    proto::Stream& stream;
    bool close_first = true;
    ~ReaderJoin() {
      if (!t.joinable()) return;
      if (close_first) stream.CloseWrite();
      t.join();
    }
  } reader_join{hash_reader, stream_};
  // After a failed write: why the receiver stopped. While the hash reader
  // runs it owns the reading side, so it is stopped first and asked.
  auto peer_error = [&](const Status& write_error) -> Status {
    if (!hash_reader.joinable()) return PeerError(write_error);
    stream_.CloseWrite();
    hash_reader.join();
    Status seen = window->Wait(window->total());
    if (!seen.ok() && seen.message().rfind("peer: ", 0) == 0) return seen;
    return write_error;
  };
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::AsyncIo> io, core::MakeAsyncIo(options.backend, in_flight * 2));
  st.io_engine = std::string(io->name());

  std::vector<std::unique_ptr<Batch>> pool;
  const std::size_t pool_size = in_flight + workers + 2;
  for (std::size_t i = 0; i < pool_size; ++i) {
    auto b = std::make_unique<Batch>();
    // A batch holds at least one block, whatever the batch size.
    std::size_t bytes = batch_bytes;
    for (const VolumeSource& v : volumes) bytes = std::max<std::size_t>(bytes, v.block_size_bytes);
    void* p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (!p) return Status::ResourceExhausted("cannot allocate read buffers");
    b->buffer.reset(static_cast<std::byte*>(p));
    pool.push_back(std::move(b));
  }

  std::mutex mu;
  std::condition_variable work_cv, send_cv;
  std::deque<Batch*> to_process;  // GUARDED_BY(mu)
  std::deque<Batch*> to_send;     // GUARDED_BY(mu)
  bool stopping = false;          // GUARDED_BY(mu)
  // Adaptive compression: the level in use, 0 while the CPU rather than
  // the wire is the bottleneck (see ShipOptions::adaptive_compression).
  std::atomic<int> level_now = options.zstd_level;
  std::vector<std::thread> threads;
  for (unsigned w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      ZSTD_CCtx* cctx = ZSTD_createCCtx();
      for (;;) {
        Batch* b;
        {
          std::unique_lock lock(mu);
          work_cv.wait(lock, [&] { return stopping || !to_process.empty(); });
          if (to_process.empty()) break;
          b = to_process.front();
          to_process.pop_front();
        }
        if (b->status.ok()) {
          ProcessBatch(*b, volumes[b->volume], keep_staged ? receiver.staged[b->volume] : no_staged,
                       level_now.load(std::memory_order_relaxed),
                       cctx, Compare{mode, window.get(), options.cancel});
        }
        {
          std::lock_guard lock(mu);
          to_send.push_back(b);
        }
        send_cv.notify_one();
      }
      ZSTD_freeCCtx(cctx);
    });
  }

  struct Adapt {
    Clock::duration waiting{};
    Clock::duration sending{};
    unsigned batches = 0;
  } adapt;
  BatchCursor cursor(volumes, batch_bytes);
  std::vector<Batch*> free_batches;
  for (auto& b : pool) free_batches.push_back(b.get());
  std::size_t outstanding = 0;
  bool exhausted = false;
  Status result;
  std::uint64_t done_bytes = 0;
  std::vector<proto::VolumeCount> counts(volumes.size());
  if (mode == proto::CYCLE_MODE_VERIFY) {
    st.mismatched.clear();
    for (const VolumeSource& v : volumes) st.mismatched.emplace_back(v.blocks.block_count());
  }
  // Resync and verify: positions of the batches handed out and not yet sent
  // (their hashes are still needed), and the credit granted so far.
  std::set<std::uint64_t> pending_positions;
  std::uint64_t next_position = 0;
  std::uint64_t granted = 0;
  // Lets the receiver send hashes up to consumed + window (HASH_CREDIT).
  auto grant = [&](std::uint64_t consumed) -> Status {
    if (consumed <= granted) return Status::Ok();
    window->Grant(consumed);
    proto::HashCredit credit;
    credit.set_consumed_blocks(consumed);
    Status s = writer_.Send(FrameType::kHashCredit, credit);
    if (!s.ok()) return peer_error(s);
    granted = consumed;
    return Status::Ok();
  };
  auto submit = [&](Batch* b) {
    const VolumeSource& v = volumes[b->volume];
    const core::FileBlockDevice& dev = *devices[b->volume];
    std::uint64_t offset = b->first_block * v.block_size_bytes;
    bool aligned = b->raw_length % 4096 == 0;
    b->status = Status::Ok();
    b->frames.clear();
    b->matched = 0;
    b->mismatches.clear();
    b->op = core::AsyncOp{};
    b->op.kind = core::AsyncOp::Kind::kRead;
    b->op.fd = aligned && dev.direct_fd() >= 0 ? dev.direct_fd() : dev.fd();
    b->op.offset_bytes = offset;
    b->op.buffer = b->buffer.get();
    b->op.length_bytes = b->raw_length;
    b->op.done = [&, b](Status s) {
      b->status = s.WithContext("read " + volumes[b->volume].path);
      {
        std::lock_guard lock(mu);
        to_process.push_back(b);
      }
      work_cv.notify_one();
    };
    io->Submit(&b->op);
  };
  while (true) {
    // Keep `in_flight` reads going while buffers are free.
    while (result.ok() && !exhausted && !free_batches.empty() && outstanding < pool_size) {
      // A comparing cycle hands out a batch only when the credit already
      // lets the receiver send all its hashes: a worker never waits for
      // hashes that only a later credit (after a slower, earlier batch)
      // would allow.
      if (window && next_position + batch_blocks > granted + window_blocks) {
        if (outstanding > 0) break;
        result = grant(next_position);
        if (!result.ok() || next_position + batch_blocks > granted + window_blocks) break;
      }
      Batch* b = free_batches.back();
      if (!cursor.Next(*b)) {
        exhausted = true;
        break;
      }
      free_batches.pop_back();
      ++outstanding;
      if (window) {
        pending_positions.insert(window->Position(b->volume, b->first_block));
        next_position = window->Position(b->volume, b->first_block) + b->block_count;
      }
      submit(b);
    }
    if (outstanding == 0) break;
    Batch* b;
    auto waited_from = Clock::now();
    {
      std::unique_lock lock(mu);
      send_cv.wait(lock, [&] { return !to_send.empty(); });
      b = to_send.front();
      to_send.pop_front();
    }
    auto sent_from = Clock::now();
    adapt.waiting += sent_from - waited_from;
    --outstanding;
    free_batches.push_back(b);
    if (window) pending_positions.erase(window->Position(b->volume, b->first_block));
    if (result.ok() && options.cancel != nullptr && options.cancel->load()) result = Status::Aborted("cancelled");
    if (!result.ok()) continue;  // draining after a failure
    if (!b->status.ok()) {
      result = b->status;
      continue;
    }
    const VolumeSource& v = volumes[b->volume];
    if (v.cow && v.cow->overflowed()) {
      result = Status::ResourceExhausted(v.cow->overflow_reason());
      continue;
    }
    proto::VolumeCount& c = counts[b->volume];
    c.set_matched_blocks(c.matched_blocks() + b->matched);
    if (window) st.compared_blocks += b->block_count;
    for (std::uint64_t block : b->mismatches) st.mismatched[b->volume].SetRange(block, 1);
    for (OutFrame& f : b->frames) {
      if (options.cancel != nullptr && options.cancel->load()) {
        result = Status::Aborted("cancelled");
        break;
      }
      Status s;
      if (auto* m = std::get_if<proto::Blocks>(&f.message)) {
        c.set_data_blocks(c.data_blocks() + m->block_count());
        st.raw_bytes += m->raw_length();
        st.payload_bytes += f.payload.size();
        s = writer_.SendBlocks(*m, f.payload);
      } else if (auto* z = std::get_if<proto::Zeroes>(&f.message)) {
        c.set_zero_blocks(c.zero_blocks() + z->block_count());
        s = writer_.Send(f.type, *z);
      } else {
        auto& k = std::get<proto::Keep>(f.message);
        c.set_kept_blocks(c.kept_blocks() + static_cast<std::uint64_t>(k.hashes_size()));
        s = writer_.Send(f.type, k);
      }
      if (!s.ok()) {
        result = peer_error(s);
        break;
      }
    }
    if (window && result.ok()) {
      // Grant the receiver hashes beyond what no batch needs any more.
      std::uint64_t consumed = pending_positions.empty() ? next_position : *pending_positions.begin();
      if (consumed >= granted + window_blocks / 4 || (exhausted && outstanding == 0 && consumed > granted)) {
        result = grant(consumed);
      }
    }
    done_bytes += std::uint64_t{b->block_count} * v.block_size_bytes;
    if (options.progress && result.ok()) options.progress(std::min(done_bytes, total_bytes), total_bytes);
    adapt.sending += Clock::now() - sent_from;
    if (options.adaptive_compression && options.zstd_level != 0 && ++adapt.batches == kAdaptWindowBatches) {
      // Waiting for batches more than sending them: the CPU is the
      // bottleneck, compression only slows the cycle; else compress.
      level_now = adapt.waiting > adapt.sending ? 0 : options.zstd_level;
      adapt = Adapt{};
    }
  }
  st.compressed = level_now != 0;
  {
    std::lock_guard lock(mu);
    stopping = true;
  }
  work_cv.notify_all();
  for (auto& t : threads) t.join();
  io.reset();  // waits for every read
  // A block that could not be preserved broke the point in time.
  for (const VolumeSource& v : volumes) {
    if (result.ok() && v.cow && v.cow->overflowed()) result = Status::ResourceExhausted(v.cow->overflow_reason());
  }
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    st.data_blocks += counts[i].data_blocks();
    st.zero_blocks += counts[i].zero_blocks();
    st.kept_blocks += counts[i].kept_blocks();
    st.matched_blocks += counts[i].matched_blocks();
  }
  if (!result.ok()) {
    proto::Error e;
    e.set_code(static_cast<std::uint32_t>(result.code()));
    e.set_message("shipper: " + result.message());
    (void)writer_.Send(FrameType::kError, e);
    st.bytes_sent = writer_.bytes_sent();
    return result;
  }
  if (hash_reader.joinable()) {
    // Every batch had its hashes, so the reader has read them all.
    reader_join.close_first = false;
    hash_reader.join();
  }
  proto::CycleEnd end;
  end.set_cycle_id(cycle_id);
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    counts[i].set_volume(static_cast<std::uint32_t>(i));
    *end.add_volumes() = counts[i];
  }
  sent = writer_.Send(FrameType::kCycleEnd, end);
  st.bytes_sent = writer_.bytes_sent();
  if (!sent.ok()) return PeerError(sent);
  BLKREP_ASSIGN_OR_RETURN(proto::Message ack, proto::ReadMessage(reader_, session_, {FrameType::kAck}));
  const proto::Ack& a = std::get<proto::Ack>(ack);
  if (a.cycle_id() != cycle_id) {
    return Status::Corruption("ACK frame: cycle " + std::to_string(a.cycle_id()) + ", expected " +
                              std::to_string(cycle_id));
  }
  for (std::size_t i = 0; i < volumes.size() && mode != proto::CYCLE_MODE_VERIFY; ++i) {
    if (a.committed_epochs(static_cast<int>(i)) != volumes[i].epoch) {
      return Status::Corruption("ACK frame: volume " + volumes[i].name + " committed at epoch " +
                                std::to_string(a.committed_epochs(static_cast<int>(i))) + ", expected " +
                                std::to_string(volumes[i].epoch));
    }
  }
  st.bytes_received = reader_.bytes_received();
  st.receiver_bytes = a.bytes_received();
  return Status::Ok();
}

}  // namespace blkrep::shipper
