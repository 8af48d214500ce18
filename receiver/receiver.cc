#include "receiver/receiver.h"

#include <sys/stat.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <variant>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "core/hash.h"
#include "receiver/async_writer.h"
#include "receiver/diverged.h"
#include "receiver/guest_state.h"
#include "receiver/recovery_points.h"
#include "receiver/replica_hasher.h"
#include "receiver/replica_layout.h"
#include "receiver/staging.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;
using proto::FrameType;

namespace {

// Apply reads staged data in chunks of at most this many bytes.
constexpr std::uint64_t kApplyChunkBytes = 8U << 20;

std::uint64_t BlockCount(std::uint64_t size_bytes, std::uint32_t block_size_bytes) {
  return (size_bytes + block_size_bytes - 1) / block_size_bytes;
}

// Bytes of blocks [first, first + count) of a volume of size_bytes (its last
// block may be short). REQUIRES: the range lies inside the volume.
std::uint64_t RangeBytes(std::uint64_t size_bytes, std::uint32_t block_size_bytes, std::uint64_t first,
                         std::uint64_t count) {
  std::uint64_t start = first * block_size_bytes;
  std::uint64_t end = std::min(size_bytes, (first + count) * block_size_bytes);
  return end > start ? end - start : 0;
}

const char* ModeName(int mode) {
  switch (mode) {
    case proto::CYCLE_MODE_FULL: return "full";
    case proto::CYCLE_MODE_INCREMENTAL: return "incremental";
    case proto::CYCLE_MODE_RESYNC: return "resync";
    case proto::CYCLE_MODE_VERIFY: return "verify";
    default: return "unknown";
  }
}

// The identity of the file `replica` has open (not of what its path names
// now: the file the cycle wrote is the one to record).
Result<ReplicaIdentity> IdentityOfOpen(const core::FileBlockDevice& replica) {
  struct stat st{};
  if (::fstat(replica.fd(), &st) != 0) return core::ErrnoStatus(errno, "fstat replica " + replica.path());
  return ReplicaIdentityOf(st);
}

// Whether `now` is the same file as `recorded` (a known identity): same
// kind and device, and for a regular file the same inode and, when
// `compare_mtime`, the same modification time. The receiver's own writes to
// a replica that holds no complete cycle (in place, not yet committed) move
// its mtime; there only the file itself is compared.
bool SameReplica(const ReplicaIdentity& recorded, const ReplicaIdentity& now, bool compare_mtime) {
  if (recorded.kind != now.kind || recorded.dev != now.dev || recorded.ino != now.ino) return false;
  return !compare_mtime || recorded.mtime_ns == now.mtime_ns;
}

struct ReplicaProbe {
  bool exists = false;
  bool is_block_device = false;
  std::uint64_t size_bytes = 0;
  ReplicaIdentity identity;  // when it exists
};

Result<ReplicaProbe> ProbeReplica(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return ReplicaProbe{};
    return core::ErrnoStatus(errno, "stat replica " + path);
  }
  ReplicaProbe probe;
  probe.exists = true;
  probe.identity = ReplicaIdentityOf(st);
  if (S_ISREG(st.st_mode)) {
    probe.size_bytes = static_cast<std::uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    probe.is_block_device = true;
    BLKREP_ASSIGN_OR_RETURN(auto device, core::FileBlockDevice::Open(path, {.read_only = true, .direct_io = false}));
    probe.size_bytes = device->SizeBytes();
  } else {
    return Status::Unsupported("replica " + path + " is neither a regular file nor a block device");
  }
  return probe;
}

// A replica can hold a volume of size_bytes: a file of exactly that size, a
// block device of at least it.
bool ReplicaFits(const ReplicaProbe& probe, std::uint64_t size_bytes) {
  return probe.exists && (probe.is_block_device ? probe.size_bytes >= size_bytes : probe.size_bytes == size_bytes);
}

// O_DIRECT where the file system allows it: a full cycle's in-place writes
// then skip the page cache, which costs more CPU than the rest of the
// receiver together (bench/README.md); unaligned writes go buffered.
Result<std::unique_ptr<core::FileBlockDevice>> OpenReplica(const std::string& path) {
  return core::FileBlockDevice::Open(path, {.read_only = false, .direct_io = true});
}


struct DctxDeleter {
  void operator()(ZSTD_DCtx* dctx) const { ZSTD_freeDCtx(dctx); }
};

// Everything the session knows about one volume of its HELLO.
struct VolumeSession {
  const proto::VolumeInfo* info = nullptr;
  std::uint32_t index = 0;  // in HELLO
  std::uint64_t blocks = 0;
  std::string replica_path;
  ReplicaProbe probe;
  // What HELLO_REPLY said.
  std::uint64_t reported_committed_epoch = 0;
  bool reported_incomplete = false;
  // The replica is not the file the state describes (HELLO_REPLY's
  // `replaced`): its committed epoch was reported as 0 and its staging
  // was not offered.
  bool replaced = false;
  // Blocks the replica changed after its committed epoch (diverged.h),
  // reported in HELLO_REPLY to a shipper that takes them.
  BlockRanges diverged;
  // The usable staging of an earlier attempt (staging files open).
  std::unique_ptr<StagingFiles> staging;
  StagedBlocks candidates;
  // The cycle.
  bool in_cycle = false;
  std::uint64_t epoch = 0;
  std::uint64_t block_count = 0;
  BlockBitmap covered;
  std::uint64_t data_blocks = 0, zero_blocks = 0, kept_blocks = 0;
  std::uint64_t next_slot = 0;
  std::unique_ptr<core::FileBlockDevice> replica;
  bool replica_dirty = false;
};

class Session {
 public:
  Session(proto::Stream& stream, const ReceiverOptions& options, SessionReport* report)
      : options_(options), report_(report), reader_(stream), writer_(stream) {}

  Status Run();
  // No session: finishes the apply of a cycle the guest's state says is
  // pending (what every session does first). REQUIRES: the caller holds
  // the guest's lock.
  Status FinishPendingApply(const std::string& guest);
  // The session stopped at a crash_hook point: no cleanup, no ERROR frame.
  bool crashed() const { return crashed_; }
  // The session's ERROR frame went out already (from the replica hasher).
  bool error_sent() const { return error_sent_; }
  std::uint64_t bytes_received() const { return reader_.bytes_received(); }
  void SendError(const Status& status);

 private:
  Status Handshake(const proto::Hello& hello);
  Status LoadStaging(VolumeSession& v, const VolumeState& state);
  Status SendReplicaState();
  Status BeginCycle(const proto::CycleBegin& begin);
  // A verify cycle: checks the replicas and starts hashing; no state changes.
  Status BeginVerify(const proto::CycleBegin& begin);
  void StartHasher(const proto::CycleBegin& begin);
  Status OnHashCredit(const proto::HashCredit& m);
  Status PrepareInPlaceReplica(VolumeSession& v);
  Status ReceiveCycle();
  Status OnBlocks(const proto::Blocks& m);
  // A buffer of at least `length` bytes for a batch's raw blocks: aligned
  // for O_DIRECT when the cycle writes in place. REQUIRES: length <= the
  // batch cap (DecodeFrame checked it).
  Result<std::byte*> RawBuffer(std::size_t length);
  Status OnZeroes(const proto::Zeroes& m);
  Status OnKeep(const proto::Keep& m);
  Status OnCycleEnd(const proto::CycleEnd& m);
  // Checks that [first, first + count) of `v` is part of the cycle and not
  // covered yet.
  Status CheckCoverage(const char* frame, const VolumeSession& v, std::uint64_t first, std::uint64_t count);
  // Before an in-place write over blocks an earlier attempt staged: a
  // durable drop record, so they are not offered again.
  Status DropBeforeOverwrite(VolumeSession& v, std::uint64_t first, std::uint64_t count);
  Status FlushVolume(VolumeSession& v);
  Status FlushBatch();
  Status Commit();
  // REMOVE_GUEST (`blkrep delete`): removes the guest's replicas, state
  // and staging when they belong to the session's job, then ACKs.
  Status RemoveGuest(const proto::RemoveGuest& m);
  // Applies the cycle state_ says is pending and commits it in the state
  // file. `recovery_points`: the cycle's, in the session that validated it
  // (the undo data is captured); nullopt when a later session redoes the
  // apply (recovery_points.h).
  Status FinishApply(std::optional<std::uint32_t> recovery_points);
  // The merged block ranges the apply of staged volume `vs` writes.
  Result<std::vector<BlockRange>> ApplyRanges(const VolumeState& vs);
  Status ApplyVolume(VolumeState& vs, StagingFiles* open_staging, core::FileBlockDevice* open_replica);
  Status Crash(std::string_view point);

