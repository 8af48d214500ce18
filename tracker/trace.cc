// Write traces: encoding, the decoder gate and the writer.
//
// Design note. docs/trace-format.md is the specification; this file follows
// it field by field. The writer keeps one batch in memory under a mutex; a
// Record that fills it takes the batch out, then takes the file's mutex
// before it lets go of the buffer's, so batches reach the file in the order
// they were filled while other threads already fill the next one. Times are
// taken under the buffer's mutex, so they never decrease in the file. A
// write error latches: tracing stops, later records are counted as dropped,
// and Close reports the error — the guest's I/O never sees it.
//
// The decoder validates every field before use and tells a torn last batch
// (the file ends inside it, its tail is all zeroes, or it ends exactly at
// the end of the file with a bad checksum) from corruption anywhere else.
#include "tracker/trace.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/names.h"
#include "tracker/nbd_protocol.h"

namespace blkrep::tracker {
namespace {

using core::Result;
using core::Status;

constexpr char kMagic[8] = {'B', 'L', 'K', 'R', 'T', 'R', 'A', 'C'};
constexpr std::size_t kFixedHeaderBytes = 24;  // magic, version, volume count, reserved, started
constexpr std::uint64_t kMaxVolumeSizeBytes = 1ULL << 62;

bool ValidOp(std::uint8_t op) { return op >= 1 && op <= 3; }

void EncodeHeader(const std::vector<TraceVolume>& volumes, std::uint64_t started_unix_ns,
                  std::vector<std::byte>& out) {
  core::ByteWriter w(out);
  w.Bytes(std::as_bytes(std::span(kMagic)));
  w.U32(kTraceVersion);
  w.U16(static_cast<std::uint16_t>(volumes.size()));
  w.U16(0);
  w.U64(started_unix_ns);
  for (const auto& v : volumes) {
    w.U8(static_cast<std::uint8_t>(v.name.size()));
    w.Bytes(std::as_bytes(std::span(v.name.data(), v.name.size())));
    w.U64(v.size_bytes);
  }
  w.U64(core::Xxh3_64(out));
}

void EncodeRecord(std::uint64_t time_ns, std::uint64_t offset_bytes, std::uint32_t length_bytes,
                  std::uint16_t volume, TraceOp op, std::vector<std::byte>& out) {
  core::ByteWriter w(out);
  w.U64(time_ns);
  w.U64(offset_bytes);
  w.U32(length_bytes);
  w.U16(volume);
  w.U8(static_cast<std::uint8_t>(op));
  w.U8(0);
}

// `batch` holds kTraceBatchHeaderBytes of room, then `count` records.
void SealBatch(std::vector<std::byte>& batch, std::uint32_t count) {
  core::StoreLe32(&batch[8], count);
  core::StoreLe32(&batch[12], 0);
  core::StoreLe64(&batch[0], core::Xxh3_64(std::span(batch).subspan(8)));
}

Status ValidateVolumes(const std::vector<TraceVolume>& volumes) {
  if (volumes.empty() || volumes.size() > kTraceMaxVolumes) {
    return Status::InvalidArgument("trace: " + std::to_string(volumes.size()) + " volumes (1 to 64)");
  }
  for (std::size_t i = 0; i < volumes.size(); ++i) {
    if (!core::IsValidName(volumes[i].name)) {
      return Status::InvalidArgument("trace: volume " + std::to_string(i) + ": invalid name '" + volumes[i].name +
                                     "'");
    }
    if (volumes[i].size_bytes == 0 || volumes[i].size_bytes > kMaxVolumeSizeBytes) {
      return Status::InvalidArgument("trace: volume " + volumes[i].name + ": size " +
                                     std::to_string(volumes[i].size_bytes) + " (1 to 2^62 bytes)");
    }
  }
  return Status::Ok();
}

// Empty when `r` could stand in volume list `volumes` after a record of time
// `previous_time_ns`; else what is wrong with it.
// Whether the batch at the start of `rest` (its checksum and announced
// count given) is a complete batch of fewer records with a damaged count.
bool ShorterBatchMatches(std::span<const std::byte> rest, std::uint64_t checksum, std::uint32_t count) {
  const std::size_t fit = (rest.size() - kTraceBatchHeaderBytes) / kTraceRecordBytes;
  for (std::size_t k = 1; k < count && k <= fit; ++k) {
    std::byte head[8];
    core::StoreLe32(head, static_cast<std::uint32_t>(k));
    std::memcpy(head + 4, rest.data() + 12, 4);
    core::Xxh3Stream h;
    h.Update(std::span<const std::byte>(head, 8));
    h.Update(rest.subspan(kTraceBatchHeaderBytes, k * kTraceRecordBytes));
    if (h.Digest() == checksum) return true;
  }
  return false;
}

std::string RecordProblem(const TraceRecord& r, const std::vector<TraceVolume>& volumes,
                          std::uint64_t previous_time_ns) {
  if (!ValidOp(static_cast<std::uint8_t>(r.op))) {
    return "op " + std::to_string(static_cast<unsigned>(r.op)) + " (1 write, 2 trim, 3 write-zeroes)";
  }
  if (r.volume >= volumes.size()) {
    return "volume index " + std::to_string(r.volume) + " (the header names " + std::to_string(volumes.size()) +
           " volumes)";
  }
  const TraceVolume& v = volumes[r.volume];
  if (r.length_bytes == 0) return "length 0";
  if (r.op == TraceOp::kWrite && r.length_bytes > nbd::kMaxRequestBytes) {
    // No NBD client can send more in one write (the tracker refuses it).
    return "write of " + std::to_string(r.length_bytes) + " bytes (at most " +
           std::to_string(nbd::kMaxRequestBytes) + " per request)";
  }
  if (r.offset_bytes > v.size_bytes || r.length_bytes > v.size_bytes - r.offset_bytes) {
    return "offset " + std::to_string(r.offset_bytes) + " + length " + std::to_string(r.length_bytes) +
           " past the end of volume " + v.name + " (" + std::to_string(v.size_bytes) + " bytes)";
  }
  if (r.time_ns < previous_time_ns) {
    return "time " + std::to_string(r.time_ns) + " ns before the previous record's " +
           std::to_string(previous_time_ns) + " ns";
  }
  return {};
}

bool AllZero(std::span<const std::byte> bytes) {
  for (std::byte b : bytes) {
    if (b != std::byte{0}) return false;
  }
  return true;
}

// Whether bytes [pos, pos + n) of the file hold an all-zero 512-byte
// sector (aligned in the file): a page the kernel never wrote.
bool HasZeroSector(std::span<const std::byte> file, std::size_t pos, std::size_t n) {
  for (std::size_t s = (pos + 511) / 512 * 512; s + 512 <= pos + n; s += 512) {
    if (AllZero(file.subspan(s, 512))) return true;
  }
  return false;
}


}  // namespace

Result<Trace> DecodeTrace(std::span<const std::byte> bytes) {
  auto bad = [](const std::string& what) { return Status::Corruption("trace: " + what); };
  Trace trace;
  core::ByteReader h(bytes);
  auto magic = h.Bytes(sizeof kMagic);
  if (!h.ok()) return bad("header: " + std::to_string(bytes.size()) + " bytes, too short for one");
  if (std::memcmp(magic.data(), kMagic, sizeof kMagic) != 0) return bad("header: bad magic (not a blkrep trace)");
  const std::uint32_t version = h.U32();
  const std::uint16_t volume_count = h.U16();
  const std::uint16_t reserved = h.U16();
  trace.started_unix_ns = h.U64();
  if (!h.ok()) return bad("header: cut short");
  if (version != kTraceVersion) return bad("header: version " + std::to_string(version) + " (this blkrep reads 1)");
  if (volume_count == 0 || volume_count > kTraceMaxVolumes) {
    return bad("header: volume count " + std::to_string(volume_count) + " (1 to 64)");
  }
  if (reserved != 0) return bad("header: reserved field " + std::to_string(reserved) + " (must be 0)");
  for (std::uint16_t i = 0; i < volume_count; ++i) {
    const std::uint8_t name_length = h.U8();
    if (h.ok() && (name_length == 0 || name_length > core::kMaxNameBytes)) {
      return bad("header: volume " + std::to_string(i) + ": name length " + std::to_string(name_length) +
                 " (1 to 64)");
    }
    auto name = h.Bytes(name_length);
    TraceVolume v;
    v.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
    v.size_bytes = h.U64();
    if (!h.ok()) return bad("header: cut short in volume " + std::to_string(i));
    if (!core::IsValidName(v.name)) return bad("header: volume " + std::to_string(i) + ": invalid name");
    if (v.size_bytes == 0 || v.size_bytes > kMaxVolumeSizeBytes) {
      return bad("header: volume " + v.name + ": size " + std::to_string(v.size_bytes) + " (1 to 2^62 bytes)");
    }
    for (const auto& earlier : trace.volumes) {
      if (earlier.name == v.name) return bad("header: volume name " + v.name + " given twice");
    }
    trace.volumes.push_back(std::move(v));
  }
  const std::size_t checked = h.position();
  const std::uint64_t checksum = h.U64();
  if (!h.ok()) return bad("header: cut short before its checksum");
  if (checksum != core::Xxh3_64(bytes.subspan(0, checked))) return bad("header: checksum mismatch");

  std::size_t pos = h.position();
  std::uint64_t previous_time_ns = 0;
  for (std::uint64_t batch_index = 0; pos < bytes.size(); ++batch_index) {
    const std::span<const std::byte> rest = bytes.subspan(pos);
    const std::string where = "batch " + std::to_string(batch_index) + " at byte " + std::to_string(pos);
    if (AllZero(rest)) {
      trace.torn_tail = where + ": " + std::to_string(rest.size()) + " zero bytes at the end dropped";
      break;
    }
    if (rest.size() < kTraceBatchHeaderBytes) {
      trace.torn_tail = where + ": header cut short, " + std::to_string(rest.size()) + " bytes dropped";
      break;
    }
    const std::uint64_t batch_checksum = core::LoadLe64(rest.data());
    const std::uint32_t count = core::LoadLe32(rest.data() + 8);
    const std::uint32_t batch_reserved = core::LoadLe32(rest.data() + 12);
    if (count == 0 || count > kTraceMaxBatchRecords) {
      return bad(where + ": record count " + std::to_string(count) + " (1 to 4096)");
    }
    if (batch_reserved != 0) return bad(where + ": reserved field " + std::to_string(batch_reserved) + " (must be 0)");
    const std::size_t batch_bytes = kTraceBatchHeaderBytes + std::size_t{count} * kTraceRecordBytes;
    if (batch_bytes > rest.size() && ShorterBatchMatches(rest, batch_checksum, count)) {
      // Not a torn write: a whole batch of fewer records whose count was
      // damaged (the checksum covers the count). Records would be lost.
      return bad(where + ": record count " + std::to_string(count) +
                 " is damaged (a complete batch of fewer records follows it)");
    }
    if (batch_bytes > rest.size()) {
      trace.torn_tail = where + ": " + std::to_string(count) + " records announced, the file ends after " +
                        std::to_string(rest.size()) + " of its " + std::to_string(batch_bytes) + " bytes; dropped";
      break;
    }
    if (batch_checksum != core::Xxh3_64(rest.subspan(8, batch_bytes - 8))) {
      // A torn last batch: the file's size grew before all of its pages
      // were written, which leaves a sector of zeroes. Other damage to the
      // last batch is corruption, not a tear.
      if (batch_bytes == rest.size() && HasZeroSector(bytes, pos, batch_bytes)) {
        trace.torn_tail = where + ": the last batch (" + std::to_string(count) +
                          " records) fails its checksum; dropped";
        break;
      }
      return bad(where + ": checksum mismatch");
    }
    core::ByteReader r(rest.subspan(kTraceBatchHeaderBytes, batch_bytes - kTraceBatchHeaderBytes));
    for (std::uint32_t i = 0; i < count; ++i) {
      TraceRecord rec;
      rec.time_ns = r.U64();
      rec.offset_bytes = r.U64();
      rec.length_bytes = r.U32();
      rec.volume = r.U16();
      const std::uint8_t op = r.U8();
      const std::uint8_t record_reserved = r.U8();
      const std::string record_name = "record " + std::to_string(trace.records.size()) + " (" + where + ")";
      if (!ValidOp(op)) return bad(record_name + ": op " + std::to_string(op) + " (1 write, 2 trim, 3 write-zeroes)");
      rec.op = static_cast<TraceOp>(op);
      if (record_reserved != 0) {
        return bad(record_name + ": reserved field " + std::to_string(record_reserved) + " (must be 0)");
      }
      std::string problem = RecordProblem(rec, trace.volumes, previous_time_ns);
      if (!problem.empty()) return bad(record_name + ": " + problem);
      previous_time_ns = rec.time_ns;
      trace.records.push_back(rec);
    }
    pos += batch_bytes;
  }
  return trace;
}

Result<Trace> ReadTrace(const std::string& path) {
  core::FileSystem& fs = core::PosixFileSystemInstance();
  auto file = fs.Open(path, core::OpenMode::kReadOnly);
  if (!file.ok()) return file.status();
  auto size = (*file)->Size();
  if (!size.ok()) return size.status();
  if (*size > kTraceMaxFileBytes) {
    return Status::InvalidArgument("trace " + path + ": " + std::to_string(*size) + " bytes, over the 4 GiB limit");
  }
  std::vector<std::byte> bytes(*size);
  auto got = (*file)->ReadAt(0, bytes);
  if (!got.ok()) return got.status();
  bytes.resize(*got);
  auto trace = DecodeTrace(bytes);
  if (!trace.ok()) return trace.status().WithContext(path);
  return trace;
}

Result<std::vector<std::byte>> EncodeTrace(const Trace& trace, std::uint32_t records_per_batch) {
  if (records_per_batch == 0 || records_per_batch > kTraceMaxBatchRecords) {
    return Status::InvalidArgument("trace: records per batch " + std::to_string(records_per_batch) + " (1 to 4096)");
  }
  Status volumes_ok = ValidateVolumes(trace.volumes);
  if (!volumes_ok.ok()) return volumes_ok;
  for (std::size_t i = 0; i < trace.volumes.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (trace.volumes[i].name == trace.volumes[j].name) {
        return Status::InvalidArgument("trace: volume name " + trace.volumes[i].name + " given twice");
      }
    }
  }
  std::vector<std::byte> out;
  EncodeHeader(trace.volumes, trace.started_unix_ns, out);
  std::uint64_t previous_time_ns = 0;
  for (std::size_t first = 0; first < trace.records.size(); first += records_per_batch) {
    const std::size_t count = std::min<std::size_t>(records_per_batch, trace.records.size() - first);
    std::vector<std::byte> batch(kTraceBatchHeaderBytes);
    for (std::size_t i = first; i < first + count; ++i) {
      const TraceRecord& r = trace.records[i];
      std::string problem = RecordProblem(r, trace.volumes, previous_time_ns);
      if (!problem.empty()) return Status::InvalidArgument("trace: record " + std::to_string(i) + ": " + problem);
      previous_time_ns = r.time_ns;
      EncodeRecord(r.time_ns, r.offset_bytes, r.length_bytes, r.volume, r.op, batch);
    }
    SealBatch(batch, static_cast<std::uint32_t>(count));
    out.insert(out.end(), batch.begin(), batch.end());
  }
  return out;
}

