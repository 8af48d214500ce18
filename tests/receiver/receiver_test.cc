// Receiver tests: ServeSession driven over a socketpair by a small
// hand-written shipper (TestShipper) that sends frames with FrameWriter.
// Replicas are real files in a TempDir; "the replica is unchanged" is
// checked by comparing checksums of its bytes before and after. Crashes of
// the receiver are simulated with ReceiverOptions::crash_hook and cut-off
// streams by replaying a prefix of a recorded shipper stream.
#include "receiver/receiver.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "core/hash.h"
#include "proto/frame.h"
#include "receiver/recovery_points.h"
#include "receiver/replica_layout.h"
#include "tests/core/temp_dir.h"

namespace blkrep::receiver {
namespace {

using core::Status;
using core::test_support::Pattern;
using core::test_support::ReadFile;
using core::test_support::TempDir;
using proto::FrameType;

constexpr std::uint32_t kBlockBytes = 4096;
constexpr std::uint64_t kAllFeatures = proto::kFeatureZstd | proto::kFeatureResume | proto::kFeatureRecoveryPoints;
const char* const kGuest = "vm100";
const char* const kJob = "vm100-0";

std::uint64_t BlockCount(const std::vector<std::byte>& image) { return (image.size() + kBlockBytes - 1) / kBlockBytes; }

std::span<const std::byte> BlockOf(const std::vector<std::byte>& image, std::uint64_t block) {
  std::uint64_t start = block * kBlockBytes;
  return std::span(image).subspan(start, std::min<std::uint64_t>(kBlockBytes, image.size() - start));
}

bool IsZero(std::span<const std::byte> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; });
}

// An image of size_bytes with pseudo-random blocks and a few all-zero runs.
std::vector<std::byte> MakeImage(std::size_t size_bytes, std::uint32_t seed) {
  std::vector<std::byte> image = Pattern(size_bytes, seed);
  for (std::uint64_t b = 10; b < 20 && b * kBlockBytes < size_bytes; ++b) {
    std::fill_n(image.begin() + static_cast<std::ptrdiff_t>(b * kBlockBytes), kBlockBytes, std::byte{0});
  }
  return image;
}

// Overwrites `block` of `image` with new content (zeroes when `zero`).
void Rewrite(std::vector<std::byte>& image, std::uint64_t block, std::uint32_t seed, bool zero = false) {
  std::uint64_t start = block * kBlockBytes;
  std::uint64_t n = std::min<std::uint64_t>(kBlockBytes, image.size() - start);
  std::vector<std::byte> fresh = zero ? std::vector<std::byte>(n) : Pattern(n, seed);
  std::copy(fresh.begin(), fresh.end(), image.begin() + static_cast<std::ptrdiff_t>(start));
}

std::vector<std::uint64_t> AllBlocks(const std::vector<std::byte>& image) {
  std::vector<std::uint64_t> blocks(BlockCount(image));
  for (std::uint64_t i = 0; i < blocks.size(); ++i) blocks[i] = i;
  return blocks;
}

struct Volume {
  std::string name;
  std::vector<std::byte> image;
};

// A Stream that records what is written and has nothing to read.
class RecordingStream final : public proto::Stream {
 public:
  Status ReadFull(std::span<std::byte>) override { return Status::EndOfData("recording"); }
  Status WriteAll(std::span<const std::byte> data) override {
    bytes.insert(bytes.end(), data.begin(), data.end());
    return Status::Ok();
  }
  std::vector<std::byte> bytes;
};

struct Counts {
  std::uint64_t data = 0, zero = 0, kept = 0;
};

// What the receiver said after HELLO.
struct Reply {
  proto::HelloReply hello;
  std::map<std::pair<std::uint32_t, std::uint64_t>, std::uint64_t> staged;  // (volume, block) -> hash
  std::uint64_t staged_end_total = 0;
};

// A frame the shipper sent, and where its bytes end in the stream.
struct SentFrame {
  FrameType type;
  std::uint64_t end_offset;
  std::uint32_t volume;
  std::uint64_t first_block;
  std::uint64_t block_count;
};

struct ShipOptions {
  bool zstd = false;
  std::uint32_t batch_blocks = 4;
  std::set<std::uint64_t> keep;  // blocks to send as KEEP
  std::uint32_t recovery_points = 0;  // CYCLE_BEGIN's (RunCycle)
};

ShipOptions Zstd(std::uint32_t batch_blocks = 4) {
  ShipOptions o;
  o.zstd = true;
  o.batch_blocks = batch_blocks;
  return o;
}

class TestShipper {
 public:
  TestShipper(proto::Stream& stream, const std::vector<Volume>& volumes)
      : writer_(stream), reader_(stream), volumes_(volumes) {
    for (const Volume& v : volumes) {
      proto::VolumeInfo info;
      info.set_name(v.name);
      info.set_size_bytes(v.image.size());
      info.set_block_size_bytes(kBlockBytes);
      context_.volumes.push_back(info);
    }
    counts_.resize(volumes.size());
  }

  Status Hello(std::uint64_t features = kAllFeatures, const std::string& job = kJob) {
    proto::Hello m;
    m.set_protocol_version(1);
    m.set_min_protocol_version(1);
    m.set_feature_flags(features);
    m.set_guest(kGuest);
    m.set_job(job);
    for (const auto& v : context_.volumes) *m.add_volumes() = v;
    return Send(FrameType::kHello, m, 0, 0, 0);
  }

  core::Result<Reply> ReadReply() {
    Reply reply;
    BLKREP_ASSIGN_OR_RETURN(proto::Message m, proto::ReadMessage(reader_, context_, {FrameType::kHelloReply}));
    reply.hello = std::get<proto::HelloReply>(m);
    for (;;) {
      BLKREP_ASSIGN_OR_RETURN(proto::Message n, proto::ReadMessage(reader_, context_,
                                                                   {FrameType::kStagedHashes, FrameType::kStagedEnd}));
      if (auto* end = std::get_if<proto::StagedEnd>(&n)) {
        reply.staged_end_total = end->total_blocks();
        return reply;
      }
      const auto& h = std::get<proto::StagedHashes>(n);
      for (int i = 0; i < h.hashes_size(); ++i) reply.staged[{h.volume(), h.first_block() + i}] = h.hashes(i);
    }
  }

  // Begins a cycle over every volume of the session; `blocks[i]` is how
  // many blocks it covers of volume i.
  Status Begin(std::uint64_t cycle_id, proto::CycleMode mode, std::uint64_t epoch, std::uint64_t base_epoch,
               const std::vector<std::uint64_t>& blocks) {
    proto::CycleBegin m;
    m.set_cycle_id(cycle_id);
    m.set_mode(mode);
    m.set_recovery_points(recovery_points);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      proto::VolumeCycle* v = m.add_volumes();
      v->set_volume(static_cast<std::uint32_t>(i));
      v->set_epoch(epoch);
      v->set_base_epoch(base_epoch);
      v->set_block_count(blocks[i]);
    }
    return Send(FrameType::kCycleBegin, m, 0, 0, 0);
  }

  // BLOCKS of [first, first + count) of volume `vol` as they are in its
  // image; `hash_fix` may alter the hashes sent.
  Status Data(std::uint32_t vol, std::uint64_t first, std::uint64_t count, bool zstd,
              const std::function<void(proto::Blocks&)>& hash_fix = nullptr) {
    const std::vector<std::byte>& image = volumes_[vol].image;
    std::uint64_t start = first * kBlockBytes;
    std::uint64_t end = std::min<std::uint64_t>((first + count) * kBlockBytes, image.size());
    proto::Blocks m;
    m.set_volume(vol);
    m.set_first_block(first);
    m.set_block_count(static_cast<std::uint32_t>(count));
    m.set_raw_length(static_cast<std::uint32_t>(end - start));
    for (std::uint64_t b = first; b < first + count; ++b) m.add_hashes(core::Xxh3_64(BlockOf(image, b)));
    const char* raw = reinterpret_cast<const char*>(image.data() + start);
    m.set_payload(std::string(raw, end - start));
    if (zstd) {
      std::string out(ZSTD_compressBound(end - start), '\0');
      std::size_t n = ZSTD_compress(out.data(), out.size(), raw, end - start, 1);
      if (ZSTD_isError(n)) return Status::Internal("zstd");
      out.resize(n);
      if (n < end - start) {  // as a shipper must: compressed only when it is smaller
        m.set_compression(proto::COMPRESSION_ZSTD);
        m.set_payload(out);
      }
    }
    if (hash_fix) hash_fix(m);
    counts_[vol].data += count;
    return Send(FrameType::kBlocks, m, vol, first, count);
  }

  Status Zeroes(std::uint32_t vol, std::uint64_t first, std::uint64_t count) {
    proto::Zeroes m;
    m.set_volume(vol);
    m.set_first_block(first);
    m.set_block_count(count);
    counts_[vol].zero += count;
    return Send(FrameType::kZeroes, m, vol, first, count);
  }

  Status Keep(std::uint32_t vol, std::uint64_t first, std::uint64_t count) {
    proto::Keep m;
    m.set_volume(vol);
    m.set_first_block(first);
    for (std::uint64_t b = first; b < first + count; ++b) {
      m.add_hashes(core::Xxh3_64(BlockOf(volumes_[vol].image, b)));
    }
    counts_[vol].kept += count;
    return Send(FrameType::kKeep, m, vol, first, count);
  }

  // Sends `blocks` (ascending) of volume `vol`: runs of zero blocks as
  // ZEROES, blocks in options.keep as KEEP, the rest as BLOCKS batches.
  Status Ship(std::uint32_t vol, const std::vector<std::uint64_t>& blocks, const ShipOptions& options = {}) {
    const std::vector<std::byte>& image = volumes_[vol].image;
    enum Kind { kData, kZero, kKeep };
    auto kind_of = [&](std::uint64_t b) {
      if (options.keep.count(b)) return kKeep;
      return IsZero(BlockOf(image, b)) ? kZero : kData;
    };
    std::size_t i = 0;
    while (i < blocks.size()) {
      Kind kind = kind_of(blocks[i]);
      std::size_t j = i + 1;
      std::uint64_t limit = kind == kData ? options.batch_blocks : 1000000;
      while (j < blocks.size() && blocks[j] == blocks[j - 1] + 1 && kind_of(blocks[j]) == kind && j - i < limit) ++j;
      std::uint64_t count = j - i;
      Status s = kind == kData   ? Data(vol, blocks[i], count, options.zstd)
                 : kind == kZero ? Zeroes(vol, blocks[i], count)
                                 : Keep(vol, blocks[i], count);
      if (!s.ok()) return s;
      i = j;
    }
    return Status::Ok();
  }

  Status End(std::uint64_t cycle_id) {
    proto::CycleEnd m;
    m.set_cycle_id(cycle_id);
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      proto::VolumeCount* c = m.add_volumes();
      c->set_volume(static_cast<std::uint32_t>(i));
      c->set_data_blocks(counts_[i].data);
      c->set_zero_blocks(counts_[i].zero);
      c->set_kept_blocks(counts_[i].kept);
    }
    return Send(FrameType::kCycleEnd, m, 0, 0, 0);
  }

  Status RemoveGuest(const std::string& job) {
    proto::RemoveGuest m;
    m.set_job(job);
    return Send(FrameType::kRemoveGuest, m, 0, 0, 0);
  }

  core::Result<proto::Ack> ReadAck() {
    BLKREP_ASSIGN_OR_RETURN(proto::Message m, proto::ReadMessage(reader_, context_, {FrameType::kAck}));
    return std::get<proto::Ack>(m);
  }

  // The status of the ERROR frame the receiver sent next (OK if none).
  Status ReadError() {
    auto m = proto::ReadMessage(reader_, context_, {FrameType::kAck});
    return m.ok() ? Status::Ok() : m.status();
  }

  std::vector<Counts>& counts() { return counts_; }
  const std::vector<SentFrame>& sent() const { return sent_; }

  std::uint32_t recovery_points = 0;  // sent in CYCLE_BEGIN

 private:
  Status Send(FrameType type, const google::protobuf::MessageLite& m, std::uint32_t vol, std::uint64_t first,
              std::uint64_t count) {
    Status s = writer_.Send(type, m);
    sent_.push_back(SentFrame{type, writer_.bytes_sent(), vol, first, count});
    return s;
  }

  proto::FrameWriter writer_;
  proto::FrameReader reader_;
  proto::SessionContext context_;
  const std::vector<Volume>& volumes_;
  std::vector<Counts> counts_;
  std::vector<SentFrame> sent_;
};

