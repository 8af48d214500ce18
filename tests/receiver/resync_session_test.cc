// Comparing cycles on the receiver (docs/wire-protocol.md, "Comparing
// cycles (resync and verify)"): ServeSession driven over a socketpair by a
// scripted shipper that reads the replica's REPLICA_HASHES, compares them
// with its own image and sends only what differs, HASH_CREDIT and
// CYCLE_END. Replicas are real files in a TempDir; "no file changed" is
// checked on every file under the guest's directory but its lock (bytes,
// inode, mtime).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "proto/frame.h"
#include "receiver/receiver.h"
#include "receiver/replica_layout.h"
#include "tests/core/temp_dir.h"

namespace blkrep::receiver {
namespace {

using core::Status;
using core::test_support::Pattern;
using core::test_support::ReadFile;
using core::test_support::TempDir;
using core::test_support::WriteFile;
using proto::FrameType;

constexpr std::uint32_t kBlockBytes = 4096;
constexpr std::uint64_t kFeatures = proto::kFeatureZstd | proto::kFeatureResume | proto::kFeatureChecksumResync;
const char* const kGuest = "vm100";
const char* const kJob = "vm100-0";

std::uint64_t BlockCount(const std::vector<std::byte>& image) { return (image.size() + kBlockBytes - 1) / kBlockBytes; }

std::span<const std::byte> BlockOf(const std::vector<std::byte>& image, std::uint64_t block) {
  std::uint64_t start = block * kBlockBytes;
  return std::span(image).subspan(start, std::min<std::uint64_t>(kBlockBytes, image.size() - start));
}

struct Volume {
  std::string name;
  std::vector<std::byte> image;  // the source
};

// ServeSession on one end of a socketpair in a thread; the test is the
// shipper on the other end.
class ReceiverThread {
 public:
  explicit ReceiverThread(ReceiverOptions options) : options_(std::move(options)) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
    fd_ = fds[0];
    shipper_ = std::make_unique<proto::FdStream>(fds[0], fds[0], true);
    thread_ = std::thread([this, fd = fds[1]] {
      proto::FdStream stream(fd, fd, true);
      status_ = ServeSession(stream, options_, &report_);
    });
  }
  ~ReceiverThread() { (void)Join(); }

  proto::Stream& stream() { return *shipper_; }
  // True when the receiver sent something within `timeout_ms`.
  bool Readable(int timeout_ms) const {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, timeout_ms) == 1;
  }
  // Closes the shipper's sending side and waits for the session to end.
  Status Join() {
    if (thread_.joinable()) {
      shipper_->CloseWrite();
      thread_.join();
    }
    return status_;
  }
  const SessionReport& report() const { return report_; }

 private:
  ReceiverOptions options_;
  int fd_ = -1;
  std::unique_ptr<proto::FdStream> shipper_;
  std::thread thread_;
  Status status_;
  SessionReport report_;
};

// The shipper's side of a session, one call per frame.
class ScriptedShipper {
 public:
  ScriptedShipper(proto::Stream& stream, const std::vector<Volume>& volumes)
      : writer_(stream), reader_(stream), volumes_(volumes) {
    for (const Volume& v : volumes) {
      proto::VolumeInfo info;
      info.set_name(v.name);
      info.set_size_bytes(v.image.size());
      info.set_block_size_bytes(kBlockBytes);
      context_.volumes.push_back(info);
    }
  }

  // HELLO, then HELLO_REPLY and the staged list up to STAGED_END.
  core::Result<proto::HelloReply> Hello(std::uint64_t features = kFeatures) {
    proto::Hello m;
    m.set_protocol_version(1);
    m.set_min_protocol_version(1);
    m.set_feature_flags(features);
    m.set_guest(kGuest);
    m.set_job(kJob);
    for (const auto& v : context_.volumes) *m.add_volumes() = v;
    BLKREP_RETURN_IF_ERROR(writer_.Send(FrameType::kHello, m));
    BLKREP_ASSIGN_OR_RETURN(proto::Message reply, proto::ReadMessage(reader_, context_, {FrameType::kHelloReply}));
    for (;;) {
      BLKREP_ASSIGN_OR_RETURN(proto::Message n, proto::ReadMessage(reader_, context_, {FrameType::kStagedHashes,
                                                                                       FrameType::kStagedEnd}));
      if (std::holds_alternative<proto::StagedEnd>(n)) break;
    }
    return std::get<proto::HelloReply>(reply);
  }