  const ReceiverOptions& options_;
  SessionReport* report_;
  proto::FrameReader reader_;
  proto::FrameWriter writer_;
  proto::SessionContext context_;
  core::FileSystem& fs_ = core::PosixFileSystemInstance();
  bool crashed_ = false;
  bool error_sent_ = false;

  std::string guest_;
  std::string job_;
  std::string guest_dir_;
  std::string staging_dir_;
  std::uint64_t features_ = 0;
  std::unique_ptr<core::FileLock> lock_;
  GuestState state_;
  bool job_matches_ = true;
  std::vector<VolumeSession> volumes_;

  std::uint64_t cycle_id_ = 0;
  int mode_ = 0;
  bool in_place_ = false;
  // Resync and verify: the replicas are hashed and compared (`hasher_`
  // sends the hashes); a verify changes nothing.
  bool compares_ = false;
  bool verify_ = false;
  std::unique_ptr<ReplicaHasher> hasher_;
  std::uint32_t attempt_ = 0;
  // CYCLE_BEGIN's recovery_points (0 unless the feature was granted).
  std::uint32_t recovery_points_ = 0;
  std::uint64_t batch_bytes_ = 0;
  std::unique_ptr<ZSTD_DCtx, DctxDeleter> dctx_;
  std::vector<std::byte> raw_buffer_;
  // In-place writes, overlapped with receiving. Declared last: destroyed
  // (drained) before the replicas it writes to.
  AsyncWriter in_place_writer_;
};

Status Session::Crash(std::string_view point) {
  if (!options_.crash_hook) return Status::Ok();
  Status s = options_.crash_hook(point);
  if (!s.ok()) crashed_ = true;
  return s;
}

void Session::SendError(const Status& status) {
  // Best effort: the peer may be gone.
  (void)writer_.Send(FrameType::kError, proto::MakeError(status));
}

Status Session::Run() {
  Result<proto::Message> first = proto::ReadMessage(reader_, context_, {FrameType::kHello});
  if (!first.ok()) {
    if (first.status().code() == core::Code::kEndOfData) {
      return Status::Aborted("the peer closed the stream before HELLO");
    }
    return first.status();
  }
  const proto::Hello hello = std::get<proto::Hello>(*first);
  BLKREP_RETURN_IF_ERROR(Handshake(hello));

  Result<proto::Message> next =
      proto::ReadMessage(reader_, context_, {FrameType::kCycleBegin, FrameType::kRemoveGuest});
  if (!next.ok()) {
    // The shipper only asked for the replica state.
    if (next.status().code() == core::Code::kEndOfData) return Status::Ok();
    return next.status();
  }
  if (const auto* remove = std::get_if<proto::RemoveGuest>(&*next)) return RemoveGuest(*remove);
  Status s = BeginCycle(std::get<proto::CycleBegin>(*next));
  if (s.ok()) s = ReceiveCycle();
  if (hasher_ != nullptr) {
    // A cycle that failed: the hasher's own failure is the better reason.
    hasher_->Stop();
    Status hashed = hasher_->Finish();
    if (!hashed.ok() && hashed.code() != core::Code::kAborted) s = hashed;
    error_sent_ = hasher_->sent_error();
    hasher_.reset();
  }
  BLKREP_RETURN_IF_ERROR(s);
  return Commit();
}

Status Session::Handshake(const proto::Hello& hello) {
  guest_ = hello.guest();
  job_ = hello.job();
  if (report_ != nullptr) {
    report_->guest = guest_;
    report_->job = job_;
  }
  if (hello.min_protocol_version() > proto::kProtocolVersion) {
    return Status::Unsupported("HELLO frame: the shipper speaks protocol versions " +
                               std::to_string(hello.min_protocol_version()) + " to " +
                               std::to_string(hello.protocol_version()) + ", this receiver only " +
                               std::to_string(proto::kProtocolVersion));
  }
  features_ = hello.feature_flags() & proto::kKnownFeatures & options_.feature_mask;
  context_.volumes.assign(hello.volumes().begin(), hello.volumes().end());

  guest_dir_ = options_.replica_dir + "/" + guest_;
  staging_dir_ = guest_dir_ + "/" + kStagingDirName;
  volumes_.resize(context_.volumes.size());
  for (std::size_t i = 0; i < volumes_.size(); ++i) {
    VolumeSession& v = volumes_[i];
    v.info = &context_.volumes[i];
    v.index = static_cast<std::uint32_t>(i);
    v.blocks = context_.BlockCount(v.index);
    Result<std::string> path = ReplicaPath(options_.replica_dir, guest_, v.info->name());
    if (!path.ok()) return path.status().WithContext("HELLO frame");
    v.replica_path = *path;
  }
  BLKREP_RETURN_IF_ERROR(fs_.CreateDirectories(guest_dir_));
  Result<std::unique_ptr<core::FileLock>> lock = fs_.Lock(guest_dir_ + "/" + kLockFileName);
  if (!lock.ok()) {
    if (lock.status().code() == core::Code::kAborted) {
      return Status::Aborted("guest " + guest_ + " is being received by another session");
    }
    return lock.status();
  }
  lock_ = std::move(*lock);
  // A promoted replica is a source now: receiving into it would overwrite
  // what the guest wrote there since (a split brain).
  BLKREP_ASSIGN_OR_RETURN(bool promoted, fs_.Exists(guest_dir_ + "/" + kPromotedFileName));
  if (promoted) {
    return Status::Aborted("guest " + guest_ + " was promoted on this node (" + guest_dir_ + "/" +
                           kPromotedFileName + "): its replicas are a source now (blkrep demote " + guest_ +
                           " makes them a replica again)");
  }

  BLKREP_ASSIGN_OR_RETURN(state_, ReadGuestStateFile(fs_, guest_dir_));
  if (state_.apply_pending) BLKREP_RETURN_IF_ERROR(FinishApply(std::nullopt));
  job_matches_ = state_.job.empty() || state_.job == job_;

  for (VolumeSession& v : volumes_) {
    BLKREP_ASSIGN_OR_RETURN(v.probe, ProbeReplica(v.replica_path));
    const VolumeState* vs = state_.Find(v.info->name());
    if (vs == nullptr || !job_matches_ || !v.probe.exists) continue;
    v.reported_incomplete = vs->incomplete;
    if (vs->replica.known() && !SameReplica(vs->replica, v.probe.identity, /*compare_mtime=*/!vs->incomplete)) {
      // Replaced or changed behind our back: whatever the state says about
      // the replica, and what an earlier attempt staged for it, is about
      // another file.
      v.replaced = true;
      continue;
    }
    v.reported_committed_epoch = vs->committed_epoch;
    Result<DivergedBlocks> diverged = ReadDiverged(fs_, guest_dir_, v.info->name());
    if (diverged.ok() || diverged.status().code() != core::Code::kNotFound) {
      bool usable = diverged.ok() && diverged->block_size_bytes == v.info->block_size_bytes() &&
                    diverged->block_count == v.blocks;
      if (usable && (features_ & proto::kFeatureDiverged) != 0) {
        v.diverged = CoarsenRanges(diverged->ranges, proto::kMaxDivergedRanges / volumes_.size());
      } else {
        // A shipper that cannot take them, or blocks we cannot name: the
        // replica is at no cycle it could build an incremental on.
        v.reported_committed_epoch = 0;
      }
    }
    if ((features_ & proto::kFeatureResume) != 0 && vs->staging.staging_id != 0) {
      BLKREP_RETURN_IF_ERROR(LoadStaging(v, *vs));
    }
  }
  return SendReplicaState();
}