// ---- TraceWriter ---------------------------------------------------------------

struct TraceWriter::Impl {
  std::vector<TraceVolume> volumes;
  std::chrono::steady_clock::time_point start;

  std::mutex mu;  // the buffer
  std::vector<std::byte> batch;        // GUARDED_BY(mu): header room, then records
  std::uint32_t batch_records = 0;     // GUARDED_BY(mu)
  std::uint64_t last_time_ns = 0;      // GUARDED_BY(mu)
  bool closed = false;                 // GUARDED_BY(mu)
  std::uint64_t refused = 0;           // GUARDED_BY(mu)
  std::uint64_t last_batch_ns = 0;     // GUARDED_BY(mu): when the last batch was handed to the file
  std::condition_variable flush_cv;    // with mu: wakes the flusher at Close
  std::thread flusher;                 // writes a batch a second old (FlushLoop)
  std::once_flag join_once;

  // Taken while holding mu (never the other way round).
  std::mutex file_mu;
  std::unique_ptr<core::File> file;    // GUARDED_BY(file_mu)
  std::uint64_t file_offset = 0;       // GUARDED_BY(file_mu)
  Status error;                        // GUARDED_BY(file_mu): the first write error
  bool close_done = false;             // GUARDED_BY(file_mu)
  Status close_status;                 // GUARDED_BY(file_mu)
  std::uint64_t written = 0;           // GUARDED_BY(file_mu)
  std::uint64_t lost = 0;              // GUARDED_BY(file_mu)
  bool full = false;                   // GUARDED_BY(file_mu): max_file_bytes was reached
  std::uint64_t max_file_bytes = kTraceMaxFileBytes;