// ServeSession on one end of a socketpair in a thread; the test speaks on
// the other end through stream().
class ReceiverThread {
 public:
  explicit ReceiverThread(ReceiverOptions options) : options_(std::move(options)) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
    shipper_ = std::make_unique<proto::FdStream>(fds[0], fds[0], true);
    thread_ = std::thread([this, fd = fds[1]] {
      proto::FdStream stream(fd, fd, true);
      status_ = ServeSession(stream, options_, &report_);
    });
  }
  ~ReceiverThread() { (void)Join(); }

  proto::Stream& stream() { return *shipper_; }
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
  std::unique_ptr<proto::FdStream> shipper_;
  std::thread thread_;
  Status status_;
  SessionReport report_;
};

class ReceiverTest : public ::testing::Test {
 protected:
  ReceiverOptions Options() const {
    ReceiverOptions o;
    o.replica_dir = dir_.path() + "/replicas";
    return o;
  }
  std::string Replica(const std::string& name) const { return *ReplicaPath(Options().replica_dir, kGuest, name); }
  std::uint64_t ReplicaChecksum(const std::string& name) const { return core::Xxh3_64(ReadFile(Replica(name))); }
  void ExpectReplicaEquals(const Volume& v) const {
    std::vector<std::byte> bytes = ReadFile(Replica(v.name));
    EXPECT_EQ(bytes.size(), v.image.size()) << v.name;
    EXPECT_EQ(core::Xxh3_64(bytes), core::Xxh3_64(v.image)) << "replica of " << v.name << " differs";
  }

  // Runs a whole cycle: every block of every volume for full, `dirty[i]` of
  // volume i for incremental. Returns the receiver's status.
  Status RunCycle(const std::vector<Volume>& volumes, std::uint64_t cycle_id, proto::CycleMode mode,
                  std::uint64_t epoch, std::uint64_t base_epoch, std::vector<std::vector<std::uint64_t>> dirty,
                  const ShipOptions& ship = {}, const ReceiverOptions* options = nullptr,
                  proto::Ack* ack = nullptr) {
    ReceiverThread receiver(options != nullptr ? *options : Options());
    TestShipper shipper(receiver.stream(), volumes);
    EXPECT_TRUE(shipper.Hello().ok());
    auto reply = shipper.ReadReply();
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    if (mode != proto::CYCLE_MODE_INCREMENTAL) {
      dirty.clear();
      for (const Volume& v : volumes) dirty.push_back(AllBlocks(v.image));
    }
    std::vector<std::uint64_t> counts;
    for (const auto& d : dirty) counts.push_back(d.size());
    shipper.recovery_points = ship.recovery_points;
    EXPECT_TRUE(shipper.Begin(cycle_id, mode, epoch, base_epoch, counts).ok());
    for (std::uint32_t i = 0; i < volumes.size(); ++i) EXPECT_TRUE(shipper.Ship(i, dirty[i], ship).ok());
    EXPECT_TRUE(shipper.End(cycle_id).ok());
    auto got = shipper.ReadAck();
    if (got.ok() && ack != nullptr) *ack = *got;
    return receiver.Join();
  }

  // A session that only asks for the replica state.
  Reply AskState(const std::vector<Volume>& volumes) {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes);
    EXPECT_TRUE(shipper.Hello().ok());
    auto reply = shipper.ReadReply();
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    Status s = receiver.Join();
    EXPECT_TRUE(s.ok()) << s.ToString();
    return reply.ok() ? *reply : Reply{};
  }

  // Feeds `bytes` to a fresh session, then closes; drains what it answers.
  Status Replay(std::span<const std::byte> bytes, const ReceiverOptions& options) {
    ReceiverThread receiver(options);
    std::thread feeder([&] {
      (void)receiver.stream().WriteAll(bytes);
      receiver.stream().CloseWrite();
    });
    std::byte sink[4096];
    while (receiver.stream().ReadFull(std::span(sink, 1)).ok()) {
    }
    feeder.join();
    return receiver.Join();
  }

  TempDir dir_;
};

// ---- whole cycles ----

TEST_F(ReceiverTest, FullThenIncrementalMakesReplicasEqualToTheSource) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 1)}, {"disk1", MakeImage((1 << 20) + 1000, 2)}};
  proto::Ack ack;
  ShipOptions zstd = Zstd();
  Status s = RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 5, 0, {}, zstd, nullptr, &ack);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ack.cycle_id(), 1u);
  EXPECT_EQ(std::vector<std::uint64_t>(ack.committed_epochs().begin(), ack.committed_epochs().end()),
            (std::vector<std::uint64_t>{5, 5}));
  EXPECT_GT(ack.bytes_received(), 0u);
  for (const Volume& v : volumes) ExpectReplicaEquals(v);

  // Incremental: changed blocks, a block turned to zeroes, the short last block.
  std::vector<std::vector<std::uint64_t>> dirty = {{0, 1, 2, 12, 100, 255}, {3, 30, 31, 256}};
  for (std::uint64_t b : dirty[0]) Rewrite(volumes[0].image, b, 1000 + static_cast<std::uint32_t>(b), b == 100);
  for (std::uint64_t b : dirty[1]) Rewrite(volumes[1].image, b, 2000 + static_cast<std::uint32_t>(b));
  s = RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 9, 5, dirty, {}, nullptr, &ack);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ack.committed_epochs(0), 9u);
  for (const Volume& v : volumes) ExpectReplicaEquals(v);

  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_EQ(state->job, kJob);
  EXPECT_FALSE(state->apply_pending);
  ASSERT_EQ(state->volumes.size(), 2u);
  EXPECT_EQ(state->volumes[1].name, "disk1");
  EXPECT_EQ(state->volumes[1].committed_epoch, 9u);
  EXPECT_EQ(state->volumes[1].size_bytes, (1u << 20) + 1000);
  EXPECT_EQ(state->volumes[1].path, Replica("disk1"));
  EXPECT_FALSE(state->volumes[1].incomplete);

  Reply reply = AskState(volumes);
  EXPECT_TRUE(reply.hello.volumes(0).exists());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 9u);
  EXPECT_EQ(reply.hello.volumes(1).size_bytes(), (1u << 20) + 1000);
  EXPECT_TRUE(reply.staged.empty());
}

TEST_F(ReceiverTest, ZstdAndUncompressedBatchesAndSmallDurabilityBatchesGiveTheSameReplica) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 3)}};
  ReceiverOptions options = Options();
  options.durability_batch_bytes = 16 << 10;  // a durable batch every few frames
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}, {}, &options).ok());
  ExpectReplicaEquals(volumes[0]);
  std::vector<std::uint64_t> dirty;
  for (std::uint64_t b = 40; b < 120; ++b) {
    Rewrite(volumes[0].image, b, static_cast<std::uint32_t>(b));
    dirty.push_back(b);
  }
  ShipOptions zstd = Zstd(7);
  Status s = RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty}, zstd, &options);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ExpectReplicaEquals(volumes[0]);
}