  // CYCLE_BEGIN over the volumes `which` (HELLO indexes), each whole.
  Status Begin(std::uint64_t cycle_id, proto::CycleMode mode, std::uint64_t epoch, std::uint64_t base_epoch,
               std::uint32_t window_blocks, const std::vector<std::uint32_t>& which) {
    proto::CycleBegin m;
    m.set_cycle_id(cycle_id);
    m.set_mode(mode);
    m.set_hash_window_blocks(window_blocks);
    for (std::uint32_t i : which) {
      proto::VolumeCycle* v = m.add_volumes();
      v->set_volume(i);
      v->set_epoch(epoch);
      v->set_base_epoch(base_epoch);
      v->set_block_count(BlockCount(volumes_[i].image));
    }
    return writer_.Send(FrameType::kCycleBegin, m);
  }

  // Reads one REPLICA_HASHES frame; it must continue where the last one
  // ended (volume by volume in `order`, block by block).
  Status ReadHashes(const std::vector<std::uint32_t>& order) {
    BLKREP_ASSIGN_OR_RETURN(proto::Message m, proto::ReadMessage(reader_, context_, {FrameType::kReplicaHashes}));
    const auto& r = std::get<proto::ReplicaHashes>(m);
    while (next_volume_ < order.size() && next_block_ == BlockCount(volumes_[order[next_volume_]].image)) {
      ++next_volume_;
      next_block_ = 0;
    }
    if (next_volume_ == order.size()) return Status::Corruption("REPLICA_HASHES after the last block");
    if (r.volume() != order[next_volume_] || r.first_block() != next_block_) {
      return Status::Corruption("REPLICA_HASHES out of order: volume " + std::to_string(r.volume()) + " block " +
                                std::to_string(r.first_block()));
    }
    const auto* bytes = reinterpret_cast<const std::byte*>(r.hashes().data());
    for (std::size_t i = 0; i < r.hashes().size(); i += proto::kReplicaHashBytes) {
      hashes_[r.volume()].push_back({core::LoadLe64(bytes + i), core::LoadLe64(bytes + i + 8)});
    }
    const std::uint64_t count = r.hashes().size() / proto::kReplicaHashBytes;
    next_block_ += count;
    received_ += count;
    return Status::Ok();
  }
  Status ReadHashesUntil(std::uint64_t total, const std::vector<std::uint32_t>& order) {
    while (received_ < total) BLKREP_RETURN_IF_ERROR(ReadHashes(order));
    return Status::Ok();
  }
  // The blocks of volume `vol` whose replica hash differs from the source's.
  std::vector<std::uint64_t> Differing(std::uint32_t vol) {
    std::vector<std::uint64_t> out;
    const std::vector<core::Hash128>& got = hashes_[vol];
    for (std::uint64_t b = 0; b < got.size(); ++b) {
      if (!(core::Xxh3_128(BlockOf(volumes_[vol].image, b)) == got[b])) out.push_back(b);
    }
    return out;
  }

  Status Credit(std::uint64_t consumed) {
    proto::HashCredit m;
    m.set_consumed_blocks(consumed);
    return writer_.Send(FrameType::kHashCredit, m);
  }
  Status Data(std::uint32_t vol, std::uint64_t block) {
    std::span<const std::byte> raw = BlockOf(volumes_[vol].image, block);
    proto::Blocks m;
    m.set_volume(vol);
    m.set_first_block(block);
    m.set_block_count(1);
    m.set_raw_length(static_cast<std::uint32_t>(raw.size()));
    m.set_payload(reinterpret_cast<const char*>(raw.data()), raw.size());
    m.add_hashes(core::Xxh3_64(raw));
    return writer_.Send(FrameType::kBlocks, m);
  }
  Status Zeroes(std::uint32_t vol, std::uint64_t first, std::uint64_t count) {
    proto::Zeroes m;
    m.set_volume(vol);
    m.set_first_block(first);
    m.set_block_count(count);
    return writer_.Send(FrameType::kZeroes, m);
  }
  struct Count {
    std::uint32_t volume = 0;
    std::uint64_t data = 0, zero = 0, kept = 0, matched = 0;
  };
  Status End(std::uint64_t cycle_id, const std::vector<Count>& counts) {
    proto::CycleEnd m;
    m.set_cycle_id(cycle_id);
    for (const Count& c : counts) {
      proto::VolumeCount* v = m.add_volumes();
      v->set_volume(c.volume);
      v->set_data_blocks(c.data);
      v->set_zero_blocks(c.zero);
      v->set_kept_blocks(c.kept);
      v->set_matched_blocks(c.matched);
    }
    return writer_.Send(FrameType::kCycleEnd, m);
  }
  // The ACK, or the receiver's ERROR as a status ("peer: ...").
  core::Result<proto::Ack> ReadAck() {
    BLKREP_ASSIGN_OR_RETURN(proto::Message m, proto::ReadMessage(reader_, context_, {FrameType::kAck}));
    return std::get<proto::Ack>(m);
  }