  void NewBatch() {
    batch.clear();
    batch.reserve(kTraceBatchHeaderBytes + std::size_t{kTraceWriterBatchRecords} * kTraceRecordBytes);
    batch.resize(kTraceBatchHeaderBytes);
    batch_records = 0;
  }

  // REQUIRES: file_mu held.
  void WriteBatch(std::vector<std::byte>& bytes, std::uint32_t count) {
    if (count == 0) return;
    if (!error.ok()) {
      lost += count;
      return;
    }
    if (full || file_offset + bytes.size() > max_file_bytes) {
      // A longer trace could not be read back (ReadTrace's limit): stop
      // here, with everything so far readable. Not a failure of the trace
      // (Close succeeds); the records after it are counted as dropped.
      if (!full) {
        std::fprintf(stderr, "blkrep: warning: trace: reached the 4 GiB limit of a trace file; recording stopped\n");
      }
      full = true;
      lost += count;
      return;
    }
    SealBatch(bytes, count);
    Status s = file->WriteAt(file_offset, bytes);
    if (!s.ok()) {
      error = s.WithContext("trace: writing a batch of " + std::to_string(count) + " records");
      lost += count;
      return;
    }
    file_offset += bytes.size();
    written += count;
  }

  std::uint64_t NowNs() const {
    const auto elapsed = std::chrono::steady_clock::now() - start;
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
  }

