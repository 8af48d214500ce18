// Write traces: what a guest wrote, when and where — never the data.
//
// Design note. `blkrep track --trace FILE` records every write, trim and
// write-zeroes the NBD server accepts (volume, offset, length, kind, time
// since the trace began) so a production churn can be replayed elsewhere
// (`blkrep bench --replay FILE`) on other hardware and other settings. The
// file is append-only: a header naming the volumes, then fixed-size records
// in batches, each batch checksummed, so a trace cut short by a crash is
// still readable up to its last complete batch. docs/trace-format.md is the
// specification of its bytes.
//
// Thread safety: TraceWriter::Record may be called from any thread;
// ReadTrace is a pure function of the file.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/file_system.h"
#include "core/status.h"

namespace blkrep::tracker {

enum class TraceOp : std::uint8_t { kWrite = 1, kTrim = 2, kWriteZeroes = 3 };

struct TraceVolume {
  std::string name;             // the export name, as `track NAME=VOLUME`
  std::uint64_t size_bytes = 0;
};

struct TraceRecord {
  std::uint64_t time_ns = 0;    // since the trace began; never decreasing in a file
  std::uint64_t offset_bytes = 0;
  std::uint32_t length_bytes = 0;  // >= 1; offset + length <= the volume's size
  std::uint16_t volume = 0;     // index into Trace::volumes
  TraceOp op = TraceOp::kWrite;

  bool operator==(const TraceRecord&) const = default;
};

struct Trace {
  std::vector<TraceVolume> volumes;  // 1 .. 64
  std::uint64_t started_unix_ns = 0;  // wall clock when the trace began (informational)
  std::vector<TraceRecord> records;
  // Set when the file ended in a torn batch (a crash while recording): what
  // was dropped. Not an error.
  std::string torn_tail;
};

// Format constants (docs/trace-format.md).
inline constexpr std::uint32_t kTraceVersion = 1;
inline constexpr std::size_t kTraceMaxVolumes = 64;
inline constexpr std::size_t kTraceRecordBytes = 24;
inline constexpr std::size_t kTraceBatchHeaderBytes = 16;
inline constexpr std::uint32_t kTraceMaxBatchRecords = 4096;
// What the writer puts in one batch: 16 + 2730 * 24 = 65536 bytes.
inline constexpr std::uint32_t kTraceWriterBatchRecords = 2730;

// The one gate for a trace's bytes: kCorruption naming the field ("trace:
// record 17: offset ... past the end of volume disk0") on anything a
// TraceWriter could not have written, except a torn last batch.
core::Result<Trace> DecodeTrace(std::span<const std::byte> bytes);
// Reads and decodes FILE (kNotFound if missing); refuses files over 4 GiB.
core::Result<Trace> ReadTrace(const std::string& path);

// The bytes a TraceWriter would write for `trace` (its records in batches of
// at most records_per_batch, 1 .. kTraceMaxBatchRecords): for tests, worked
// examples and synthesized workloads. kInvalidArgument naming the field if
// DecodeTrace would refuse the result (torn_tail is ignored).
core::Result<std::vector<std::byte>> EncodeTrace(const Trace& trace, std::uint32_t records_per_batch = kTraceWriterBatchRecords);


// The largest trace file a reader accepts; the writer stops before it.
inline constexpr std::uint64_t kTraceMaxFileBytes = 4ULL << 30;

// A partial batch is written this long after the previous batch (by the
// writer's flusher thread; written, not fsynced: that is at Close).
inline constexpr std::uint64_t kTraceFlushIntervalNs = 1'000'000'000;

class TraceWriter {
 public:
  // Creates (truncating) `path` and writes its header.
  static core::Result<std::unique_ptr<TraceWriter>> Create(const std::string& path,
                                                           std::vector<TraceVolume> volumes);
  // The same through `fs` (a fake or fault-injecting one in tests), which
  // must outlive the writer; `max_file_bytes` (at most kTraceMaxFileBytes)
  // lets a test reach the size limit without writing 4 GiB.
  static core::Result<std::unique_ptr<TraceWriter>> Create(core::FileSystem& fs, const std::string& path,
                                                           std::vector<TraceVolume> volumes,
                                                           std::uint64_t max_file_bytes = kTraceMaxFileBytes);
  ~TraceWriter();  // flushes, best effort
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // Records one request; cheap (appends to a buffer; a full buffer is
  // written as one batch; a flusher thread writes a partial one a second
  // after the previous batch). Never fails the guest's I/O: a write error stops the trace
  // and is reported by Close; at 4 GiB recording stops (a warning on
  // stderr, the rest counted as dropped, Close still succeeds).
  void Record(std::uint16_t volume, TraceOp op, std::uint64_t offset_bytes, std::uint32_t length_bytes);
  // Writes the last batch and fsyncs the file. Idempotent: later calls
  // return the first result. Record after Close is ignored.
  core::Status Close();

  // Records in batches written so far (all recorded ones after a
  // successful Close).
  std::uint64_t records_written() const;
  // Records not in the file: after a write error or the 4 GiB limit, or refused by Record
  // (volume index or range outside the header's volumes — a caller's bug).
  std::uint64_t records_dropped() const;

  struct Impl;  // defined in the .cc

 private:
  explicit TraceWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace blkrep::tracker
