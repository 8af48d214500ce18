// Guest-wide point-in-time freezes of a running tracker (DESIGN.md
// invariant 4), asked for over the control socket by `blkrep run`.
//
// Design note. Every write, trim and write-zeroes of every export passes a
// WriteGate: Enter before it is marked dirty and issued, Exit when it
// completed. A freeze pauses the gates of all volumes of the guest, waits
// until no write is in flight (so a write marked dirty before the freeze
// has landed before it — it belongs to this cycle, with its data), freezes
// every journal's target, attaches a copy-on-write store per volume, and
// resumes. The guest's writes wait only for the duration of the journal
// freeze records (one fdatasync per volume).
//
// Control requests (one line, see control_socket.h):
//   add-target JOB               adds JOB as a target of every volume
//   remove-target JOB            removes JOB from every volume that has it
//                                (aborting a cycle of it left frozen)
//   freeze JOB [resync REASON]   freezes a cycle; REASON forces a resync
//   commit JOB                   the cycle reached the replica
//   abort JOB                    the cycle failed; its blocks stay dirty
//   require-resync JOB REASON    the job's next cycle must be a resync
//   changed JOB                  the blocks changed for JOB since its last
//                                committed cycle: per volume a line
//                                "volume NAME BLOCKS [FIRST COUNT]..." 
// Replies start with "ok" or "error: ". A freeze answers
//   ok
//   volume NAME EPOCH MODE BLOCKS COW_PATH
// per volume.
//
// Thread safety: WriteGate is thread-safe. CycleControl::Handle runs on the
// control server's thread, one request at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/status.h"
#include "tracker/cow_store.h"
#include "tracker/journal.h"

namespace blkrep::tracker {

class WriteGate {
 public:
  explicit WriteGate(int volume_fd) : volume_fd_(volume_fd) {}

  // Before a write over [offset, offset + length) is marked and issued:
  // waits while a freeze is in progress, then preserves the frozen blocks
  // it would overwrite. Every Enter is paired with one Exit.
  void Enter(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  // The write completed (or failed).
  void Exit();

  // Blocks new writes and returns once none is in flight.
  void Pause();
  void Resume();
  // The store of `job`'s frozen cycle; each job of the guest has its own.
  void Attach(const std::string& job, std::shared_ptr<CowStore> store);
  void Detach(const std::string& job);

 private:
  const int volume_fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t in_flight_ = 0;        // GUARDED_BY(mu_)
  bool paused_ = false;                // GUARDED_BY(mu_)
  std::map<std::string, std::shared_ptr<CowStore>> stores_;  // GUARDED_BY(mu_)
};

struct ControlledVolume {
  std::string name;
  std::string path;
  std::uint64_t size_bytes = 0;
  Journal* journal = nullptr;  // not owned
  WriteGate* gate = nullptr;   // not owned
};

class CycleControl {
 public:
  CycleControl(std::string state_dir, std::string guest, std::vector<ControlledVolume> volumes,
               std::uint64_t cow_cap_bytes)
      : state_dir_(std::move(state_dir)), guest_(std::move(guest)), volumes_(std::move(volumes)),
        cow_cap_bytes_(cow_cap_bytes) {}

  // Handles one control request (see above); returns the reply, or the
  // empty string when the request is not a cycle request.
  std::string Handle(const std::string& request);

  // Aborts every cycle still frozen (the tracker is stopping).
  void AbortAll();
  // Aborts the cycles whose shipper is gone: frozen for longer than
  // `grace` and no process holds their copy-on-write store (a shipper
  // holds it while it runs, see CowStore::HoldForShipping). Without this,
  // a killed `blkrep run` would leave the guest's writes copied into the
  // store, up to its cap, until that job's next run. Returns how many.
  int AbortOrphans(std::chrono::steady_clock::duration grace);

 private:
  core::Status AddTarget(const std::string& job);
  core::Status RemoveTarget(const std::string& job);
  core::Result<std::string> Freeze(const std::string& job, const std::string& resync_reason);
  core::Status Finish(const std::string& job, bool commit);

  const std::string state_dir_;
  const std::string guest_;
  std::vector<ControlledVolume> volumes_;
  const std::uint64_t cow_cap_bytes_;
  // Per job: the epoch frozen for each volume, and the stores.
  struct Frozen {
    std::vector<std::uint64_t> epochs;
    std::vector<std::shared_ptr<CowStore>> stores;
    std::chrono::steady_clock::time_point since;
  };
  // Handle, AbortAll and AbortOrphans may run on different threads.
  std::mutex mu_;
  std::map<std::string, Frozen> frozen_;  // GUARDED_BY(mu_)
};

}  // namespace blkrep::tracker