  // REQUIRES: `lock` holds mu. Hands the buffer to the file as one batch;
  // returns with mu released (file_mu is taken first: batches stay in order).
  void HandOff(std::unique_lock<std::mutex>& lock, std::uint64_t now_ns) {
    last_batch_ns = now_ns;
    std::vector<std::byte> bytes;
    bytes.swap(batch);
    const std::uint32_t count = batch_records;
    NewBatch();
    std::unique_lock file_lock(file_mu);
    lock.unlock();
    WriteBatch(bytes, count);
  }

  // The flusher thread: a partial batch goes to the file a second after the
  // previous batch, so a guest that goes quiet has its last writes in the
  // file (the page cache: a tracker crash keeps them; fsync is at Close)
  // within about a second, not only when the tracker stops.
  void FlushLoop() {
    std::unique_lock lock(mu);
    while (!closed) {
      flush_cv.wait_for(lock, std::chrono::milliseconds(200));
      if (closed) break;
      const std::uint64_t now = NowNs();
      if (batch_records > 0 && now - last_batch_ns >= kTraceFlushIntervalNs) {
        HandOff(lock, now);
        lock.lock();
      }
    }
  }
};

TraceWriter::TraceWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TraceWriter::~TraceWriter() {
  if (impl_) (void)Close();
}

