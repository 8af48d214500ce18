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
// another size or at an unknown cycle forces a resync cycle instead, which
// (until checksum resync exists) ships every block. A cycle that fails is
// aborted on the source: its blocks stay dirty for the next one.
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
};

struct CycleResult {
  std::string mode;        // full, incremental, resync
  bool tracker_running = false;
  std::uint64_t blocks_sent = 0;   // blocks brought to the replica (data + zero + kept)
  shipper::ShipStats stats;
  std::vector<std::string> volumes;
};

core::Result<CycleResult> RunCycle(const CycleRequest& request);

// Why the next cycle of a job must be a resync, for each job of `guest`
// that has a reason: a journal of the guest marks the job's target
// resync-required, or requires a resync and lost the target (corrupt,
// recreated). `jobs` are the guest's job ids. Reads each journal file once
// (safe while a tracker runs); a guest without journals has no reasons.
std::map<std::string, std::string> ResyncRequiredReasons(const std::string& state_dir, const std::string& guest,
                                                         const std::vector<std::string>& jobs);

}  // namespace blkrep::jobs