TEST_F(ReceiverTest, ZeroRangesReadBackAsZeroesAndPunchHoles) {
  std::vector<Volume> volumes = {{"disk0", Pattern(2 << 20, 4)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  struct stat before{};
  ASSERT_EQ(::stat(Replica("disk0").c_str(), &before), 0);
  std::vector<std::uint64_t> dirty;
  for (std::uint64_t b = 64; b < 448; ++b) {
    Rewrite(volumes[0].image, b, 0, /*zero=*/true);
    dirty.push_back(b);
  }
  ASSERT_TRUE(RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty}).ok());
  ExpectReplicaEquals(volumes[0]);
  struct stat after{};
  ASSERT_EQ(::stat(Replica("disk0").c_str(), &after), 0);
  EXPECT_LT(after.st_blocks, before.st_blocks) << "the zero range was written, not punched";
}

TEST_F(ReceiverTest, SessionThatOnlyAsksForTheStateIsFine) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(64 << 10, 5)}};
  Reply reply = AskState(volumes);
  ASSERT_EQ(reply.hello.volumes_size(), 1);
  EXPECT_FALSE(reply.hello.volumes(0).exists());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 0u);
  EXPECT_EQ(reply.hello.feature_flags(), kAllFeatures);
  EXPECT_EQ(reply.staged_end_total, 0u);
}

// ---- REMOVE_GUEST (`blkrep delete`) ----

class RemoveGuestTest : public ReceiverTest {
 protected:
  void SetUp() override {
    volumes_ = {{"disk0", MakeImage(256 << 10, 8)}, {"disk1", MakeImage(128 << 10, 9)}};
    ASSERT_TRUE(RunCycle(volumes_, 1, proto::CYCLE_MODE_FULL, 3, 0, {}).ok());
    guest_dir_ = Options().replica_dir + "/" + kGuest;
  }
  // A session that sends REMOVE_GUEST for `frame_job` after a HELLO of
  // `hello_job`; the receiver's answer (its ERROR as a status).
  Status Remove(std::uint64_t features, const std::string& hello_job, const std::string& frame_job,
                proto::Ack* ack = nullptr) {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes_);
    EXPECT_TRUE(shipper.Hello(features, hello_job).ok());
    auto reply = shipper.ReadReply();
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_TRUE(shipper.RemoveGuest(frame_job).ok());
    auto got = shipper.ReadAck();
    Status joined = receiver.Join();
    if (!got.ok()) {
      EXPECT_FALSE(joined.ok());
      return got.status();
    }
    EXPECT_TRUE(joined.ok()) << joined.ToString();
    if (ack != nullptr) *ack = *got;
    return Status::Ok();
  }
  bool Exists(const std::string& path) const {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
  }
  std::vector<Volume> volumes_;
  std::string guest_dir_;
};

TEST_F(RemoveGuestTest, RemovesReplicasStateAndStagingAndAcksCycleZero) {
  ASSERT_TRUE(Exists(guest_dir_ + "/state"));
  ASSERT_EQ(::mkdir((guest_dir_ + "/.points").c_str(), 0700), 0);
  std::ofstream(guest_dir_ + "/.points/1") << "undo";
  proto::Ack ack;
  Status s = Remove(kAllFeatures | proto::kFeatureRemoveGuest, kJob, kJob, &ack);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ack.cycle_id(), 0u);
  ASSERT_EQ(ack.committed_epochs_size(), 2);
  EXPECT_EQ(ack.committed_epochs(0), 0u);
  EXPECT_FALSE(Exists(Replica("disk0")));
  EXPECT_FALSE(Exists(Replica("disk1")));
  EXPECT_FALSE(Exists(guest_dir_)) << "the guest directory is left";
  EXPECT_TRUE(ReadGuestState(Options().replica_dir, kGuest).status().code() == core::Code::kNotFound);
  // Removing what is gone is harmless.
  EXPECT_TRUE(Remove(kAllFeatures | proto::kFeatureRemoveGuest, kJob, kJob).ok());
}

TEST_F(RemoveGuestTest, WithoutTheFeatureNothingIsRemoved) {
  std::uint64_t before = ReplicaChecksum("disk0");
  Status s = Remove(kAllFeatures, kJob, kJob);
  EXPECT_EQ(s.code(), core::Code::kUnsupported) << s.ToString();
  EXPECT_NE(s.message().find("REMOVE_GUEST"), std::string::npos) << s.ToString();
  EXPECT_EQ(ReplicaChecksum("disk0"), before);
  EXPECT_TRUE(Exists(guest_dir_ + "/state"));
}

TEST_F(RemoveGuestTest, AnotherJobsReplicaOrAnotherJobNameIsRefused) {
  std::uint64_t before = ReplicaChecksum("disk0");
  Status s = Remove(kAllFeatures | proto::kFeatureRemoveGuest, "vm100-1", "vm100-1");
  EXPECT_EQ(s.code(), core::Code::kAborted) << s.ToString();
  EXPECT_NE(s.message().find("belongs to job vm100-0, not vm100-1"), std::string::npos) << s.ToString();
  s = Remove(kAllFeatures | proto::kFeatureRemoveGuest, kJob, "vm100-1");
  EXPECT_EQ(s.code(), core::Code::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("REMOVE_GUEST frame: job vm100-1, the session's job is vm100-0"), std::string::npos)
      << s.ToString();
  EXPECT_EQ(ReplicaChecksum("disk0"), before);
  EXPECT_TRUE(Exists(guest_dir_ + "/state"));
}

// ---- rejected cycles leave the replica as it was ----

class RejectedCycleTest : public ReceiverTest {
 protected:
  void SetUp() override {
    volumes_ = {{"disk0", MakeImage((1 << 20) + 512, 6)}};
    ASSERT_TRUE(RunCycle(volumes_, 1, proto::CYCLE_MODE_FULL, 3, 0, {}).ok());
    committed_checksum_ = ReplicaChecksum("disk0");
    for (std::uint64_t b : dirty_) Rewrite(volumes_[0].image, b, 77 + static_cast<std::uint32_t>(b));
  }
  // Runs `body` as the shipper of an incremental session; returns the
  // receiver's status and checks the shipper got an ERROR saying the same.
  Status Run(const std::function<void(TestShipper&)>& body) {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes_);
    EXPECT_TRUE(shipper.Hello().ok());
    EXPECT_TRUE(shipper.ReadReply().ok());
    body(shipper);
    Status peer = shipper.ReadError();
    Status s = receiver.Join();
    EXPECT_FALSE(peer.ok());
    EXPECT_NE(peer.message().find(s.message()), std::string::npos) << peer.message() << " vs " << s.message();
    return s;
  }
  void ExpectUnchanged() {
    EXPECT_EQ(ReplicaChecksum("disk0"), committed_checksum_);
    auto state = ReadGuestState(Options().replica_dir, kGuest);
    ASSERT_TRUE(state.ok());
    EXPECT_EQ(state->volumes[0].committed_epoch, 3u);
    EXPECT_FALSE(state->volumes[0].incomplete);
    EXPECT_FALSE(state->apply_pending);
  }

  std::vector<Volume> volumes_;
  std::vector<std::uint64_t> dirty_ = {4, 5, 6, 7, 8, 200};
  std::uint64_t committed_checksum_ = 0;
};

TEST_F(RejectedCycleTest, BlocksWhoseHashDoesNotMatchIsAnErrorAndTheReplicaIsUnchanged) {
  Status s = Run([&](TestShipper& sh) {
    ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 4, 3, {dirty_.size()}).ok());
    ASSERT_TRUE(sh.Data(0, 4, 2, false).ok());
    ASSERT_TRUE(sh.Data(0, 6, 3, true, [](proto::Blocks& m) { m.set_hashes(1, m.hashes(1) ^ 1); }).ok());
    ASSERT_TRUE(sh.Data(0, 200, 1, false).ok());
    ASSERT_TRUE(sh.End(2).ok());
  });
  EXPECT_EQ(s.code(), core::Code::kCorruption);
  EXPECT_NE(s.message().find("BLOCKS frame: block 7 of volume disk0: hash mismatch"), std::string::npos)
      << s.message();
  ExpectUnchanged();
}

TEST_F(RejectedCycleTest, IncrementalOnAnotherBaseEpochIsAnError) {
  Status s = Run([&](TestShipper& sh) { ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 9, 2, {6}).ok()); });
  EXPECT_NE(s.message().find("CYCLE_BEGIN frame: replica of disk0 is at epoch 3, not 2"), std::string::npos)
      << s.message();
  ExpectUnchanged();
}

TEST_F(RejectedCycleTest, BlockCoveredTwiceIsAnError) {
  Status s = Run([&](TestShipper& sh) {
    ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 4, 3, {dirty_.size()}).ok());
    ASSERT_TRUE(sh.Data(0, 4, 3, false).ok());
    ASSERT_TRUE(sh.Zeroes(0, 6, 2).ok());
  });
  EXPECT_NE(s.message().find("ZEROES frame: block 6 of volume disk0 is covered twice"), std::string::npos)
      << s.message();
  ExpectUnchanged();
}

TEST_F(RejectedCycleTest, CycleEndWithWrongCountsIsAnError) {
  Status s = Run([&](TestShipper& sh) {
    ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 4, 3, {dirty_.size()}).ok());
    ASSERT_TRUE(sh.Ship(0, dirty_).ok());
    sh.counts()[0].data -= 1;
    sh.counts()[0].zero += 1;
    ASSERT_TRUE(sh.End(2).ok());
  });
  EXPECT_NE(s.message().find("CYCLE_END frame: volume disk0: the shipper counts 5 data, 1 zero"), std::string::npos)
      << s.message();
  ExpectUnchanged();
}