  std::uint64_t received() const { return received_; }

 private:
  proto::FrameWriter writer_;
  proto::FrameReader reader_;
  proto::SessionContext context_;
  const std::vector<Volume>& volumes_;
  std::map<std::uint32_t, std::vector<core::Hash128>> hashes_;
  std::size_t next_volume_ = 0;
  std::uint64_t next_block_ = 0;
  std::uint64_t received_ = 0;
};

// What is under a directory: per path, the bytes, the inode and the mtime,
// so an atomic replace with the same bytes counts as a change too. The
// session lock `.lock` is left out: every session writes its pid there.
struct FileSnapshot {
  std::vector<std::byte> bytes;
  ino_t inode = 0;
  std::int64_t mtime_ns = 0;
  bool operator==(const FileSnapshot&) const = default;
};

std::map<std::string, FileSnapshot> Snapshot(const std::string& dir) {
  std::map<std::string, FileSnapshot> out;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.path().filename() == ".lock") continue;
    struct stat st{};
    if (::stat(entry.path().c_str(), &st) != 0) continue;
    FileSnapshot f;
    if (entry.is_regular_file()) f.bytes = ReadFile(entry.path());
    f.inode = st.st_ino;
    f.mtime_ns = std::int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    out[entry.path().string()] = std::move(f);
  }
  return out;
}

class ResyncSessionTest : public ::testing::Test {
 protected:
  // One volume of 16 blocks, the last one short (1000 bytes), committed at
  // epoch 1 by a full cycle.
  void SetUp() override {
    std::vector<std::byte> image = Pattern(15 * kBlockBytes + 1000, 7);
    std::fill_n(image.begin() + 8 * kBlockBytes, kBlockBytes, std::byte{0});  // one zero block
    volumes_ = {{"disk0", image}};
    ASSERT_NO_FATAL_FAILURE(RunFull(volumes_, 1));
  }

  ReceiverOptions Options() const {
    ReceiverOptions o;
    o.replica_dir = dir_.path() + "/replicas";
    return o;
  }
  std::string Replica(const std::string& name) const { return *ReplicaPath(Options().replica_dir, kGuest, name); }
  std::string GuestDir() const { return Options().replica_dir + "/" + kGuest; }