// Opens the staging of an earlier attempt when it can still serve this
// volume; an unusable staging is ignored (and discarded by the next cycle).
Status Session::LoadStaging(VolumeSession& v, const VolumeState& vs) {
  const StagingInfo& s = vs.staging;
  if (s.block_size_bytes != v.info->block_size_bytes() || s.volume_size_bytes != v.info->size_bytes()) {
    return Status::Ok();
  }
  if (s.in_place && !(vs.incomplete && ReplicaFits(v.probe, v.info->size_bytes()))) return Status::Ok();
  if (!s.in_place && (vs.incomplete || s.base_epoch != vs.committed_epoch)) return Status::Ok();
  Result<std::unique_ptr<StagingFiles>> files =
      StagingFiles::Open(fs_, staging_dir_, v.info->name(), s.staging_id, s.block_size_bytes);
  if (!files.ok()) {
    if (files.status().code() == core::Code::kNotFound || files.status().code() == core::Code::kCorruption) {
      return Status::Ok();
    }
    return files.status();
  }
  Result<StagedBlocks> candidates = (*files)->LoadCandidates(std::numeric_limits<std::uint32_t>::max(), v.blocks);
  if (!candidates.ok()) {
    if (candidates.status().code() == core::Code::kCorruption) return Status::Ok();
    return candidates.status();
  }
  for (const StagedBlock& b : candidates->blocks()) {
    if ((b.slot == kNoSlot) != s.in_place) return Status::Ok();  // records of the wrong kind: unusable
  }
  v.staging = std::move(*files);
  v.candidates = std::move(*candidates);
  return Status::Ok();
}

Status Session::SendReplicaState() {
  proto::HelloReply reply;
  reply.set_protocol_version(proto::kProtocolVersion);
  reply.set_feature_flags(features_);
  std::uint64_t total = 0;
  for (const VolumeSession& v : volumes_) {
    proto::ReplicaState* r = reply.add_volumes();
    r->set_exists(v.probe.exists);
    r->set_size_bytes(v.probe.size_bytes);
    r->set_committed_epoch(v.reported_committed_epoch);
    r->set_incomplete(v.reported_incomplete);
    r->set_replaced(v.replaced);
    for (const auto& [first, count] : v.diverged) {
      r->add_diverged(first);
      r->add_diverged(count);
    }
    if (v.staging != nullptr && v.candidates.size() > 0) {
      const VolumeState* vs = state_.Find(v.info->name());
      r->set_staged_base_epoch(vs->staging.base_epoch);
      r->set_staged_blocks(v.candidates.size());
      total += v.candidates.size();
    }
  }
  BLKREP_RETURN_IF_ERROR(writer_.Send(FrameType::kHelloReply, reply));
  for (const VolumeSession& v : volumes_) {
    if (v.staging == nullptr) continue;
    const std::vector<StagedBlock>& blocks = v.candidates.blocks();
    std::size_t i = 0;
    while (i < blocks.size()) {
      proto::StagedHashes m;
      m.set_volume(v.index);
      m.set_first_block(blocks[i].block);
      std::size_t j = i;
      while (j < blocks.size() && j - i < proto::kMaxHashesPerFrame && blocks[j].block == blocks[i].block + (j - i)) {
        m.add_hashes(blocks[j].hash);
        ++j;
      }
      BLKREP_RETURN_IF_ERROR(writer_.Send(FrameType::kStagedHashes, m));
      i = j;
    }
  }
  proto::StagedEnd end;
  end.set_total_blocks(total);
  return writer_.Send(FrameType::kStagedEnd, end);
}

