// The receiver's worked example of docs/replica-format.md, shared by the
// tests that check the document's bytes (replica_format_test) and those
// that mutate them (receiver_decoder_test): a scripted shipper side of a
// session, the frame builders, and the two sessions that produce the
// example's state file and staging index.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/hash.h"
#include "proto/frame.h"
#include "receiver/receiver.h"

namespace blkrep::receiver::test_support {

inline constexpr std::uint32_t kBlockBytes = 4096;
inline constexpr std::uint64_t kVolumeBytes = 1 << 20;  // 256 blocks
inline const char* const kGuest = "vm100";
inline const char* const kJob = "vm100-0";
inline const char* const kVolume = "disk0";

// A shipper's side of a session written in advance; what the receiver
// writes is kept in output().
class ScriptStream final : public proto::Stream {
 public:
  core::Status ReadFull(std::span<std::byte> out) override {
    if (read_ == input_.size()) return core::Status::EndOfData("end of script");
    if (out.size() > input_.size() - read_) return core::Status::Aborted("script cut off");
    std::copy_n(input_.begin() + static_cast<std::ptrdiff_t>(read_), out.size(), out.begin());
    read_ += out.size();
    return core::Status::Ok();
  }
  core::Status WriteAll(std::span<const std::byte> data) override {
    std::vector<std::byte>& to = writing_script_ ? input_ : output_;
    to.insert(to.end(), data.begin(), data.end());
    return core::Status::Ok();
  }
  // While true, writes (the test's FrameWriter) append to the script.
  void set_writing_script(bool on) { writing_script_ = on; }
  const std::vector<std::byte>& output() const { return output_; }

 private:
  std::vector<std::byte> input_, output_;
  std::size_t read_ = 0;
  bool writing_script_ = true;
};

// Frames of the example's one-volume guest.
struct ExampleFrames {
  static proto::Hello Hello() {
    proto::Hello m;
    m.set_protocol_version(1);
    m.set_min_protocol_version(1);
    m.set_feature_flags(proto::kFeatureResume);
    m.set_guest(kGuest);
    m.set_job(kJob);
    proto::VolumeInfo* v = m.add_volumes();
    v->set_name(kVolume);
    v->set_size_bytes(kVolumeBytes);
    v->set_block_size_bytes(kBlockBytes);
    return m;
  }
  static proto::CycleBegin Begin(std::uint64_t cycle_id, proto::CycleMode mode, std::uint64_t epoch,
                                 std::uint64_t base_epoch, std::uint64_t block_count) {
    proto::CycleBegin m;
    m.set_cycle_id(cycle_id);
    m.set_mode(mode);
    proto::VolumeCycle* v = m.add_volumes();
    v->set_volume(0);
    v->set_epoch(epoch);
    v->set_base_epoch(base_epoch);
    v->set_block_count(block_count);
    return m;
  }
  static proto::Zeroes Zeroes(std::uint64_t first, std::uint64_t count) {
    proto::Zeroes m;
    m.set_volume(0);
    m.set_first_block(first);
    m.set_block_count(count);
    return m;
  }
  static proto::CycleEnd End(std::uint64_t cycle_id, std::uint64_t data, std::uint64_t zero) {
    proto::CycleEnd m;
    m.set_cycle_id(cycle_id);
    proto::VolumeCount* c = m.add_volumes();
    c->set_volume(0);
    c->set_data_blocks(data);
    c->set_zero_blocks(zero);
    return m;
  }
};

// The example's two sessions into options.replica_dir. Session 1: a full
// cycle (cycle id 1) brings disk0 to epoch 1; the source is all zeroes, so
// one ZEROES frame covers it. Session 2: an incremental cycle (cycle id 2,
// epoch 2 on base 1) of 12 blocks: 2 and 3 were written ("aaaa...",
// "bbbb..."), 10..19 discarded; the receiver stops right after the state
// file says "apply pending".
inline void RunWorkedExample(const ReceiverOptions& options) {
  using F = ExampleFrames;
  using proto::FrameType;
  {
    ScriptStream s;
    proto::FrameWriter w(s);
    ASSERT_TRUE(w.Send(FrameType::kHello, F::Hello()).ok());
    ASSERT_TRUE(w.Send(FrameType::kCycleBegin, F::Begin(1, proto::CYCLE_MODE_FULL, 1, 0, 256)).ok());
    ASSERT_TRUE(w.Send(FrameType::kZeroes, F::Zeroes(0, 256)).ok());
    ASSERT_TRUE(w.Send(FrameType::kCycleEnd, F::End(1, 0, 256)).ok());
    s.set_writing_script(false);
    core::Status st = ServeSession(s, options, nullptr);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  {
    ScriptStream s;
    proto::FrameWriter w(s);
    ASSERT_TRUE(w.Send(FrameType::kHello, F::Hello()).ok());
    ASSERT_TRUE(w.Send(FrameType::kCycleBegin, F::Begin(2, proto::CYCLE_MODE_INCREMENTAL, 2, 1, 12)).ok());
    std::vector<std::byte> payload(kBlockBytes, std::byte('a'));
    payload.resize(2 * kBlockBytes, std::byte('b'));
    proto::Blocks blocks;
    blocks.set_volume(0);
    blocks.set_first_block(2);
    blocks.set_block_count(2);
    blocks.set_raw_length(2 * kBlockBytes);
    blocks.set_payload(std::string(reinterpret_cast<const char*>(payload.data()), payload.size()));
    blocks.add_hashes(core::Xxh3_64(std::span(payload).first(kBlockBytes)));
    blocks.add_hashes(core::Xxh3_64(std::span(payload).subspan(kBlockBytes)));
    ASSERT_TRUE(w.Send(FrameType::kBlocks, blocks).ok());
    ASSERT_TRUE(w.Send(FrameType::kZeroes, F::Zeroes(10, 10)).ok());
    ASSERT_TRUE(w.Send(FrameType::kCycleEnd, F::End(2, 2, 10)).ok());
    s.set_writing_script(false);
    ReceiverOptions crash = options;
    crash.crash_hook = [](std::string_view at) {
      return at == "apply-pending" ? core::Status::Aborted("stopped for the example") : core::Status::Ok();
    };
    ASSERT_EQ(ServeSession(s, crash, nullptr).code(), core::Code::kAborted);
  }
}

}  // namespace blkrep::receiver::test_support