  // A full cycle of every block of `volumes` bringing them to `epoch`.
  void RunFull(const std::vector<Volume>& volumes, std::uint64_t epoch) {
    ReceiverThread receiver(Options());
    ScriptedShipper shipper(receiver.stream(), volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    std::vector<std::uint32_t> all;
    for (std::uint32_t i = 0; i < volumes.size(); ++i) all.push_back(i);
    ASSERT_TRUE(shipper.Begin(epoch, proto::CYCLE_MODE_FULL, epoch, 0, 0, all).ok());
    std::vector<ScriptedShipper::Count> counts;
    for (std::uint32_t i = 0; i < volumes.size(); ++i) {
      for (std::uint64_t b = 0; b < BlockCount(volumes[i].image); ++b) ASSERT_TRUE(shipper.Data(i, b).ok());
      counts.push_back({i, BlockCount(volumes[i].image), 0, 0, 0});
    }
    ASSERT_TRUE(shipper.End(epoch, counts).ok());
    auto ack = shipper.ReadAck();
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    Status s = receiver.Join();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // Reads the state file at every crash_hook point of a session, as a
  // receiver restarted there would; stops the session at `stop_at`.
  struct StateProbe {
    std::vector<std::string> points;
    std::map<std::string, GuestReplicaState> states;  // by point
    std::vector<std::string> unreadable;              // "POINT: why"
  };
  ReceiverOptions Probing(StateProbe& probe, std::string stop_at = "") const {
    ReceiverOptions options = Options();
    options.crash_hook = [this, &probe, stop_at](std::string_view point) {
      probe.points.emplace_back(point);
      auto state = ReadGuestState(Options().replica_dir, kGuest);
      if (state.ok()) {
        probe.states[std::string(point)] = *state;
      } else {
        probe.unreadable.push_back(std::string(point) + ": " + state.status().ToString());
      }
      return point == stop_at ? Status::Aborted("stopped at " + stop_at) : Status::Ok();
    };
    return options;
  }
  // A session that only asks for the replica state; it must succeed.
  proto::HelloReply AskState(const std::vector<Volume>& volumes) {
    ReceiverThread receiver(Options());
    ScriptedShipper shipper(receiver.stream(), volumes);
    auto reply = shipper.Hello();
    EXPECT_TRUE(reply.ok()) << "the next session cannot serve the guest: " << reply.status().ToString();
    Status s = receiver.Join();
    EXPECT_TRUE(s.ok()) << s.ToString();
    return reply.ok() ? *reply : proto::HelloReply{};
  }
  // The source changes under a lost journal: block 3 new data, block 11 zeroes.
  void ChangeSource() {
    std::vector<std::byte> fresh = Pattern(kBlockBytes, 99);
    std::copy(fresh.begin(), fresh.end(), volumes_[0].image.begin() + 3 * kBlockBytes);
    std::fill_n(volumes_[0].image.begin() + 11 * kBlockBytes, kBlockBytes, std::byte{0});
  }
  // The resync of ChangeSource()'s two blocks, epoch on base; the ACK or the
  // receiver's failure.
  core::Result<proto::Ack> ResyncTwoBlocks(ReceiverThread& receiver, std::uint64_t epoch, std::uint64_t base) {
    ScriptedShipper shipper(receiver.stream(), volumes_);
    BLKREP_RETURN_IF_ERROR(shipper.Hello().status());
    BLKREP_RETURN_IF_ERROR(shipper.Begin(7, proto::CYCLE_MODE_RESYNC, epoch, base, 16, {0}));
    BLKREP_RETURN_IF_ERROR(shipper.ReadHashesUntil(16, {0}));
    if (shipper.Differing(0) != std::vector<std::uint64_t>{3, 11}) return Status::Internal("other blocks differ");
    BLKREP_RETURN_IF_ERROR(shipper.Data(0, 3));
    BLKREP_RETURN_IF_ERROR(shipper.Zeroes(0, 11, 1));
    BLKREP_RETURN_IF_ERROR(shipper.Credit(16));
    BLKREP_RETURN_IF_ERROR(shipper.End(7, {{0, 1, 1, 0, 14}}));
    return shipper.ReadAck();
  }

  TempDir dir_;
  std::vector<Volume> volumes_;
};

TEST_F(ResyncSessionTest, StagedResyncSendsOnlyDifferingBlocksAndCommitsThemAtomically) {
  const std::vector<std::byte> committed = ReadFile(Replica("disk0"));
  ASSERT_EQ(committed, volumes_[0].image);
  ChangeSource();

  // At "apply-pending" every frame was received and checked: the replica
  // must still hold the committed cycle, and not be marked incomplete.
  ReceiverOptions options = Options();
  std::vector<std::string> points;
  std::vector<std::byte> at_apply_pending;
  bool incomplete_at_apply_pending = true;
  options.crash_hook = [&](std::string_view point) {
    points.emplace_back(point);
    if (point == "apply-pending") {
      at_apply_pending = ReadFile(Replica("disk0"));
      auto state = ReadGuestState(Options().replica_dir, kGuest);
      incomplete_at_apply_pending = !state.ok() || state->volumes.at(0).incomplete;
      if (!state.ok()) ADD_FAILURE() << "the state file at apply-pending: " << state.status().ToString();
    }
    return Status::Ok();
  };
  ReceiverThread receiver(options);
  ScriptedShipper shipper(receiver.stream(), volumes_);
  auto reply = shipper.Hello();
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(reply->feature_flags() & proto::kFeatureChecksumResync, proto::kFeatureChecksumResync);
  EXPECT_EQ(reply->volumes(0).committed_epoch(), 1u);
  // Epoch 2 on the replica's committed epoch 1.
  ASSERT_TRUE(shipper.Begin(7, proto::CYCLE_MODE_RESYNC, 2, 1, 16, {0}).ok());
  Status hashed = shipper.ReadHashesUntil(16, {0});
  ASSERT_TRUE(hashed.ok()) << hashed.ToString();
  EXPECT_EQ(shipper.Differing(0), (std::vector<std::uint64_t>{3, 11}))
      << "the replica's hashes are not the xxh3-128 of its blocks";
  ASSERT_TRUE(shipper.Data(0, 3).ok());
  ASSERT_TRUE(shipper.Zeroes(0, 11, 1).ok());
  ASSERT_TRUE(shipper.Credit(16).ok());
  ASSERT_TRUE(shipper.End(7, {{0, 1, 1, 0, 14}}).ok());
  auto ack = shipper.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->cycle_id(), 7u);
  ASSERT_EQ(ack->committed_epochs_size(), 1);
  EXPECT_EQ(ack->committed_epochs(0), 2u);
  Status s = receiver.Join();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(receiver.report().mode, "resync");
  EXPECT_TRUE(receiver.report().committed);
  EXPECT_EQ(receiver.report().data_blocks, 1u);
  EXPECT_EQ(receiver.report().zero_blocks, 1u);

  EXPECT_NE(std::find(points.begin(), points.end(), "apply-pending"), points.end());
  EXPECT_TRUE(at_apply_pending == committed) << "a staged resync wrote the replica before the commit";
  EXPECT_FALSE(incomplete_at_apply_pending) << "a staged resync marked the replica incomplete";
  EXPECT_TRUE(ReadFile(Replica("disk0")) == volumes_[0].image) << "the committed replica differs from the source";
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_EQ(state->volumes[0].committed_epoch, 2u);
  EXPECT_FALSE(state->volumes[0].incomplete);
  EXPECT_FALSE(state->apply_pending);
}

// ---- a resync cut off or crashed: the state file must stay readable ----

TEST_F(ResyncSessionTest, StagedResyncCutOffAfterCycleBeginLeavesAGuestTheNextSessionServes) {
  const std::vector<std::byte> committed = ReadFile(Replica("disk0"));
  ChangeSource();
  StateProbe probe;
  {
    ReceiverThread receiver(Probing(probe, "cycle-begun"));
    EXPECT_FALSE(ResyncTwoBlocks(receiver, 2, 1).ok());
    EXPECT_EQ(receiver.Join().code(), core::Code::kAborted);
  }
  EXPECT_TRUE(probe.unreadable.empty()) << probe.unreadable.front();
  proto::HelloReply reply = AskState(volumes_);
  ASSERT_EQ(reply.volumes_size(), 1);
  EXPECT_EQ(reply.volumes(0).committed_epoch(), 1u);
  EXPECT_FALSE(reply.volumes(0).incomplete()) << "a staged resync is not written in place";
  EXPECT_TRUE(ReadFile(Replica("disk0")) == committed);
}

TEST_F(ResyncSessionTest, StagedResyncCrashedAtApplyPendingIsFinishedByTheNextSession) {
  const std::vector<std::byte> committed = ReadFile(Replica("disk0"));
  ChangeSource();
  StateProbe probe;
  {
    ReceiverThread receiver(Probing(probe, "apply-pending"));
    EXPECT_FALSE(ResyncTwoBlocks(receiver, 2, 1).ok());
    EXPECT_EQ(receiver.Join().code(), core::Code::kAborted);
  }
  EXPECT_TRUE(probe.unreadable.empty()) << probe.unreadable.front();
  EXPECT_TRUE(ReadFile(Replica("disk0")) == committed) << "applied before the state said so";
  proto::HelloReply reply = AskState(volumes_);  // redoes the apply first
  ASSERT_EQ(reply.volumes_size(), 1);
  EXPECT_EQ(reply.volumes(0).committed_epoch(), 2u);
  EXPECT_TRUE(ReadFile(Replica("disk0")) == volumes_[0].image) << "the redone apply did not give the source";
}

TEST_F(ResyncSessionTest, ResyncOnABaseNotBeforeItsEpochCommits) {
  // The source's journal was recreated and counts from 1 again; the replica
  // is at 1 of the old one: base 1, epoch 1 (the wire allows base >= epoch).
  ChangeSource();
  StateProbe probe;
  ReceiverThread receiver(Probing(probe));
  auto ack = ResyncTwoBlocks(receiver, 1, 1);
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->committed_epochs(0), 1u);
  ASSERT_TRUE(receiver.Join().ok());
  EXPECT_TRUE(probe.unreadable.empty()) << probe.unreadable.front();
  EXPECT_TRUE(ReadFile(Replica("disk0")) == volumes_[0].image);
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_EQ(state->volumes[0].committed_epoch, 1u);
}

