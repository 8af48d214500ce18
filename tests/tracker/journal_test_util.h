// Helpers shared by the journal tests.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "core/memory_file_system.h"
#include "tracker/journal.h"

namespace blkrep::tracker::testing {

inline constexpr const char* kJournalPath = "/state/journal/vm100/disk0.journal";

inline VolumeDescriptor MemoryVolume(std::uint64_t size_bytes) {
  VolumeDescriptor v;
  v.guest = "vm100";
  v.name = "disk0";
  v.path = "/dev/memory";
  v.identity.kind = core::VolumeIdentity::Kind::kMemory;
  v.identity.size_bytes = size_bytes;
  return v;
}

inline JournalOptions SmallOptions() {
  JournalOptions o;
  o.block_size_bytes = 4096;
  o.extent_size_bytes = 64 * 1024;  // 16 blocks per extent
  o.al_slots = 4;
  o.cap_bytes = 1 << 20;
  o.on_degraded = [](const std::string&) {};  // tests check Report() instead
  return o;
}

inline std::unique_ptr<Journal> MustOpen(core::FileSystem& fs, const VolumeDescriptor& v,
                                         const JournalOptions& o, const std::string& path = kJournalPath) {
  auto j = Journal::Open(fs, path, v, o);
  EXPECT_TRUE(j.ok()) << j.status().ToString();
  return j.ok() ? std::move(j).value() : nullptr;
}

inline JournalReport MustRead(core::FileSystem& fs, const std::string& path = kJournalPath) {
  auto r = Journal::Read(fs, path);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : JournalReport{};
}

}  // namespace blkrep::tracker::testing
