// The guest state file DIR/GUEST/state: what the receiver has committed for
// each volume of a guest, and the cycle it is receiving or applying.
// docs/replica-format.md ("The guest state file") is the specification of
// its bytes.
//
// Design note: what is durable when. The file is small and only ever
// replaced whole (WriteGuestStateFile: write "state.tmp", fdatasync, rename
// over "state", fsync the directory), so a reader sees either the old or the
// new state, never a mix, and needs no lock. The receiver writes it three
// times per cycle (docs/replica-format.md, "The commit protocol"): at
// CYCLE_BEGIN, before anything of the cycle touches a replica; with
// apply_pending once the validated cycle's staging is durable (the commit
// point); and when the applied cycle is committed.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/file_system.h"
#include "core/status.h"

namespace blkrep::receiver {

inline constexpr const char* kStateFileName = "state";
inline constexpr const char* kLockFileName = ".lock";
inline constexpr const char* kStagingDirName = ".staging";
// Present while the guest's replicas are promoted to a source (`blkrep
// promote`): every session of the guest is refused.
inline constexpr const char* kPromotedFileName = "promoted";

// Staged blocks of one volume: the files .staging/NAME.data and NAME.index
// (staging.h) whose header carries staging_id.
struct StagingInfo {
  std::uint64_t staging_id = 0;  // 0: nothing staged
  // The blocks were written into the replica itself (a full or resync cycle)
  // and the index only records their hashes.
  bool in_place = false;
  std::uint64_t base_epoch = 0;  // the committed epoch the staged blocks apply on top of
  std::uint64_t volume_size_bytes = 0;
  std::uint32_t block_size_bytes = 0;
};

// Which file the replica NAME.img was when the state was written: what
// tells the replica the receiver committed to from a file put in its place
// behind the receiver's back (a copy renamed over it, an older image copied
// onto it, another device behind the symlink). docs/replica-format.md,
// "Replica identity", says what each kind records and when it is compared.
enum class ReplicaKind : std::uint8_t {
  kUnknown = 0,      // not recorded (never committed, or a version 1 state file)
  kRegularFile = 1,  // dev = st_dev, ino = st_ino, mtime_ns = st_mtim
  kBlockDevice = 2,  // dev = st_rdev of the device (behind a symlink too); ino = mtime_ns = 0
};

struct ReplicaIdentity {
  ReplicaKind kind = ReplicaKind::kUnknown;
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t mtime_ns = 0;  // nanoseconds since the epoch, modulo 2^64

  bool known() const { return kind != ReplicaKind::kUnknown; }
  bool operator==(const ReplicaIdentity&) const = default;
};

// The identity of the file `st` describes: a regular file by device, inode
// and modification time, a block device by its device number only.
ReplicaIdentity ReplicaIdentityOf(const struct stat& st);

struct VolumeState {
  std::string name;
  std::uint64_t size_bytes = 0;  // the volume size of the last cycle begun on it
  std::uint32_t block_size_bytes = 0;
  std::uint64_t committed_epoch = 0;  // 0: never committed
  // A full/resync cycle started writing the replica in place and did not
  // commit: the replica is no complete cycle.
  bool incomplete = false;
  StagingInfo staging;
  // Part of the guest's current cycle (GuestState::cycle_id != 0).
  bool in_cycle = false;
  std::uint64_t cycle_epoch = 0;
  std::uint64_t cycle_block_count = 0;
  // What CYCLE_END confirmed; the apply checks the index against these.
  std::uint64_t data_blocks = 0;
  std::uint64_t zero_blocks = 0;
  std::uint64_t kept_blocks = 0;
  // The replica file the fields above are about: recorded at CYCLE_BEGIN
  // (as the HELLO found it; unknown for a replica the cycle creates), at the
  // commit point (the file the cycle wrote, or will apply to) and at the
  // commit (after the apply wrote it).
  ReplicaIdentity replica;
};

struct GuestState {
  std::string job;
  std::uint64_t next_staging_id = 1;
  // Incremented by every CYCLE_BEGIN; index records carry it, so the records
  // of the current attempt tell apart from blocks staged by earlier ones.
  std::uint32_t attempt = 0;
  std::uint64_t cycle_id = 0;  // the cycle begun last and not committed; 0 none
  std::uint8_t mode = 0;       // proto::CycleMode of that cycle
  // CYCLE_END was validated and the staging is durable: the cycle must be
  // applied (redone after a crash) before anything else.
  bool apply_pending = false;
  std::vector<VolumeState> volumes;

  VolumeState* Find(const std::string& name);
  const VolumeState* Find(const std::string& name) const;
};

// Always the current version, 2.
std::vector<std::byte> EncodeGuestState(const GuestState& state);
// The one gate for a state file's bytes: kCorruption ("guest state file:
// ..." naming the field) when they are not a state file of version 1 or 2
// (size, checksum, magic, version, lengths, bools other than 0 or 1,
// trailing bytes) or when the state fails ValidateGuestState. A version 1
// file has no replica identities: they decode as unknown. What it returns
// can size memory and name paths without further checks.
core::Result<GuestState> DecodeGuestState(std::span<const std::byte> bytes);
// kCorruption naming the first field of `state` that the receiver could not
// have written (docs/replica-format.md, "Reading"): names, geometry inside
// the wire's caps, mode, staging ids, cycle fields and counts consistent
// with each other, replica identities of a known kind. Every state the
// receiver writes passes it.
core::Status ValidateGuestState(const GuestState& state);

// The state of the guest whose directory is `guest_dir`; an empty state when
// there is no state file yet.
core::Result<GuestState> ReadGuestStateFile(core::FileSystem& fs, const std::string& guest_dir);
// Replaces the state file atomically and durably (see the design note).
core::Status WriteGuestStateFile(core::FileSystem& fs, const std::string& guest_dir,
                                 const GuestState& state);

}  // namespace blkrep::receiver
