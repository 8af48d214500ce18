#include "tests/fuzz/journal_images.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/memory_file_system.h"

namespace blkrep::fuzz {

namespace jf = tracker::journal_format;

namespace {

constexpr std::uint64_t kExtentBytes = 64 * 1024;
constexpr std::int64_t kPinnedUnixNs = 1700000000000000000;
constexpr std::size_t kOffFirstSequence = 48;
constexpr std::size_t kOffCreated = 64;

// Building the images is our own code: a failure is a bug in the fixture
// (or in the Journal API), reported loudly.
void Must(const core::Status& status, const char* what) {
  if (status.ok()) return;
  std::fprintf(stderr, "journal_images: %s failed: %s\n", what, status.ToString().c_str());
  std::abort();
}

template <typename T>
T Must(core::Result<T> result, const char* what) {
  Must(result.status(), what);
  return std::move(result).value();
}

std::unique_ptr<tracker::Journal> OpenJournal(core::FileSystem& fs, std::uint64_t volume_bytes) {
  return Must(tracker::Journal::Open(fs, kJournalPath, MemoryVolume(volume_bytes), SmallOptions()),
              "Journal::Open");
}

// A crashed tracker with a long history: adds, AL swaps with evictions,
// committed, aborted and still-frozen cycles, a resync request, a request
// wider than the AL (BITS records), a removed target.
std::vector<std::byte> CrashedWithHistory() {
  core::MemoryFileSystem fs;
  {
    auto j = OpenJournal(fs, kVolumeBytes);
    Must(j->AddTarget("dr"), "AddTarget");
    Must(j->AddTarget("backup"), "AddTarget");
    Must(j->MarkDirty(0, 8192), "MarkDirty");
    Must(j->MarkDirty(70000, 10), "MarkDirty");
    Must(j->MarkDirty(5 * kExtentBytes, 4096), "MarkDirty");
    Must(j->MarkDirty(9 * kExtentBytes + 100, 200000), "MarkDirty");
    auto c1 = Must(j->Freeze("dr"), "Freeze");
    Must(j->Commit("dr", c1.epoch), "Commit");
    Must(j->MarkDirty(3 * kExtentBytes, 2 * kExtentBytes), "MarkDirty");
    (void)Must(j->Freeze("backup"), "Freeze");  // left frozen
    Must(j->RequireResync("dr", "checksum mismatch at block 7"), "RequireResync");
    Must(j->MarkDirty(0, kVolumeBytes), "MarkDirty");
    Must(j->AddTarget("third"), "AddTarget");
    Must(j->MarkDirty(14 * kExtentBytes, 100), "MarkDirty");
    Must(j->RemoveTarget("third"), "RemoveTarget");
    auto c3 = Must(j->Freeze("dr"), "Freeze");
    Must(j->Abort("dr", c3.epoch), "Abort");
    Must(j->MarkDirty(2 * kExtentBytes + 5, 1), "MarkDirty");
  }  // no Close: the file is what a crash leaves
  return fs.Contents(kJournalPath);
}

// A checkpoint taken while a cycle is frozen (FREEZE_BEGIN, BITS, FREEZE_END
// with an older epoch inside the checkpoint; a resync raised during the
// freeze repeated after it), then incrementals.
std::vector<std::byte> CheckpointWithFrozenCycle() {
  core::MemoryFileSystem fs;
  {
    auto j = OpenJournal(fs, kVolumeBytes);
    Must(j->AddTarget("dr"), "AddTarget");
    Must(j->MarkDirty(4096, 4096), "MarkDirty");
    auto c1 = Must(j->Freeze("dr"), "Freeze");
    Must(j->Commit("dr", c1.epoch), "Commit");
    Must(j->MarkDirty(8 * kExtentBytes, 3 * 4096), "MarkDirty");
    auto c2 = Must(j->Freeze("dr"), "Freeze");
    Must(j->RequireResync("dr", "resync while frozen"), "RequireResync");
    Must(j->MarkDirty(12 * kExtentBytes, 4096), "MarkDirty");
    Must(j->Checkpoint(), "Checkpoint");
    Must(j->MarkDirty(0, 4096), "MarkDirty");
    Must(j->MarkDirty(15 * kExtentBytes, kExtentBytes), "MarkDirty");
    Must(j->MarkDirty(7 * kExtentBytes, 3 * kExtentBytes), "MarkDirty");
    Must(j->Commit("dr", c2.epoch), "Commit");
    Must(j->RequireResync("", "operator request"), "RequireResync");
    Must(j->MarkDirty(6 * kExtentBytes, 1), "MarkDirty");
  }
  return fs.Contents(kJournalPath);
}

// A clean close of a volume of the given kind: checkpoint and SEAL.
std::vector<std::byte> Sealed(core::VolumeIdentity::Kind kind) {
  tracker::VolumeDescriptor volume = MemoryVolume(kVolumeBytes);
  core::VolumeIdentity& id = volume.identity;
  id.kind = kind;
  id.mtime_ns = kSealMtimeNs;
  id.sectors_written = kSealSectorsWritten;
  id.boot_id = kSealBootId;
  if (kind == core::VolumeIdentity::Kind::kRegularFile) {
    id.dev = kSealFileDev;
    id.ino = kSealFileIno;
  } else if (kind == core::VolumeIdentity::Kind::kBlockDevice) {
    id.rdev = kSealDeviceRdev;
  }
  core::MemoryFileSystem fs;
  auto j = Must(tracker::Journal::Open(fs, kJournalPath, volume, SmallOptions()), "Journal::Open");
  Must(j->AddTarget("dr"), "AddTarget");
  Must(j->AddTarget("b2"), "AddTarget");
  Must(j->MarkDirty(10 * 4096, 7 * 4096), "MarkDirty");
  auto c = Must(j->Freeze("dr"), "Freeze");
  Must(j->Commit("dr", c.epoch), "Commit");
  Must(j->MarkDirty(11 * kExtentBytes, 3), "MarkDirty");
  Must(j->MarkDirty(200 * 4096, 40 * 4096), "MarkDirty");
  Must(j->Close(id), "Close");
  return fs.Contents(kJournalPath);
}

// A volume whose size is not a multiple of the block size (partial last
// block and extent), with a frozen cycle at the crash. The replay target
// opens it as a 1 MiB volume, so Open also resizes.
std::vector<std::byte> PartialLastBlock() {
  constexpr std::uint64_t kOddBytes = kVolumeBytes + 1234;
  core::MemoryFileSystem fs;
  {
    auto j = OpenJournal(fs, kOddBytes);
    Must(j->AddTarget("dr"), "AddTarget");
    Must(j->MarkDirty(kVolumeBytes, 1234), "MarkDirty");
    Must(j->MarkDirty(0, 1), "MarkDirty");
    (void)Must(j->Freeze("dr"), "Freeze");
    Must(j->MarkDirty(kVolumeBytes - 10, 20), "MarkDirty");
    Must(j->MarkDirty(kExtentBytes, 4 * kExtentBytes), "MarkDirty");
  }
  return fs.Contents(kJournalPath);
}

// No targets and an unknown base set (the journal found at open was
// garbage), then base-set traffic only.
std::vector<std::byte> BaseUnknownNoTargets() {
  core::MemoryFileSystem fs;
  Must(fs.CreateDirectories(kJournalDir), "CreateDirectories");
  fs.SetContents(kJournalPath, std::vector<std::byte>(100, std::byte{0x5A}));
  {
    auto j = OpenJournal(fs, kVolumeBytes);
    Must(j->MarkDirty(3 * 4096, 4096), "MarkDirty");
    Must(j->MarkDirty(13 * kExtentBytes, 2 * kExtentBytes), "MarkDirty");
    Must(j->RequireResync("", "x"), "RequireResync");
    Must(j->MarkDirty(kExtentBytes, 10 * kExtentBytes), "MarkDirty");
  }
  return fs.Contents(kJournalPath);
}

// Pins the creation and seal times so the images (and so every fuzz run) are
// the same bytes each time.
std::vector<std::byte> Pin(std::vector<std::byte> file) {
  std::optional<RecordImage> image = SplitImage(file);
  if (!image || !image->tail.empty()) {
    std::fprintf(stderr, "journal_images: a base image does not split into records\n");
    std::abort();
  }
  core::StoreLe64(&image->header[kOffCreated], static_cast<std::uint64_t>(kPinnedUnixNs));
  FixHeaderChecksum(image->header);
  for (auto& rec : image->records) {
    if (rec.type != jf::RecordType::kSeal) continue;
    jf::Seal seal = Must(jf::DecodeSeal(rec.payload), "DecodeSeal");
    seal.sealed_unix_ns = kPinnedUnixNs;
    rec.payload = jf::Encode(seal);
  }
  return JoinImage(*image);
}

}  // namespace

tracker::VolumeDescriptor MemoryVolume(std::uint64_t size_bytes) {
  tracker::VolumeDescriptor v;
  v.guest = "vm100";
  v.name = "disk0";
  v.path = "/dev/memory";
  v.identity.kind = core::VolumeIdentity::Kind::kMemory;
  v.identity.size_bytes = size_bytes;
  return v;
}

tracker::JournalOptions SmallOptions() {
  tracker::JournalOptions o;
  o.block_size_bytes = 4096;
  o.extent_size_bytes = 64 * 1024;
  o.al_slots = 4;
  o.cap_bytes = 1 << 20;
  return o;
}

std::optional<RecordImage> SplitImage(std::span<const std::byte> file) {
  if (file.size() < jf::kHeaderBytes) return std::nullopt;
  RecordImage image;
  image.header.assign(file.begin(), file.begin() + jf::kHeaderBytes);
  jf::RecordScanner scanner(file, jf::kHeaderBytes, core::LoadLe64(&file[kOffFirstSequence]));
  jf::Record record;
  while (scanner.Next(&record) == jf::RecordScanner::Outcome::kRecord) {
    image.records.push_back(RecordImage::Rec{record.type, record.sequence, record.epoch,
                                             {record.payload.begin(), record.payload.end()}});
  }
  image.tail.assign(file.begin() + static_cast<std::ptrdiff_t>(scanner.good_end_offset()),
                    file.end());
  return image;
}

std::vector<std::byte> JoinImage(const RecordImage& image) {
  std::vector<std::byte> out = image.header;
  for (const auto& rec : image.records) {
    jf::AppendRecord(out, rec.type, rec.sequence, rec.epoch, rec.payload);
  }
  out.insert(out.end(), image.tail.begin(), image.tail.end());
  return out;
}

void FixHeaderChecksum(std::vector<std::byte>& header) {
  if (header.size() < jf::kHeaderBytes) return;
  core::StoreLe64(&header[jf::kHeaderBytes - 8], core::Xxh3_64(header.data(), jf::kHeaderBytes - 8));
}

void RenumberSequences(RecordImage& image) {
  std::uint64_t sequence = core::LoadLe64(&image.header[kOffFirstSequence]);
  for (auto& rec : image.records) rec.sequence = sequence++;
}

void FixEpochs(RecordImage& image) {
  std::uint64_t epoch = 0;
  bool in_checkpoint = false;
  for (std::size_t i = 0; i < image.records.size(); ++i) {
    auto& rec = image.records[i];
    switch (rec.type) {
      case jf::RecordType::kCheckpointBegin:
        if (i == 0) {
          epoch = rec.epoch;
          in_checkpoint = true;
        } else {
          rec.epoch = epoch;
        }
        break;
      case jf::RecordType::kCheckpointEnd:
        rec.epoch = epoch;
        in_checkpoint = false;
        break;
      case jf::RecordType::kFreezeEnd:
        if (!in_checkpoint) {
          rec.epoch = ++epoch;
        } else if (epoch > 0) {
          rec.epoch = std::clamp<std::uint64_t>(rec.epoch, 1, epoch);
        }
        break;
      default:
        rec.epoch = epoch;
        break;
    }
  }
}

const std::vector<std::vector<std::byte>>& BaseImages() {
  static const std::vector<std::vector<std::byte>> images = [] {
    std::vector<std::vector<std::byte>> out;
    out.push_back(Pin(CrashedWithHistory()));
    out.push_back(Pin(CheckpointWithFrozenCycle()));
    out.push_back(Pin(Sealed(core::VolumeIdentity::Kind::kMemory)));
    out.push_back(Pin(PartialLastBlock()));
    out.push_back(Pin(BaseUnknownNoTargets()));
    out.push_back(Pin(Sealed(core::VolumeIdentity::Kind::kRegularFile)));
    out.push_back(Pin(Sealed(core::VolumeIdentity::Kind::kBlockDevice)));
    return out;
  }();
  return images;
}

}  // namespace blkrep::fuzz