TEST_F(RejectedCycleTest, CycleEndBeforeEveryBlockWasSentIsAnError) {
  Status s = Run([&](TestShipper& sh) {
    ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 4, 3, {dirty_.size()}).ok());
    ASSERT_TRUE(sh.Ship(0, {4, 5, 6}).ok());
    ASSERT_TRUE(sh.End(2).ok());
  });
  EXPECT_NE(s.message().find("3 of the 6 blocks"), std::string::npos) << s.message();
  ExpectUnchanged();
}

TEST_F(RejectedCycleTest, KeepOfABlockThatIsNotStagedIsAnError) {
  Status s = Run([&](TestShipper& sh) {
    ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 4, 3, {dirty_.size()}).ok());
    ASSERT_TRUE(sh.Keep(0, 4, 1).ok());
  });
  EXPECT_NE(s.message().find("KEEP frame: block 4 of volume disk0 is not staged"), std::string::npos) << s.message();
  ExpectUnchanged();
}

TEST_F(RejectedCycleTest, ZstdPayloadDeclaringAnotherSizeIsAnError) {
  Status s = Run([&](TestShipper& sh) {
    ASSERT_TRUE(sh.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 4, 3, {dirty_.size()}).ok());
    ASSERT_TRUE(sh.Data(0, 4, 2, true, [&](proto::Blocks& m) {
                    // A valid zstd frame of one block where two were announced.
                    std::string out(ZSTD_compressBound(kBlockBytes), '\0');
                    out.resize(ZSTD_compress(out.data(), out.size(), volumes_[0].image.data() + 4 * kBlockBytes,
                                             kBlockBytes, 1));
                    m.set_payload(out);
                  }).ok());
  });
  EXPECT_NE(s.message().find("does not declare 8192 content bytes"), std::string::npos) << s.message();
  ExpectUnchanged();
}

// ---- cut-off streams and crashes ----

// Records a whole shipper stream (HELLO .. CYCLE_END) of one cycle.
struct Recording {
  std::vector<std::byte> bytes;
  std::vector<SentFrame> frames;
};

Recording Record(const std::vector<Volume>& volumes, std::uint64_t cycle_id, proto::CycleMode mode,
                 std::uint64_t epoch, std::uint64_t base, const std::vector<std::uint64_t>& dirty) {
  RecordingStream stream;
  TestShipper shipper(stream, volumes);
  EXPECT_TRUE(shipper.Hello().ok());
  EXPECT_TRUE(shipper.Begin(cycle_id, mode, epoch, base, {dirty.size()}).ok());
  EXPECT_TRUE(shipper.Ship(0, dirty, Zstd(3)).ok());
  EXPECT_TRUE(shipper.End(cycle_id).ok());
  return Recording{stream.bytes, shipper.sent()};
}

// Offsets to cut `r` at: around every frame boundary and inside frames.
std::vector<std::uint64_t> CutOffsets(const Recording& r) {
  std::set<std::uint64_t> cuts;
  std::uint64_t previous = 0;
  for (const SentFrame& f : r.frames) {
    for (std::uint64_t c : {previous + 1, previous + 23, (previous + f.end_offset) / 2, f.end_offset - 1,
                            f.end_offset}) {
      if (c > 0 && c < r.bytes.size()) cuts.insert(c);
    }
    previous = f.end_offset;
  }
  return {cuts.begin(), cuts.end()};
}

// The blocks of BLOCKS frames wholly inside the first `cut` bytes.
std::set<std::uint64_t> DataBlocksBefore(const Recording& r, std::uint64_t cut) {
  std::set<std::uint64_t> blocks;
  for (const SentFrame& f : r.frames) {
    if (f.type != FrameType::kBlocks || f.end_offset > cut) continue;
    for (std::uint64_t b = f.first_block; b < f.first_block + f.block_count; ++b) blocks.insert(b);
  }
  return blocks;
}

std::set<std::uint64_t> StagedBlocksOf(const Reply& reply) {
  std::set<std::uint64_t> blocks;
  for (const auto& [key, hash] : reply.staged) blocks.insert(key.second);
  return blocks;
}

TEST_F(ReceiverTest, IncrementalCutAnywhereKeepsThePreviousCycleAndResumesWithKeep) {
  std::vector<Volume> volumes = {{"disk0", MakeImage((1 << 20) + 100, 8)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  const std::uint64_t committed = ReplicaChecksum("disk0");
  std::vector<std::uint64_t> dirty = {2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17, 90, 91, 92, 93, 256};
  for (std::uint64_t b : dirty) Rewrite(volumes[0].image, b, 300 + static_cast<std::uint32_t>(b), b == 15 || b == 16);
  Recording recording = Record(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, dirty);

  std::vector<std::uint64_t> cuts = CutOffsets(recording);
  ASSERT_GT(cuts.size(), 40u);
  std::uint64_t hello_end = recording.frames[0].end_offset;
  for (std::uint64_t cut : cuts) {
    Status s = Replay(std::span(recording.bytes).first(cut), Options());
    if (cut == hello_end) {
      EXPECT_TRUE(s.ok()) << "cut at " << cut << ": " << s.ToString();
    } else {
      EXPECT_FALSE(s.ok()) << "cut at " << cut;
    }
    ASSERT_EQ(ReplicaChecksum("disk0"), committed) << "cut at " << cut;
    Reply reply = AskState(volumes);
    ASSERT_EQ(reply.hello.volumes(0).committed_epoch(), 1u);
    EXPECT_EQ(StagedBlocksOf(reply), DataBlocksBefore(recording, cut)) << "cut at " << cut;
    for (const auto& [key, hash] : reply.staged) {
      EXPECT_EQ(hash, core::Xxh3_64(BlockOf(volumes[0].image, key.second)));
    }
    if (!reply.staged.empty()) {
      EXPECT_EQ(reply.hello.volumes(0).staged_base_epoch(), 1u);
    }
  }

  // Resume: KEEP everything staged, send the rest.
  ReceiverThread receiver(Options());
  TestShipper shipper(receiver.stream(), volumes);
  ASSERT_TRUE(shipper.Hello().ok());
  auto reply = shipper.ReadReply();
  ASSERT_TRUE(reply.ok());
  ShipOptions ship;
  ship.keep = StagedBlocksOf(*reply);
  ASSERT_FALSE(ship.keep.empty());
  ASSERT_TRUE(shipper.Begin(3, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty.size()}).ok());
  ASSERT_TRUE(shipper.Ship(0, dirty, ship).ok());
  ASSERT_TRUE(shipper.End(3).ok());
  auto ack = shipper.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  Status s = receiver.Join();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(receiver.report().kept_blocks, ship.keep.size());
  EXPECT_EQ(receiver.report().mode, "incremental");
  EXPECT_TRUE(receiver.report().committed);
  ExpectReplicaEquals(volumes[0]);
  EXPECT_TRUE(AskState(volumes).staged.empty());
}

TEST_F(ReceiverTest, CutFullCycleLeavesTheReplicaIncompleteAndResumes) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 9)}};
  std::vector<std::uint64_t> all = AllBlocks(volumes[0].image);
  Recording recording = Record(volumes, 1, proto::CYCLE_MODE_FULL, 4, 0, all);
  std::uint64_t cut = recording.frames[recording.frames.size() / 2].end_offset + 10;
  EXPECT_FALSE(Replay(std::span(recording.bytes).first(cut), Options()).ok());

  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_TRUE(state->volumes[0].incomplete);
  EXPECT_EQ(state->volumes[0].committed_epoch, 0u);
  Reply reply = AskState(volumes);
  EXPECT_TRUE(reply.hello.volumes(0).incomplete());
  std::set<std::uint64_t> staged = StagedBlocksOf(reply);
  EXPECT_EQ(staged, DataBlocksBefore(recording, cut));
  ASSERT_GT(staged.size(), 10u);

  // An incremental cycle on an incomplete replica is refused.
  {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    ASSERT_TRUE(shipper.ReadReply().ok());
    ASSERT_TRUE(shipper.Begin(2, proto::CYCLE_MODE_INCREMENTAL, 5, 4, {1}).ok());
    EXPECT_NE(receiver.Join().message().find("incomplete"), std::string::npos);
  }

  // A resumed attempt where one staged block changed at the source: it is
  // sent again (overwriting the staged block in place) and the stream is
  // cut; the old hash must not be offered again.
  std::uint64_t changed = *staged.begin();
  std::uint64_t old_hash = reply.staged.at({0, changed});
  Rewrite(volumes[0].image, changed, 4242);
  {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    ASSERT_TRUE(shipper.ReadReply().ok());
    ASSERT_TRUE(shipper.Begin(2, proto::CYCLE_MODE_FULL, 4, 0, {all.size()}).ok());
    ASSERT_TRUE(shipper.Data(0, changed, 1, false).ok());
    EXPECT_FALSE(receiver.Join().ok());
  }
  reply = AskState(volumes);
  ASSERT_TRUE(reply.staged.count({0, changed}));
  EXPECT_NE(reply.staged.at({0, changed}), old_hash);
  EXPECT_EQ(reply.staged.at({0, changed}), core::Xxh3_64(BlockOf(volumes[0].image, changed)));

  // Resume and finish: KEEP what is staged.
  ReceiverThread receiver(Options());
  TestShipper shipper(receiver.stream(), volumes);
  ASSERT_TRUE(shipper.Hello().ok());
  auto resumed = shipper.ReadReply();
  ASSERT_TRUE(resumed.ok());
  ShipOptions ship;
  ship.keep = StagedBlocksOf(*resumed);
  ASSERT_TRUE(shipper.Begin(3, proto::CYCLE_MODE_FULL, 4, 0, {all.size()}).ok());
  ASSERT_TRUE(shipper.Ship(0, all, ship).ok());
  ASSERT_TRUE(shipper.End(3).ok());
  auto ack = shipper.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  ASSERT_TRUE(receiver.Join().ok());
  EXPECT_EQ(receiver.report().kept_blocks, ship.keep.size());
  ExpectReplicaEquals(volumes[0]);
  state = ReadGuestState(Options().replica_dir, kGuest);
  EXPECT_FALSE(state->volumes[0].incomplete);
  EXPECT_EQ(state->volumes[0].committed_epoch, 4u);
}