Status Session::BeginCycle(const proto::CycleBegin& begin) {
  cycle_id_ = begin.cycle_id();
  mode_ = begin.mode();
  recovery_points_ = (features_ & proto::kFeatureRecoveryPoints) != 0 ? begin.recovery_points() : 0;
  compares_ = mode_ == proto::CYCLE_MODE_RESYNC || mode_ == proto::CYCLE_MODE_VERIFY;
  verify_ = mode_ == proto::CYCLE_MODE_VERIFY;
  if (report_ != nullptr) {
    report_->cycle_id = cycle_id_;
    report_->mode = ModeName(mode_);
  }
  const std::string what = "CYCLE_BEGIN frame: ";
  if (compares_ && (features_ & proto::kFeatureChecksumResync) == 0) {
    return Status::Corruption(what + "a " + std::string(ModeName(mode_)) +
                              " cycle, but hash comparison was not negotiated");
  }
  // A resync writes in place where a replica holds no complete cycle worth
  // keeping (missing, incomplete, of another size); else it is staged and
  // committed atomically like an incremental cycle.
  in_place_ = mode_ == proto::CYCLE_MODE_FULL;
  if (mode_ == proto::CYCLE_MODE_RESYNC) {
    for (const proto::VolumeCycle& vc : begin.volumes()) {
      const VolumeSession& v = volumes_[vc.volume()];
      if (!v.probe.exists || v.reported_incomplete || !ReplicaFits(v.probe, v.info->size_bytes())) in_place_ = true;
    }
  }
  if (verify_) return BeginVerify(begin);
  for (const proto::VolumeCycle& vc : begin.volumes()) {
    VolumeSession& v = volumes_[vc.volume()];
    const std::string& name = v.info->name();
    if (in_place_) {
      if (vc.block_count() != v.blocks) {
        return Status::Corruption(what + "a " + ModeName(mode_) + " cycle must cover all " + std::to_string(v.blocks) +
                                  " blocks of volume " + name + ", not " + std::to_string(vc.block_count()));
      }
      if (v.probe.exists && v.probe.is_block_device && v.probe.size_bytes < v.info->size_bytes()) {
        return Status::OutOfRange(what + "replica " + v.replica_path + " of volume " + name + " has " +
                                  std::to_string(v.probe.size_bytes) + " bytes, the volume " +
                                  std::to_string(v.info->size_bytes()));
      }
    } else {
      if (!v.probe.exists) {
        return Status::Corruption(what + "incremental cycle for volume " + name + ", but there is no replica of it");
      }
      if (v.reported_incomplete) {
        return Status::Corruption(what + "replica of " + name + " is incomplete (a full cycle did not finish)");
      }
      if (!ReplicaFits(v.probe, v.info->size_bytes())) {
        return Status::Corruption(what + "replica of " + name + " has " + std::to_string(v.probe.size_bytes) +
                                  " bytes, the volume " + std::to_string(v.info->size_bytes()));
      }
      if ((v.reported_committed_epoch == 0 && mode_ == proto::CYCLE_MODE_INCREMENTAL) ||
          vc.base_epoch() != v.reported_committed_epoch) {
        return Status::Corruption(what + "replica of " + name + " is at epoch " +
                                  std::to_string(v.reported_committed_epoch) + ", not " +
                                  std::to_string(vc.base_epoch()));
      }
    }
  }

  // Recovery points rest on the replicas as committed: a cycle that writes
  // them in place, a replica replaced behind our back and another job end
  // them all, before anything touches a replica (recovery_points.h).
  bool drop_points = in_place_ || !job_matches_;
  for (const proto::VolumeCycle& vc : begin.volumes()) drop_points = drop_points || volumes_[vc.volume()].replaced;
  if (drop_points) BLKREP_RETURN_IF_ERROR(DropAllPoints(fs_, guest_dir_));

  // The new state: a new attempt; staging of an earlier attempt survives
  // only where it can serve this cycle.
  if (!job_matches_) {
    for (VolumeState& vs : state_.volumes) {
      vs.committed_epoch = 0;
      vs.staging = StagingInfo{};
    }
  }
  state_.job = job_;
  for (const VolumeSession& v : volumes_) {
    if (state_.Find(v.info->name()) == nullptr) {
      VolumeState vs;
      vs.name = v.info->name();
      state_.volumes.push_back(std::move(vs));
    }
  }
  attempt_ = ++state_.attempt;
  state_.cycle_id = cycle_id_;
  state_.mode = static_cast<std::uint8_t>(mode_);
  state_.apply_pending = false;
  std::vector<std::string> discarded;
  for (VolumeState& vs : state_.volumes) {
    vs.in_cycle = false;
    vs.data_blocks = vs.zero_blocks = vs.kept_blocks = 0;
  }
  for (const proto::VolumeCycle& vc : begin.volumes()) {
    VolumeSession& v = volumes_[vc.volume()];
    VolumeState& vs = *state_.Find(v.info->name());
    v.in_cycle = true;
    v.epoch = vc.epoch();
    v.block_count = vc.block_count();
    v.covered = BlockBitmap(v.blocks);
    vs.in_cycle = true;
    vs.cycle_epoch = vc.epoch();
    vs.cycle_block_count = vc.block_count();
    bool reuse = v.staging != nullptr && vs.staging.in_place == in_place_ && vs.staging.base_epoch == vc.base_epoch();
    if (reuse) {
      BLKREP_RETURN_IF_ERROR(v.staging->TruncateToValid());
    } else {
      v.staging.reset();
      v.candidates = StagedBlocks();
      std::uint64_t id = state_.next_staging_id++;
      BLKREP_ASSIGN_OR_RETURN(v.staging, StagingFiles::Create(fs_, staging_dir_, vs.name, id,
                                                              v.info->block_size_bytes()));
      vs.staging = StagingInfo{id, in_place_, vc.base_epoch(), v.info->size_bytes(), v.info->block_size_bytes()};
    }
    v.next_slot = v.staging->next_slot();
    if (in_place_) {
      vs.incomplete = true;
      vs.size_bytes = v.info->size_bytes();
      vs.block_size_bytes = v.info->block_size_bytes();
    }
    // From now on the state is about the replica the HELLO found (a missing
    // one is created below, and recorded at the commit point). It vouches
    // for no epoch of a replaced one: a cycle cut off from here on must
    // not leave its old epoch paired with the new file.
    if (v.replaced) vs.committed_epoch = 0;
    vs.replica = v.probe.exists ? v.probe.identity : ReplicaIdentity{};
  }
  for (VolumeState& vs : state_.volumes) {
    if (!vs.in_cycle && vs.staging.staging_id != 0) {
      vs.staging = StagingInfo{};
      discarded.push_back(vs.name);
    }
  }
  BLKREP_RETURN_IF_ERROR(WriteGuestStateFile(fs_, guest_dir_, state_));
  BLKREP_RETURN_IF_ERROR(Crash("cycle-begun"));
  for (const std::string& name : discarded) {
    for (VolumeSession& v : volumes_) {
      if (v.info->name() == name) v.staging.reset();
    }
    BLKREP_RETURN_IF_ERROR(StagingFiles::Remove(fs_, staging_dir_, name));
  }
  for (VolumeSession& v : volumes_) {
    if (!v.in_cycle) continue;
    if (in_place_) BLKREP_RETURN_IF_ERROR(PrepareInPlaceReplica(v));
    BLKREP_ASSIGN_OR_RETURN(v.replica, OpenReplica(v.replica_path));
    if (v.replica->SizeBytes() < v.info->size_bytes()) {
      return Status::Internal("replica " + v.replica_path + " shrank to " + std::to_string(v.replica->SizeBytes()) +
                              " bytes");
    }
    if (v.probe.exists) {
      BLKREP_ASSIGN_OR_RETURN(ReplicaIdentity opened, IdentityOfOpen(*v.replica));
      if (!SameReplica(v.probe.identity, opened, /*compare_mtime=*/false)) {
        return Status::Aborted("replica " + v.replica_path + " was replaced while cycle " + std::to_string(cycle_id_) +
                               " began");
      }
    }
  }
  if ((features_ & proto::kFeatureZstd) != 0) dctx_.reset(ZSTD_createDCtx());
  if (compares_) StartHasher(begin);
  return Status::Ok();
}

Status Session::BeginVerify(const proto::CycleBegin& begin) {
  if (!job_matches_) {
    return Status::NotFound("the replicas of guest " + guest_ + " belong to job " + state_.job + ", not " + job_);
  }
  for (const proto::VolumeCycle& vc : begin.volumes()) {
    VolumeSession& v = volumes_[vc.volume()];
    const std::string& name = v.info->name();
    if (!v.probe.exists) return Status::NotFound("there is no replica of volume " + name + " to verify");
    if (v.reported_incomplete) {
      return Status::Corruption("replica of " + name + " is incomplete (a full or resync cycle did not finish)");
    }
    if (!ReplicaFits(v.probe, v.info->size_bytes())) {
      return Status::OutOfRange("replica " + v.replica_path + " of volume " + name + " has " +
                                std::to_string(v.probe.size_bytes) + " bytes, the volume " +
                                std::to_string(v.info->size_bytes()));
    }
    v.in_cycle = true;
    v.block_count = vc.block_count();
  }
  StartHasher(begin);
  return Status::Ok();
}

void Session::StartHasher(const proto::CycleBegin& begin) {
  std::vector<ReplicaHasher::Volume> hashed;
  for (const VolumeSession& v : volumes_) {
    if (v.in_cycle) hashed.push_back({v.index, v.replica_path, v.info->size_bytes(), v.info->block_size_bytes()});
  }
  hasher_ = std::make_unique<ReplicaHasher>(writer_, std::move(hashed), begin.hash_window_blocks());
  hasher_->Start();
}

// Creates or resizes the replica file of a full/resync cycle (a block device
// is used as it is). The state file already marks it incomplete.
Status Session::PrepareInPlaceReplica(VolumeSession& v) {
  if (v.probe.is_block_device) return Status::Ok();
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, fs_.Open(v.replica_path, core::OpenMode::kCreate));
  BLKREP_ASSIGN_OR_RETURN(std::uint64_t size, file->Size());
  if (size != v.info->size_bytes()) {
    BLKREP_RETURN_IF_ERROR(file->Truncate(v.info->size_bytes()));
    BLKREP_RETURN_IF_ERROR(file->Sync());
  }
  if (!v.probe.exists) BLKREP_RETURN_IF_ERROR(fs_.SyncDir(guest_dir_));
  return Status::Ok();
}

Status Session::ReceiveCycle() {
  for (;;) {
    Result<proto::Message> m =
        verify_     ? proto::ReadMessage(reader_, context_, {FrameType::kHashCredit, FrameType::kCycleEnd})
        : compares_ ? proto::ReadMessage(reader_, context_,
                                         {FrameType::kBlocks, FrameType::kZeroes, FrameType::kKeep,
                                          FrameType::kHashCredit, FrameType::kCycleEnd})
                    : proto::ReadMessage(reader_, context_,
                                         {FrameType::kBlocks, FrameType::kZeroes, FrameType::kKeep,
                                          FrameType::kCycleEnd});
    Status s;
    if (!m.ok()) {
      s = m.status();
      if (s.code() == core::Code::kEndOfData) {
        s = Status::Aborted("the stream ended inside cycle " + std::to_string(cycle_id_) + " before CYCLE_END");
      }
    } else if (const auto* credit = std::get_if<proto::HashCredit>(&*m)) {
      s = OnHashCredit(*credit);
    } else if (const auto* blocks = std::get_if<proto::Blocks>(&*m)) {
      s = OnBlocks(*blocks);
    } else if (const auto* zeroes = std::get_if<proto::Zeroes>(&*m)) {
      s = OnZeroes(*zeroes);
    } else if (const auto* keep = std::get_if<proto::Keep>(&*m)) {
      s = OnKeep(*keep);
    } else {
      return OnCycleEnd(std::get<proto::CycleEnd>(*m));
    }
    if (s.ok() && batch_bytes_ >= options_.durability_batch_bytes) s = FlushBatch();
    if (!s.ok()) {
      // What passed every check so far stays staged for the next attempt.
      if (!verify_) (void)FlushBatch();
      return s;
    }
  }
}

