// One replication cycle of a job, end to end: what `blkrep run --id` does.
//
// Design note. The guest's volumes are the journals under
// STATE/journal/GUEST/. If a tracker serves the guest (its control socket
// answers), the cycle is frozen through it — one instant for all volumes,
// copy-on-write while the guest writes on; otherwise the runner opens the
// journals itself (their lock keeps a tracker from starting meanwhile) and
// reads the idle volumes directly, then seals the journals again.
//
// The mode follows the journal and the receiver's handshake: the journal
// says full for a new target and resync when tracking cannot be trusted;
// an incremental cycle is only shipped when the receiver's committed epoch
// of every volume lies in [the journal's last committed cycle for the job,
// the journal's current epoch] — a replica that is missing, incomplete, of
// another size or at an unknown cycle forces a resync cycle instead; and a
// job whose journal has no cycle in common with an existing replica (a new
// target, or a journal that lost it) is resynchronized, not copied in full.
// A resync compares block hashes on both sides and sends only blocks that
// differ (shipper.h). A cycle that fails is aborted on the source: its
// blocks stay dirty for the next one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"
#include "shipper/shipper.h"

namespace blkrep::jobs {

struct CycleRequest {
  std::string state_dir;
  std::string job;                       // GUEST-N
  std::string guest;
  std::vector<std::string> target_args;  // as stored by `target add`
  double rate_mbps = 0;                  // 0: unlimited
  shipper::ShipOptions ship;
  // false: a cycle that must be a resync is not run (the job's automatic
  // resync is off or outside its window); the journals record why and the
  // result says resync_deferred.
  bool allow_resync = true;
  // Called once the cycle is frozen, before anything is shipped: the mode
  // and each volume's name and block count.
  std::function<void(const std::string& mode, const std::vector<std::pair<std::string, std::uint64_t>>& volumes)>
      on_started;
  // Optional: receives what the shipper did, also when the cycle fails or is
  // cancelled (CycleResult is only returned on success).
  shipper::ShipStats* stats_out = nullptr;
};

struct CycleResult {
  std::string mode;        // full, incremental, resync
  std::string resync_reason;     // why the cycle is (or must be) a resync
  bool resync_deferred = false;  // a resync was needed but not allowed: nothing ran
  bool tracker_running = false;
  std::uint64_t blocks_sent = 0;   // blocks brought to the replica (data + zero + kept)
  shipper::ShipStats stats;
  std::vector<std::string> volumes;
};

core::Result<CycleResult> RunCycle(const CycleRequest& request);

// DRBD's online verify: compares the hash of every block of every volume
// with the replica's, sending no data and changing nothing on the receiver.
// The source is not frozen; instead a block that differs is only reported
// when the journal, read after the comparison, says the job's target has
// not seen it change since its last committed cycle (a block written during
// or since then differs legitimately). Differences mark the job
// resync-required with the count as the reason.
struct VerifyVolume {
  std::string name;
  std::uint64_t blocks = 0;
  std::uint32_t block_size_bytes = 0;
  std::uint64_t changed_blocks = 0;  // dirty for the job: not judged
  std::vector<std::pair<std::uint64_t, std::uint64_t>> differing;  // [first_block, count]
  std::uint64_t differing_blocks = 0;
};
struct VerifyResult {
  std::vector<VerifyVolume> volumes;
  std::uint64_t compared_blocks = 0;
  std::uint64_t differing_blocks = 0;
  bool resync_required_before = false;  // tracking was not trusted: differences expected
  bool tracker_running = false;
  shipper::ShipStats stats;
};
core::Result<VerifyResult> RunVerify(const CycleRequest& request);

// Marks `job` resync-required with `reason` in every journal of `guest`
// (through the running tracker, or the journals themselves), making it a
// target first if it is not one.
core::Status RequireResync(const std::string& state_dir, const std::string& guest, const std::string& job,
                           const std::string& reason);

// Why the next cycle of a job must be a resync, for each job of `guest`
// that has a reason: a journal of the guest marks the job's target
// resync-required, or requires a resync and lost the target (corrupt,
// recreated). `jobs` are the guest's job ids. Reads each journal file once
// (safe while a tracker runs); a guest without journals has no reasons.
std::map<std::string, std::string> ResyncRequiredReasons(const std::string& state_dir, const std::string& guest,
                                                         const std::vector<std::string>& jobs);

}  // namespace blkrep::jobs