TEST_F(ResyncSessionTest, ResyncWithAMissingReplicaWritesInPlaceAndSendsOnlyWhatDiffers) {
  // disk1 is new: its replica does not exist, so the whole resync is in
  // place (disk0 too) and the replicas are incomplete until the commit.
  volumes_.push_back({"disk1", Pattern(16 * kBlockBytes, 8)});
  StateProbe probe;
  ReceiverThread receiver(Probing(probe));
  ScriptedShipper shipper(receiver.stream(), volumes_);
  auto reply = shipper.Hello();
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_FALSE(reply->volumes(1).exists());
  ASSERT_TRUE(shipper.Begin(7, proto::CYCLE_MODE_RESYNC, 2, 1, 32, {0, 1}).ok());
  ASSERT_TRUE(shipper.ReadHashesUntil(32, {0, 1}).ok());
  EXPECT_TRUE(shipper.Differing(0).empty());
  ASSERT_EQ(shipper.Differing(1).size(), 16u);  // a fresh replica reads as zeroes
  for (std::uint64_t b = 0; b < 16; ++b) ASSERT_TRUE(shipper.Data(1, b).ok());
  ASSERT_TRUE(shipper.Credit(32).ok());
  ASSERT_TRUE(shipper.End(7, {{0, 0, 0, 0, 16}, {1, 16, 0, 0, 0}}).ok());
  auto ack = shipper.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->committed_epochs(0), 2u);
  EXPECT_EQ(ack->committed_epochs(1), 2u);
  ASSERT_TRUE(receiver.Join().ok());
  EXPECT_TRUE(probe.unreadable.empty()) << probe.unreadable.front();
  ASSERT_TRUE(probe.states.count("cycle-begun"));
  for (const VolumeReplicaState& v : probe.states["cycle-begun"].volumes) {
    EXPECT_TRUE(v.incomplete) << v.name << " is not marked incomplete while written in place";
  }
  for (const Volume& v : volumes_) EXPECT_TRUE(ReadFile(Replica(v.name)) == v.image) << v.name;
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  for (const VolumeReplicaState& v : state->volumes) {
    EXPECT_EQ(v.committed_epoch, 2u) << v.name;
    EXPECT_FALSE(v.incomplete) << v.name;
  }
}

