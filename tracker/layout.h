// Where the tracker keeps its files under the state directory.
#pragma once

#include <string>

namespace blkrep::tracker {

// STATE/journal/GUEST
inline std::string JournalDir(const std::string& state_dir, const std::string& guest) {
  return state_dir + "/journal/" + guest;
}
// STATE/journal/GUEST/NAME.journal
inline std::string JournalPath(const std::string& state_dir, const std::string& guest,
                               const std::string& volume) {
  return JournalDir(state_dir, guest) + "/" + volume + ".journal";
}
inline constexpr const char* kJournalSuffix = ".journal";

}  // namespace blkrep::tracker