Status Session::OnHashCredit(const proto::HashCredit& m) {
  if (m.consumed_blocks() < hasher_->credited() || m.consumed_blocks() > hasher_->total_blocks()) {
    return Status::Corruption("HASH_CREDIT frame: " + std::to_string(m.consumed_blocks()) +
                              " hashes consumed, after " + std::to_string(hasher_->credited()) + " of " +
                              std::to_string(hasher_->total_blocks()));
  }
  hasher_->Credit(m.consumed_blocks());
  return Status::Ok();
}

Status Session::CheckCoverage(const char* frame, const VolumeSession& v, std::uint64_t first, std::uint64_t count) {
  const std::string& name = v.info->name();
  if (!v.in_cycle) {
    return Status::Corruption(std::string(frame) + " frame: volume " + name + " is not part of cycle " +
                              std::to_string(cycle_id_));
  }
  std::uint64_t twice = v.covered.FirstSetIn(first, count);
  if (twice != kNoSlot) {
    return Status::Corruption(std::string(frame) + " frame: block " + std::to_string(twice) + " of volume " + name +
                              " is covered twice");
  }
  std::uint64_t done = v.data_blocks + v.zero_blocks + v.kept_blocks;
  if (count > v.block_count - done) {
    return Status::Corruption(std::string(frame) + " frame: blocks [" + std::to_string(first) + ", +" +
                              std::to_string(count) + ") of volume " + name + " exceed the " +
                              std::to_string(v.block_count) + " blocks of cycle " + std::to_string(cycle_id_));
  }
  return Status::Ok();
}

Status Session::DropBeforeOverwrite(VolumeSession& v, std::uint64_t first, std::uint64_t count) {
  if (!v.candidates.AnyIn(first, count)) return Status::Ok();
  IndexRecord drop;
  drop.kind = RecordKind::kDrop;
  drop.attempt = attempt_;
  drop.first_block = first;
  drop.block_count = count;
  v.staging->AddRecord(drop);
  return FlushVolume(v);
}

Result<std::byte*> Session::RawBuffer(std::size_t length) {
  if (!in_place_) {
    raw_buffer_.resize(length);
    return raw_buffer_.data();
  }
  return in_place_writer_.Current();
}

Status Session::OnBlocks(const proto::Blocks& m) {
  VolumeSession& v = volumes_[m.volume()];
  const std::string& name = v.info->name();
  BLKREP_RETURN_IF_ERROR(CheckCoverage("BLOCKS", v, m.first_block(), m.block_count()));
  const std::string where = "BLOCKS frame: blocks [" + std::to_string(m.first_block()) + ", +" +
                            std::to_string(m.block_count()) + ") of volume " + name;
  std::span<const std::byte> raw;
  if (m.compression() == proto::COMPRESSION_ZSTD) {
    if (dctx_ == nullptr) return Status::Corruption(where + ": zstd payload, but zstd was not negotiated");
    unsigned long long content = ZSTD_getFrameContentSize(m.payload().data(), m.payload().size());
    if (content != m.raw_length()) {
      return Status::Corruption(where + ": the zstd frame does not declare " + std::to_string(m.raw_length()) +
                                " content bytes");
    }
    BLKREP_ASSIGN_OR_RETURN(std::byte * out, RawBuffer(m.raw_length()));
    std::size_t got = ZSTD_decompressDCtx(dctx_.get(), out, m.raw_length(), m.payload().data(), m.payload().size());
    if (ZSTD_isError(got)) {
      return Status::Corruption(where + ": zstd payload does not decompress: " + ZSTD_getErrorName(got));
    }
    if (got != m.raw_length()) {
      return Status::Corruption(where + ": zstd payload decompresses to " + std::to_string(got) + " bytes, not " +
                                std::to_string(m.raw_length()));
    }
    raw = std::span<const std::byte>(out, m.raw_length());
  } else if (in_place_) {
    BLKREP_ASSIGN_OR_RETURN(std::byte * out, RawBuffer(m.raw_length()));
    std::memcpy(out, m.payload().data(), m.raw_length());
    raw = std::span<const std::byte>(out, m.raw_length());
  } else {
    raw = std::as_bytes(std::span(m.payload().data(), m.payload().size()));
  }
  const std::uint64_t bs = v.info->block_size_bytes();
  IndexRecord record;
  record.kind = RecordKind::kData;
  record.attempt = attempt_;
  record.first_block = m.first_block();
  record.block_count = m.block_count();
  record.hashes.assign(m.hashes().begin(), m.hashes().end());
  for (std::uint32_t i = 0; i < m.block_count(); ++i) {
    std::span<const std::byte> block = raw.subspan(i * bs, std::min<std::uint64_t>(bs, raw.size() - i * bs));
    if (core::Xxh3_64(block) != record.hashes[i]) {
      return Status::Corruption("BLOCKS frame: block " + std::to_string(m.first_block() + i) + " of volume " + name +
                                ": hash mismatch (the data is not what the shipper read)");
    }
  }
  if (in_place_) {
    BLKREP_RETURN_IF_ERROR(DropBeforeOverwrite(v, m.first_block(), m.block_count()));
    BLKREP_RETURN_IF_ERROR(in_place_writer_.Submit(*v.replica, m.first_block() * bs, raw.size()));
    v.replica_dirty = true;
  } else {
    record.first_slot = v.next_slot;
    BLKREP_RETURN_IF_ERROR(v.staging->WriteData(v.next_slot, raw));
    v.next_slot += m.block_count();
  }
  v.staging->AddRecord(record);
  v.covered.SetRange(m.first_block(), m.block_count());
  v.data_blocks += m.block_count();
  batch_bytes_ += raw.size();
  if (report_ != nullptr) report_->data_blocks += m.block_count();
  return Status::Ok();
}

Status Session::OnZeroes(const proto::Zeroes& m) {
  VolumeSession& v = volumes_[m.volume()];
  BLKREP_RETURN_IF_ERROR(CheckCoverage("ZEROES", v, m.first_block(), m.block_count()));
  if (in_place_) {
    BLKREP_RETURN_IF_ERROR(DropBeforeOverwrite(v, m.first_block(), m.block_count()));
    const std::uint32_t bs = v.info->block_size_bytes();
    BLKREP_RETURN_IF_ERROR(v.replica->WriteZeroes(
        m.first_block() * bs, RangeBytes(v.info->size_bytes(), bs, m.first_block(), m.block_count()),
        /*allow_unmap=*/true));
    v.replica_dirty = true;
  }
  IndexRecord record;
  record.kind = RecordKind::kZero;
  record.attempt = attempt_;
  record.first_block = m.first_block();
  record.block_count = m.block_count();
  v.staging->AddRecord(record);
  v.covered.SetRange(m.first_block(), m.block_count());
  v.zero_blocks += m.block_count();
  if (report_ != nullptr) report_->zero_blocks += m.block_count();
  return Status::Ok();
}

Status Session::OnKeep(const proto::Keep& m) {
  VolumeSession& v = volumes_[m.volume()];
  const std::string& name = v.info->name();
  if ((features_ & proto::kFeatureResume) == 0) {
    return Status::Corruption("KEEP frame for volume " + name + ", but resume was not negotiated");
  }
  const std::uint64_t count = static_cast<std::uint64_t>(m.hashes_size());
  BLKREP_RETURN_IF_ERROR(CheckCoverage("KEEP", v, m.first_block(), count));
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t block = m.first_block() + i;
    const StagedBlock* staged = v.candidates.Find(block);
    if (staged == nullptr) {
      return Status::Corruption("KEEP frame: block " + std::to_string(block) + " of volume " + name +
                                " is not staged");
    }
    if (staged->hash != m.hashes(static_cast<int>(i))) {
      return Status::Corruption("KEEP frame: block " + std::to_string(block) + " of volume " + name +
                                ": the hash differs from the staged block's");
    }
  }
  IndexRecord record;
  record.kind = RecordKind::kKeep;
  record.attempt = attempt_;
  record.first_block = m.first_block();
  record.block_count = count;
  record.hashes.assign(m.hashes().begin(), m.hashes().end());
  v.staging->AddRecord(record);
  v.covered.SetRange(m.first_block(), count);
  v.kept_blocks += count;
  if (report_ != nullptr) report_->kept_blocks += count;
  return Status::Ok();
}

