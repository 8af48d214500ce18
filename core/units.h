// Sizes as people write them: "64K", "4MiB", "1g". Powers of 1024 only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace blkrep::core {

// Parses a non-negative byte count: decimal digits, then optionally a unit
// K, M, G, T, P or E (powers of 1024, either case) followed by an optional
// "B" or "iB", or a bare "B". Examples: "4096", "64K", "64KB", "4MiB",
// "1g". Empty text, signs, fractions, spaces, unknown suffixes and values
// above 2^64-1 are kInvalidArgument naming the text.
Result<std::uint64_t> ParseSize(std::string_view text);

// Human-readable size in the largest binary unit not above it: "512 B",
// "64 KiB", "1.5 GiB". Whole multiples print without a fraction; anything
// else is rounded to one decimal ("1.0 GiB" means "about 1 GiB").
std::string FormatSize(std::uint64_t size_bytes);

}  // namespace blkrep::core