Result<std::unique_ptr<TraceWriter>> TraceWriter::Create(const std::string& path, std::vector<TraceVolume> volumes) {
  return Create(core::PosixFileSystemInstance(), path, std::move(volumes));
}

Result<std::unique_ptr<TraceWriter>> TraceWriter::Create(core::FileSystem& fs, const std::string& path,
                                                         std::vector<TraceVolume> volumes,
                                                         std::uint64_t max_file_bytes) {
  Trace check;
  check.volumes = volumes;
  if (auto encoded = EncodeTrace(check); !encoded.ok()) return encoded.status();
  auto file = fs.Open(path, core::OpenMode::kCreateTruncate);
  if (!file.ok()) return file.status();
  auto impl = std::make_unique<Impl>();
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  std::vector<std::byte> header;
  EncodeHeader(volumes, static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()),
               header);
  Status written = (*file)->WriteAt(0, header);
  if (written.ok()) written = (*file)->Sync();
  if (written.ok()) written = fs.SyncDir(core::DirName(path));
  if (!written.ok()) return written.WithContext("trace " + path);
  impl->max_file_bytes = std::min(max_file_bytes, kTraceMaxFileBytes);
  impl->volumes = std::move(volumes);
  impl->start = std::chrono::steady_clock::now();
  impl->file = std::move(file).value();
  impl->file_offset = header.size();
  impl->NewBatch();
  Impl* started = impl.get();
  impl->flusher = std::thread([started] { started->FlushLoop(); });
  return std::unique_ptr<TraceWriter>(new TraceWriter(std::move(impl)));
}