Status Session::OnCycleEnd(const proto::CycleEnd& m) {
  const std::string what = "CYCLE_END frame: ";
  if (m.cycle_id() != cycle_id_) {
    return Status::Corruption(what + "cycle " + std::to_string(m.cycle_id()) + ", but CYCLE_BEGIN began cycle " +
                              std::to_string(cycle_id_));
  }
  std::vector<bool> seen(volumes_.size());
  for (const proto::VolumeCount& c : m.volumes()) {
    VolumeSession& v = volumes_[c.volume()];
    const std::string& name = v.info->name();
    if (!v.in_cycle) return Status::Corruption(what + "volume " + name + " is not part of the cycle");
    if (seen[c.volume()]) return Status::Corruption(what + "volume " + name + " twice");
    seen[c.volume()] = true;
    const std::uint64_t sent = v.data_blocks + v.zero_blocks + v.kept_blocks;
    if (c.matched_blocks() != (compares_ && v.block_count >= sent ? v.block_count - sent : 0)) {
      return Status::Corruption(what + "volume " + name + ": the shipper counts " + std::to_string(c.matched_blocks()) +
                                " blocks equal on both sides, but " + std::to_string(sent) + " of the " +
                                std::to_string(v.block_count) + " blocks of the " + ModeName(mode_) +
                                " cycle were sent");
    }
    if (c.data_blocks() != v.data_blocks || c.zero_blocks() != v.zero_blocks || c.kept_blocks() != v.kept_blocks) {
      return Status::Corruption(what + "volume " + name + ": the shipper counts " + std::to_string(c.data_blocks()) +
                                " data, " + std::to_string(c.zero_blocks()) + " zero, " +
                                std::to_string(c.kept_blocks()) + " kept blocks; received were " +
                                std::to_string(v.data_blocks) + ", " + std::to_string(v.zero_blocks) + ", " +
                                std::to_string(v.kept_blocks));
    }
  }
  for (const VolumeSession& v : volumes_) {
    if (!v.in_cycle) continue;
    if (!seen[v.index]) return Status::Corruption(what + "no counts for volume " + v.info->name());
    std::uint64_t covered = v.data_blocks + v.zero_blocks + v.kept_blocks;
    if (!compares_ && covered != v.block_count) {
      return Status::Corruption(what + "volume " + v.info->name() + ": " + std::to_string(covered) + " of the " +
                                std::to_string(v.block_count) + " blocks of the cycle were sent");
    }
  }
  if (hasher_ != nullptr) {
    // The shipper compared every block, so it must have let every hash be
    // sent; else the hasher would wait for credit forever.
    if (hasher_->credited() + hasher_->window_blocks() < hasher_->total_blocks()) {
      return Status::Corruption(what + "before the shipper granted credit for all " +
                                std::to_string(hasher_->total_blocks()) + " hashes (" +
                                std::to_string(hasher_->credited()) + " consumed)");
    }
    Status hashed = hasher_->Finish();
    hasher_.reset();
    BLKREP_RETURN_IF_ERROR(hashed);
  }
  return Status::Ok();
}

Status Session::FlushVolume(VolumeSession& v) {
  // The data before anything that refers to it (invariant: a durable index
  // record describes durable bytes).
  BLKREP_RETURN_IF_ERROR(in_place_writer_.Drain());
  if (v.replica_dirty) {
    BLKREP_RETURN_IF_ERROR(v.replica->Flush());
    v.replica_dirty = false;
  }
  return v.staging->Flush();
}

Status Session::FlushBatch() {
  for (VolumeSession& v : volumes_) {
    if (v.in_cycle && v.staging != nullptr) BLKREP_RETURN_IF_ERROR(FlushVolume(v));
  }
  batch_bytes_ = 0;
  return Status::Ok();
}

Status Session::Commit() {
  if (verify_) {
    // Nothing to commit: the ACK ends the verify.
    proto::Ack ack;
    ack.set_cycle_id(cycle_id_);
    for (const VolumeSession& v : volumes_) ack.add_committed_epochs(v.reported_committed_epoch);
    ack.set_bytes_received(reader_.bytes_received());
    return writer_.Send(FrameType::kAck, ack);
  }
  BLKREP_RETURN_IF_ERROR(FlushBatch());
  for (VolumeSession& v : volumes_) {
    if (!v.in_cycle) continue;
    VolumeState& vs = *state_.Find(v.info->name());
    vs.data_blocks = v.data_blocks;
    vs.zero_blocks = v.zero_blocks;
    vs.kept_blocks = v.kept_blocks;
    vs.size_bytes = v.info->size_bytes();
    vs.block_size_bytes = v.info->block_size_bytes();
    // The file this cycle wrote in place or is to be applied to, so a later
    // session that redoes the apply finds out if it was replaced since.
    BLKREP_ASSIGN_OR_RETURN(vs.replica, IdentityOfOpen(*v.replica));
  }
  state_.apply_pending = true;
  BLKREP_RETURN_IF_ERROR(WriteGuestStateFile(fs_, guest_dir_, state_));
  BLKREP_RETURN_IF_ERROR(Crash("apply-pending"));
  BLKREP_RETURN_IF_ERROR(FinishApply(recovery_points_));
  // The cycle brought every diverged block (the shipper took them, or
  // compared or copied every block): the replica is its epoch exactly.
  for (const VolumeSession& v : volumes_) {
    if (v.in_cycle) BLKREP_RETURN_IF_ERROR(RemoveDiverged(fs_, guest_dir_, v.info->name()));
  }
  if (report_ != nullptr) report_->committed = true;
  proto::Ack ack;
  ack.set_cycle_id(cycle_id_);
  for (const VolumeSession& v : volumes_) {
    const VolumeState* vs = state_.Find(v.info->name());
    ack.add_committed_epochs(vs != nullptr ? vs->committed_epoch : 0);
  }
  ack.set_bytes_received(reader_.bytes_received());
  return writer_.Send(FrameType::kAck, ack);
}

