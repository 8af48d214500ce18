// CowStore: the copy-on-write store that gives a cycle its point-in-time
// image while the guest keeps writing (DESIGN.md invariant 4).
//
// Design note. At a freeze the tracker creates one store per volume, a file
// STATE/cow/GUEST/JOB/NAME.cow shared by two processes: the tracker, which
// preserves a frozen block's old content before the first write over it,
// and the shipper (`blkrep run`), which reads the frozen image. The file is
//
//   header (4096 B) | frozen bitmap | shipped bitmap | slot index | data
//
// The header, bitmaps and index are mapped shared by both processes; the
// data area holds preserved blocks, slot s at data_offset + s * block_size,
// and grows only as blocks are preserved. The store lives only as long as
// its cycle; it is never needed after a crash (recovery abandons the cycle),
// so nothing in it is fsynced.
//
// Protocol between the two processes, per block b:
//   tracker (before a write over b): if frozen[b] and not shipped[b] and
//     index[b] == 0: copy b's old content into a new slot s, then publish
//     index[b] = s + 1 (release); only then issue the write.
//   shipper: read b from the volume; then load index[b] (acquire); if set,
//     the volume read may have raced a write, so take the slot's copy
//     instead. Then set shipped[b]: later writes over b need no copy.
// A write that lands during the shipper's volume read was preceded by the
// publication of its copy, so the shipper's check after the read sees it.
//
// The store has a cap. Preserving a block past it sets the overflow flag
// and copies nothing: the guest's write goes on (invariant 3), and the
// shipper, which checks the flag, aborts the cycle with its dirty bits kept
// (invariant 8).
//
// Thread safety: Preserve is thread-safe (one mutex per store; only the
// first write over a frozen block takes the copy path). The shipper-side
// methods are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "core/status.h"
#include "tracker/dirty_bitmap.h"

namespace blkrep::tracker {

// STATE/cow/GUEST/JOB/NAME.cow: one store per job and volume, since two
// jobs of a guest (one per target) may have cycles frozen at once.
std::string CowStorePath(const std::string& state_dir, const std::string& guest, const std::string& job,
                         const std::string& name);

class CowStore {
 public:
  // Tracker side: creates (replacing any stale file) the store of a cycle
  // of `epoch` whose frozen blocks are `frozen`.
  static core::Result<std::unique_ptr<CowStore>> Create(const std::string& path, std::uint32_t block_size_bytes,
                                                        std::uint64_t volume_size_bytes, std::uint64_t epoch,
                                                        const DirtyBitmap& frozen, std::uint64_t cap_bytes);
  // Shipper side: opens an existing store, validating its header against
  // the file's size (it is our own file, but a stale or foreign one must
  // not be trusted blindly).
  static core::Result<std::unique_ptr<CowStore>> Open(const std::string& path);
  ~CowStore();
  CowStore(const CowStore&) = delete;
  CowStore& operator=(const CowStore&) = delete;

  // Tracker: preserves the frozen, not yet shipped, not yet preserved
  // blocks of [offset, offset + length) of the volume `volume_fd` before
  // they are overwritten. Never fails the write: trouble (cap, I/O) sets
  // the overflow flag, which fails the cycle instead.
  void Preserve(int volume_fd, std::uint64_t offset_bytes, std::uint64_t length_bytes);

  // Shipper.
  bool frozen(std::uint64_t block) const;
  // The preserved copy of `block`, if any, into `out` (block-sized, or the
  // short last block). Returns false if the block was not preserved.
  core::Result<bool> ReadPreserved(std::uint64_t block, std::span<std::byte> out) const;
  void MarkShipped(std::uint64_t first_block, std::uint64_t count_blocks);
  // Set when a block could not be preserved: the image is not a point in
  // time any more. The reason is in overflow_reason().
  bool overflowed() const;
  // Shipper: holds a shared lock on the store for this object's lifetime
  // (released by the kernel if the process dies), so the tracker can tell
  // a cycle whose shipper is gone.
  core::Status HoldForShipping();
  // Tracker: whether a process (a shipper) holds the store.
  bool HeldByAShipper() const;
  // Tracker: the cycle was abandoned (aborted, re-frozen, tracker stopping):
  // nothing preserves its blocks any more, so a shipper still reading must
  // fail the cycle. Sets the overflow flag with that reason.
  void Abandon();
  std::string overflow_reason() const;
  DirtyBitmap FrozenBitmap() const;

  std::uint64_t epoch() const;
  std::uint32_t block_size_bytes() const;
  std::uint64_t block_count() const;
  std::uint64_t preserved_blocks() const;
  std::uint64_t cap_bytes() const;
  const std::string& path() const { return path_; }

  struct Header;  // defined in the .cc

 private:
  CowStore(std::string path, int fd, void* map, std::size_t map_bytes);
  std::atomic<std::uint64_t>* FrozenWords() const;
  std::atomic<std::uint64_t>* ShippedWords() const;
  std::atomic<std::uint32_t>* Index() const;
  void SetOverflow(std::uint32_t reason);

  std::string path_;
  int fd_ = -1;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  Header* header_ = nullptr;
  std::mutex preserve_mu_;
};

}  // namespace blkrep::tracker