TEST_F(ResyncSessionTest, CycleEndWhoseCountsDoNotAddUpToEveryBlockIsRejected) {
  // One matched block too few: data + zero + kept + matched must be 16.
  const std::vector<std::byte> committed = ReadFile(Replica("disk0"));
  std::vector<std::byte> fresh = Pattern(kBlockBytes, 5);
  std::copy(fresh.begin(), fresh.end(), volumes_[0].image.begin() + 2 * kBlockBytes);
  ReceiverThread receiver(Options());
  ScriptedShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  ASSERT_TRUE(shipper.Begin(7, proto::CYCLE_MODE_RESYNC, 2, 1, 16, {0}).ok());
  ASSERT_TRUE(shipper.ReadHashesUntil(16, {0}).ok());
  ASSERT_TRUE(shipper.Data(0, 2).ok());
  ASSERT_TRUE(shipper.End(7, {{0, 1, 0, 0, 14}}).ok());
  Status peer = shipper.ReadAck().status();
  Status s = receiver.Join();
  EXPECT_EQ(s.code(), core::Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find("CYCLE_END frame"), std::string::npos) << s.message();
  EXPECT_NE(peer.message().find("CYCLE_END frame"), std::string::npos) << peer.ToString();
  EXPECT_TRUE(ReadFile(Replica("disk0")) == committed);
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->volumes[0].committed_epoch, 1u);
}

TEST_F(ResyncSessionTest, VerifyChangesNoFileAndReportsTheCommittedEpochs) {
  // Silent damage of the replica (bit rot: the bytes change, the file's
  // identity and modification time do not): a verify finds it and still
  // leaves it as it is.
  struct stat st {};
  ASSERT_EQ(::stat(Replica("disk0").c_str(), &st), 0);
  std::vector<std::byte> damaged = ReadFile(Replica("disk0"));
  damaged[5 * kBlockBytes + 17] ^= std::byte{0x40};
  ASSERT_TRUE(WriteFile(Replica("disk0"), damaged));
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, Replica("disk0").c_str(), times, 0), 0);
  const auto before = Snapshot(GuestDir());
  ASSERT_TRUE(before.count(Replica("disk0")));

  ReceiverOptions options = Options();
  std::vector<std::string> points;
  options.crash_hook = [&](std::string_view point) {
    points.emplace_back(point);
    return Status::Ok();
  };
  ReceiverThread receiver(options);
  ScriptedShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  ASSERT_TRUE(shipper.Begin(8, proto::CYCLE_MODE_VERIFY, 0, 0, 16, {0}).ok());
  ASSERT_TRUE(shipper.ReadHashesUntil(16, {0}).ok());
  EXPECT_EQ(shipper.Differing(0), (std::vector<std::uint64_t>{5}));
  ASSERT_TRUE(shipper.Credit(16).ok());
  ASSERT_TRUE(shipper.End(8, {{0, 0, 0, 0, 16}}).ok());
  auto ack = shipper.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->cycle_id(), 8u);
  ASSERT_EQ(ack->committed_epochs_size(), 1);
  EXPECT_EQ(ack->committed_epochs(0), 1u);
  Status s = receiver.Join();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(receiver.report().mode, "verify");
  EXPECT_FALSE(receiver.report().committed);
  EXPECT_TRUE(points.empty()) << "a verify reached the commit point " << points.front();

  const auto after = Snapshot(GuestDir());
  EXPECT_EQ(before.size(), after.size()) << "a verify created or removed a file";
  for (const auto& [path, file] : before) {
    auto it = after.find(path);
    ASSERT_NE(it, after.end()) << path << " is gone";
    EXPECT_TRUE(it->second == file) << path << " changed";
  }
}