Result<std::vector<BlockRange>> Session::ApplyRanges(const VolumeState& vs) {
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<StagingFiles> staging,
                          StagingFiles::Open(fs_, staging_dir_, vs.name, vs.staging.staging_id,
                                             vs.staging.block_size_bytes));
  std::vector<BlockRange> ranges;
  BLKREP_RETURN_IF_ERROR(staging->ForEachRecord([&](const IndexRecord& r) -> Status {
    if (r.attempt == state_.attempt && r.kind != RecordKind::kDrop) ranges.push_back({r.first_block, r.block_count});
    return Status::Ok();
  }));
  std::sort(ranges.begin(), ranges.end(), [](const BlockRange& a, const BlockRange& b) { return a.first < b.first; });
  std::vector<BlockRange> merged;
  for (const BlockRange& r : ranges) {
    if (!merged.empty() && r.first <= merged.back().first + merged.back().count) {
      merged.back().count = std::max(merged.back().count, r.first + r.count - merged.back().first);
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

Status Session::FinishApply(std::optional<std::uint32_t> recovery_points) {
  // Before the first block is written: the undo data of a staged cycle
  // (durable), or the points dropped (recovery_points.h).
  PointsApply points;
  BLKREP_RETURN_IF_ERROR(PrepareApply(
      fs_, options_.replica_dir, guest_, state_, recovery_points,
      [this](const VolumeState& vs) { return ApplyRanges(vs); }, &points));
  BLKREP_RETURN_IF_ERROR(Crash("points-captured"));
  std::vector<std::string> failed;
  std::string failures;
  for (VolumeState& vs : state_.volumes) {
    if (!vs.in_cycle) continue;
    StagingFiles* staging = nullptr;
    core::FileBlockDevice* replica = nullptr;
    for (VolumeSession& v : volumes_) {
      if (v.in_cycle && v.info->name() == vs.name) {
        staging = v.staging.get();
        replica = v.replica.get();
      }
    }
    Status s = ApplyVolume(vs, staging, replica);
    if (crashed_) return s;
    if (s.code() == core::Code::kCorruption) {
      // The staging cannot bring this replica to the cycle, and the apply
      // may have begun: the replica is no complete cycle any more, and the
      // state says so (the next cycle of it must be full or resync).
      failed.push_back(vs.name);
      failures += (failures.empty() ? "" : "; ") + s.ToString();
      continue;
    }
    BLKREP_RETURN_IF_ERROR(s);
  }
  BLKREP_RETURN_IF_ERROR(Crash("applied"));
  std::vector<std::string> staged;
  for (VolumeState& vs : state_.volumes) {
    if (!vs.in_cycle) continue;
    if (std::find(failed.begin(), failed.end(), vs.name) == failed.end()) {
      vs.committed_epoch = vs.cycle_epoch;
      vs.incomplete = false;
    } else {
      vs.incomplete = true;
    }
    vs.in_cycle = false;
    vs.cycle_epoch = vs.cycle_block_count = 0;
    vs.data_blocks = vs.zero_blocks = vs.kept_blocks = 0;
    vs.staging = StagingInfo{};
    staged.push_back(vs.name);
  }
  state_.cycle_id = 0;
  state_.mode = 0;
  state_.apply_pending = false;
  BLKREP_RETURN_IF_ERROR(CommitHead(fs_, guest_dir_, points));
  BLKREP_RETURN_IF_ERROR(WriteGuestStateFile(fs_, guest_dir_, state_));
  // A volume that could not be applied holds no point: keep none.
  if (!failed.empty()) points.retain = 0;
  BLKREP_RETURN_IF_ERROR(Retain(fs_, guest_dir_, points));
  // The staging files are garbage now; one left behind by a crash is
  // harmless (its header names a staging the state no longer refers to).
  for (VolumeSession& v : volumes_) {
    v.staging.reset();
    v.candidates = StagedBlocks();
  }
  for (const std::string& name : staged) (void)StagingFiles::Remove(fs_, staging_dir_, name);
  if (!failures.empty()) return Status::Corruption("cannot apply cycle: " + failures);
  return Status::Ok();
}

Status Session::ApplyVolume(VolumeState& vs, StagingFiles* open_staging, core::FileBlockDevice* open_replica) {
  BLKREP_ASSIGN_OR_RETURN(std::string path, ReplicaPath(options_.replica_dir, guest_, vs.name));
  std::unique_ptr<core::FileBlockDevice> own_replica;
  if (open_replica == nullptr) {
    Result<std::unique_ptr<core::FileBlockDevice>> opened = OpenReplica(path);
    if (!opened.ok()) {
      // A replica that vanished cannot take the cycle: it is incomplete.
      if (opened.status().code() == core::Code::kNotFound) return Status::Corruption(opened.status().ToString());
      return opened.status();
    }
    own_replica = std::move(*opened);
    open_replica = own_replica.get();
  }
  core::FileBlockDevice& replica = *open_replica;
  if (own_replica != nullptr && vs.replica.known()) {
    // A later session redoing the apply: the replica must still be the file
    // the cycle was received for (its mtime may have moved by a partial
    // apply). Else the staging is for another file: the replica is
    // incomplete, and the next cycle compares or copies it whole.
    BLKREP_ASSIGN_OR_RETURN(ReplicaIdentity now, IdentityOfOpen(replica));
    if (!SameReplica(vs.replica, now, /*compare_mtime=*/false)) {
      return Status::Corruption("replica " + path + " is not the file cycle " + std::to_string(state_.cycle_id) +
                                " was received for (replaced)");
    }
  }
  if (vs.staging.in_place) {
    // The cycle is in the replica already.
    BLKREP_RETURN_IF_ERROR(replica.Flush());
    BLKREP_ASSIGN_OR_RETURN(vs.replica, IdentityOfOpen(replica));
    return Status::Ok();
  }

  const std::string what = "staging of volume " + vs.name;
  const std::uint32_t bs = vs.staging.block_size_bytes;
  const std::uint64_t size = vs.staging.volume_size_bytes;
  if (bs == 0 || vs.staging.staging_id == 0) return Status::Corruption(what + " is missing from the state file");
  if (replica.SizeBytes() < size) {
    return Status::Corruption("replica " + path + " has " + std::to_string(replica.SizeBytes()) + " bytes, not " +
                              std::to_string(size));
  }
  std::unique_ptr<StagingFiles> own_staging;
  if (open_staging == nullptr) {
    Result<std::unique_ptr<StagingFiles>> opened =
        StagingFiles::Open(fs_, staging_dir_, vs.name, vs.staging.staging_id, bs);
    if (!opened.ok()) {
      if (opened.status().code() == core::Code::kNotFound) return Status::Corruption(opened.status().ToString());
      return opened.status();
    }
    own_staging = std::move(*opened);
    open_staging = own_staging.get();
  }
  StagingFiles& staging = *open_staging;
  const std::uint64_t blocks = BlockCount(size, bs);
  BLKREP_ASSIGN_OR_RETURN(StagedBlocks candidates, staging.LoadCandidates(state_.attempt, blocks));

  std::vector<std::byte> buffer;
  // Copies the staged slots [slot, slot + count) to blocks [first, ...),
  // checking every block against its hash.
  auto copy = [&](std::uint64_t first, std::uint64_t count, std::uint64_t slot,
                  std::span<const std::uint64_t> hashes) -> Status {
    const std::uint64_t chunk_blocks = std::max<std::uint64_t>(1, kApplyChunkBytes / bs);
    for (std::uint64_t done = 0; done < count;) {
      std::uint64_t n = std::min(chunk_blocks, count - done);
      buffer.resize(RangeBytes(size, bs, first + done, n));
      BLKREP_RETURN_IF_ERROR(staging.ReadData(slot + done, buffer));
      for (std::uint64_t i = 0; i < n; ++i) {
        std::span<const std::byte> block =
            std::span(buffer).subspan(i * bs, std::min<std::uint64_t>(bs, buffer.size() - i * bs));
        if (core::Xxh3_64(block) != hashes[done + i]) {
          return Status::Corruption(what + ": staged block " + std::to_string(first + done + i) +
                                    " does not match its hash");
        }
      }
      BLKREP_RETURN_IF_ERROR(replica.Write((first + done) * bs, buffer));
      done += n;
    }
    return Status::Ok();
  };

  std::uint64_t data = 0, zero = 0, kept = 0;
  Status s = staging.ForEachRecord([&](const IndexRecord& r) -> Status {
    if (r.attempt != state_.attempt) {
      if (r.attempt > state_.attempt) return Status::Corruption(what + ": a record of a later attempt");
      return Status::Ok();
    }
    if (r.first_block >= blocks || r.block_count > blocks - r.first_block) {
      return Status::Corruption(what + ": a record lies past the end of the volume");
    }
    switch (r.kind) {
      case RecordKind::kData:
        if (r.first_slot == kNoSlot) return Status::Corruption(what + ": a data record without data");
        BLKREP_RETURN_IF_ERROR(copy(r.first_block, r.block_count, r.first_slot, r.hashes));
        data += r.block_count;
        break;
      case RecordKind::kZero:
        BLKREP_RETURN_IF_ERROR(replica.WriteZeroes(r.first_block * bs, RangeBytes(size, bs, r.first_block, r.block_count),
                                                   /*allow_unmap=*/true));
        zero += r.block_count;
        break;
      case RecordKind::kKeep: {
        // Runs of kept blocks whose staged slots are consecutive are copied
        // in one go.
        std::uint64_t i = 0;
        while (i < r.block_count) {
          const StagedBlock* start = candidates.Find(r.first_block + i);
          if (start == nullptr || start->slot == kNoSlot || start->hash != r.hashes[i]) {
            return Status::Corruption(what + ": kept block " + std::to_string(r.first_block + i) + " is not staged");
          }
          std::uint64_t n = 1;
          while (i + n < r.block_count) {
            const StagedBlock* b = candidates.Find(r.first_block + i + n);
            if (b == nullptr || b->slot != start->slot + n || b->hash != r.hashes[i + n]) break;
            ++n;
          }
          BLKREP_RETURN_IF_ERROR(copy(r.first_block + i, n, start->slot, std::span(r.hashes).subspan(i, n)));
          i += n;
        }
        kept += r.block_count;
        break;
      }
      case RecordKind::kDrop:
        return Status::Corruption(what + ": a drop record in a staged cycle");
    }
    return Crash("applied-record");
  });
  if (crashed_) return s;
  BLKREP_RETURN_IF_ERROR(s);
  if (data != vs.data_blocks || zero != vs.zero_blocks || kept != vs.kept_blocks) {
    return Status::Corruption(what + ": the index holds " + std::to_string(data) + " data, " + std::to_string(zero) +
                              " zero, " + std::to_string(kept) + " kept blocks of the cycle, CYCLE_END confirmed " +
                              std::to_string(vs.data_blocks) + ", " + std::to_string(vs.zero_blocks) + ", " +
                              std::to_string(vs.kept_blocks));
  }
  BLKREP_RETURN_IF_ERROR(replica.Flush());
  // Recorded with the commit: the mtime after the apply's last write.
  BLKREP_ASSIGN_OR_RETURN(vs.replica, IdentityOfOpen(replica));
  return Status::Ok();
}

}  // namespace

// docs/wire-protocol.md, "Removing a guest's replica"; docs/replica-format.md,
// "Removal". The guest's lock is held since HELLO.
Status Session::RemoveGuest(const proto::RemoveGuest& m) {
  if ((features_ & proto::kFeatureRemoveGuest) == 0) {
    return Status::Unsupported("REMOVE_GUEST frame: the feature was not negotiated in HELLO");
  }
  if (m.job() != job_) {
    return Status::InvalidArgument("REMOVE_GUEST frame: job " + m.job() + ", the session's job is " + job_);
  }
  if (!state_.job.empty() && state_.job != job_) {
    return Status::Aborted("the replica of guest " + guest_ + " belongs to job " + state_.job + ", not " + job_);
  }
  auto remove_tree = [&](const std::string& path) -> Status {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);  // never follows symlinks
    if (ec) return Status::IoError("remove " + path + ": " + ec.message());
    return Status::Ok();
  };
  if (!state_.job.empty()) {
    BLKREP_RETURN_IF_ERROR(remove_tree(staging_dir_));
    // The volumes the state knows and those the HELLO names.
    std::vector<std::string> names;
    for (const VolumeState& vs : state_.volumes) names.push_back(vs.name);
    for (const VolumeSession& v : volumes_) {
      if (std::find(names.begin(), names.end(), v.info->name()) == names.end()) names.push_back(v.info->name());
    }
    for (const std::string& name : names) {
      BLKREP_ASSIGN_OR_RETURN(std::string path, ReplicaPath(options_.replica_dir, guest_, name));
      // Diverged blocks of a demoted source: about a replica that goes.
      BLKREP_RETURN_IF_ERROR(RemoveDiverged(fs_, guest_dir_, name));
      struct stat st {};
      if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) continue;
        return core::ErrnoStatus(errno, "stat replica " + path);
      }
      // A block device, or a symlink (mapped elsewhere by the operator, or
      // a demoted source's own volume), is only forgotten: its data is not
      // erased, and the mapping stays for a later job of the guest.
      if (!S_ISREG(st.st_mode)) continue;
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) return core::ErrnoStatus(errno, "remove replica " + path);
    }
    BLKREP_RETURN_IF_ERROR(remove_tree(guest_dir_ + "/.points"));
    BLKREP_RETURN_IF_ERROR(fs_.SyncDir(guest_dir_));
    // Last: with the state gone nothing of the guest remains to vouch for.
    for (const char* name : {kStateFileName, "state.tmp"}) {
      std::string path = guest_dir_ + "/" + name;
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) return core::ErrnoStatus(errno, "remove " + path);
    }
  }
  // The lock goes with the directory: a session that opened it meanwhile
  // cannot take it while this one holds it, and fails.
  (void)::unlink((guest_dir_ + "/" + kLockFileName).c_str());
  (void)::rmdir(guest_dir_.c_str());  // kept when something else is in it (a symlinked replica)
  BLKREP_RETURN_IF_ERROR(fs_.SyncDir(options_.replica_dir));
  state_ = GuestState{};
  proto::Ack ack;
  ack.set_cycle_id(0);
  for (std::size_t i = 0; i < volumes_.size(); ++i) ack.add_committed_epochs(0);
  ack.set_bytes_received(reader_.bytes_received());
  return writer_.Send(FrameType::kAck, ack);
}

