// A reference model of the journal's dirty sets, and a random workload that
// drives a Journal and the model side by side. The model changes only when
// the journal acknowledges an operation, so after any crash the journal must
// hold at least what the model holds.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>

#include "tracker/journal.h"

namespace blkrep::tracker::testing {

struct TargetModel {
  DirtyBitmap live;
  bool frozen = false;
  std::uint64_t epoch = 0;
  DirtyBitmap frozen_bits;

  DirtyBitmap Required() const {
    DirtyBitmap all = live;
    if (frozen) all.Or(frozen_bits);
    return all;
  }
};

struct Model {
  std::uint64_t block_count = 0;
  std::uint32_t block_size = 0;
  DirtyBitmap base;
  std::map<std::string, TargetModel> targets;

  Model(std::uint64_t blocks, std::uint32_t block_size_bytes)
      : block_count(blocks), block_size(block_size_bytes), base(blocks) {}

  void Mark(std::uint64_t offset, std::uint64_t length) {
    if (length == 0) return;
    std::uint64_t first = offset / block_size, end = (offset + length - 1) / block_size + 1;
    base.SetRange(first, end - first);
    for (auto& [name, t] : targets) t.live.SetRange(first, end - first);
  }
  // After a clean reopen, frozen cycles are abandoned.
  void AbandonFrozen() {
    for (auto& [name, t] : targets) {
      if (t.frozen) t.live.Or(t.frozen_bits);
      t.frozen = false;
      t.frozen_bits = DirtyBitmap();
    }
  }
  DirtyBitmap VolumeDirty() const {
    if (targets.empty()) return base;
    DirtyBitmap all(block_count);
    for (const auto& [name, t] : targets) all.Or(t.Required());
    return all;
  }
};

inline bool IsSubset(const DirtyBitmap& small, const DirtyBitmap& big) {
  if (small.block_count() != big.block_count()) return false;
  for (std::size_t i = 0; i < small.words().size(); ++i) {
    if ((small.words()[i] & ~big.words()[i]) != 0) return false;
  }
  return true;
}

inline const TargetReport* FindTarget(const JournalReport& r, const std::string& name) {
  for (const auto& t : r.targets) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Checks that the journal holds every block the model requires.
inline ::testing::AssertionResult HoldsAtLeast(const JournalReport& r, const Model& m) {
  if (r.resync_required) return ::testing::AssertionFailure() << "resync required: " << r.resync_reason;
  if (m.targets.empty() && !IsSubset(m.base, r.dirty)) {
    return ::testing::AssertionFailure() << "a block dirty since tracking began is missing";
  }
  for (const auto& [name, t] : m.targets) {
    const TargetReport* tr = FindTarget(r, name);
    if (!tr) return ::testing::AssertionFailure() << "target " << name << " is missing";
    if (!IsSubset(t.Required(), tr->dirty)) {
      return ::testing::AssertionFailure() << "target " << name << " lost dirty blocks";
    }
  }
  return ::testing::AssertionSuccess();
}

inline ::testing::AssertionResult HoldsExactly(const JournalReport& r, const Model& m) {
  if (r.resync_required) return ::testing::AssertionFailure() << "resync required: " << r.resync_reason;
  if (!(r.dirty == m.VolumeDirty())) return ::testing::AssertionFailure() << "volume dirty set differs";
  if (!(r.since_tracking_began == m.base)) return ::testing::AssertionFailure() << "base set differs";
  if (r.targets.size() != m.targets.size()) return ::testing::AssertionFailure() << "target count differs";
  for (const auto& [name, t] : m.targets) {
    const TargetReport* tr = FindTarget(r, name);
    if (!tr) return ::testing::AssertionFailure() << "target " << name << " is missing";
    if (!(tr->dirty == t.Required())) {
      return ::testing::AssertionFailure() << "target " << name << " dirty set differs: journal "
                                           << tr->dirty.Count() << " blocks, model "
                                           << t.Required().Count();
    }
  }
  return ::testing::AssertionSuccess();
}

// Drives random operations on a journal and the model. Each Step() returns
// false once the journal degraded (the simulated crash point): that
// operation was not acknowledged and the model did not take it.
class Workload {
 public:
  Workload(std::uint64_t seed, Model& model, std::uint64_t volume_bytes)
      : rng_(seed), model_(model), volume_bytes_(volume_bytes) {}

  bool Step(Journal& j) {
    int dice = static_cast<int>(rng_() % 100);
    if (dice < 60) return Mark(j);
    if (dice < 70) return Freeze(j);
    if (dice < 80) return Commit(j);
    if (dice < 84) return Abort(j);
    if (dice < 90) return AddTarget(j);
    if (dice < 93) return RemoveTarget(j);
    return Checkpoint(j);
  }

  bool Mark(Journal& j) {
    std::uint64_t offset = rng_() % volume_bytes_;
    std::uint64_t length = 1 + rng_() % (3 * 64 * 1024);
    if (rng_() % 4 == 0) offset = offset / 4096 * 4096;
    length = std::min(length, volume_bytes_ - offset);
    EXPECT_TRUE(j.MarkDirty(offset, length).ok());
    if (j.degraded()) return false;
    model_.Mark(offset, length);
    return true;
  }

  bool Freeze(Journal& j) {
    std::string name;
    if (!PickTarget(false, &name)) return true;
    auto cycle = j.Freeze(name);
    if (!cycle.ok() || j.degraded()) return false;
    auto& t = model_.targets[name];
    // A full cycle ships everything; the model's live set is what remains.
    t.frozen_bits = cycle->mode == CycleMode::kIncremental ? t.live : DirtyBitmap(model_.block_count, true);
    EXPECT_EQ(cycle->blocks, t.frozen_bits) << "freeze of " << name << " does not match the model";
    t.live.ClearAll();
    t.frozen = true;
    t.epoch = cycle->epoch;
    return true;
  }

  bool Commit(Journal& j) {
    std::string name;
    if (!PickTarget(true, &name)) return true;
    auto& t = model_.targets[name];
    core::Status s = j.Commit(name, t.epoch);
    if (!s.ok() || j.degraded()) return false;
    t.frozen = false;
    t.frozen_bits = DirtyBitmap();
    return true;
  }

  bool Abort(Journal& j) {
    std::string name;
    if (!PickTarget(true, &name)) return true;
    auto& t = model_.targets[name];
    EXPECT_TRUE(j.Abort(name, t.epoch).ok());
    // An abort is acknowledged in memory even when not durable: recovery
    // abandons the freeze anyway, with the same result.
    t.live.Or(t.frozen_bits);
    t.frozen = false;
    t.frozen_bits = DirtyBitmap();
    return !j.degraded();
  }

  bool AddTarget(Journal& j) {
    if (model_.targets.size() >= 3) return true;
    std::string name = "target" + std::to_string(next_target_++);
    core::Status s = j.AddTarget(name);
    if (!s.ok() || j.degraded()) return false;
    model_.targets[name] = TargetModel{DirtyBitmap(model_.block_count, true), false, 0, DirtyBitmap()};
    return true;
  }

  bool RemoveTarget(Journal& j) {
    std::string name;
    if (!PickTarget(false, &name)) return true;
    core::Status s = j.RemoveTarget(name);
    if (!s.ok() || j.degraded()) return false;
    model_.targets.erase(name);
    return true;
  }

  bool Checkpoint(Journal& j) {
    core::Status s = j.Checkpoint();
    return s.ok() && !j.degraded();
  }

 private:
  bool PickTarget(bool frozen, std::string* name) {
    std::vector<std::string> names;
    for (const auto& [n, t] : model_.targets) {
      if (t.frozen == frozen) names.push_back(n);
    }
    if (names.empty()) return false;
    *name = names[rng_() % names.size()];
    return true;
  }

  std::mt19937_64 rng_;
  Model& model_;
  std::uint64_t volume_bytes_;
  int next_target_ = 0;
};

}  // namespace blkrep::tracker::testing
