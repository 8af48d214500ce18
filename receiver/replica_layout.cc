#include "receiver/replica_layout.h"

#include "tracker/journal_format.h"

namespace blkrep::receiver {

core::Result<std::string> ReplicaPath(const std::string& replica_dir, const std::string& guest,
                                      const std::string& name) {
  // Names arrive from the wire: the same rule as the journal's keeps them
  // free of '/' and of a leading '.', so no path escapes replica_dir.
  if (!tracker::journal_format::IsValidName(guest)) {
    return core::Status::InvalidArgument("invalid guest name '" + guest + "'");
  }
  if (!tracker::journal_format::IsValidName(name)) {
    return core::Status::InvalidArgument("invalid volume name '" + name + "'");
  }
  return replica_dir + "/" + guest + "/" + name + ".img";
}

}  // namespace blkrep::receiver