TEST_F(ResyncSessionTest, BlocksInAVerifyAreAProtocolError) {
  const auto before = Snapshot(GuestDir());
  ReceiverThread receiver(Options());
  ScriptedShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  ASSERT_TRUE(shipper.Begin(8, proto::CYCLE_MODE_VERIFY, 0, 0, 16, {0}).ok());
  ASSERT_TRUE(shipper.ReadHashesUntil(16, {0}).ok());
  ASSERT_TRUE(shipper.Data(0, 0).ok());
  Status peer = shipper.ReadAck().status();
  Status s = receiver.Join();
  EXPECT_EQ(s.code(), core::Code::kCorruption);
  EXPECT_NE(s.message().find("BLOCKS frame where HASH_CREDIT or CYCLE_END was expected"), std::string::npos)
      << s.message();
  EXPECT_NE(peer.message().find("BLOCKS frame"), std::string::npos) << peer.ToString();
  const auto after = Snapshot(GuestDir());
  EXPECT_TRUE(before == after) << "a failed verify changed a file";
}

TEST_F(ResyncSessionTest, HashCreditGoingBackwardsIsAnErrorNamingHashCredit) {
  const std::vector<std::byte> committed = ReadFile(Replica("disk0"));
  ReceiverThread receiver(Options());
  ScriptedShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  ASSERT_TRUE(shipper.Begin(9, proto::CYCLE_MODE_RESYNC, 2, 1, 16, {0}).ok());
  ASSERT_TRUE(shipper.ReadHashesUntil(16, {0}).ok());
  ASSERT_TRUE(shipper.Credit(10).ok());
  ASSERT_TRUE(shipper.Credit(9).ok());
  Status peer = shipper.ReadAck().status();
  Status s = receiver.Join();
  EXPECT_EQ(s.code(), core::Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find("HASH_CREDIT frame: 9 hashes consumed, after 10"), std::string::npos) << s.message();
  EXPECT_EQ(peer.code(), core::Code::kCorruption) << peer.ToString();
  EXPECT_NE(peer.message().find("HASH_CREDIT"), std::string::npos) << peer.ToString();
  EXPECT_TRUE(ReadFile(Replica("disk0")) == committed);
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->volumes[0].committed_epoch, 1u);
  EXPECT_FALSE(state->volumes[0].incomplete);
}

TEST_F(ResyncSessionTest, HashCreditPastTheCyclesBlocksIsAnError) {
  // HELLO has two volumes (16 + 16 blocks), the verify covers only disk0:
  // 17 passes the frame gate (32 blocks in the session) but not the cycle.
  volumes_.push_back({"disk1", Pattern(16 * kBlockBytes, 8)});
  ReceiverThread receiver(Options());
  ScriptedShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  ASSERT_TRUE(shipper.Begin(9, proto::CYCLE_MODE_VERIFY, 0, 0, 16, {0}).ok());
  ASSERT_TRUE(shipper.ReadHashesUntil(16, {0}).ok());
  ASSERT_TRUE(shipper.Credit(17).ok());
  Status peer = shipper.ReadAck().status();
  Status s = receiver.Join();
  EXPECT_EQ(s.code(), core::Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find("HASH_CREDIT frame: 17 hashes consumed"), std::string::npos) << s.message();
  EXPECT_NE(peer.message().find("HASH_CREDIT"), std::string::npos) << peer.ToString();
}

