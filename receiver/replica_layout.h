// Where the receiver keeps replicas (CONTRACT.md: DIR/GUEST/NAME.img).
#pragma once

#include <string>

#include "core/status.h"

namespace blkrep::receiver {

// The replica file of volume `name` of `guest` under `replica_dir`.
// kInvalidArgument when a name could escape the directory.
core::Result<std::string> ReplicaPath(const std::string& replica_dir, const std::string& guest,
                                      const std::string& name);

}  // namespace blkrep::receiver
