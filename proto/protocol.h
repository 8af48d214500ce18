// Wire protocol constants shared by the shipper and the receiver; the
// messages are in blkrep.proto and the framing in docs/wire-protocol.md.
#pragma once

#include <cstdint>

namespace blkrep::proto {

inline constexpr std::uint32_t kProtocolVersion = 1;

}  // namespace blkrep::proto