void TraceWriter::Record(std::uint16_t volume, TraceOp op, std::uint64_t offset_bytes, std::uint32_t length_bytes) {
  Impl& m = *impl_;
  std::unique_lock lock(m.mu);
  if (m.closed) return;
  std::uint64_t time_ns = m.NowNs();
  if (time_ns < m.last_time_ns) time_ns = m.last_time_ns;
  TraceRecord r{time_ns, offset_bytes, length_bytes, volume, op};
  if (!RecordProblem(r, m.volumes, m.last_time_ns).empty()) {
    ++m.refused;
    return;
  }
  m.last_time_ns = time_ns;
  EncodeRecord(time_ns, offset_bytes, length_bytes, volume, op, m.batch);
  // A full batch goes to the file here; a partial one from the flusher
  // thread, off the guest's I/O path.
  if (++m.batch_records < kTraceWriterBatchRecords) return;
  m.HandOff(lock, time_ns);
}

core::Status TraceWriter::Close() {
  Impl& m = *impl_;
  {
    std::lock_guard stop(m.mu);
    m.closed = true;
  }
  m.flush_cv.notify_all();
  std::call_once(m.join_once, [&] {
    if (m.flusher.joinable()) m.flusher.join();
  });
  std::unique_lock lock(m.mu);
  std::vector<std::byte> last;
  last.swap(m.batch);
  const std::uint32_t count = m.batch_records;
  m.batch_records = 0;
  std::unique_lock file_lock(m.file_mu);
  lock.unlock();
  if (m.close_done) return m.close_status;
  m.WriteBatch(last, count);
  Status s = m.error;
  if (s.ok()) {
    s = m.file->Sync();
    if (!s.ok()) s = s.WithContext("trace: fsync");
  }
  m.file.reset();
  m.close_done = true;
  m.close_status = s;
  return s;
}

std::uint64_t TraceWriter::records_written() const {
  std::lock_guard lock(impl_->file_mu);
  return impl_->written;
}

std::uint64_t TraceWriter::records_dropped() const {
  std::uint64_t refused = 0;
  {
    std::lock_guard lock(impl_->mu);
    refused = impl_->refused;
  }
  std::lock_guard lock(impl_->file_mu);
  return refused + impl_->lost;
}

}  // namespace blkrep::tracker