// Mutates `path` (bytes via `fn`) without the code under test.
void MutateFile(const std::string& path, const std::function<void(std::vector<std::byte>&)>& fn) {
  std::vector<std::byte> bytes = ReadFile(path);
  fn(bytes);
  ASSERT_TRUE(core::test_support::WriteFile(path, bytes));
}

class StagedResumeTest : public ReceiverTest {
 protected:
  void SetUp() override {
    volumes_ = {{"disk0", MakeImage((1 << 20) + 100, 16)}};
    ASSERT_TRUE(RunCycle(volumes_, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
    for (std::uint64_t b : dirty_) Rewrite(volumes_[0].image, b, 700 + static_cast<std::uint32_t>(b));
    recording_ = Record(volumes_, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, dirty_);
    // Cut just before CYCLE_END: every block is staged.
    ASSERT_FALSE(Replay(std::span(recording_.bytes).first(recording_.frames[recording_.frames.size() - 2].end_offset),
                        Options())
                     .ok());
    ASSERT_EQ(StagedBlocksOf(AskState(volumes_)).size(), dirty_.size());
  }
  std::string StagingFile(const char* suffix) const {
    return Options().replica_dir + "/" + kGuest + "/.staging/disk0" + suffix;
  }
  // Resumes the cycle with KEEP for what is staged; returns the receiver status.
  Status Resume(std::uint64_t* kept) {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes_);
    EXPECT_TRUE(shipper.Hello().ok());
    auto reply = shipper.ReadReply();
    if (!reply.ok()) return receiver.Join();
    ShipOptions ship;
    ship.keep = StagedBlocksOf(*reply);
    *kept = ship.keep.size();
    EXPECT_TRUE(shipper.Begin(3, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty_.size()}).ok());
    EXPECT_TRUE(shipper.Ship(0, dirty_, ship).ok());
    EXPECT_TRUE(shipper.End(3).ok());
    (void)shipper.ReadAck();
    return receiver.Join();
  }

  std::vector<Volume> volumes_;
  std::vector<std::uint64_t> dirty_ = {2, 3, 4, 5, 6, 7, 8, 9, 60, 61, 62, 256};
  Recording recording_;
};

TEST_F(StagedResumeTest, TornIndexTailIsDroppedAndTheLogContinuesAfterIt) {
  MutateFile(StagingFile(".index"), [](std::vector<std::byte>& b) { b.resize(b.size() - 5); });
  std::set<std::uint64_t> staged = StagedBlocksOf(AskState(volumes_));
  EXPECT_LT(staged.size(), dirty_.size());
  EXPECT_FALSE(staged.empty());
  std::uint64_t kept = 0;
  Status s = Resume(&kept);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(kept, staged.size());
  ExpectReplicaEquals(volumes_[0]);
}

TEST_F(StagedResumeTest, CorruptIndexRecordEndsTheLog) {
  // A flipped bit in the first record's first hash: it and all after it go.
  MutateFile(StagingFile(".index"), [](std::vector<std::byte>& b) { b[32 + 40] ^= std::byte{1}; });
  EXPECT_TRUE(AskState(volumes_).staged.empty());
  std::uint64_t kept = 0;
  ASSERT_TRUE(Resume(&kept).ok());
  EXPECT_EQ(kept, 0u);
  ExpectReplicaEquals(volumes_[0]);
}

TEST_F(StagedResumeTest, CorruptStagedDataFoundByTheApplyMarksTheReplicaIncomplete) {
  ReceiverOptions crash = Options();
  crash.crash_hook = [](std::string_view at) {
    return at == "apply-pending" ? Status::Aborted("simulated crash") : Status::Ok();
  };
  std::uint64_t kept = 0;
  {
    // Resume with the crash hook: everything kept, crash before the apply.
    ReceiverThread receiver(crash);
    TestShipper shipper(receiver.stream(), volumes_);
    ASSERT_TRUE(shipper.Hello().ok());
    auto reply = shipper.ReadReply();
    ASSERT_TRUE(reply.ok());
    ShipOptions ship;
    ship.keep = StagedBlocksOf(*reply);
    kept = ship.keep.size();
    ASSERT_TRUE(shipper.Begin(3, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty_.size()}).ok());
    ASSERT_TRUE(shipper.Ship(0, dirty_, ship).ok());
    ASSERT_TRUE(shipper.End(3).ok());
    EXPECT_FALSE(receiver.Join().ok());
  }
  EXPECT_EQ(kept, dirty_.size());
  ASSERT_TRUE(ReadGuestState(Options().replica_dir, kGuest)->apply_pending);
  MutateFile(StagingFile(".data"), [](std::vector<std::byte>& b) { b[5 * kBlockBytes + 17] ^= std::byte{0x40}; });

  ReceiverThread receiver(Options());
  TestShipper shipper(receiver.stream(), volumes_);
  ASSERT_TRUE(shipper.Hello().ok());
  auto reply = shipper.ReadReply();
  ASSERT_FALSE(reply.ok());
  EXPECT_NE(reply.status().message().find("does not match its hash"), std::string::npos) << reply.status().ToString();
  EXPECT_EQ(receiver.Join().code(), core::Code::kCorruption);
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  EXPECT_FALSE(state->apply_pending);
  EXPECT_TRUE(state->volumes[0].incomplete);
  Reply after = AskState(volumes_);
  EXPECT_TRUE(after.hello.volumes(0).incomplete());

  // A full cycle repairs it.
  ASSERT_TRUE(RunCycle(volumes_, 4, proto::CYCLE_MODE_FULL, 3, 0, {}).ok());
  ExpectReplicaEquals(volumes_[0]);
  EXPECT_FALSE(ReadGuestState(Options().replica_dir, kGuest)->volumes[0].incomplete);
}

TEST_F(ReceiverTest, CrashDuringApplyIsFinishedByTheNextSession) {
  for (const char* point : {"apply-pending", "applied-record", "applied"}) {
    SCOPED_TRACE(point);
    TempDir dir;
    ReceiverOptions options;
    options.replica_dir = dir.path();
    std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 10)}, {"disk1", MakeImage(1 << 19, 11)}};
    ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}, {}, &options).ok());
    const std::uint64_t previous = core::Xxh3_64(ReadFile(*ReplicaPath(dir.path(), kGuest, "disk0")));
    std::vector<std::vector<std::uint64_t>> dirty = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 50, 51}, {7}};
    for (std::uint64_t b : dirty[0]) Rewrite(volumes[0].image, b, 500 + static_cast<std::uint32_t>(b));
    Rewrite(volumes[1].image, 7, 0, true);

    int calls = 0;
    options.crash_hook = [&](std::string_view at) {
      if (at == point && ++calls == (at == std::string_view("applied-record") ? 2 : 1)) {
        return Status::Aborted(std::string("simulated crash at ") + std::string(at));
      }
      return Status::Ok();
    };
    Status s = RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, dirty, {}, &options);
    EXPECT_EQ(s.code(), core::Code::kAborted) << s.ToString();
    auto state = ReadGuestState(dir.path(), kGuest);
    ASSERT_TRUE(state.ok());
    EXPECT_TRUE(state->apply_pending);
    EXPECT_EQ(state->volumes[0].committed_epoch, 1u);
    if (std::string_view(point) == "applied-record") {
      std::uint64_t now = core::Xxh3_64(ReadFile(*ReplicaPath(dir.path(), kGuest, "disk0")));
      EXPECT_NE(now, previous) << "the crash was meant to leave a partly applied replica";
    }

    options.crash_hook = nullptr;
    ReceiverThread receiver(options);
    TestShipper shipper(receiver.stream(), volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    auto reply = shipper.ReadReply();
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ(reply->hello.volumes(0).committed_epoch(), 2u);
    EXPECT_EQ(reply->hello.volumes(1).committed_epoch(), 2u);
    EXPECT_TRUE(reply->staged.empty());
    ASSERT_TRUE(receiver.Join().ok());
    for (const Volume& v : volumes) {
      EXPECT_EQ(core::Xxh3_64(ReadFile(*ReplicaPath(dir.path(), kGuest, v.name))), core::Xxh3_64(v.image)) << v.name;
    }
    EXPECT_FALSE(ReadGuestState(dir.path(), kGuest)->apply_pending);
  }
}

// What `blkrep promote` does when the source died right after a cycle's
// commit point: the pending apply is finished without a session.
TEST_F(ReceiverTest, APendingApplyIsFinishedWithoutASessionUnderTheGuestLock) {
  for (const char* point : {"apply-pending", "applied-record"}) {
    SCOPED_TRACE(point);
    TempDir dir;
    ReceiverOptions options;
    options.replica_dir = dir.path();
    std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 20)}};
    ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}, {}, &options).ok());
    std::vector<std::vector<std::uint64_t>> dirty = {{3, 4, 5, 90}};
    for (std::uint64_t b : dirty[0]) Rewrite(volumes[0].image, b, 700 + static_cast<std::uint32_t>(b));
    options.crash_hook = [&](std::string_view at) {
      return at == point ? Status::Aborted("simulated crash") : Status::Ok();
    };
    EXPECT_FALSE(RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, dirty, {}, &options).ok());
    ASSERT_TRUE(ReadGuestState(dir.path(), kGuest)->apply_pending);
    {
      auto lock = core::PosixFileSystemInstance().Lock(dir.path() + "/" + kGuest + "/.lock");
      ASSERT_TRUE(lock.ok()) << lock.status().ToString();
      ASSERT_TRUE(FinishPendingApplyLocked(dir.path(), kGuest).ok());
      // Nothing pending: nothing to do.
      ASSERT_TRUE(FinishPendingApplyLocked(dir.path(), kGuest).ok());
    }
    auto state = ReadGuestState(dir.path(), kGuest);
    EXPECT_FALSE(state->apply_pending);
    EXPECT_EQ(state->volumes[0].committed_epoch, 2u);
    EXPECT_EQ(core::Xxh3_64(ReadFile(*ReplicaPath(dir.path(), kGuest, "disk0"))), core::Xxh3_64(volumes[0].image));
  }
}

