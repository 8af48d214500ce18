// What `blkrep delete JOBID` does besides deleting the job's row: removing
// the job's replica on its target, and the job's target from the guest's
// source journals.
//
// Design note. The replica is removed in a session of its own with the
// job's receiver: the usual HELLO (guest, job, the guest's volumes as the
// journals describe them), then REMOVE_GUEST instead of a cycle
// (docs/wire-protocol.md, "Removing a guest's replica"). The receiver
// refuses when its state belongs to another job, and only forgets replicas
// that are block devices or symlinks (docs/replica-format.md, "Removal").
// The journals lose the target through the running tracker's control
// socket ("remove-target JOB", which first aborts a cycle of the job left
// frozen), or, with no tracker, by opening the journals here as a cycle
// without a tracker does (their lock keeps a tracker from starting
// meanwhile).
//
// REQUIRES of both: the caller holds the job's run lock, so no cycle of
// the job runs meanwhile.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace blkrep::jobs {

// Asks the receiver of `target_args` (as stored by `target add`) to remove
// the replica of `guest` that `job` replicates. The HELLO needs the guest's
// volumes: kNotFound when the guest has no journal under `state_dir`.
core::Status RemoveReplica(const std::string& state_dir, const std::string& guest, const std::string& job,
                           const std::vector<std::string>& target_args);

// Removes `job` as a target from every journal of `guest` that has it.
// OK when the guest has no journals or none has the job.
core::Status RemoveJobFromSource(const std::string& state_dir, const std::string& guest, const std::string& job);

}  // namespace blkrep::jobs