Status Session::FinishPendingApply(const std::string& guest) {
  guest_ = guest;
  guest_dir_ = options_.replica_dir + "/" + guest_;
  staging_dir_ = guest_dir_ + "/" + kStagingDirName;
  BLKREP_ASSIGN_OR_RETURN(state_, ReadGuestStateFile(fs_, guest_dir_));
  if (!state_.apply_pending) return Status::Ok();
  return FinishApply(std::nullopt);
}

namespace {

// A stream for a Session that talks to no one.
class NoStream : public proto::Stream {
 public:
  Status ReadFull(std::span<std::byte>) override { return Status::Internal("no peer"); }
  Status WriteAll(std::span<const std::byte>) override { return Status::Internal("no peer"); }
};

}  // namespace

Status FinishPendingApplyLocked(const std::string& replica_dir, const std::string& guest) {
  NoStream none;
  ReceiverOptions options;
  options.replica_dir = replica_dir;
  Session session(none, options, nullptr);
  return session.FinishPendingApply(guest);
}

Status ServeSession(proto::Stream& stream, const ReceiverOptions& options, SessionReport* report) {
  if (report != nullptr) *report = SessionReport{};
  Session session(stream, options, report);
  Status status = session.Run();
  if (report != nullptr) report->bytes_received = session.bytes_received();
  if (!status.ok() && !session.crashed() && !session.error_sent()) session.SendError(status);
  stream.CloseWrite();
  return status;
}

Result<GuestReplicaState> ReadGuestState(const std::string& replica_dir, const std::string& guest) {
  core::FileSystem& fs = core::PosixFileSystemInstance();
  // ReplicaPath checks the guest name; "x" is a valid volume name.
  BLKREP_RETURN_IF_ERROR(ReplicaPath(replica_dir, guest, "x").status());
  std::string guest_dir = replica_dir + "/" + guest;
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(guest_dir + "/" + kStateFileName));
  if (!exists) return Status::NotFound("the receiver holds no replica of guest " + guest + " under " + replica_dir);
  BLKREP_ASSIGN_OR_RETURN(GuestState state, ReadGuestStateFile(fs, guest_dir));
  GuestReplicaState out;
  out.guest = guest;
  out.job = state.job;
  out.apply_pending = state.apply_pending;
  for (const VolumeState& vs : state.volumes) {
    VolumeReplicaState v;
    v.name = vs.name;
    BLKREP_ASSIGN_OR_RETURN(v.path, ReplicaPath(replica_dir, guest, vs.name));
    v.size_bytes = vs.size_bytes;
    v.block_size_bytes = vs.block_size_bytes;
    v.committed_epoch = vs.committed_epoch;
    v.incomplete = vs.incomplete;
    out.volumes.push_back(std::move(v));
  }
  return out;
}

}  // namespace blkrep::receiver