TEST_F(ResyncSessionTest, ReplicaThatCannotBeHashedIsAnErrorFromTheReceiver) {
  // The replica shrinks between HELLO_REPLY and the hashing: the receiver
  // cannot hash its last blocks and must say so, or the shipper would wait
  // for hashes for ever.
  ReceiverThread receiver(Options());
  ScriptedShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  ASSERT_EQ(::truncate(Replica("disk0").c_str(), 8 * kBlockBytes), 0);
  ASSERT_TRUE(shipper.Begin(8, proto::CYCLE_MODE_VERIFY, 0, 0, 16, {0}).ok());
  Status peer = shipper.ReadHashesUntil(16, {0});
  EXPECT_EQ(peer.code(), core::Code::kOutOfRange) << peer.ToString();
  EXPECT_EQ(peer.message().rfind("peer: ", 0), 0u) << "not the receiver's ERROR: " << peer.ToString();
  EXPECT_NE(peer.message().find(Replica("disk0")), std::string::npos) << peer.ToString();
  Status s = receiver.Join();
  EXPECT_EQ(s.code(), core::Code::kOutOfRange) << s.ToString();
}

// A bigger volume, all zero, so that the window binds: 6144 blocks of 4 KiB.
class ResyncHashWindowTest : public ResyncSessionTest {
 protected:
  void SetUp() override {
    volumes_ = {{"disk0", std::vector<std::byte>(6144 * kBlockBytes)}};
    ReceiverThread receiver(Options());
    ScriptedShipper shipper(receiver.stream(), volumes_);
    ASSERT_TRUE(shipper.Hello().ok());
    ASSERT_TRUE(shipper.Begin(1, proto::CYCLE_MODE_FULL, 1, 0, 0, {0}).ok());
    ASSERT_TRUE(shipper.Zeroes(0, 0, 6144).ok());
    ASSERT_TRUE(shipper.End(1, {{0, 0, 6144, 0, 0}}).ok());
    ASSERT_TRUE(shipper.ReadAck().ok());
    ASSERT_TRUE(receiver.Join().ok());
  }

  // Reads hashes until the receiver sent all the credit allows (fewer
  // would leave a shipper waiting for ever), then checks that nothing more
  // comes (more would break the credit).
  void ExpectStallAt(ReceiverThread& receiver, ScriptedShipper& shipper, std::uint64_t expected) {
    while (shipper.received() < expected) {
      ASSERT_TRUE(receiver.Readable(10000)) << "the receiver stopped at " << shipper.received() << " hashes, short of "
                                            << expected << " its credit allows";
      Status s = shipper.ReadHashes({0});
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
    EXPECT_EQ(shipper.received(), expected) << "the receiver sent more hashes than its credit";
    EXPECT_FALSE(receiver.Readable(300)) << "the receiver sent more hashes than its credit";
  }

  // A verify with `window`, crediting `credits` in turn; every hash arrives.
  void RunVerify(std::uint32_t window, const std::vector<std::uint64_t>& credits) {
    ReceiverThread receiver(Options());
    ScriptedShipper shipper(receiver.stream(), volumes_);
    ASSERT_TRUE(shipper.Hello().ok());
    ASSERT_TRUE(shipper.Begin(2, proto::CYCLE_MODE_VERIFY, 0, 0, window, {0}).ok());
    ASSERT_NO_FATAL_FAILURE(ExpectStallAt(receiver, shipper, std::min<std::uint64_t>(6144, window)));
    for (std::uint64_t credit : credits) {
      ASSERT_TRUE(shipper.Credit(credit).ok());
      ASSERT_NO_FATAL_FAILURE(ExpectStallAt(receiver, shipper, std::min<std::uint64_t>(6144, credit + window)));
    }
    ASSERT_EQ(shipper.received(), 6144u);
    ASSERT_TRUE(shipper.End(2, {{0, 0, 0, 0, 6144}}).ok());
    auto ack = shipper.ReadAck();
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    Status s = receiver.Join();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
};

TEST_F(ResyncHashWindowTest, ReceiverSendsExactlyWhatTheCreditAllows) {
  RunVerify(2048, {2048, 4096});
}

// The receiver must send every hash the window allows, whatever the
// window and wherever the credit stands: the shipper may need exactly the
// hashes it holds back. A read chunk's hashes (2048 of 4 KiB blocks) are
// cut into frames that fit the credit.
TEST_F(ResyncHashWindowTest, ReceiverFillsAWindowSmallerThanItsReadChunk) {
  RunVerify(100, {50, 1000, 3000, 6044});
}

TEST_F(ResyncHashWindowTest, ReceiverFillsTheWindowAfterACreditBetweenItsFrames) {
  RunVerify(2048, {1000, 3000, 4096});
}

}  // namespace
}  // namespace blkrep::receiver