TEST_F(ReceiverTest, CrashAfterCycleBeginLeavesTheReplicaAtThePreviousCycle) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 12)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  const std::uint64_t previous = ReplicaChecksum("disk0");
  Rewrite(volumes[0].image, 3, 99);
  ReceiverOptions options = Options();
  options.crash_hook = [](std::string_view at) {
    return at == "cycle-begun" ? Status::Aborted("simulated crash") : Status::Ok();
  };
  EXPECT_FALSE(RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {{3}}, {}, &options).ok());
  EXPECT_EQ(ReplicaChecksum("disk0"), previous);
  ASSERT_TRUE(RunCycle(volumes, 3, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {{3}}).ok());
  ExpectReplicaEquals(volumes[0]);
}

TEST_F(ReceiverTest, SecondConcurrentSessionForTheSameGuestIsRefused) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(64 << 10, 13)}};
  ReceiverThread first(Options());
  TestShipper first_shipper(first.stream(), volumes);
  ASSERT_TRUE(first_shipper.Hello().ok());
  ASSERT_TRUE(first_shipper.ReadReply().ok());  // the first session holds the guest now

  ReceiverThread second(Options());
  TestShipper second_shipper(second.stream(), volumes);
  ASSERT_TRUE(second_shipper.Hello().ok());
  auto reply = second_shipper.ReadReply();
  ASSERT_FALSE(reply.ok());
  EXPECT_NE(reply.status().message().find("guest vm100 is being received by another session"), std::string::npos)
      << reply.status().ToString();
  EXPECT_EQ(second.Join().code(), core::Code::kAborted);
  EXPECT_TRUE(first.Join().ok());

  // Once the first session ended, the guest can be received again.
  EXPECT_TRUE(AskState(volumes).hello.volumes_size() == 1);
}

TEST_F(ReceiverTest, AnotherJobSeesNoCommittedCycle) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(64 << 10, 14)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  ReceiverThread receiver(Options());
  TestShipper shipper(receiver.stream(), volumes);
  ASSERT_TRUE(shipper.Hello(kAllFeatures, "vm100-1").ok());
  auto reply = shipper.ReadReply();
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->hello.volumes(0).committed_epoch(), 0u);
  EXPECT_TRUE(receiver.Join().ok());
}

// ---- a replica replaced behind the receiver's back ----

// Puts a copy of the replica of `name` in its place, as an operator
// restoring a backup would: written next to it, renamed over it. Same
// bytes, another inode.
void ReplaceWithCopy(const std::string& path) {
  std::vector<std::byte> bytes = ReadFile(path);
  ASSERT_FALSE(bytes.empty());
  struct stat before{};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  ASSERT_TRUE(core::test_support::WriteFile(path + ".restored", bytes));
  ASSERT_EQ(::rename((path + ".restored").c_str(), path.c_str()), 0);
  struct stat after{};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  ASSERT_NE(after.st_ino, before.st_ino);
}

TEST_F(ReceiverTest, ReplicaReplacedByACopyIsReportedReplacedWithNoEpochAndNoStaging) {
  std::vector<Volume> volumes = {{"disk0", MakeImage((1 << 20) + 100, 17)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  // An incremental cut just before CYCLE_END: its blocks are staged.
  std::vector<std::uint64_t> dirty = {4, 5, 6, 40};
  for (std::uint64_t b : dirty) Rewrite(volumes[0].image, b, 900 + static_cast<std::uint32_t>(b));
  Recording recording = Record(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, dirty);
  ASSERT_FALSE(
      Replay(std::span(recording.bytes).first(recording.frames[recording.frames.size() - 2].end_offset), Options())
          .ok());
  Reply reply = AskState(volumes);
  EXPECT_FALSE(reply.hello.volumes(0).replaced());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 1u);
  ASSERT_EQ(StagedBlocksOf(reply).size(), dirty.size());

  ReplaceWithCopy(Replica("disk0"));
  reply = AskState(volumes);
  const proto::ReplicaState& r = reply.hello.volumes(0);
  EXPECT_TRUE(r.exists());
  EXPECT_EQ(r.size_bytes(), (1u << 20) + 100);
  EXPECT_TRUE(r.replaced());
  EXPECT_EQ(r.committed_epoch(), 0u);
  EXPECT_FALSE(r.incomplete());
  EXPECT_EQ(r.staged_blocks(), 0u);
  EXPECT_TRUE(reply.staged.empty()) << "staging for another file was offered";
  EXPECT_EQ(reply.staged_end_total, 0u);
  // Asking changes nothing: it is still replaced.
  EXPECT_TRUE(AskState(volumes).hello.volumes(0).replaced());

  // An incremental cycle onto it is refused before anything is written.
  const std::uint64_t copy = ReplicaChecksum("disk0");
  {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    ASSERT_TRUE(shipper.ReadReply().ok());
    ASSERT_TRUE(shipper.Begin(3, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty.size()}).ok());
    Status s = receiver.Join();
    EXPECT_NE(s.message().find("replica of disk0 is at epoch 0, not 1"), std::string::npos) << s.ToString();
  }
  EXPECT_EQ(ReplicaChecksum("disk0"), copy);

  // A cycle that begins on it takes it as it is: cut off, the state vouches
  // for no epoch any more, and the copy is the replica its staging is for.
  Recording full = Record(volumes, 4, proto::CYCLE_MODE_FULL, 3, 0, AllBlocks(volumes[0].image));
  ASSERT_FALSE(Replay(std::span(full.bytes).first(full.frames[full.frames.size() / 2].end_offset), Options()).ok());
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->volumes[0].committed_epoch, 0u);
  EXPECT_TRUE(state->volumes[0].incomplete);
  reply = AskState(volumes);
  EXPECT_FALSE(reply.hello.volumes(0).replaced());
  EXPECT_TRUE(reply.hello.volumes(0).incomplete());
  EXPECT_FALSE(reply.staged.empty()) << "the cut cycle's own writes must be resumable";

  // Its commit records the file: the next HELLO sees the replica it committed.
  ASSERT_TRUE(RunCycle(volumes, 5, proto::CYCLE_MODE_FULL, 3, 0, {}).ok());
  ExpectReplicaEquals(volumes[0]);
  reply = AskState(volumes);
  EXPECT_FALSE(reply.hello.volumes(0).replaced());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 3u);
}

TEST_F(ReceiverTest, OlderImageCopiedOntoTheReplicaWithItsTimestampsIsReplaced) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 18)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  EXPECT_FALSE(AskState(volumes).hello.volumes(0).replaced());
  // `cp --preserve=timestamps old.img disk0.img`: the same inode, other
  // bytes, the older copy's modification time.
  std::vector<std::byte> older = MakeImage(1 << 20, 19);
  ASSERT_TRUE(core::test_support::WriteFile(Replica("disk0"), older));
  struct timespec times[2] = {{1600000000, 0}, {1600000000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, Replica("disk0").c_str(), times, 0), 0);
  Reply reply = AskState(volumes);
  EXPECT_TRUE(reply.hello.volumes(0).replaced());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 0u);
}

TEST_F(ReceiverTest, ReplicaReplacedBeforeAPendingApplyIsNotAppliedAndBecomesIncomplete) {
  std::vector<Volume> volumes = {{"disk0", MakeImage(1 << 20, 20)}};
  ASSERT_TRUE(RunCycle(volumes, 1, proto::CYCLE_MODE_FULL, 1, 0, {}).ok());
  std::vector<std::uint64_t> dirty = {1, 2, 3};
  for (std::uint64_t b : dirty) Rewrite(volumes[0].image, b, 950 + static_cast<std::uint32_t>(b));
  ReceiverOptions crash = Options();
  crash.crash_hook = [](std::string_view at) {
    return at == "apply-pending" ? Status::Aborted("simulated crash") : Status::Ok();
  };
  EXPECT_EQ(RunCycle(volumes, 2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, {dirty}, {}, &crash).code(),
            core::Code::kAborted);
  ASSERT_TRUE(ReadGuestState(Options().replica_dir, kGuest)->apply_pending);

  ReplaceWithCopy(Replica("disk0"));
  const std::uint64_t copy = ReplicaChecksum("disk0");
  {
    ReceiverThread receiver(Options());
    TestShipper shipper(receiver.stream(), volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    auto reply = shipper.ReadReply();
    ASSERT_FALSE(reply.ok());
    EXPECT_NE(reply.status().message().find("is not the file cycle 2 was received for (replaced)"), std::string::npos)
        << reply.status().ToString();
    EXPECT_EQ(receiver.Join().code(), core::Code::kCorruption);
  }
  EXPECT_EQ(ReplicaChecksum("disk0"), copy) << "the staged cycle was applied to another file";
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_FALSE(state->apply_pending);
  EXPECT_TRUE(state->volumes[0].incomplete);
  Reply reply = AskState(volumes);
  EXPECT_TRUE(reply.hello.volumes(0).replaced());
  EXPECT_TRUE(reply.hello.volumes(0).incomplete());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 0u);

  // A full cycle repairs it.
  ASSERT_TRUE(RunCycle(volumes, 3, proto::CYCLE_MODE_FULL, 3, 0, {}).ok());
  ExpectReplicaEquals(volumes[0]);
  reply = AskState(volumes);
  EXPECT_FALSE(reply.hello.volumes(0).replaced());
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 3u);
}

