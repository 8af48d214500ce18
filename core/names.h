// The one rule for guest, volume, target and job names: they become file
// names (journals, replicas, sockets) and travel on the wire.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace blkrep::core {

inline constexpr std::size_t kMaxNameBytes = 64;

// 1..64 bytes of [A-Za-z0-9._-], not starting with '.' or '-'.
inline bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  if (name[0] == '.' || name[0] == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

}  // namespace blkrep::core