// ---- the command ----

TEST(ReceiveCommandTest, StdioServesOneSessionAndErrorsGoToStderr) {
  const char* bin = std::getenv("BLKREP_BIN");
  if (bin == nullptr || ::access(bin, X_OK) != 0) GTEST_SKIP() << "BLKREP_BIN is not set";
  TempDir dir;
  std::vector<Volume> volumes = {{"disk0", MakeImage((256 << 10) + 7, 15)}};
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  std::string err_path = dir.File("stderr");
  std::string replicas = dir.File("replicas");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> args = {bin, "receive", "--stdio", "--replica-dir", replicas};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(::posix_spawn(&pid, bin, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  {
    proto::FdStream stream(fds[0], fds[0], true);
    TestShipper shipper(stream, volumes);
    ASSERT_TRUE(shipper.Hello().ok());
    ASSERT_TRUE(shipper.ReadReply().ok());
    ASSERT_TRUE(shipper.Begin(1, proto::CYCLE_MODE_FULL, 1, 0, {BlockCount(volumes[0].image)}).ok());
    ASSERT_TRUE(shipper.Ship(0, AllBlocks(volumes[0].image), Zstd()).ok());
    ASSERT_TRUE(shipper.End(1).ok());
    auto ack = shipper.ReadAck();
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(core::Xxh3_64(ReadFile(*ReplicaPath(replicas, kGuest, "disk0"))), core::Xxh3_64(volumes[0].image));

  // Garbage instead of a HELLO: one error line, exit 1.
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_EQ(::posix_spawn(&pid, bin, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  std::string garbage(100, 'x');
  ASSERT_EQ(::send(fds[0], garbage.data(), garbage.size(), MSG_NOSIGNAL), 100);
  ::shutdown(fds[0], SHUT_WR);
  std::vector<std::byte> answer;
  std::byte chunk[4096];
  ssize_t n;
  while ((n = ::read(fds[0], chunk, sizeof(chunk))) > 0) answer.insert(answer.end(), chunk, chunk + n);
  ::close(fds[0]);
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  std::vector<std::byte> err = ReadFile(err_path);
  std::string text(reinterpret_cast<const char*>(err.data()), err.size());
  EXPECT_EQ(text.rfind("blkrep: error: ", 0), 0u) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  // What came back on stdout is frames only: one ERROR frame.
  ASSERT_GE(answer.size(), proto::kFrameHeaderBytes);
  EXPECT_EQ(static_cast<std::uint8_t>(answer[4]), static_cast<std::uint8_t>(FrameType::kError));

  // Bad arguments: exit 2.
  std::string cmd = std::string(bin) + " receive --stdio 2>/dev/null </dev/null >/dev/null";
  status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2);
}

// ---- recovery points ----

// A guest of two volumes replicated with recovery_points N: a full cycle at
// epoch 1, then incremental cycles that each change some blocks (data and
// zeroes) of both volumes. images_[e] are the volumes at epoch e.
class RecoveryPointsTest : public ReceiverTest {
 protected:
  void SetUp() override {
    volumes_ = {{"disk0", MakeImage(64 * kBlockBytes, 11)}, {"disk1", MakeImage(48 * kBlockBytes + 1000, 12)}};
    images_.push_back({});  // no epoch 0
  }

  Status Full(std::uint64_t epoch, std::uint32_t n) {
    ShipOptions ship;
    ship.recovery_points = n;
    Status s = RunCycle(volumes_, epoch, proto::CYCLE_MODE_FULL, epoch, 0, {}, ship);
    Record(epoch);
    return s;
  }

  // Changes a few blocks of each volume (one run zeroed) and ships them.
  Status Incremental(std::uint64_t epoch, std::uint32_t n, const ReceiverOptions* options = nullptr) {
    std::vector<std::vector<std::uint64_t>> dirty;
    for (std::size_t i = 0; i < volumes_.size(); ++i) {
      std::vector<std::byte>& image = volumes_[i].image;
      std::set<std::uint64_t> blocks;
      const std::uint64_t count = BlockCount(image);
      for (std::uint64_t k = 0; k < 6; ++k) blocks.insert((epoch * 7 + k * 5 + i) % count);
      blocks.insert(count - 1);  // the short last block of disk1
      std::vector<std::byte> fresh = Pattern(image.size(), static_cast<std::uint32_t>(epoch * 100 + i));
      for (std::uint64_t b : blocks) {
        std::uint64_t start = b * kBlockBytes, end = std::min<std::uint64_t>(start + kBlockBytes, image.size());
        const bool zero = b % 3 == 0;
        for (std::uint64_t x = start; x < end; ++x) image[x] = zero ? std::byte{0} : fresh[x];
      }
      dirty.emplace_back(blocks.begin(), blocks.end());
    }
    ShipOptions ship;
    ship.recovery_points = n;
    Status s = RunCycle(volumes_, epoch, proto::CYCLE_MODE_INCREMENTAL, epoch, epoch - 1, dirty, ship, options);
    Record(epoch);
    return s;
  }

  void Record(std::uint64_t epoch) {
    images_.resize(epoch + 1);
    images_[epoch].clear();
    for (const Volume& v : volumes_) images_[epoch].push_back(v.image);
  }

  // Reads every volume at `p` and compares it with the images of its epoch.
  void ExpectPointReads(const RecoveryPoint& p) {
    auto lock = LockGuest(Options().replica_dir, kGuest);
    ASSERT_TRUE(lock.ok()) << lock.status().ToString();
    ASSERT_EQ(p.volumes.size(), volumes_.size());
    for (std::size_t i = 0; i < p.volumes.size(); ++i) {
      const PointVolume& pv = p.volumes[i];
      ASSERT_LT(pv.epoch, images_.size());
      const std::vector<std::byte>& want = images_[pv.epoch][i];
      auto vol = PointInTimeVolume::Open(Options().replica_dir, kGuest, pv.name, p.id);
      ASSERT_TRUE(vol.ok()) << vol.status().ToString();
      ASSERT_EQ((*vol)->size_bytes(), want.size());
      EXPECT_EQ((*vol)->block_size_bytes(), kBlockBytes);
      std::vector<std::byte> got(want.size());
      Status s = (*vol)->Read(0, got);
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(core::Xxh3_64(got), core::Xxh3_64(want)) << pv.name << " at point " << p.id << " epoch " << pv.epoch;
      // An unaligned read across blocks.
      std::vector<std::byte> part(kBlockBytes + 300);
      ASSERT_TRUE((*vol)->Read(kBlockBytes - 100, part).ok());
      EXPECT_TRUE(std::equal(part.begin(), part.end(), want.begin() + (kBlockBytes - 100)));
      EXPECT_EQ((*vol)->Read(want.size() - 10, std::span(part).first(11)).code(), core::Code::kOutOfRange);
    }
  }

  std::vector<RecoveryPoint> List() {
    auto points = ListRecoveryPoints(Options().replica_dir, kGuest);
    EXPECT_TRUE(points.ok()) << points.status().ToString();
    return points.ok() ? *points : std::vector<RecoveryPoint>{};
  }

  std::vector<std::string> UndoFiles() const {
    std::vector<std::string> out;
    std::string dir = Options().replica_dir + "/" + kGuest + "/.points";
    if (!std::filesystem::exists(dir)) return out;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.path().extension() == ".undo") out.push_back(e.path().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  static std::vector<std::uint64_t> Epochs(const std::vector<RecoveryPoint>& points) {
    std::vector<std::uint64_t> out;
    for (const RecoveryPoint& p : points) out.push_back(p.volumes.empty() ? 0 : p.volumes[0].epoch);
    return out;
  }

  std::vector<Volume> volumes_;
  std::vector<std::vector<std::vector<std::byte>>> images_;  // [epoch][volume]
};

TEST_F(RecoveryPointsTest, KeepsTheLastNCyclesAndEveryPointReadsAsItsCycle) {
  ASSERT_TRUE(Full(1, 2).ok());
  for (std::uint64_t e = 2; e <= 5; ++e) ASSERT_TRUE(Incremental(e, 2).ok()) << e;
  std::vector<RecoveryPoint> points = List();
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(Epochs(points), (std::vector<std::uint64_t>{3, 4, 5}));
  EXPECT_FALSE(points[0].latest);
  EXPECT_FALSE(points[1].latest);
  EXPECT_TRUE(points[2].latest);
  EXPECT_LT(points[0].id, points[1].id);
  EXPECT_LT(points[1].id, points[2].id);
  EXPECT_EQ(points[2].undo_bytes, 0u);
  for (const RecoveryPoint& p : points) {
    EXPECT_GT(p.commit_time, 0u);
    ExpectPointReads(p);
  }
  // The undo data is the changed blocks only, not the volumes.
  EXPECT_GT(points[0].undo_bytes, 7 * kBlockBytes);
  EXPECT_LT(points[0].undo_bytes, 20 * kBlockBytes);
  EXPECT_EQ(UndoFiles().size(), 2u);  // retention removed the older ones
  // Ids are stable: the next cycle keeps the ids of the points it keeps.
  const std::uint64_t id4 = points[1].id, id5 = points[2].id;
  ASSERT_TRUE(Incremental(6, 2).ok());
  points = List();
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(points[0].id, id4);
  EXPECT_EQ(points[1].id, id5);
  EXPECT_EQ(Epochs(points), (std::vector<std::uint64_t>{4, 5, 6}));
  for (const RecoveryPoint& p : points) ExpectPointReads(p);
}

TEST_F(RecoveryPointsTest, ZeroPointsCapturesNothingAndDropsWhatWasKept) {
  ASSERT_TRUE(Full(1, 0).ok());
  ASSERT_TRUE(Incremental(2, 0).ok());
  EXPECT_FALSE(std::filesystem::exists(Options().replica_dir + "/" + kGuest + "/.points"));
  std::vector<RecoveryPoint> points = List();
  ASSERT_EQ(points.size(), 1u);
  EXPECT_TRUE(points[0].latest);
  EXPECT_EQ(Epochs(points), (std::vector<std::uint64_t>{2}));

  ASSERT_TRUE(Incremental(3, 3).ok());
  ASSERT_TRUE(Incremental(4, 3).ok());
  EXPECT_EQ(List().size(), 3u);
  for (const RecoveryPoint& p : List()) ExpectPointReads(p);
  ASSERT_TRUE(Incremental(5, 0).ok());
  EXPECT_TRUE(UndoFiles().empty());
  EXPECT_EQ(Epochs(List()), (std::vector<std::uint64_t>{5}));
}

TEST_F(RecoveryPointsTest, CrashInTheMiddleOfTheApplyIsRedoneWithoutCapturingAgain) {
  ASSERT_TRUE(Full(1, 2).ok());
  ASSERT_TRUE(Incremental(2, 2).ok());
  ReceiverOptions crash = Options();
  int records = 0;
  crash.crash_hook = [&](std::string_view at) {
    return at == "applied-record" && ++records == 2 ? Status::Aborted("simulated crash") : Status::Ok();
  };
  EXPECT_FALSE(Incremental(3, 2, &crash).ok());
  ASSERT_EQ(records, 2);
  EXPECT_TRUE(ReadGuestState(Options().replica_dir, kGuest)->apply_pending);
  EXPECT_EQ(ListRecoveryPoints(Options().replica_dir, kGuest).status().code(), core::Code::kAborted);
  // The next session (one that only asks) redoes the apply.
  AskState(volumes_);
  std::vector<RecoveryPoint> points = List();
  EXPECT_EQ(Epochs(points), (std::vector<std::uint64_t>{1, 2, 3}));
  for (const RecoveryPoint& p : points) ExpectPointReads(p);
  for (const Volume& v : volumes_) ExpectReplicaEquals(v);
}

TEST_F(RecoveryPointsTest, CrashDuringTheCaptureLeavesTheReplicaAndTheRedoKeepsNoDoubtfulPoint) {
  ASSERT_TRUE(Full(1, 2).ok());
  ASSERT_TRUE(Incremental(2, 2).ok());
  ReceiverOptions crash = Options();
  crash.crash_hook = [](std::string_view at) {
    return at == "points-captured" ? Status::Aborted("simulated crash") : Status::Ok();
  };
  const std::uint64_t before = ReplicaChecksum("disk0");
  EXPECT_FALSE(Incremental(3, 2, &crash).ok());
  EXPECT_EQ(ReplicaChecksum("disk0"), before);  // captured, not applied yet
  AskState(volumes_);
  std::vector<RecoveryPoint> points = List();
  EXPECT_EQ(Epochs(points), (std::vector<std::uint64_t>{1, 2, 3}));
  for (const RecoveryPoint& p : points) ExpectPointReads(p);
}

TEST_F(RecoveryPointsTest, FullCycleDropsEveryPoint) {
  ASSERT_TRUE(Full(1, 3).ok());
  ASSERT_TRUE(Incremental(2, 3).ok());
  ASSERT_TRUE(Incremental(3, 3).ok());
  ASSERT_EQ(List().size(), 3u);
  const std::uint64_t latest = List().back().id;
  ASSERT_TRUE(Full(4, 3).ok());
  std::vector<RecoveryPoint> points = List();
  ASSERT_EQ(points.size(), 1u);
  EXPECT_GT(points[0].id, latest);
  EXPECT_TRUE(UndoFiles().empty());
  ASSERT_TRUE(Incremental(5, 3).ok());
  EXPECT_EQ(Epochs(List()), (std::vector<std::uint64_t>{4, 5}));
}

TEST_F(RecoveryPointsTest, RollbackToAMiddlePointGivesItsBytesAndEpochs) {
  ASSERT_TRUE(Full(1, 3).ok());
  for (std::uint64_t e = 2; e <= 4; ++e) ASSERT_TRUE(Incremental(e, 3).ok());
  std::vector<RecoveryPoint> points = List();
  ASSERT_EQ(Epochs(points), (std::vector<std::uint64_t>{1, 2, 3, 4}));
  const RecoveryPoint middle = points[1];
  Status s = RollbackToPoint(Options().replica_dir, kGuest, middle.id);
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (std::size_t i = 0; i < volumes_.size(); ++i) {
    std::vector<std::byte> bytes = ReadFile(Replica(volumes_[i].name));
    EXPECT_EQ(core::Xxh3_64(bytes), core::Xxh3_64(images_[2][i])) << volumes_[i].name;
  }
  auto state = ReadGuestState(Options().replica_dir, kGuest);
  ASSERT_TRUE(state.ok());
  for (const VolumeReplicaState& v : state->volumes) {
    EXPECT_EQ(v.committed_epoch, 2u);
    EXPECT_FALSE(v.incomplete);
  }
  points = List();
  EXPECT_EQ(Epochs(points), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(points.back().id, middle.id);
  EXPECT_TRUE(points.back().latest);
  ExpectPointReads(points[0]);
  // The replica is the point it was rolled back to: the shipper sees epoch
  // 2, and an incremental on it commits.
  Reply reply = AskState(volumes_);
  EXPECT_EQ(reply.hello.volumes(0).committed_epoch(), 2u);
  EXPECT_FALSE(reply.hello.volumes(0).replaced());
  for (std::size_t i = 0; i < volumes_.size(); ++i) volumes_[i].image = images_[2][i];
  images_.resize(3);
  ASSERT_TRUE(Incremental(3, 3).ok());
  for (const Volume& v : volumes_) ExpectReplicaEquals(v);
  EXPECT_EQ(Epochs(List()), (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_EQ(RollbackToPoint(Options().replica_dir, kGuest, 999).code(), core::Code::kNotFound);
}

TEST_F(RecoveryPointsTest, CorruptUndoFileIsAOneLineErrorNamingTheFile) {
  ASSERT_TRUE(Full(1, 2).ok());
  ASSERT_TRUE(Incremental(2, 2).ok());
  ASSERT_TRUE(Incremental(3, 2).ok());
  std::vector<std::string> undo = UndoFiles();
  ASSERT_EQ(undo.size(), 2u);
  // A flipped data byte: listing works, reading that block fails.
  const std::uint64_t size = std::filesystem::file_size(undo[0]);
  MutateFile(undo[0], [&](std::vector<std::byte>& b) { b[size - 5] ^= std::byte{1}; });
  std::vector<RecoveryPoint> points = List();
  ASSERT_EQ(points.size(), 3u);
  {
    auto lock = LockGuest(Options().replica_dir, kGuest);
    ASSERT_TRUE(lock.ok());
    auto vol = PointInTimeVolume::Open(Options().replica_dir, kGuest, "disk1", points[0].id);
    ASSERT_TRUE(vol.ok()) << vol.status().ToString();
    std::vector<std::byte> all((*vol)->size_bytes());
    Status s = (*vol)->Read(0, all);
    EXPECT_EQ(s.code(), core::Code::kCorruption);
    EXPECT_NE(s.message().find(undo[0]), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("does not match its hash"), std::string::npos) << s.ToString();
    // A second session is refused while the lock is held.
    EXPECT_EQ(LockGuest(Options().replica_dir, kGuest).status().code(), core::Code::kAborted);
  }
  // A flipped metadata byte: the checksum.
  MutateFile(undo[1], [](std::vector<std::byte>& b) { b[70] ^= std::byte{1}; });
  auto listed = ListRecoveryPoints(Options().replica_dir, kGuest);
  ASSERT_EQ(listed.status().code(), core::Code::kCorruption);
  EXPECT_NE(listed.status().message().find(undo[1]), std::string::npos) << listed.status().ToString();
  EXPECT_NE(listed.status().message().find("checksum mismatch"), std::string::npos);
  EXPECT_EQ(listed.status().message().find('\n'), std::string::npos);
  // The next cycle does not trust it: it keeps no doubtful point.
  ASSERT_TRUE(Incremental(4, 2).ok());
  for (const RecoveryPoint& p : List()) ExpectPointReads(p);
}

TEST_F(RecoveryPointsTest, CommandListsThePointsAsJson) {
  const char* bin = std::getenv("BLKREP_BIN");
  if (bin == nullptr || ::access(bin, X_OK) != 0) GTEST_SKIP() << "BLKREP_BIN is not set";
  ASSERT_TRUE(Full(1, 2).ok());
  ASSERT_TRUE(Incremental(2, 2).ok());
  auto run = [&](const std::string& args, int* exit_code) {
    std::string out;
    FILE* p = ::popen((std::string(bin) + " " + args + " 2>&1").c_str(), "r");
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return out;
  };
  int code = -1;
  std::string out = run("recovery-points vm100 --replica-dir " + Options().replica_dir + " --json", &code);
  EXPECT_EQ(code, 0) << out;
  std::vector<RecoveryPoint> points = List();
  ASSERT_EQ(points.size(), 2u);
  EXPECT_NE(out.find("\"guest\": \"vm100\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"id\": " + std::to_string(points[0].id)), std::string::npos) << out;
  EXPECT_NE(out.find("\"latest\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"undo_bytes\": " + std::to_string(points[0].undo_bytes)), std::string::npos) << out;
  EXPECT_NE(out.find("\"name\": \"disk1\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"epoch\": 2"), std::string::npos) << out;
  run("recovery-points vm999 --replica-dir " + Options().replica_dir, &code);
  EXPECT_EQ(code, 1);
  out = run("recovery-points --replica-dir " + Options().replica_dir, &code);
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("blkrep: error: "), std::string::npos) << out;
}

}  // namespace
}  // namespace blkrep::receiver
